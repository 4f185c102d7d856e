"""CT nodule diagnosis: DICOM folders (and radiology reports) in, lung nodules found and rated out.

Modules: `report` (reads free-text reports), `detection` (lung candidates + the 3D Swin MoE rater fused
with the report), `pipeline` (one study -> findings), `batch` (folders of studies, resumable, sharded),
`evaluation` (FROC / CPM), `overlays` (PNG key slices), `structured_report` (DICOM SR), `bench`,
`page` (Gradio) and `api` (FastAPI). MED-IO's `synth` makes synthetic studies; MED-MALIG's
`malignancy` rates nodules.

Light to import: this module only registers the `medical` commands and `bench medical`; their
handlers (`cli`) import torch, MONAI and pydicom when they run.
"""
from __future__ import annotations

import argparse

from pathlib import Path
from typing import TYPE_CHECKING

from apps.cli import positive_int
from core.cli_commands import fraction

if TYPE_CHECKING:
    from apps.cli import CommandTable


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _channels(text: str) -> tuple[int, ...]:
    """argparse type: comma-separated U-Net widths, at least two, each positive."""
    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 8,16,32,64, got {text!r}")
    if len(widths) < 2 or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"expected at least two positive widths, got {text!r}")
    return widths


def register(cli: CommandTable) -> None:
    """Add the `medical` commands (see apps.cli) and `bench medical`."""
    from . import cli as handlers

    med = cli.group("medical", "CT lung-nodule diagnosis (research software, not a medical device)")

    p = med.command("diagnose", "find and rate lung nodules in a folder tree of DICOM studies (resumable batch)",
                    handlers.diagnose)
    p.add_argument("input", type=Path, help="folder tree of DICOM files (each series is one study), or one "
                                            "NIfTI/MetaImage file")
    p.add_argument("--out", required=True, type=Path, help="output folder (findings.csv, errors.csv, studies/)")
    p.add_argument("--reports", type=Path, default=None,
                   help="folder of reports (.txt/.md/.pdf/.docx/.hl7) named <folder key a__b>, <StudyInstanceUID>, "
                        "<SeriesInstanceUID> or <AccessionNumber>, or a folder name / PatientID of one study only")
    p.add_argument("--workers", type=positive_int, default=1, help="worker processes (default: 1)")
    p.add_argument("--detector", type=Path, default=None,
                   help="detector checkpoint folder (default: the shipped assets/medical_imaging/detector/model)")
    p.add_argument("--threshold", type=float, default=None,
                   help="keep findings with probability >= this (default: the detector's operating point)")
    p.add_argument("--anonymize", action="store_true", help="replace study keys with hashes in the outputs")
    p.add_argument("--sr", action="store_true", help="also write a DICOM Structured Report per study")
    p.add_argument("--no-overlays", action="store_true", help="skip the PNG key-slice overlays")
    p.add_argument("--merge", action="store_true",
                   help="only rebuild findings.csv and errors.csv from the finished studies in --out")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")

    p = med.command("eval-detection", "FROC sensitivities and CPM (LUNA16 rules) of findings against a truth CSV",
                    handlers.eval_detection)
    p.add_argument("--pred", required=True, type=Path,
                   help="findings.csv (study,x_mm,y_mm,z_mm,probability; LUNA16's seriesuid,coordX,... too)")
    p.add_argument("--truth", required=True, type=Path,
                   help="truth.csv (study,x_mm,y_mm,z_mm,diameter_mm, or LUNA16's seriesuid,coordX,coordY,coordZ,"
                        "diameter_mm; blank coordinates: a scan without nodules)")
    p.add_argument("--baseline", type=Path, default=None,
                   help="a second findings.csv on the same studies (e.g. image only) to compare against")
    p.add_argument("--scans", type=positive_int, default=None,
                   help="number of scans (default: studies named in the truth or the predictions)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")

    p = med.command("lidc-truth", "a truth CSV for eval-detection from the LIDC-IDRI readers' XML beside the series",
                    handlers.lidc_truth)
    p.add_argument("input", type=Path, help="the folder tree given to `medical diagnose` (DICOM series with their "
                                            "LIDC XML files)")
    p.add_argument("--out", required=True, type=Path, help="truth CSV to write")
    p.add_argument("--min-readers", type=positive_int, default=1,
                   help="keep nodules outlined by at least this many readers (LUNA16: 3 of 4; default 1)")
    p.add_argument("--anonymize", action="store_true", help="hashed study keys, as `diagnose --anonymize` writes")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")

    p = med.command("train-detector", "train the nodule detector on synthetic studies (made in memory)",
                    handlers.train_detector)
    p.add_argument("--out", required=True, type=Path, help="checkpoint folder to write")
    p.add_argument("--studies", type=positive_int, default=40, help="synthetic training studies")
    p.add_argument("--val-studies", type=positive_int, default=12, help="held-out synthetic studies (other seed)")
    p.add_argument("--epochs", type=_non_negative_int, default=None,
                   help="network epochs; 0 fits and freezes the priors only (the shipped detector)")
    p.add_argument("--network-feature", type=Path, default=None, metavar="DIR",
                   help="a train-patch-network folder: its Swin's patch logit becomes an input of the image trees")
    p.add_argument("--train-lung-closing-mm", type=float, default=None, metavar="MM",
                   help="lung closing of the training studies' candidates (default: the model's); the network's "
                        "out-of-fold logits need the candidates it was trained on (10 for the shipped patch network)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")

    p = med.command("train-patch-network", "train the Swin patch rater whose logit the detector's trees read "
                    "(out-of-fold logits for the trees, then one network on all studies)", handlers.train_patch_network)
    p.add_argument("--out", required=True, type=Path, help="folder to write (network.safetensors, oof.npz, config.json)")
    p.add_argument("--studies", type=positive_int, default=200, help="synthetic training studies (seed --seed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--folds", type=_non_negative_int, default=4, help="out-of-fold networks (by study)")
    p.add_argument("--epochs", type=positive_int, default=16)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda (hours on two CPU cores, minutes on a GPU)")
    p.add_argument("--workers", type=positive_int, default=1, help="processes making the studies' candidates")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")

    p = med.command("train-nodule-map", "train the dense nodule map (a 3D U-Net's nodule-centre heatmap over the "
                    "detector's 2 mm grid) on synthetic studies of its own seed", handlers.train_nodule_map)
    p.add_argument("--out", required=True, type=Path, help="folder to write (nodule_map.safetensors, config.json)")
    p.add_argument("--studies", type=positive_int, default=150, help="synthetic training studies (seed --seed)")
    p.add_argument("--seed", type=int, default=5, help="never the detector's training (0) or validation (1) seed")
    p.add_argument("--steps", type=positive_int, default=4000)
    p.add_argument("--channels", type=_channels, default=(8, 16, 32, 64), metavar="C1,C2,...",
                   help="U-Net widths per level (default 8,16,32,64: 0.15 M parameters)")
    p.add_argument("--device", default="cpu", help="torch device of the training steps, e.g. cuda")
    p.add_argument("--workers", type=positive_int, default=1, help="processes making the studies' grids")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")

    p = med.command("attach-nodule-map", "give a detector a trained nodule map: its peaks join the candidates and "
                    "a map stage after the image trees reads it (fitted on studies of another seed)",
                    handlers.attach_nodule_map)
    p.add_argument("--map", required=True, type=Path, help="a train-nodule-map folder")
    p.add_argument("--out", required=True, type=Path, help="checkpoint folder to write")
    p.add_argument("--detector", type=Path, default=None, help="the detector to extend (default: the shipped one)")
    p.add_argument("--studies", type=positive_int, default=120, help="studies the map stage is fitted on (seed --seed)")
    p.add_argument("--seed", type=int, default=3, help="a seed none of the parts was trained or chosen on")
    p.add_argument("--val-studies", type=positive_int, default=60,
                   help="studies of seed 1 that set the operating point (1 FP per scan)")
    p.add_argument("--map-candidates", type=_non_negative_int, default=20, help="map peaks per scan that may join")
    p.add_argument("--map-min-p", type=fraction, default=0.3, help="the map probability such a peak needs")
    p.add_argument("--workers", type=positive_int, default=1, help="processes making the studies' candidates")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")

    p = med.command("eval-detector", "FROC of the detector on held-out synthetic studies, fused vs image only",
                    handlers.eval_detector)
    p.add_argument("--detector", type=Path, default=None, help="checkpoint folder (default: the shipped one)")
    p.add_argument("--studies", type=positive_int, default=12)
    p.add_argument("--seed", type=int, default=1000, help="first synthetic study index (held out from training)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")

    p = med.command("read-report", "structured nodule mentions (size, lobe, negation) from a free-text report",
                    handlers.read_report)
    p.add_argument("report", type=Path, help="a report text file")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")

    p = med.command("synth", "write synthetic CT studies as DICOM, their reports and truth.csv", handlers.synth)
    p.add_argument("--n", required=True, type=positive_int, help="number of studies")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=positive_int, nargs=3, default=None, metavar=("SLICES", "ROWS", "COLUMNS"),
                   help="volume shape (default: the generator's)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")

    from . import malignancy_cli  # MED-MALIG's train/eval/cv-malignancy commands

    malignancy_cli.register(cli)

    p = cli.group("bench", "benchmarks").command(
        "medical", "DICOM load (ours vs MONAI LoadImage), pipeline seconds per study, studies per hour",
        handlers.bench_medical)
    p.add_argument("--shape", type=positive_int, nargs=3, default=None, metavar=("SLICES", "ROWS", "COLUMNS"),
                   help="study size for the load and pipeline timings (default 150 512 512)")
    p.add_argument("--repeats", type=positive_int, default=None, help="interleaved load repeats (default 3)")
    p.add_argument("--batch-studies", type=positive_int, default=None, help="small studies in the batch run")
    p.add_argument("--batch-shape", type=positive_int, nargs=3, default=None, metavar=("SLICES", "ROWS", "COLUMNS"),
                   help="size of the batch run's studies (default: the synthetic generator's, 64 128 128)")
    p.add_argument("--batch-workers", type=positive_int, default=None, help="worker processes (default 2)")
    p.add_argument("--detector", type=Path, default=None, help="detector checkpoint (default: the shipped one)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
