"""Detection scoring the LUNA16 way: FROC curve and CPM.

A prediction hits a true nodule when its centre lies within the nodule's radius (diameter / 2) of the
nodule's centre, in patient mm. Each true nodule counts once: of the predictions hitting it, the most
probable is its true positive and the others are ignored (neither hits nor false positives). A
prediction hitting no nodule is a false positive. Lowering the probability threshold traces the FROC
curve (sensitivity against false positives per scan); the CPM is the mean sensitivity at 1/8, 1/4,
1/2, 1, 2, 4 and 8 false positives per scan, each read as the best sensitivity reached without
exceeding that rate (a step reading, a little stricter than interpolating the curve).

    truth = read_truth_table("truth.csv")    # .nodules, .scans (those without nodules too), .warnings
    preds, warnings = read_prediction_table("findings.csv")
    preds, key_warnings = align_keys(preds, truth)   # LUNA16 series UIDs; keys that do not overlap
    result = froc(preds, truth.nodules, n_scans=len(truth.scans | {p.study for p in preds}))
    # result: FrocResult (.cpm, .sensitivity_at, .curve); show truth.warnings + warnings + key_warnings
    # (duplicate rows dropped, keys that do not overlap). read_truth / read_predictions drop the warnings.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from data_connectors.text_files import (decoded_file, named_column, repeated_header_warning, table_body,
                                        table_rows)

from .tables import compact_key, drop_duplicate_rows

FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)  # LUNA16's operating points, FPs per scan


@dataclass(frozen=True)
class Nodule:
    study: str
    xyz_mm: tuple[float, float, float]
    diameter_mm: float


@dataclass(frozen=True)
class Prediction:
    study: str
    xyz_mm: tuple[float, float, float]
    probability: float
    series_uid: str = ""                    # findings.csv's, to match a truth keyed by series UID


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


# Accepted column names (matched without case, spaces, hyphens and underscores), by preference: the suite's own
# (truth.csv, findings.csv, lidc-truth) and LUNA16's annotations.csv / candidates.csv.
COLUMN_ALIASES = {"study": ("study", "study_id", "scan", "case"),
                  "series_uid": ("series_uid", "seriesuid", "series_instance_uid"),
                  "x_mm": ("x_mm", "coordx", "x"), "y_mm": ("y_mm", "coordy", "y"), "z_mm": ("z_mm", "coordz", "z"),
                  "diameter_mm": ("diameter_mm", "diameter", "diametermm"),
                  "probability": ("probability", "prob", "score", "p")}
_UID_KEY = re.compile(r"^\d+(?:\.\d+)+$")


def _input_error(path: Path, problem: str, line: int | None = None) -> EvaluationInputError:
    return EvaluationInputError(f"{path}{'' if line is None else f', line {line}'}: {problem}")


def _read_rows(path: str | Path, required: tuple[str, ...]) -> tuple[list[tuple[int, dict[str, str]]], list[str]]:
    """([(line, {canonical column: stripped cell})], warnings) of a CSV/TSV read as the suite reads tables
    (data_connectors.text_files: UTF-8 / UTF-16 / Windows-1252, delimiter sniffed, header cells stripped).
    `required` names canonical columns; 'study' is satisfied by a series UID column (LUNA16's seriesuid)."""
    path = Path(path)
    text, _ = decoded_file(path, _input_error)
    warnings: list[str] = []
    _, rows = table_rows(path, text, _input_error, warnings)
    header = [c.strip() for c in rows[0][1]]
    body, repeated = table_body(rows[0][1], rows[1:])
    if repeated:
        warnings.append(repeated_header_warning(path, header, repeated))
    keys = [compact_key(h) for h in header]
    columns = {name: i for name, aliases in COLUMN_ALIASES.items()
               if (i := named_column(keys, tuple(compact_key(a) for a in aliases))) is not None}
    if "study" not in columns and "series_uid" in columns:
        columns["study"] = columns["series_uid"]
    missing = [c for c in required if c not in columns]
    if missing:
        raise EvaluationInputError(f"{path}: missing columns {missing}; found {header} (LUNA16's seriesuid, "
                                   "coordX, coordY, coordZ, diameter_mm are accepted too)")
    out = [(line, {name: (cells[i].strip() if i < len(cells) else "") for name, i in columns.items()})
           for line, cells in body if any(c.strip() for c in cells)]
    return out, warnings


def _number(path, line: int, row: dict, column: str) -> float:
    try:
        value = float(row[column])
    except (TypeError, ValueError):
        raise EvaluationInputError(f"{path}, line {line}: column {column!r} is not a number: {row[column]!r}") from None
    if not np.isfinite(value):
        raise EvaluationInputError(f"{path}, line {line}: column {column!r} is not finite")
    return value


@dataclass
class TruthTable:
    nodules: list[Nodule]
    scans: set[str]               # every scan the truth names, those without nodules (blank coordinates) too
    warnings: list[str]


def read_truth_table(path: str | Path) -> TruthTable:
    """True nodules from a CSV with study,x_mm,y_mm,z_mm,diameter_mm (the synth truth.csv, lidc-truth) or
    LUNA16's seriesuid,coordX,coordY,coordZ,diameter_mm. A row with blank coordinates and diameter declares a
    scan without nodules; duplicate rows count once (with a warning)."""
    rows, warnings = _read_rows(path, ("study", "x_mm", "y_mm", "z_mm", "diameter_mm"))
    nodules, scans = [], set()
    for n, row in rows:
        scans.add(row["study"])
        if not any(row[c] for c in ("x_mm", "y_mm", "z_mm", "diameter_mm")):
            continue
        nodules.append((n, Nodule(row["study"], tuple(_number(path, n, row, c) for c in ("x_mm", "y_mm", "z_mm")),
                                  _number(path, n, row, "diameter_mm"))))
    nodules, dropped = drop_duplicate_rows(path, nodules, what="truth ")
    return TruthTable([nodule for _, nodule in nodules], scans, warnings + dropped)


def read_truth(path: str | Path) -> list[Nodule]:
    """The true nodules of read_truth_table."""
    return read_truth_table(path).nodules


def read_prediction_table(path: str | Path) -> tuple[list[Prediction], list[str]]:
    """(predictions, warnings) from a CSV with study,x_mm,y_mm,z_mm,probability (the batch findings.csv; its
    series_uid column is kept) or LUNA16's seriesuid,coordX,coordY,coordZ,probability. Duplicate rows count
    once (with a warning): a copy would otherwise be a false positive."""
    rows, warnings = _read_rows(path, ("study", "x_mm", "y_mm", "z_mm", "probability"))
    preds = [(n, Prediction(row["study"], tuple(_number(path, n, row, c) for c in ("x_mm", "y_mm", "z_mm")),
                            _number(path, n, row, "probability"), row.get("series_uid", ""))) for n, row in rows]
    preds, dropped = drop_duplicate_rows(path, preds, what="prediction ")
    return [p for _, p in preds], warnings + dropped


def read_predictions(path: str | Path) -> list[Prediction]:
    """The predictions of read_prediction_table."""
    return read_prediction_table(path)[0]


def align_keys(preds: list[Prediction], truth: TruthTable) -> tuple[list[Prediction], list[str]]:
    """Predictions keyed as the truth is: by series UID when the truth's keys are series UIDs (LUNA16) and
    the predictions carry one (findings.csv). Warnings when prediction and truth scans overlap partly or not
    at all (a key mismatch scores every nodule missed)."""
    warnings = []
    if truth.scans and all(_UID_KEY.match(k) for k in truth.scans) and preds and all(p.series_uid for p in preds) \
            and not {p.study for p in preds} & truth.scans:
        preds = [replace(p, study=p.series_uid) for p in preds]
        warnings.append("predictions matched to the truth by their series_uid (the truth is keyed by series UID)")
    pred_scans = {p.study for p in preds}

    def listed(keys: set[str]) -> str:
        return ", ".join(sorted(keys)[:5]) + (" ..." if len(keys) > 5 else "")

    if preds and not pred_scans & truth.scans:
        warnings.append(f"no prediction's study is in the truth ({listed(pred_scans)} vs {listed(truth.scans)}): "
                        "different keys (folder names, UIDs, --anonymize hashes)? every nodule counts as missed")
    elif preds:
        if pred_scans - truth.scans:
            warnings.append(f"{len(pred_scans - truth.scans)} predicted studies are not in the truth (read as scans "
                            f"without nodules): {listed(pred_scans - truth.scans)}")
        if truth.scans - pred_scans:
            warnings.append(f"{len(truth.scans - pred_scans)} truth studies have no prediction: "
                            f"{listed(truth.scans - pred_scans)}")
    return preds, warnings


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
