"""A truth CSV for `eval-detection` from the LIDC-IDRI readers' XML beside the CT series.

    rows, skipped = lidc_truth(Path("LIDC"), min_readers=3)     # the LUNA16 reference: >= 3 of 4 readers
    write_truth(rows, Path("truth.csv"))

Each reader outlines the nodules >= 3 mm it sees (data_connectors.lidc). The outlines of one nodule by
different readers are joined into one true nodule when their centres lie within the larger radius of the
two (readers never join their own marks, so two nodules one reader tells apart stay two); a reader's second
mark of a nodule already joined (its centre inside that nodule's radius) is folded into it. A true nodule's
centre and diameter are the readers' means, its malignancy the median of their ratings. Nodules < 3 mm and
non-nodules are left out, as in LUNA16, and so is a nodule with an outline on a slice the series lacks
(listed as skipped). All XML files of one series are read together. The study key of a series is the one
`moe-suite medical diagnose` gives it for the same input folder, so the two files match.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TRUTH_COLUMNS = ("study", "series_uid", "x_mm", "y_mm", "z_mm", "diameter_mm", "readers", "malignancy")


@dataclass
class TruthNodule:
    study: str
    series_uid: str
    xyz_mm: tuple[float, float, float]
    diameter_mm: float
    readers: int                     # readers who outlined it
    malignancy: float | None         # median of their 1-5 ratings (None: none rated)

    def row(self) -> dict:
        return {"study": self.study, "series_uid": self.series_uid,
                **{k: round(v, 2) for k, v in zip(("x_mm", "y_mm", "z_mm"), self.xyz_mm)},
                "diameter_mm": round(self.diameter_mm, 2), "readers": self.readers,
                "malignancy": "" if self.malignancy is None else self.malignancy}


def consensus(marks: list, study: str, series_uid: str) -> list[TruthNodule]:
    """The readers' outlined nodules (located LidcMarks) joined into true nodules, largest first."""
    outlined = [m for m in marks if m.kind == "nodule" and m.centre_mm is not None]
    parent = list(range(len(outlined)))
    readers = {i: {m.reader} for i, m in enumerate(outlined)}   # per group root: who outlined it

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    # closest pairs first, so a reader's two neighbouring marks each join their own nodule
    pairs = sorted((float(np.linalg.norm(np.subtract(a.centre_mm, b.centre_mm))), i, j)
                   for i, a in enumerate(outlined) for j, b in enumerate(outlined[i + 1:], i + 1))
    for d, i, j in pairs:
        ri, rj = root(i), root(j)
        if ri != rj and not readers[ri] & readers[rj] and \
                d <= max(outlined[i].diameter_mm, outlined[j].diameter_mm) / 2:
            parent[rj] = ri
            readers[ri] |= readers.pop(rj)
    groups: dict[int, list] = {}
    for k, mark in enumerate(outlined):
        groups.setdefault(root(k), []).append(mark)
    # a group whose centre lies inside a nodule of more readers is folded into it: a reader's repeated mark
    merged: list[list] = []
    for group in sorted(groups.values(), key=lambda g: (-len({m.reader for m in g}), -max(m.diameter_mm for m in g))):
        centre = _true_nodule(group, study, series_uid).xyz_mm
        host = next((h for h in merged if _inside(centre, _true_nodule(h, study, series_uid))), None)
        if host is None:
            merged.append(group)
        else:
            host.extend(group)
    return sorted((_true_nodule(g, study, series_uid) for g in merged), key=lambda n: -n.diameter_mm)


def _inside(xyz_mm: tuple[float, float, float], nodule: TruthNodule) -> bool:
    return float(np.linalg.norm(np.subtract(xyz_mm, nodule.xyz_mm))) <= nodule.diameter_mm / 2


def _true_nodule(group: list, study: str, series_uid: str) -> TruthNodule:
    """One true nodule from the marks joined for it: each reader's marks averaged first, then the readers."""
    by_reader: dict[str, list] = {}
    for mark in group:
        by_reader.setdefault(mark.reader, []).append(mark)
    centres = [np.mean([m.centre_mm for m in marks], axis=0) for marks in by_reader.values()]
    diameters = [np.mean([m.diameter_mm for m in marks]) for marks in by_reader.values()]
    ratings = [m.characteristics["malignancy"] for m in group if "malignancy" in m.characteristics]
    return TruthNodule(study, series_uid, tuple(float(v) for v in np.mean(centres, axis=0)), float(np.mean(diameters)),
                       len(by_reader), float(np.median(ratings)) if ratings else None)


def lidc_truth(root: Path, min_readers: int = 1, anonymize: bool = False) -> tuple[list[TruthNodule], list[dict]]:
    """(true nodules outlined by at least `min_readers` readers, skipped files with why) for the LIDC XML files
    under `root`, keyed as `moe-suite medical diagnose root` keys their series."""
    from data_connectors.lidc import LidcXmlError, locate_marks, read_lidc_xml

    from .batch import BatchConfig, _hash, discover

    if min_readers < 1:
        raise ValueError(f"min_readers must be >= 1, got {min_readers}")
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: no such folder")
    entries, _ = discover(BatchConfig(input=root, out=root, anonymize=anonymize, progress=False))   # out unused
    by_series = {e.series_uid: e for e in entries}
    xml_files = sorted(p for p in root.rglob("*") if p.suffix.lower() == ".xml" and p.is_file())
    if not xml_files:
        raise ValueError(f"{root}: no .xml annotation files under it")
    marks_by_series: dict[str, list] = {}
    skipped = []
    for path in xml_files:
        where = str(path.relative_to(root))
        try:
            read = read_lidc_xml(path)
            entry = by_series.get(read.series_uid)
            if entry is None:
                raise LidcXmlError(f"{path}: its series {read.series_uid} is not among the CT series under {root}")
            outlined = dataclasses.replace(read, marks=[m for m in read.marks if m.kind == "nodule"])
            marks, left_out = locate_marks(outlined, entry.files)
        except LidcXmlError as exc:
            skipped.append({"file": where, "why": str(exc)})
            continue
        marks_by_series.setdefault(read.series_uid, []).extend(marks)
        skipped += [{"file": where, "why": why} for why in left_out]
    nodules = []
    for series_uid, marks in marks_by_series.items():
        shown_uid = _hash(series_uid) if anonymize else series_uid
        nodules += [n for n in consensus(marks, by_series[series_uid].key, shown_uid) if n.readers >= min_readers]
    return nodules, skipped


def write_truth(nodules: list[TruthNodule], path: Path) -> Path:
    """The truth CSV (TRUTH_COLUMNS), written atomically."""
    from .tables import write_csv_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(path, TRUTH_COLUMNS, [n.row() for n in nodules])
    return path
