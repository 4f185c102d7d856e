"""Handlers of the `moe-suite medical ...` commands and `moe-suite bench medical` (torch loads here)."""
from __future__ import annotations

import argparse
import dataclasses
import json


def _emit(args: argparse.Namespace, summary: dict, lines: list[str]) -> None:
    print(json.dumps(summary) if args.json else "\n".join(lines))


def eval_detection(args: argparse.Namespace) -> None:
    import sys

    from .evaluation import align_keys, compare, froc, read_prediction_table, read_truth_table

    truth = read_truth_table(args.truth)
    preds, warnings = read_prediction_table(args.pred)
    preds, key_warnings = align_keys(preds, truth)
    warnings = truth.warnings + warnings + key_warnings
    n_scans = args.scans or len(truth.scans | {p.study for p in preds})
    result = froc(preds, truth.nodules, n_scans=n_scans)
    summary = result.to_dict()
    lines = [f"CPM {result.cpm:.4f} over {result.n_scans} scans, {result.n_nodules} nodules, "
             f"{result.n_predictions} predictions"]
    lines += [f"  sensitivity at {r:>5} FP/scan: {s:.4f}" for r, s in result.sensitivity_at.items()]
    if args.baseline is not None:
        base_preds, base_warnings = read_prediction_table(args.baseline)
        base_preds, base_key_warnings = align_keys(base_preds, truth)
        warnings += base_warnings + [f"baseline: {w}" for w in base_key_warnings]
        base = froc(base_preds, truth.nodules, n_scans=n_scans)
        both = compare(result, base)
        summary.update(baseline=both["image_only"], cpm_gain=both["cpm_gain"],
                       sensitivity_at_1fp_gain=both["sensitivity_at_1fp_gain"])
        lines.append(f"baseline CPM {base.cpm:.4f}; gain {both['cpm_gain']:+.4f}")
    summary["warnings"] = warnings
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    _emit(args, summary, lines)


def lidc_truth(args: argparse.Namespace) -> None:
    from .lidc_truth import lidc_truth as build, write_truth

    nodules, skipped = build(args.input, args.min_readers, args.anonymize)
    out = write_truth(nodules, args.out)
    readers = {str(k): sum(n.readers == k for n in nodules) for k in sorted({n.readers for n in nodules})}
    summary = {"out": str(out), "nodules": len(nodules), "studies_with_nodules": len({n.study for n in nodules}),
               "nodules_by_readers": readers, "min_readers": args.min_readers, "skipped_files": skipped}
    lines = [f"wrote {len(nodules)} nodules ({len({n.study for n in nodules})} studies) to {out}"]
    lines += [f"  skipped {s['file']}: {s['why']}" for s in skipped]
    _emit(args, summary, lines)


def read_report(args: argparse.Namespace) -> None:
    from .report import read_report as read, read_report_file

    text = read_report_file(args.report)   # ReportFileError (a ValueError) names the file
    reading = read(text, embed=False)
    summary = {"mentions": [m.to_dict() for m in reading.mentions], "sentences": len(reading.sentences)}
    lines = [f"{len(reading.sentences)} sentences, {len(reading.mentions)} nodule mentions"]
    lines += [f"  {'NEGATED ' if m.negated else ''}{m.size_mm or '?'} mm, {m.lobe or 'lobe ?'}: {m.sentence}"
              for m in reading.mentions]
    _emit(args, summary, lines)


def synth(args: argparse.Namespace) -> None:
    import dataclasses

    from .synth import SynthConfig, write_dataset

    cfg = SynthConfig()
    if args.size is not None:
        # same body in mm: the spacing scales with the requested shape
        shape = tuple(args.size)
        spacing = tuple(s * n / m for s, n, m in zip(cfg.spacing_zyx, cfg.shape_zyx, shape))
        cfg = dataclasses.replace(cfg, shape_zyx=shape, spacing_zyx=spacing)
    truth = write_dataset(args.out, args.n, seed=args.seed, cfg=cfg)
    summary = {"out": str(args.out), "studies": args.n, "truth": str(truth)}
    _emit(args, summary, [f"wrote {args.n} studies to {args.out}; truth in {truth}"])


