"""`moe-suite bench lm` and `moe-suite bench fusion`: the backbone's evidence benchmarks.

Light to import, like every command module: torch and the models load inside the handlers.
Threads: torch's default, or OMP_NUM_THREADS; the JSON's "machine" says how many ran.
"""
from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from core.cli import given_flags, positive_int

if TYPE_CHECKING:
    from core.cli import CommandTable


def _bench_lm(args: argparse.Namespace) -> None:
    from .lm import LMBenchConfig, run

    result = run(LMBenchConfig(**given_flags(args, ("steps", "seed"))))
    if args.json:
        print(json.dumps(result))
        return
    print(f"masked LM on {result['corpus']}: {result['train_tokens']} training tokens, "
          f"{result['heldout_tokens']} held-out tokens in {len(result['heldout_topics'])} unseen topics")
    print(f"{'model':<8}{'held-out loss':>14}{'perplexity':>12}{'active params':>15}{'total params':>14}"
          f"{'train s':>9}")
    for name in ("moe", "dense"):
        m = result[name]
        print(f"{name:<8}{m['heldout_loss']:>14.4f}{m['perplexity']:>12.2f}"
              f"{m['params_active_per_token']:>15,}{m['params_total']:>14,}{m['train_seconds']:>9.1f}")
    print(f"MoE perplexity reduction vs dense: {100 * result['moe_vs_dense_perplexity_reduction']:.1f}% "
          f"({result['config']['steps']} steps; {result['machine']})")


def _bench_fusion(args: argparse.Namespace) -> None:
    from .fusion import FusionBenchConfig, run

    result = run(FusionBenchConfig(**given_flags(args, ("steps", "seeds"))))
    if args.json:
        print(json.dumps(result))
        return
    print(f"{result['data']}: {result['config']['steps']} steps, {result['config']['seeds']} seeds")
    print(f"{'strategy':<13}{'accuracy %':>11}{'std':>7}{'vs concat':>11}")
    for name, acc in result["accuracy_percent"].items():
        gain = result["gain_points_vs_concat"].get(name, 0.0)
        print(f"{name:<13}{acc['mean']:>11.1f}{acc['std']:>7.1f}{gain:>+11.1f}")
    print(f"best dynamic strategy: {result['best_dynamic_strategy']}, "
          f"{result['fusion_gain_points']:+.1f} points ({result['machine']})")


def register(cli: CommandTable) -> None:
    """Add `bench lm` and `bench fusion` to the `moe-suite` command table (see apps.cli)."""
    bench = cli.group("bench", "benchmarks")
    p = bench.command("lm", "MoE against dense FFNs at equal active parameters: held-out masked-token "
                            "perplexity on CPython's documentation", _bench_lm)
    # SUPPRESS: an absent flag leaves no attribute, so the config's default applies.
    p.add_argument("--steps", type=positive_int, default=argparse.SUPPRESS,
                   help="training steps of each model (default: the config's)")
    p.add_argument("--seed", type=int, default=argparse.SUPPRESS,
                   help="seeds the topic split, weights, batches and masks (default: the config's)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")

    p = bench.command("fusion", "dynamic fusion strategies against concatenation: held-out accuracy "
                                "on shape world's visual questions", _bench_fusion)
    p.add_argument("--steps", type=positive_int, default=argparse.SUPPRESS,
                   help="finetune steps of every run (default: the config's)")
    p.add_argument("--seeds", type=positive_int, default=argparse.SUPPRESS,
                   help="runs per strategy, seeds 0 .. N-1 (default: the config's)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
