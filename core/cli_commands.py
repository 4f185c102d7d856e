"""The core's `moe-suite` commands: `compress` (prune experts, quantise to int8) a checkpoint.

Light to import, like every command module: torch and the models load inside the handlers.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from core.cli import positive_int

if TYPE_CHECKING:
    from core.cli import CommandTable


def fraction(text: str) -> float:
    """argparse type: a float in (0, 1]."""
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1], got {value}")
    return value


def _calibration_batches(args: argparse.Namespace, kind: str, config) -> list:
    """--calib-data's batches (a torch.save'd list of forward-argument tuples), or synthetic ones
    shaped for the checkpoint's kind."""
    import torch

    from core import registry

    if args.calib_data is None:
        g = torch.Generator().manual_seed(args.seed)
        return [registry.synthetic_inputs(kind, config, args.batch_size, g)
                for _ in range(args.calib_batches)]
    if not Path(args.calib_data).is_file():
        raise ValueError(f"{args.calib_data}: no such file")
    batches = torch.load(args.calib_data, weights_only=True)
    if not isinstance(batches, list) or not batches:
        raise ValueError(f"{args.calib_data}: expected a non-empty list of batches, "
                         f"got {type(batches).__name__}")
    return batches[:args.calib_batches]


def _megabytes(file: Path) -> float:
    return file.stat().st_size / 1e6


def _compress(args: argparse.Namespace) -> None:
    from core import registry
    from core.checkpoint import WEIGHTS, load_checkpoint, save_checkpoint
    from core.compress import compress_model

    model, info = load_checkpoint(args.checkpoint)
    batches = _calibration_batches(args, info.kind, info.config)
    keep = args.keep_experts if args.keep_experts is not None else args.keep_fraction
    compressed, report = compress_model(
        model, batches, keep_experts=keep, quantize=not args.no_quantize,
        evaluate=lambda m: registry.task_metrics(info.kind, m, info.config))
    metadata = {**info.metadata, "compressed_from": str(info.path), "compression": report.to_dict()}
    out = save_checkpoint(compressed, args.out, kind=info.kind, config=info.config, metadata=metadata)

    result = {
        "kind": info.kind, "out": str(out), "quantized": not args.no_quantize,
        "experts_before": report.experts_before, "experts_after": report.experts_after,
        "size_mb_before": _megabytes(info.path / WEIGHTS), "size_mb_after": _megabytes(out / WEIGHTS),
        "latency_ms_before": report.latency_ms_before, "latency_ms_after": report.latency_ms_after,
        "output_rel_error": report.output_rel_error,
        "task_metrics_before": report.quality_before, "task_metrics_after": report.quality_after,
        "notes": report.notes,
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"{info.kind}: {result['experts_before']} -> {result['experts_after']} routed experts"
          f"{', int8 weights' if result['quantized'] else ''}; saved to {out}")
    print(f"{'':<22}{'before':>10}{'after':>10}")
    for label, key in (("size on disk (MB)", "size_mb"), ("latency (ms)", "latency_ms")):
        print(f"{label:<22}{result[key + '_before']:>10.3f}{result[key + '_after']:>10.3f}")
    print(f"{'output rel. error':<22}{'':>10}{result['output_rel_error']:>10.4f}")
    for name, before in report.quality_before.items():
        print(f"{name:<22}{before:>10.3f}{report.quality_after[name]:>10.3f}")
    for note in report.notes:
        print(f"note: {note}")


def register(cli: CommandTable) -> None:
    """Add `compress` to the `moe-suite` command table (see apps.cli)."""
    p = cli.command("compress", "prune a checkpoint's least-used experts and quantise its weights "
                                "to int8; saves a checkpoint that load_checkpoint reads", _compress)
    p.add_argument("--checkpoint", required=True, help="checkpoint folder to compress")
    p.add_argument("--out", required=True, help="folder for the compressed checkpoint")
    keep = p.add_mutually_exclusive_group()
    keep.add_argument("--keep-fraction", type=fraction, default=0.5,
                      help="fraction of each MoE layer's experts to keep (default: %(default)s)")
    keep.add_argument("--keep-experts", type=positive_int, help="experts to keep per MoE layer")
    p.add_argument("--no-quantize", action="store_true", help="prune only, keep float weights")
    p.add_argument("--calib-batches", type=positive_int, default=8,
                   help="calibration batches that measure expert load (default: %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=4,
                   help="samples per synthetic batch (default: %(default)s)")
    p.add_argument("--calib-data", help="torch.save'd list of batches, each a tuple of forward "
                                        "arguments (default: synthetic inputs for the model's kind)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic inputs")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
