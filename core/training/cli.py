"""`moe-suite train`: progressive training of the multimodal core on shape world.

Light to import, like every command module: torch and the models load inside the handler.
"""
from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from core.cli import positive_int

if TYPE_CHECKING:
    from core.cli import CommandTable

STAGE_CHOICES = ("pretrain", "align", "finetune", "all")


def _train(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from .config import STAGES, TrainConfig
    from .loop import Trainer

    cfg = TrainConfig.from_file(args.config) if args.config else TrainConfig()
    overrides = {"out_dir": args.out}
    if args.steps is not None:
        overrides.update({f"{stage}_steps": args.steps for stage in STAGES})
    cfg = replace(cfg, **overrides)
    stages = STAGES if args.stage == "all" else (args.stage,)
    summary = Trainer(cfg).run(stages, resume=args.resume)
    if args.json:
        print(json.dumps(summary))
        return
    for stage, metrics in summary.items():
        shown = (f"{name} {value:.4g}" if isinstance(value, float) else f"{name} {value}"
                 for name, value in metrics.items())
        print(f"{stage}: {', '.join(shown)}")
    print(f"metrics, plots and checkpoints in {cfg.out_dir}")


def register(cli: CommandTable) -> None:
    """Add `train` to the `moe-suite` command table (see apps.cli)."""
    p = cli.command("train", "progressive training on shape world: pretrain each stream, align image "
                             "and text, fine-tune on visual questions", _train)
    p.add_argument("--stage", choices=STAGE_CHOICES, default="all",
                   help="stage to run; all = the three in order (default: %(default)s)")
    p.add_argument("--out", required=True, help="output folder: metrics.jsonl, plots, checkpoints")
    p.add_argument("--steps", type=positive_int, help="steps of every stage run (default: the config's)")
    p.add_argument("--resume", action="store_true", help="continue each stage from its checkpoint in --out")
    p.add_argument("--config", help="TrainConfig fields as a .json or .yaml file (partial is fine)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
