"""Detection scoring the LUNA16 way: FROC curve and CPM.

A prediction hits a true nodule when its centre lies within the nodule's radius (diameter / 2) of the
nodule's centre, in patient mm. Each true nodule counts once: of the predictions hitting it, the most
probable is its true positive and the others are ignored (neither hits nor false positives). A
prediction hitting no nodule is a false positive. Lowering the probability threshold traces the FROC
curve (sensitivity against false positives per scan); the CPM is the mean sensitivity at 1/8, 1/4,
1/2, 1, 2, 4 and 8 false positives per scan, each read as the best sensitivity reached without
exceeding that rate (a step reading, a little stricter than interpolating the curve).

    truth = read_truth("truth.csv"); preds = read_predictions("findings.csv")
    result = froc(preds, truth)              # FrocResult: .cpm, .sensitivity_at, .curve
"""
from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)  # LUNA16's operating points, FPs per scan


@dataclass
class Nodule:
    study: str
    xyz_mm: tuple[float, float, float]
    diameter_mm: float


@dataclass
class Prediction:
    study: str
    xyz_mm: tuple[float, float, float]
    probability: float


@dataclass
class FrocResult:
    cpm: float                              # mean sensitivity over FP_RATES
    sensitivity_at: dict[float, float]      # FP rate -> sensitivity
    n_scans: int
    n_nodules: int
    n_predictions: int
    curve_fp_per_scan: list[float] = field(default_factory=list)   # one point per distinct threshold
    curve_sensitivity: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"cpm": round(self.cpm, 4),
                "sensitivity_at_fp_per_scan": {str(r): round(s, 4) for r, s in self.sensitivity_at.items()},
                "n_scans": self.n_scans, "n_nodules": self.n_nodules, "n_predictions": self.n_predictions}


class EvaluationInputError(ValueError):
    """A truth or prediction file that cannot be read; the message names the file, line and column."""


def _read_rows(path: str | Path, required: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise EvaluationInputError(f"{path}: cannot read ({err})") from None
    reader = csv.DictReader(text.splitlines())
    missing = [c for c in required if c not in (reader.fieldnames or [])]
    if missing:
        raise EvaluationInputError(f"{path}: missing columns {missing}; found {reader.fieldnames}")
    return [(reader.line_num, row) for row in reader if any((v or "").strip() for v in row.values())]


def _number(path, line: int, row: dict, column: str) -> float:
    try:
        value = float(row[column])
    except (TypeError, ValueError):
        raise EvaluationInputError(f"{path}, line {line}: column {column!r} is not a number: {row[column]!r}") from None
    if not np.isfinite(value):
        raise EvaluationInputError(f"{path}, line {line}: column {column!r} is not finite")
    return value


def read_truth(path: str | Path) -> list[Nodule]:
    """True nodules from a CSV with study,x_mm,y_mm,z_mm,diameter_mm (e.g. the synth truth.csv)."""
    rows = _read_rows(path, ("study", "x_mm", "y_mm", "z_mm", "diameter_mm"))
    return [Nodule(row["study"], tuple(_number(path, n, row, c) for c in ("x_mm", "y_mm", "z_mm")),
                   _number(path, n, row, "diameter_mm")) for n, row in rows]


def read_predictions(path: str | Path) -> list[Prediction]:
    """Predictions from a CSV with study,x_mm,y_mm,z_mm,probability (e.g. the batch findings.csv)."""
    rows = _read_rows(path, ("study", "x_mm", "y_mm", "z_mm", "probability"))
    return [Prediction(row["study"], tuple(_number(path, n, row, c) for c in ("x_mm", "y_mm", "z_mm")),
                       _number(path, n, row, "probability")) for n, row in rows]


def match(preds: list[Prediction], truth: list[Nodule]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LUNA16 matching -> (probability_P, is_tp_P, ignored_P) over the predictions: is_tp marks the most
    probable hit of each nodule, ignored marks the other hits of a nodule (not counted as FPs)."""
    prob_P = np.array([p.probability for p in preds], dtype=np.float64)
    is_tp_P = np.zeros(len(preds), dtype=bool)
    hits_P = np.zeros(len(preds), dtype=bool)
    by_study: dict[str, list[int]] = {}
    for i, p in enumerate(preds):
        by_study.setdefault(p.study, []).append(i)
    for nodule in truth:
        idx = by_study.get(nodule.study, [])
        if not idx:
            continue
        xyz_P3 = np.array([preds[i].xyz_mm for i in idx])
        inside = np.linalg.norm(xyz_P3 - np.array(nodule.xyz_mm), axis=1) <= nodule.diameter_mm / 2
        hit_idx = [i for i, ok in zip(idx, inside) if ok]
        if hit_idx:
            hits_P[hit_idx] = True
            best = max(hit_idx, key=lambda i: prob_P[i])
            is_tp_P[best] = True
    # A prediction inside two nodules may be the best hit of one and a spare hit of the other:
    # it stays a true positive. Spare hits of a nodule are ignored, not false positives.
    ignored_P = hits_P & ~is_tp_P
    return prob_P, is_tp_P, ignored_P


def froc(preds: list[Prediction], truth: list[Nodule], n_scans: int | None = None,
         fp_rates: Iterable[float] = FP_RATES) -> FrocResult:
    """FROC and CPM. n_scans: scans the predictions were made on (default: the studies named in either
    list; pass it when some scans have neither nodules nor predictions)."""
    studies = {p.study for p in preds} | {n.study for n in truth}
    n_scans = n_scans if n_scans is not None else len(studies)
    if n_scans < 1:
        raise ValueError("FROC needs at least one scan")
    if not truth:
        raise ValueError("FROC needs at least one true nodule (sensitivity is undefined without)")
    prob_P, is_tp_P, ignored_P = match(preds, truth)
    keep = ~ignored_P
    prob_P, is_tp_P = prob_P[keep], is_tp_P[keep]
    order = np.argsort(-prob_P, kind="stable")
    prob_P, is_tp_P = prob_P[order], is_tp_P[order]
    tp_cum = np.cumsum(is_tp_P)
    fp_cum = np.cumsum(~is_tp_P)
    # Operating points sit at the last prediction of each run of equal probabilities (a threshold
    # cannot split ties).
    last = np.r_[prob_P[1:] != prob_P[:-1], True] if len(prob_P) else np.zeros(0, dtype=bool)
    fps = np.r_[0.0, fp_cum[last] / n_scans]
    sens = np.r_[0.0, tp_cum[last] / len(truth)]
    rates = tuple(float(r) for r in fp_rates)
    at = {r: float(sens[fps <= r].max()) for r in rates}
    return FrocResult(cpm=float(np.mean(list(at.values()))), sensitivity_at=at, n_scans=n_scans,
                      n_nodules=len(truth), n_predictions=len(preds),
                      curve_fp_per_scan=fps.tolist(), curve_sensitivity=sens.tolist())


def compare(fused: FrocResult, image_only: FrocResult) -> dict:
    """Side-by-side summary of the report-fused and image-only runs on the same studies."""
    return {"fused": fused.to_dict(), "image_only": image_only.to_dict(),
            "cpm_gain": round(fused.cpm - image_only.cpm, 4),
            "sensitivity_at_1fp_gain": round(fused.sensitivity_at.get(1.0, float("nan"))
                                             - image_only.sensitivity_at.get(1.0, float("nan")), 4)}