def train_detector(args: argparse.Namespace) -> None:
    from .detection import DetectorTrainConfig, train_detector as train

    cfg = DetectorTrainConfig(train_studies=args.studies, val_studies=args.val_studies, seed=args.seed)
    if args.epochs is not None:
        cfg.epochs = args.epochs
    cfg.train_lung_closing_mm = args.train_lung_closing_mm
    if args.network_feature is not None:
        from .patch_network import with_patch_network

        cfg.model = with_patch_network(cfg.model, args.network_feature)
        cfg.patch_network = str(args.network_feature)
    summary = train(cfg, args.out)
    _emit(args, summary, [f"{k:<28}{v}" for k, v in summary.items()])


def train_patch_network(args: argparse.Namespace) -> None:
    from .detection import DetectorTrainConfig
    from .patch_network import PatchNetworkConfig, patch_vision, train_patch_network as train

    model = dataclasses.replace(DetectorTrainConfig().model, network_feature=True, vision=patch_vision())
    pcfg = PatchNetworkConfig(studies=args.studies, seed=args.seed, folds=args.folds, epochs=args.epochs,
                              device=args.device, workers=args.workers)
    summary = train(model, pcfg, args.out)
    _emit(args, summary, [f"{k:<28}{v}" for k, v in summary.items()])


def train_nodule_map(args: argparse.Namespace) -> None:
    from .nodule_map import NoduleMapConfig, NoduleMapTrainConfig, train_nodule_map as train

    network = NoduleMapConfig(channels=args.channels, strides=(2,) * (len(args.channels) - 1))
    summary = train(NoduleMapTrainConfig(studies=args.studies, seed=args.seed, steps=args.steps,
                                         workers=args.workers, device=args.device, network=network), args.out)
    summary.pop("history")
    _emit(args, summary, [f"{k:<28}{v}" for k, v in summary.items()])


def attach_nodule_map(args: argparse.Namespace) -> None:
    from .nodule_map import MapStageConfig, attach_nodule_map as attach

    summary = attach(MapStageConfig(nodule_map=str(args.map), detector=None if args.detector is None else str(args.detector),
                                    studies=args.studies, seed=args.seed, val_studies=args.val_studies,
                                    map_candidates=args.map_candidates, map_min_p=args.map_min_p,
                                    workers=args.workers), args.out)
    summary.pop("map")
    _emit(args, summary, [f"{k:<28}{v}" for k, v in summary.items()])


def eval_detector(args: argparse.Namespace) -> None:
    from .detection import evaluate_on_synth, load_detector

    detector = load_detector(args.detector)
    summary = evaluate_on_synth(detector, n=args.studies, seed=args.seed)
    _emit(args, summary, [f"{k:<28}{v}" for k, v in summary.items()])


def diagnose(args: argparse.Namespace) -> int:
    from .batch import BatchConfig, merge, run_batch

    if args.merge:
        summary = merge(args.out)
    else:
        cfg = BatchConfig(input=args.input, out=args.out, reports=args.reports, workers=args.workers,
                          detector=args.detector, threshold=args.threshold, anonymize=args.anonymize,
                          sr=args.sr, overlays=not args.no_overlays)
        summary = run_batch(cfg)
    # exit 1 when nothing could be diagnosed (a single bad file, a folder of bad studies); partial success is 0
    code = 1 if summary.get("failed") and not summary.get("processed") and not summary.get("skipped_done") else 0
    if summary.get("rank", 0) != 0:   # under torchrun rank 0 prints the run's summary, totals of every rank
        import sys

        print(f"rank {summary['rank']}: processed {summary['processed']}, failed {summary['failed']}",
              file=sys.stderr)
        return code
    _emit(args, summary, [f"{k:<16}{v}" for k, v in summary.items()])
    return code


def bench_medical(args: argparse.Namespace) -> None:
    from .bench import MedicalBenchConfig, run

    given = {"shape": tuple(args.shape) if args.shape else None, "repeats": args.repeats,
             "batch_studies": args.batch_studies, "detector": args.detector,
             "batch_shape": tuple(args.batch_shape) if args.batch_shape else None,
             "batch_workers": args.batch_workers}
    result = run(MedicalBenchConfig(**{k: v for k, v in given.items() if v is not None}))
    _emit(args, result, [f"{k:<34}{v}" for k, v in result.items()])
