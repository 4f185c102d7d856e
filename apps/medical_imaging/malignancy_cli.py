"""`moe-suite medical train-malignancy | eval-malignancy | cv-malignancy` (torch and MONAI load in the handlers)."""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from apps.cli import given_flags, positive_int

if TYPE_CHECKING:
    from apps.cli import CommandTable

# MalignancyConfig fields settable from the command line (absent flags keep the config's defaults).
CONFIG_FLAGS = ("epochs", "batch_size", "lr", "weight_decay", "embed_dim", "crop_mm", "seed", "diameter_input",
                "measures_input")


def _config(args: argparse.Namespace):
    from .malignancy import MalignancyConfig

    return MalignancyConfig(**given_flags(args, CONFIG_FLAGS))


def _setup(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)


def _log(args: argparse.Namespace):
    """Progress lines go to stderr under --json (stdout ends with the one JSON object)."""
    return lambda line: print(line, file=sys.stderr if args.json else sys.stdout, flush=True)


def _machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    return f"{cpu}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)"


def train_malignancy(args: argparse.Namespace) -> None:
    from .malignancy import binary_metrics, load_crops, train

    _setup(args)
    cfg = _config(args)
    crops = load_crops(args.crops, cfg)
    model, result = train(crops.cubes, crops.labels, cfg, crops.diameters_mm, crops.measures, log=_log(args))
    probs = model.predict_cubes(crops.cubes, crops.diameters_mm, crops.measures)
    on_training = binary_metrics(probs, crops.labels, float(model.threshold))
    summary = {
        "out": str(args.out), "n": int(len(crops.labels)), "n_malignant": int(crops.labels.sum()),
        "n_patients": len(set(crops.patient_ids)), "epochs": cfg.epochs, "steps": result.steps,
        "seconds": round(result.seconds, 1), "final_loss": result.history[-1]["loss"] if result.history else None,
        "training_set_auc": on_training["auc"], "training_set_accuracy": on_training["accuracy"],
    }
    model.save(args.out, {"crops": str(args.crops), "trained": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                          "machine": _machine(), **summary})
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"trained on {summary['n']} crops ({summary['n_patients']} patients) for {cfg.epochs} epochs in "
              f"{summary['seconds']} s; training-set AUC {summary['training_set_auc']} (not a held-out figure); "
              f"saved to {args.out}")


def eval_malignancy(args: argparse.Namespace) -> None:
    from .malignancy import evaluate, load_default_malignancy_model, load_model

    _setup(args)
    model = load_model(args.model) if args.model else load_default_malignancy_model()
    start = time.perf_counter()
    metrics = evaluate(model, args.crops, limit=args.limit)
    metrics["seconds"] = round(time.perf_counter() - start, 2)
    metrics["model"] = str(args.model or "default")
    if args.json:
        print(json.dumps(metrics))
    else:
        print("\n".join(f"{name:<14}{value}" for name, value in metrics.items()))


def cv_malignancy(args: argparse.Namespace) -> None:
    from .malignancy import cross_validate

    _setup(args)
    result = cross_validate(args.crops, args.folds, _config(args), log=_log(args), predictions=args.predictions)
    result["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    result["machine"] = _machine()
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['folds']}-fold patient-level CV on {result['n']} crops, {result['n_patients']} patients: "
              f"AUC {result['auc_mean']} +- {result['auc_std']} (per fold {result['auc_per_fold']}), pooled "
              f"accuracy {result['accuracy']}, sensitivity {result['sensitivity']}, specificity "
              f"{result['specificity']}; diameter alone AUC {result['diameter_only_auc_mean']} per fold, "
              f"{result['diameter_only_auc']} pooled; {result['seconds']} s")
        for warning in result["warnings"]:
            print(f"warning: {warning}")


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    s = argparse.SUPPRESS
    p.add_argument("--epochs", type=positive_int, default=s, help="training epochs (default: the config's)")
    p.add_argument("--batch-size", type=positive_int, default=s)
    p.add_argument("--lr", type=float, default=s)
    p.add_argument("--weight-decay", type=float, default=s)
    p.add_argument("--embed-dim", type=positive_int, default=s, help="vision stream stage-0 width")
    p.add_argument("--crop-mm", type=positive_int, default=s, help="input cube side in mm (multiple of 32)")
    p.add_argument("--seed", type=int, default=s)
    p.add_argument("--diameter-input", action=argparse.BooleanOptionalAction, default=s,
                   help="feed the nodule diameter (nodules.csv's, else estimated) to the head (default: on)")
    p.add_argument("--measures-input", action=argparse.BooleanOptionalAction, default=s,
                   help="feed the nodule's shape and density measures to the head (default: on)")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--crops", required=True, help="folder laid out like lidc-nodule-crops (nodules.csv, image/)")
    p.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")


def register(cli: CommandTable) -> None:
    """Add the malignancy commands to the `medical` group."""
    g = cli.group("medical", "CT nodule diagnosis")
    p = g.command("train-malignancy", "train the 3D malignancy classifier on a crops folder", train_malignancy)
    _add_common(p)
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    _add_config_flags(p)
    p = g.command("eval-malignancy", "AUC, accuracy, sensitivity, specificity of a malignancy model on a crops "
                  "folder", eval_malignancy)
    _add_common(p)
    p.add_argument("--model", help="checkpoint folder (default: the shipped model)")
    p.add_argument("--limit", type=positive_int, help="evaluate only the first N crops")
    p = g.command("cv-malignancy", "patient-level cross-validation of the malignancy classifier", cv_malignancy)
    _add_common(p)
    p.add_argument("--folds", type=positive_int, default=5)
    p.add_argument("--predictions", metavar="CSV", help="also write each crop's out-of-fold P(malignant) "
                   "(image, patient_id, fold, label, diameter_mm, probability) to this file")
    _add_config_flags(p)
