"""Customer-service assistant: intent recognition with out-of-scope detection (see `intents`).

Light to import: this module only registers the `moe-suite chat` commands and `moe-suite bench upcycle`.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from apps.cli import positive_int

if TYPE_CHECKING:
    from apps.cli import CommandTable


def register(cli: CommandTable) -> None:
    """Add `chat train-intents`, `chat eval-intents` and `bench upcycle` (see apps.cli)."""
    from . import cli as handlers

    chat = cli.group("chat", "customer-service assistant")
    p = chat.command("train-intents", "train an intent model (with oos detection) on a CSV or YAML file",
                     handlers.train_intents)
    p.add_argument("--data", required=True, type=Path, help="CSV (text,label) or YAML intents file")
    p.add_argument("--out", required=True, type=Path, help="checkpoint folder to write")
    p.add_argument("--epochs", type=positive_int, default=3)
    p.add_argument("--max-steps", type=positive_int, default=None, help="stop after this many steps")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate of the stream")
    p.add_argument("--train-top-layers", type=int, default=None,
                   help="train only the top N encoder layers and the head (default: all)")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="held-out slice of the training rows for epoch selection and the oos threshold")
    p.add_argument("--in-scope-recall", type=float, default=0.95,
                   help="without oos rows: share of held-out in-scope rows the threshold keeps")
    p.add_argument("--stream", default=None, help='JSON overrides of the stream config, e.g. \'{"top_k": 1}\'')
    p.add_argument("--from-scratch", action="store_true", help="random stream instead of upcycled MiniLM")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")

    p = chat.command("eval-intents", "score an intent model on a labelled CSV or YAML file",
                     handlers.eval_intents)
    p.add_argument("--model", required=True, type=Path, help="checkpoint folder from train-intents")
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")

    p = cli.group("bench", "benchmarks").command(
        "upcycle", "upcycled MiniLM stream vs the same stream from scratch, same budget, on an intent task",
        handlers.bench_upcycle)
    p.add_argument("--data", type=Path, default=None,
                   help="folder with train.csv and test.csv (default: ../shared/datasets/banking77)")
    p.add_argument("--steps", type=positive_int, default=None, help="training steps of each model")
    p.add_argument("--batch-size", type=positive_int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
