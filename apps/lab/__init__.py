"""MoE Lab: train one MoE layer on a synthetic token stream and watch how it routes.

`session` holds the logic (no Gradio), `page` the Gradio page that the server mounts at /lab.
This module stays light to import: it only registers the `moe-suite lab` commands.
"""
from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from apps.cli import given_flags

if TYPE_CHECKING:
    from apps.cli import CommandTable

# `lab train` flags: (name, type, help). Flags left out keep LabConfig's defaults.
_TRAIN_FLAGS: tuple[tuple[str, type, str], ...] = (
    ("steps", int, "training steps"),
    ("num_experts", int, "routed experts"),
    ("top_k", int, "experts per token"),
    ("num_shared_experts", int, "shared experts"),
    ("capacity_factor", float, "expert capacity factor, 0 = dropless"),
    ("gate", str, "topk_softmax | softmax_topk | sigmoid"),
    ("num_groups", int, "expert groups"),
    ("top_groups", int, "groups per token"),
    ("num_tasks", int, "tasks for task-aware gating, 0 = off"),
    ("balance_loss", str, "kl | switch | sequence | none"),
    ("balance_coef", float, "balance loss coefficient"),
    ("z_loss_coef", float, "router z-loss coefficient"),
    ("bias_update_rate", float, "aux-free bias update rate, 0 = off"),
    ("dim", int, "model width"),
    ("hidden_dim", int, "expert hidden width"),
    ("num_clusters", int, "clusters in the synthetic token stream"),
    ("skew", float, "offset shared by all tokens; high = collapse-prone"),
    ("batch_size", int, "sequences per step"),
    ("seq_len", int, "tokens per sequence"),
    ("lr", float, "Adam learning rate"),
    ("seed", int, "random seed"),
)


def _train(args: argparse.Namespace) -> None:
    from .session import LabConfig, LabSession

    given = given_flags(args, (name for name, _, _ in _TRAIN_FLAGS))
    summary = LabSession(LabConfig.from_flat(given)).train().summary()
    if args.json:
        print(json.dumps(summary))
    else:
        print("\n".join(f"{name:<18}{value:.4g}" for name, value in summary.items()))


def register(cli: CommandTable) -> None:
    """Add `lab train` to the `moe-suite` command table (see apps.cli)."""
    p = cli.group("lab", "MoE Lab without the page").command(
        "train", "train the Lab's MoE layer headless and print its final metrics "
                 "(means of the last 10 steps)", _train)
    for name, kind, help in _TRAIN_FLAGS:
        # SUPPRESS: an absent flag leaves no attribute, so LabConfig's default applies.
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, default=argparse.SUPPRESS, help=help)
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
