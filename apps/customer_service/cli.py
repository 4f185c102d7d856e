"""Handlers of the `moe-suite chat ...` commands and of `moe-suite bench upcycle` (torch loads here)."""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path


def _stream_config(overrides: str | None):
    """The intent stream's default config with --stream's JSON overrides, e.g. '{"num_layers": 2}'."""
    from core.text.classifier import default_stream

    if overrides is None:
        return default_stream()
    try:
        fields = json.loads(overrides)
    except json.JSONDecodeError as err:
        raise ValueError(f"--stream: not JSON ({err})") from None
    if not isinstance(fields, dict):
        raise ValueError("--stream: expected a JSON object of TextStreamConfig fields")
    if isinstance(fields.get("moe_layers"), list):
        fields["moe_layers"] = tuple(fields["moe_layers"])
    try:
        return dataclasses.replace(default_stream(), **fields)
    except TypeError as err:
        raise ValueError(f"--stream: {err}") from None


def train_intents(args: argparse.Namespace) -> None:
    from core.text.classifier import TrainConfig

    from .intents import IntentModel, IntentTrainConfig, load_intent_data

    texts, labels = load_intent_data(args.data)
    cfg = IntentTrainConfig(
        train=TrainConfig(epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size,
                          lr=args.lr, train_top_layers=args.train_top_layers, bf16=args.bf16, seed=args.seed),
        stream=_stream_config(args.stream), upcycle=not args.from_scratch,
        val_fraction=args.val_fraction, in_scope_recall=args.in_scope_recall)
    model, result = IntentModel.train(texts, labels, cfg)
    model.save(args.out, {"data": str(Path(args.data).resolve()), "train": dataclasses.asdict(cfg.train),
                          "upcycle": cfg.upcycle, "val_accuracy": result.val_accuracy})
    summary = {"out": str(args.out), "rows": len(texts), "labels": len(model.labels), "steps": result.steps,
               "seconds": round(result.seconds, 1), "train_loss": round(result.train_loss, 4),
               "val_accuracy": result.val_accuracy, "oos_threshold": model.oos_threshold,
               "history": result.history}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"trained {summary['labels']} labels on {summary['rows']} rows: {result.steps} steps in "
              f"{summary['seconds']} s, validation accuracy {result.val_accuracy}, "
              f"oos threshold {model.oos_threshold}; saved to {args.out}")


def eval_intents(args: argparse.Namespace) -> None:
    from .intents import IntentModel, load_intent_data

    texts, labels = load_intent_data(args.data)
    metrics = IntentModel.load(args.model).evaluate(texts, labels)
    if args.json:
        print(json.dumps(metrics))
    else:
        print("\n".join(f"{name:<20}{value}" for name, value in metrics.items()))


def bench_upcycle(args: argparse.Namespace) -> None:
    from core.bench.upcycle import UpcycleBenchConfig, run

    given = {k: getattr(args, k) for k in ("data", "steps", "batch_size", "seed") if getattr(args, k) is not None}
    result = run(UpcycleBenchConfig(**given))
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['steps']} steps, batch {result['batch_size']}, on {result['data']}:")
        for init in ("upcycled", "scratch"):
            print(f"  {init:<9} test accuracy {result[f'{init}_accuracy']:.4f}  "
                  f"({result[f'{init}_seconds']:.0f} s)")
