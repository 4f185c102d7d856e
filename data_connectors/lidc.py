"""LIDC-IDRI readers' annotations (the XML files beside each CT series of the collection), in patient mm.

    reads = read_lidc_xml("069.xml")                       # LidcRead: the series UID and every reader's marks
    marks, left_out = locate_marks(reads, series_files)    # LidcMark.centre_mm / diameter_mm in LPS mm

Each reading session (one radiologist) marks:
- nodules >= 3 mm, outlined slice by slice (`roi`: the slice's z and SOP UID, inclusion or exclusion, the
  outline's pixel edge points), with characteristics rated 1-5 (malignancy, texture, ...);
- nodules < 3 mm, one point each, no characteristics;
- non-nodules (other findings), one point each.
Pixel points are (column, row) of the slice they were drawn on: `locate_marks` maps them to patient mm
with that slice's ImagePositionPatient, ImageOrientationPatient and PixelSpacing (found by its SOP
Instance UID; by z where the UID is absent). An outlined nodule's centre is the area-weighted centroid of
its outlines (exclusions subtracted), its diameter that of the sphere of the outlined volume (areas times
the slice spacing; outlines on every other slice would give half the volume, readers outline every slice).

Errors are LidcXmlError (a ValueError) naming the file. A chest-radiograph read (IdriReadMessage) is one.
"""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class LidcXmlError(ValueError):
    """An annotation file that cannot be read as an LIDC CT read; the message names the file."""


@dataclass
class LidcRoi:
    z_mm: float                      # imageZposition of the slice drawn on
    sop_uid: str                     # imageSOP_UID of that slice ("" when absent)
    inclusion: bool                  # False: an exclusion (a hole cut out of the nodule's outline)
    points_P2: np.ndarray            # [P, 2] pixel points (column, row): an outline, or one point


@dataclass
class LidcMark:
    reader: str                      # one reading session: "<file>#<n> <servicingRadiologistID>" (public files
                                     # often say "anonymous" for every reader, so the ID alone tells none apart)
    mark_id: str                     # noduleID / nonNoduleID as the reader named it
    kind: str                        # "nodule" (outlined, >= 3 mm), "small nodule" (< 3 mm), "non-nodule"
    rois: list[LidcRoi]
    characteristics: dict[str, int] = field(default_factory=dict)   # malignancy, texture, ... (nodules)
    centre_mm: tuple[float, float, float] | None = None   # LPS mm, set by locate_marks
    diameter_mm: float | None = None                      # outlined nodules only, set by locate_marks


@dataclass
class LidcRead:
    path: Path
    series_uid: str
    study_uid: str
    marks: list[LidcMark]


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(node: ET.Element, name: str) -> ET.Element | None:
    return next((c for c in node if _local(c.tag) == name), None)


def _children(node: ET.Element, name: str) -> list[ET.Element]:
    return [c for c in node if _local(c.tag) == name]


def _text(node: ET.Element | None, name: str, default: str = "") -> str:
    child = None if node is None else _child(node, name)
    return (child.text or "").strip() if child is not None and child.text else default


def _points(node: ET.Element, path: Path) -> np.ndarray:
    try:
        return np.array([[float(_text(p, "xCoord")), float(_text(p, "yCoord"))]
                         for p in node if _local(p.tag) in ("edgeMap", "locus")], dtype=np.float64).reshape(-1, 2)
    except ValueError as exc:
        raise LidcXmlError(f"{path}: a pixel point is not a number ({exc})") from None


def _roi(node: ET.Element, path: Path) -> LidcRoi:
    try:
        z = float(_text(node, "imageZposition"))
    except ValueError:
        raise LidcXmlError(f"{path}: an outline has no imageZposition") from None
    return LidcRoi(z, _text(node, "imageSOP_UID"), _text(node, "inclusion", "TRUE").upper() == "TRUE",
                   _points(node, path))


def read_lidc_xml(path: str | Path) -> LidcRead:
    """Every reader's marks in one LIDC XML file (pixel coordinates; see locate_marks)."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise LidcXmlError(f"{path}: not readable XML ({exc})") from None
    if _local(root.tag) != "LidcReadMessage":
        what = " (a chest radiograph read)" if _local(root.tag) == "IdriReadMessage" else ""
        raise LidcXmlError(f"{path}: a {_local(root.tag)}{what}, not an LIDC CT read (LidcReadMessage)")
    header = _child(root, "ResponseHeader")
    series_uid = _text(header, "SeriesInstanceUid") or _text(header, "SeriesInstanceUID")
    if not series_uid:
        raise LidcXmlError(f"{path}: no SeriesInstanceUid in its ResponseHeader")
    marks = []
    for n, session in enumerate(_children(root, "readingSession"), 1):
        reader = f"{path.name}#{n} {_text(session, 'servicingRadiologistID') or 'anonymous'}"
        for nodule in _children(session, "unblindedReadNodule"):
            rois = [_roi(r, path) for r in _children(nodule, "roi")]
            traits = _child(nodule, "characteristics")
            characteristics = {_local(c.tag): int(c.text) for c in (traits if traits is not None else [])
                               if (c.text or "").strip().isdigit()}
            outlined = any(len(r.points_P2) > 1 for r in rois)
            marks.append(LidcMark(reader, _text(nodule, "noduleID"), "nodule" if outlined else "small nodule",
                                  rois, characteristics))
        for other in _children(session, "nonNodule"):
            marks.append(LidcMark(reader, _text(other, "nonNoduleID"), "non-nodule", [_roi(other, path)]))
    return LidcRead(path, series_uid, _text(header, "StudyInstanceUID"), marks)


@dataclass(frozen=True)
class _Plane:
    origin: np.ndarray               # ImagePositionPatient: centre of pixel (0, 0), LPS mm
    col_step: np.ndarray             # mm moved by one column (along the row direction)
    row_step: np.ndarray             # mm moved by one row


def _planes(files: Iterable[Path]) -> tuple[dict[str, _Plane], list[tuple[float, _Plane]]]:
    """The slices' geometry by SOP Instance UID, and by z (for outlines whose UID is missing)."""
    import pydicom

    by_uid, by_z = {}, []
    for file in files:
        try:
            ds = pydicom.dcmread(file, stop_before_pixels=True, force=True)
            iop = np.array([float(v) for v in ds.ImageOrientationPatient])
            row_mm, col_mm = (float(v) for v in ds.PixelSpacing)   # between rows, between columns
            plane = _Plane(np.array([float(v) for v in ds.ImagePositionPatient]), iop[:3] * col_mm, iop[3:] * row_mm)
        except (AttributeError, TypeError, ValueError, pydicom.errors.InvalidDicomError):
            continue   # not a CT slice with geometry (a scout, a report): nothing to place marks on
        by_uid[str(ds.get("SOPInstanceUID", ""))] = plane
        by_z.append((float(plane.origin[2]), plane))
    return by_uid, by_z


def _polygon(points_P2: np.ndarray) -> tuple[float, np.ndarray]:
    """(area, centroid) of a closed outline in pixel units, either winding; a degenerate one: (0, its mean)."""
    x, y = points_P2[:, 0], points_P2[:, 1]
    cross = x * np.roll(y, -1) - np.roll(x, -1) * y
    area = cross.sum() / 2
    if abs(area) < 1e-9:
        return 0.0, points_P2.mean(axis=0)
    centroid = np.array([((x + np.roll(x, -1)) * cross).sum(), ((y + np.roll(y, -1)) * cross).sum()]) / (6 * area)
    return abs(area), centroid


def locate_marks(read: LidcRead, series_files: Iterable[Path]) -> tuple[list[LidcMark], list[str]]:
    """(read.marks with centre_mm, and diameter_mm for outlined nodules, in LPS mm, placed on the slices of the
    series they were drawn on (series_files: its DICOM files); why each other mark was left out). A mark with an
    outline on a slice the files lack is left out: a partial outline would misplace and shrink its nodule."""
    by_uid, by_z = _planes(series_files)
    if not by_uid:
        raise LidcXmlError(f"{read.path}: no CT slice of series {read.series_uid} to place its marks on")
    zs = np.array([z for z, _ in by_z])
    spacing = float(np.median(np.diff(np.unique(zs)))) if len(np.unique(zs)) > 1 else 1.0

    def plane_of(roi: LidcRoi) -> _Plane | None:
        if roi.sop_uid:   # the slice named: it, or none (a neighbour would move and double count the outline)
            return by_uid.get(roi.sop_uid)
        k = int(np.argmin(np.abs(zs - roi.z_mm)))
        return by_z[k][1] if abs(zs[k] - roi.z_mm) <= min(spacing / 2, 0.1) else None

    def to_mm(plane: _Plane, xy: np.ndarray) -> np.ndarray:
        return plane.origin + xy[0] * plane.col_step + xy[1] * plane.row_step

    located, left_out = [], []
    for mark in read.marks:
        placed = [(roi, plane) for roi in mark.rois if (plane := plane_of(roi)) is not None]
        if len(placed) < len(mark.rois):
            left_out.append(f"{mark.kind} {mark.mark_id!r} of {mark.reader}: {len(mark.rois) - len(placed)} of "
                            f"{len(mark.rois)} outlines on slices not among the series' files")
            continue
        if mark.kind != "nodule":
            roi, plane = placed[0]
            mark.centre_mm = tuple(float(v) for v in to_mm(plane, roi.points_P2.mean(axis=0)))
            located.append(mark)
            continue
        weights, centres = [], []
        for roi, plane in placed:
            if len(roi.points_P2) < 2:
                continue
            area_px, centroid = _polygon(roi.points_P2)
            area_mm2 = area_px * float(np.linalg.norm(plane.col_step) * np.linalg.norm(plane.row_step))
            weights.append(area_mm2 if roi.inclusion else -area_mm2)
            centres.append(to_mm(plane, centroid))
        total = float(sum(weights))
        if total <= 0:
            left_out.append(f"nodule {mark.mark_id!r} of {mark.reader}: its outlines enclose no area")
            continue
        mark.centre_mm = tuple(float(v) for v in np.average(np.array(centres), axis=0, weights=np.array(weights)))
        mark.diameter_mm = float((6 * total * spacing / math.pi) ** (1 / 3))
        located.append(mark)
    return located, left_out
