"""CT volumes from DICOM folders (as exported from a PACS, often messy), NIfTI and MetaImage files.

    from data_connectors.dicom import LUNG_WINDOW, load_series, load_volume, scan_folder, window
    vol = load_volume("exports/case-17")          # a folder with one CT series, a multi-frame .dcm, .nii(.gz), .mha
    vol.hu_ZYX.shape, vol.spacing_zyx, vol.warnings
    xyz_N3 = vol.to_patient(np.array([[256, 256, 40]]))   # voxel (i, j, k) -> DICOM patient mm (LPS)
    scan = scan_folder("exports")                 # every series under a tree, plus the files skipped and why
    ct, others = ct_series(scan.series)        # the CT series, and the PET / MR ... ones beside them
    vols = [load_series(s) for s in ct]
    png_ready = window(vol.hu_ZYX[40], *LUNG_WINDOW)   # [0, 1] for display

Convention: `hu_ZYX[k, j, i]` in float32 Hounsfield units; `affine` maps (i, j, k, 1) to (x, y, z, 1) in DICOM
patient coordinates (LPS, mm). Volumes come out in LPS orientation (i towards the patient's left, j posterior,
k superior; MONAI's Orientation reorders other acquisitions), so for axial scans k is the slice index with the
position along the normal increasing with k.

What the DICOM reader copes with, each noted in `CTVolume.warnings`:
- slices in any file order (sorted by position projected on the normal of ImageOrientationPatient);
- uneven spacing and missing slices (a gap over 1.5x the median): resampled onto a uniform grid at the median
  spacing by linear interpolation along the normal;
- gantry tilt (slice positions sheared against the normal): resampled onto an orthogonal grid (MONAI);
- duplicate positions, and files of another size or orientation in the series (a localizer): dropped;
- files sharing the CT series' UID that are no slices (scouts: ImageType LOCALIZER, SURVIEW, TOPOGRAM... see
  SCOUT_IMAGE_TYPES; screen saves and other secondary captures, colour images, SR/PR/KO... objects): dropped;
  a series of several images no two of which share size and orientation (an AP + lateral scout pair) is an
  error that says so, not "a single slice";
- a slice without RescaleSlope/RescaleIntercept (deleted, or present but empty) among slices that carry them:
  read with the others' rescale when they all agree, else dropped (1024 HU too bright otherwise);
- slice files lost to an interrupted copy (unreadable headers; empty, cut inside the preamble or no DICOM but
  named like the slices: same suffix, or the same name but for its numbers): listed by lost_slice_files, a
  warning of load_volume; an empty LOCKFILE or a note beside the slices is no lost slice;
- Python warnings of pydicom while reading or decoding a file (an RLE segment with non-conformant padding, a
  value of the wrong VR): a warning naming the file, instead of an anonymous line on stderr (routed per thread,
  so parallel loads, e.g. the API's, neither mix them up nor disturb the process's warning filters);
- slices without ImagePositionPatient among positioned ones: placed by SliceLocation when it lines up with
  the others' positions, else dropped; when no slice has one: placed by SliceLocation, else by InstanceNumber
  (origin unknown, head/feet a guess);
- two reconstructions or acquisitions (SliceThickness, AcquisitionNumber) interleaved under one series UID:
  the commonest kept;
- PixelPaddingValue that would read as dense bone or metal (>= 3000 HU through each frame's own rescale, which
  enhanced files keep in their functional groups; e.g. 4095 or 0xFFFF unsigned): air, in the images kept only.
  It is compared with stored values, the low BitsStored bits (PS3.3 C.7.5.1.1.2, PS3.5 8.1.1); a value that
  needs the unused high bits (0xFFFF with 12 bits stored) matches whole pixel words where a slice of the series
  holds that word, so a saturated 4095 (metal, 3071 HU) beside 0xFFFF padding stays metal, else its low bits;
- multi-frame enhanced CT (per-frame functional groups) and compressed transfer syntaxes (pylibjpeg, RLE);
- a PET, MR or other non-CT image series (NON_CT_IMAGE_MODALITIES; the PET of a PET/CT exam) beside the CT: left
  out with a warning; alone: an error (its values are no HU);
- padding outside the reconstruction circle (-2048, -3024 HU...): clamped to air, -1024 HU (also for NIfTI).
NIfTI / MetaImage / NRRD files (MONAI LoadImage, any storage order or oblique affine, reoriented to LPS): a 2D,
4D or single-slice image, NaN voxels or a DICOM file under an image suffix are errors; no air in the volume
(not HU?) and a NIfTI header without orientation are warnings.
Errors are DicomReadError (a ValueError) naming the file or folder (also ImageOrientationPatient whose row or
column direction is zero or parallel to the other: no slice normal). A one-slice series is an error unless
`allow_single_slice=True` (then a 1-slice volume with a warning): a nodule detector cannot use one slice, and a
silent 2D "volume" hides an incomplete export. Messages name files and series UIDs, never the patient.
"""
from __future__ import annotations

import functools

import logging
import math
import os
import re
import threading
import warnings as pywarnings
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd")
_SCAN_TAGS = ["SOPClassUID", "SeriesInstanceUID", "StudyInstanceUID", "Modality", "SeriesDescription", "SeriesNumber",
              "PatientID", "AccessionNumber"]
_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
_LPS_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])   # DICOM LPS <-> NIfTI/MONAI RAS (its own inverse)
AIR_HU = -1024.0         # floor: padding outside the reconstruction circle (often -2048 or -3024 HU) becomes air
_TILT_DEG = 0.5          # shear below this is kept exactly in the affine instead of resampling
# Measured on the 2-core dev box, 512x512x150 warm series: 1 thread 0.53 s, 4 threads 0.82 s (parsing holds the
# GIL), so threads are opt-in, for slow (network) storage where file reads dominate.
_LOAD_THREADS = 1


class DicomReadError(ValueError):
    """A file, folder or series that cannot be read as a CT volume; the message names it and the problem."""


@dataclass
class SeriesInfo:
    series_uid: str
    study_uid: str
    files: list[Path]
    modality: str
    description: str
    # Series-level tags, from the first of its files that scan_folder reads ("" when absent):
    number: str = ""                                  # SeriesNumber
    # identifiers for matching reports to studies; never printed (kept out of repr, so out of logs)
    patient_id: str = field(default="", repr=False)
    accession: str = field(default="", repr=False)    # AccessionNumber

    def __post_init__(self) -> None:
        self.modality = self.modality.strip().upper()   # sloppy writers: " pt", "ct"


@dataclass
class FolderScan:
    series: list[SeriesInfo]
    skipped: list[tuple[Path, str]]   # (non-DICOM or unreadable file, reason)


@dataclass
class CTVolume:
    hu_ZYX: np.ndarray                          # float32 Hounsfield units
    spacing_zyx: tuple[float, float, float]     # mm
    affine: np.ndarray                          # 4x4 float64: (i, j, k, 1) -> (x, y, z, 1) LPS mm
    series_uid: str
    study_uid: str
    source: Path
    warnings: list[str] = field(default_factory=list)

    def to_patient(self, ijk_N3: np.ndarray) -> np.ndarray:
        """Voxel indices (i, j, k) -> patient coordinates (x, y, z) mm, row per point."""
        ijk = np.atleast_2d(np.asarray(ijk_N3, dtype=np.float64))
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]

    def to_voxel(self, xyz_N3: np.ndarray) -> np.ndarray:
        """Patient coordinates (x, y, z) mm -> fractional voxel indices (i, j, k), row per point."""
        xyz = np.atleast_2d(np.asarray(xyz_N3, dtype=np.float64))
        return (xyz - self.affine[:3, 3]) @ np.linalg.inv(self.affine[:3, :3]).T

    def resampled(self, spacing_zyx: tuple[float, float, float], mode: str = "bilinear") -> CTVolume:
        """The volume on a grid of the given spacing (MONAI Spacing), same orientation and extent."""
        from monai.transforms import Spacing
        img = _to_monai(self.hu_ZYX + 1024.0, self.affine)   # +1024: zero padding becomes air
        out = Spacing(pixdim=tuple(spacing_zyx[::-1]), mode=mode, padding_mode="zeros", dtype=np.float32)(img)
        hu, affine = _from_monai(out)
        return CTVolume(hu - 1024.0, _spacing(affine), affine, self.series_uid, self.study_uid, self.source,
                        [*self.warnings, f"resampled to {tuple(round(s, 3) for s in spacing_zyx)} mm"])


LUNG_WINDOW = (-600.0, 1500.0)          # (level, width) HU
MEDIASTINUM_WINDOW = (40.0, 400.0)


def window(hu: np.ndarray, level: float, width: float) -> np.ndarray:
    """HU -> [0, 1] float32 through a display window (MONAI ScaleIntensityRange, clipped)."""
    from monai.transforms import ScaleIntensityRange
    lo, hi = level - width / 2, level + width / 2
    out = ScaleIntensityRange(a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True, dtype=np.float32)(hu)
    return np.asarray(out, dtype=np.float32)


# ------------------------------------------------------------------------------------------------ scanning


def _looks_like_dicom(path: Path) -> tuple[bool, bool]:
    """(has the 'DICM' preamble, might be a preamble-less dataset starting with group 0002/0008)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False, False
    # a bare dataset opens with a group 0002 or 0008 tag, little or (old exports) big endian
    return head[128:132] == b"DICM", head[:2] in (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08")


_PREAMBLE_BYTES = 132   # 128-byte preamble + "DICM"


def _cut_short(path: Path) -> str | None:
    """What a file's size alone says of it when it cannot hold a DICOM header (empty, or shorter than the
    preamble), or None. Whether it is a lost slice or a stray file is lost_slice_files' to tell, by its name."""
    try:
        size = path.stat().st_size
    except OSError:
        return None
    if size == 0:
        return "empty file (0 bytes; an interrupted copy?)"
    if size < _PREAMBLE_BYTES:
        return f"not DICOM ({size} bytes, shorter than a DICOM preamble; an interrupted copy?)"
    return None


# Reasons scan_folder gives for files that hold no DICOM at all (no header read): whether such a file is a lost
# slice or a stray one (a note, a lock file, a thumbnail) is told by its name only.
NO_DICOM_REASONS = ("not DICOM", "empty file")


def _name_shape(name: str) -> str:
    """A file name with its runs of digits as '#': 'IM0012' -> 'IM#', '1.2.840.5.12' -> '#.#.#.#.#'."""
    return re.sub(r"\d+", "#", name.lower())


def lost_slice_files(scan: FolderScan, series: SeriesInfo) -> list[tuple[Path, str]]:
    """The skipped files beside a series' slices (same folders) that look like slices it lost: unreadable DICOM
    headers, and files holding no DICOM (empty, truncated, other content) that are named like its slices: the
    same suffix (e.g. .dcm) or the same name but for the numbers (IM0099 beside IM0001...). Stray notes, lock
    files, thumbnails and DICOMDIR indexes are not listed."""
    folders = {f.parent for f in series.files}
    suffixes = {f.suffix.lower() for f in series.files} - {""}
    suffixes = {x for x in suffixes if not x[1:].isdigit()}   # '.12' of a UID-named file is no suffix
    shapes = {_name_shape(f.name) for f in series.files}

    def like_a_slice(path: Path) -> bool:
        return path.suffix.lower() in suffixes or _name_shape(path.name) in shapes

    return [(path, reason) for path, reason in scan.skipped
            if path.parent in folders and reason != "DICOMDIR index file"
            and (not reason.startswith(NO_DICOM_REASONS) or like_a_slice(path))]


def lost_slices_warning(lost: list[tuple[Path, str]]) -> str:
    """One warning for lost_slice_files' list (non-empty)."""
    path, reason = lost[0]
    files = f"{len(lost)} files beside the slices could not be read and are" if len(lost) > 1 else \
        "1 file beside the slices could not be read and is"
    return f"{files} missing from the volume (e.g. {path}: {reason})"


def _series_header(ds) -> dict[str, str]:
    """SeriesInfo's fields (but for series_uid and files) from one file's header, "" where absent."""
    def text(tag: str) -> str:
        return str(ds.get(tag, "") or "").strip()

    return {"study_uid": text("StudyInstanceUID"), "modality": text("Modality"),
            "description": text("SeriesDescription"), "number": text("SeriesNumber"),
            "patient_id": text("PatientID"), "accession": text("AccessionNumber")}


def scan_folder(root: str | Path) -> FolderScan:
    """Every DICOM series under root (recursive), grouped by SeriesInstanceUID, and the files skipped with why.

    Headers only (stop_before_pixels): pixel data is read once, by load_series. Series come sorted by UID and
    their files by path.
    """
    import pydicom

    root = Path(root)
    if not root.is_dir():
        raise DicomReadError(f"{root}: not a folder")
    groups: dict[str, list[Path]] = defaultdict(list)
    meta: dict[str, dict[str, str]] = {}
    skipped: list[tuple[Path, str]] = []
    def unreadable(err: OSError) -> None:
        skipped.append((Path(err.filename or root), f"unreadable folder: {err.strerror}"))

    # Linked folders are followed (exports and study archives are often assembled from links), but not a link
    # to a folder read anyway (one of the tree's own, under its own name; one read through another link) nor one
    # to a folder above the input (a loop, or the whole disk).
    real_root = os.path.realpath(root)
    seen = {os.path.realpath(d) for d, _, _ in os.walk(root)}
    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable, followlinks=True):
        seen.add(os.path.realpath(dirpath))
        for name in [n for n in dirnames if os.path.islink(os.path.join(dirpath, n))]:
            real = os.path.realpath(os.path.join(dirpath, name))
            if real in seen or real_root.startswith(real.rstrip(os.sep) + os.sep):
                dirnames.remove(name)
                log.info("%s: linked folder %s not followed (read anyway, or above the input)", root, name)
            else:
                seen.add(real)
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            preamble, maybe_raw = _looks_like_dicom(path)
            if not (preamble or maybe_raw):
                skipped.append((path, _cut_short(path) or "not DICOM (no DICM preamble)"))
                continue
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True, force=not preamble, specific_tags=_SCAN_TAGS)
                sop = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "") or "")
                is_index = sop == _DICOMDIR_CLASS or str(ds.get("SOPClassUID", "")) == _DICOMDIR_CLASS
                uid = str(ds.get("SeriesInstanceUID", "") or "")
                header = None if uid in meta else _series_header(ds)   # the series' first file read gives it
            except Exception as exc:  # noqa: BLE001 - whatever the parser trips on, the file is skipped, not the scan
                skipped.append((path, f"unreadable DICOM header: {type(exc).__name__}: {exc}"))
                continue
            if is_index:
                skipped.append((path, "DICOMDIR index file"))
                continue
            if not uid:
                skipped.append((path, "unreadable DICOM header: truncated or corrupt (no SeriesInstanceUID)"
                                if preamble else "not DICOM (no DICM preamble, no DICOM header)"))
                continue
            groups[uid].append(path)
            if header is not None:
                meta[uid] = header
    series = [SeriesInfo(uid, files=sorted(files), **meta[uid]) for uid, files in sorted(groups.items())]
    return FolderScan(series, skipped)


# ------------------------------------------------------------------------------------------------ series


@dataclass(frozen=True)
class _Padding:
    """A file's PixelPaddingValue to PixelPaddingRangeLimit (inclusive), as _padding reads it."""
    stored: tuple[int, int]          # as stored values: the low BitsStored bits, sign-extended where signed
    words: tuple[int, int] | None    # as whole pixel words, where the declared value does not fit BitsStored


@dataclass
class _Frame:
    """One 2D image of a series: where it came from, its geometry and how to get its HU."""
    path: Path
    frame: int | None          # index in a multi-frame file
    position: np.ndarray | None   # (3,) ImagePositionPatient; None where the file lacks it
    row_dir: np.ndarray        # (3,) direction of increasing column index i
    col_dir: np.ndarray        # (3,) direction of increasing row index j
    pixel_spacing: tuple[float, float]   # (between rows, between columns) mm
    shape: tuple[int, int]     # (rows, columns)
    slope: float
    intercept: float
    instance: int
    slice_location: float | None = None   # SliceLocation: the fallback when ImagePositionPatient is missing
    spacing_between_slices: float | None = None   # SpacingBetweenSlices or SliceThickness: the last fallback
    thickness: float | None = None   # SliceThickness and AcquisitionNumber: tell two reconstructions or
    acquisition: int | None = None   # acquisitions filed under one series UID apart
    bits_stored: int | None = None   # BitsStored: the low bits of a pixel word that hold its value
    padding: _Padding | None = None  # the file's PixelPaddingValue (to PixelPaddingRangeLimit)
    rescale_given: bool = True       # False: a classic file with neither RescaleSlope nor RescaleIntercept


def _floats(value, n: int, path: Path, name: str) -> np.ndarray:
    try:
        out = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        out = np.zeros(0)
    if out.shape != (n,) or not np.all(np.isfinite(out)):
        raise DicomReadError(f"{path}: {name} is missing or malformed ({value!r})")
    return out


def _optional_float(ds, name: str) -> float | None:
    """A numeric element that may be absent or damaged without making the file unusable (None then)."""
    try:
        value = float(ds.get(name))
    except _MALFORMED:
        return None
    return value if math.isfinite(value) else None


def _slice_normal(row_dir: np.ndarray, col_dir: np.ndarray, path: Path) -> np.ndarray:
    """Unit normal of the image plane, row x column direction of ImageOrientationPatient (normalised first: files
    write the cosines with few digits). A zero-length or (within 30 degrees) parallel pair has no plane: a
    DicomReadError naming the file."""
    cosines = " ".join(f"{v:g}" for v in np.r_[row_dir, col_dir])
    row_len, col_len = float(np.linalg.norm(row_dir)), float(np.linalg.norm(col_dir))
    if min(row_len, col_len) < 1e-6:
        raise DicomReadError(f"{path}: ImageOrientationPatient ({cosines}) has a row or column direction of zero "
                             f"length, so the slice normal is undefined")
    normal = np.cross(row_dir / row_len, col_dir / col_len)
    if np.linalg.norm(normal) < 0.5:
        raise DicomReadError(f"{path}: ImageOrientationPatient ({cosines}) row and column directions are parallel, "
                             f"so the slice normal is undefined")
    return normal / np.linalg.norm(normal)


def _group_item(ds, frame: int, seq: str):
    """Functional group `seq` for a frame of an enhanced multi-frame dataset: per-frame first, then shared."""
    for groups, idx in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        items = ds.get(groups)
        value = items[idx].get(seq) if items is not None and len(items) > idx else None
        if value:
            return value[0]
    return None


# What pydicom and int()/float() raise on damaged elements (fuzzing found each of these).
_MALFORMED = (ValueError, TypeError, AttributeError, KeyError, IndexError, OverflowError, NotImplementedError)


def _malformed_is_read_error(read):
    """`read(ds, path)` with any error of a damaged element raised as a DicomReadError naming the file."""
    @functools.wraps(read)
    def guarded(ds, path: Path):
        try:
            return read(ds, path)
        except DicomReadError:
            raise
        except _MALFORMED as exc:
            raise DicomReadError(f"{path}: malformed DICOM element ({type(exc).__name__}: {exc})") from exc
    return guarded


@_malformed_is_read_error
def _frames_of(ds, path: Path) -> list[_Frame]:
    """The frames of one dataset (one for a classic CT file, NumberOfFrames for an enhanced one)."""
    return _read_frames(ds, path)


def _read_frames(ds, path: Path) -> list[_Frame]:
    if not any(t in ds for t in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise DicomReadError(f"{path}: no pixel data in this file")
    shape = (int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0))
    if min(shape) <= 0:
        raise DicomReadError(f"{path}: Rows/Columns missing")
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    instance = int(_optional_float(ds, "InstanceNumber") or 0)   # only a tie-breaker: damaged is no reason to fail
    acquisition = _optional_float(ds, "AcquisitionNumber")
    acquisition = None if acquisition is None else int(acquisition)
    bits_stored = _optional_float(ds, "BitsStored")
    bits_stored = int(bits_stored) if bits_stored and 1 <= bits_stored <= 64 else None
    frames = _frame_geometry(ds, path, shape, n_frames, instance, acquisition)
    padding = _padding(ds, path, bits_stored)   # one per file; each frame's rescale decides if it becomes air
    for fr in frames:
        fr.bits_stored, fr.padding = bits_stored, padding
    return frames


# A chest CT in HU always holds air (lungs, outside the body) far below this; a volume without it is no HU CT.
_NO_AIR_HU = -500.0
_USUAL_INTERCEPT = -1024.0   # what CT scanners store unsigned values with (air, -1000 HU, stored near 24)


def _assume_usual_intercept(stack: np.ndarray, uid: str, warnings: list[str]) -> None:
    """For a series none of whose images carries RescaleSlope / RescaleIntercept (an anonymiser or converter
    stripped them), read as stored values: when nothing is negative (unsigned storage, not HU already) and the
    usual intercept would put air below _NO_AIR_HU, apply that intercept in place (read as they are, the HU would
    be 1024 too bright and no lung would be found). Either way with a warning (none for a series of padding
    only)."""
    body = stack > AIR_HU                                   # voxels not set to air as padding
    sample = stack[::2, ::4, ::4][body[::2, ::4, ::4]]
    if sample.size == 0:
        return
    if float(sample.min()) >= 0 and float(np.percentile(sample, 1)) + _USUAL_INTERCEPT <= _NO_AIR_HU:
        stack[body] += np.float32(_USUAL_INTERCEPT)
        np.maximum(stack, AIR_HU, out=stack)
        warnings.append(f"no image carries RescaleSlope/RescaleIntercept and no stored value is negative: read "
                        f"with the usual CT intercept {_USUAL_INTERCEPT:g} and slope 1 (air then lies near -1000 "
                        f"HU); check the export (series {uid})")
    else:
        warnings.append(f"no image carries RescaleSlope/RescaleIntercept: stored values read as HU (series {uid})")


def _rescale(ds, item=None) -> tuple[float, float]:
    """(RescaleSlope, RescaleIntercept) of a frame: from its PixelValueTransformationSequence item in an enhanced
    multi-frame file (whose top level carries none), else from the top level; absent -> (1, 0)."""
    src = item if item is not None else ds
    slope, inter = src.get("RescaleSlope", None), src.get("RescaleIntercept", None)
    return float(slope if slope not in (None, "") else 1.0), float(inter if inter not in (None, "") else 0.0)


def _rescale_given(ds) -> bool:
    """Whether a classic file says how its stored values map to HU: RescaleSlope and RescaleIntercept both with
    a value (an element present but empty is as good as deleted), or a Modality LUT."""
    def has(keyword: str) -> bool:
        try:
            value = ds.get(keyword, None)
        except _MALFORMED:
            return False
        if value is None or isinstance(value, str):
            return bool(value and value.strip())
        try:
            return len(value) > 0   # a sequence or multi-value
        except TypeError:
            return True             # a number

    return (has("RescaleSlope") and has("RescaleIntercept")) or has("ModalityLUTSequence")


def _frame_geometry(ds, path: Path, shape: tuple[int, int], n_frames: int, instance: int,
                    acquisition: int | None) -> list[_Frame]:
    """The frames' geometry and rescale, for the three layouts: enhanced (functional groups), classic single
    frame, legacy multi-frame (positions by GridFrameOffsetVector)."""
    if "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds:
        frames = []
        for f in range(n_frames):
            pos = _group_item(ds, f, "PlanePositionSequence")
            ori = _group_item(ds, f, "PlaneOrientationSequence")
            pix = _group_item(ds, f, "PixelMeasuresSequence")
            if pos is None or ori is None or pix is None:
                raise DicomReadError(f"{path}: frame {f + 1} lacks plane position/orientation/pixel measures")
            iop = _floats(ori.get("ImageOrientationPatient"), 6, path, f"frame {f + 1} ImageOrientationPatient")
            spacing = _floats(pix.get("PixelSpacing"), 2, path, f"frame {f + 1} PixelSpacing")
            frames.append(_Frame(path, f, _floats(pos.get("ImagePositionPatient"), 3, path,
                                                  f"frame {f + 1} ImagePositionPatient"),
                                 iop[:3], iop[3:], (spacing[0], spacing[1]), shape,
                                 *_rescale(ds, _group_item(ds, f, "PixelValueTransformationSequence")), instance,
                                 thickness=_optional_float(pix, "SliceThickness"), acquisition=acquisition))
        return frames
    iop = _floats(ds.get("ImageOrientationPatient"), 6, path, "ImageOrientationPatient")
    spacing = _floats(ds.get("PixelSpacing"), 2, path, "PixelSpacing")
    slope, inter = _rescale(ds)
    given = _rescale_given(ds)
    if n_frames == 1:   # no position: placed by load_series from SliceLocation / InstanceNumber, or dropped
        position = (_floats(ds.get("ImagePositionPatient"), 3, path, "ImagePositionPatient")
                    if ds.get("ImagePositionPatient") else None)
        thickness = _optional_float(ds, "SliceThickness")
        return [_Frame(path, None, position, iop[:3], iop[3:], (spacing[0], spacing[1]), shape, slope, inter,
                       instance, _optional_float(ds, "SliceLocation"),
                       _optional_float(ds, "SpacingBetweenSlices") or thickness, thickness, acquisition,
                       rescale_given=given)]
    position = _floats(ds.get("ImagePositionPatient"), 3, path, "ImagePositionPatient")
    offsets = ds.get("GridFrameOffsetVector")   # legacy multi-frame: offsets along the normal
    if offsets is None or len(offsets) != n_frames:
        raise DicomReadError(f"{path}: {n_frames} frames without per-frame positions or GridFrameOffsetVector")
    normal = _slice_normal(iop[:3], iop[3:], path)
    return [_Frame(path, f, position + float(off) * normal, iop[:3], iop[3:], (spacing[0], spacing[1]), shape,
                   slope, inter, instance, rescale_given=given) for f, off in enumerate(offsets)]


def _read(path: Path):
    """The whole dataset; force=True also reads bare (preamble-less) datasets, whose transfer syntax is then
    taken from the encoding pydicom detected."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
    try:
        ds = pydicom.dcmread(path, force=True)
    except Exception as exc:  # noqa: BLE001 - any parser failure is this file's fault
        raise DicomReadError(f"{path}: unreadable DICOM file ({type(exc).__name__}: {exc})") from exc
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        implicit, little = ds.original_encoding
        ds.file_meta = meta if meta is not None else FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                          ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    return ds


_NATIVE_LE = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")   # implicit / explicit VR little endian


@_malformed_is_read_error
def _pixels(ds, path: Path) -> np.ndarray:
    """Pixel words as the file holds them, unused high bits included, (frames, rows, cols) or (rows, cols),
    decoded (pylibjpeg/RLE for compressed syntaxes); _stored_values gives their values.

    Fast path for the common uncompressed single-frame 16-bit image: a view on the bytes (pydicom's pixel_array
    costs ~3 ms a 512 x 512 slice in checks and copies).
    """
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    rows, cols = int(ds.Rows), int(ds.Columns)
    raw = ds.get("PixelData")
    if (syntax in _NATIVE_LE and isinstance(raw, bytes) and ds.get("BitsAllocated") == 16
            and int(ds.get("SamplesPerPixel", 1)) == 1 and int(ds.get("NumberOfFrames", 1) or 1) == 1
            and len(raw) >= rows * cols * 2):
        signed = int(ds.get("PixelRepresentation", 0)) == 1
        return np.frombuffer(raw, dtype="<i2" if signed else "<u2", count=rows * cols).reshape(rows, cols)
    from pydicom.pixels import pixel_array
    try:   # the unused bits kept: _padding_masks may need them, _stored_values clears them as pydicom would
        return pixel_array(ds, correct_unused_bits=False)
    except Exception as exc:  # noqa: BLE001 - truncated, corrupt or undecodable pixel data
        raise DicomReadError(f"{path}: cannot decode pixel data ({type(exc).__name__}: {exc})") from exc


def _stored_values(words: np.ndarray, bits_stored: int | None) -> np.ndarray:
    """The values of pixel words: the low bits_stored bits, sign-extended for signed words (the unused high bits
    may hold anything, PS3.5 8.1.1); the words themselves when all their bits are used."""
    width = words.dtype.itemsize * 8
    if words.dtype.kind not in "iu" or not bits_stored or not 0 < width - bits_stored < width:
        return words
    unused = width - bits_stored
    if words.dtype.kind == "i":
        return (words << unused) >> unused
    return words & np.array((1 << bits_stored) - 1, dtype=words.dtype)


def _as_bits(value: int, bits: int, signed: bool) -> int:
    """value as a bits-wide two's complement field holds it: the low bits, sign-extended when signed."""
    value &= (1 << bits) - 1
    return value - (1 << bits) if signed and value >> (bits - 1) else value


_PADDING_MIN_HU = 3000.0   # padding values that read as this much or more are set to air


def _padding(ds, path: Path, bits_stored: int | None) -> _Padding | None:
    """The file's PixelPaddingValue (to PixelPaddingRangeLimit), or None (absent, malformed, or a Modality LUT
    Sequence maps the values). The values are stored values (PS3.3 C.7.5.1.1.2), so they are compared as
    _stored_values reads pixels: low BitsStored bits, sign-extended. A declared value that does not fit
    BitsStored (0xFFFF with 12 bits stored, a value the standard does not allow) also keeps its whole word, for
    writers that mark padding with the unused high bits set (see _padding_masks)."""
    values = [ds.get(name) for name in ("PixelPaddingValue", "PixelPaddingRangeLimit")]
    if values[0] is None or "ModalityLUTSequence" in ds:
        return None
    try:
        allocated = int(ds.get("BitsAllocated", 16) or 16)
        signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
        declared = [int(np.ravel(v)[0]) for v in values if v is not None]
        # a US-written negative value in a signed file, and the reverse, mean the same bits
        stored = [_as_bits(v, min(bits_stored or allocated, allocated), signed) for v in declared]
        words = [_as_bits(v, allocated, signed) for v in declared]
    except _MALFORMED as exc:   # ValueError too: a negative bit count
        log.warning("%s: PixelPaddingValue ignored (%s)", path, exc)
        return None
    return _Padding((min(stored), max(stored)), None if words == stored else (min(words), max(words)))


def _padding_masks(frame: _Frame, words: np.ndarray,
                   stored: np.ndarray) -> tuple[np.ndarray | None, np.ndarray] | None:
    """(pixels matching the padding as whole words or None, pixels matching it as stored values) of a plane whose
    padding would read as dense bone or metal (>= 3000 HU with this frame's own rescale); None when it does not
    (padding below air is clamped anyway; padding inside the tissue range cannot be told from anatomy, so it is
    left alone). Whole words are compared only when the declared value needs the unused high bits.

    The standard compares stored values: a pixel whose low BitsStored bits equal the padding value is padding,
    and no native pixel has that value (PS3.3 C.7.5.1.1.2). A padding value that needs the unused high bits
    (0xFFFF with 12 bits stored) breaks that rule, and its low bits (4095) are also the value of a saturated
    pixel (metal, 3071 HU at intercept -1024). Where a series holds the declared whole word, its writer marks
    padding that way: whole words are compared, and a 4095 without the high bits stays metal, in every slice.
    Where no word carries it (the high bits cleared, e.g. by a 12-bit JPEG transcoder), only the stored value
    is left to compare, and every 4095 is padding, as the file declares. _load_series decides per series."""
    pad = frame.padding
    if pad is None:
        return None
    lo, hi = pad.stored
    if min(lo * frame.slope + frame.intercept, hi * frame.slope + frame.intercept) < _PADDING_MIN_HU:
        return None
    by_word = None if pad.words is None else (words >= pad.words[0]) & (words <= pad.words[1])
    return by_word, (stored >= lo) & (stored <= hi)


def _modality_lut(ds, arr: np.ndarray, frame: _Frame, out: np.ndarray) -> None:
    """HU into out: pydicom's apply_modality_lut when the file has a Modality LUT Sequence; otherwise (the usual
    case) slope * stored + intercept in float32, the same arithmetic without float64 temporaries."""
    if "ModalityLUTSequence" in ds:
        from pydicom.pixels import apply_modality_lut
        out[...] = apply_modality_lut(arr, ds)
        return
    out[...] = arr
    if frame.slope != 1.0:
        out *= np.float32(frame.slope)
    if frame.intercept != 0.0:
        out += np.float32(frame.intercept)


_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"     # and its .1-.4 multi-frame siblings
_NON_IMAGE_MODALITIES = {"SR", "PR", "KO", "DOC", "REG", "SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "FID"}

# Imaging modalities whose pixels are no Hounsfield units: a PET, MR or radiograph series is never read as CT
# (its values would pass for HU). A blank Modality, or OT ("other", e.g. a converted CT), may be CT.
NON_CT_IMAGE_MODALITIES = frozenset({"MR", "PT", "NM", "US", "CR", "DX", "MG", "XA", "RF", "IO", "PX", "RG", "DG",
                                     "ES", "XC", "OP", "SM", "OCT", "BI", "TG", "GM"})


# ImageType values of scout / localizer images (projection radiographs of the planning scan) across vendors:
# LOCALIZER (the standard term), SURVIEW (Philips), TOPOGRAM (Siemens), SCANOGRAM (Canon/Toshiba), SCOUT, PILOT.
SCOUT_IMAGE_TYPES = frozenset({"LOCALIZER", "SURVIEW", "TOPOGRAM", "SCANOGRAM", "SCOUT", "PILOT"})


def _not_a_slice(ds) -> str | None:
    """Why a file of a series is no slice of the CT volume (a localizer, a dose screen, a report that shares the
    series), or None. Only explicit markers count: a damaged CT slice must stay an error, not vanish."""
    try:
        image_type = {str(v).strip().upper() for v in (ds.get("ImageType") or [])}
    except _MALFORMED:
        image_type = set()
    if image_type & SCOUT_IMAGE_TYPES:
        return "localizer"
    if "SCREEN SAVE" in image_type or str(ds.get("SOPClassUID", "")).startswith(_SECONDARY_CAPTURE):
        return "secondary capture"
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if modality in _NON_IMAGE_MODALITIES:
        return f"not an image (Modality {modality})"
    if modality in NON_CT_IMAGE_MODALITIES:   # e.g. PET images filed under the CT's series UID
        return f"Modality {modality}, not CT"
    try:
        if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
            return "colour image"
    except _MALFORMED:
        return None
    return None


def _drop_non_slices(paths: list[Path], datasets: list, uid: str, warnings: list[str]) -> tuple[list, list]:
    """(paths, datasets) without the files _not_a_slice names, with a warning; all of them -> DicomReadError."""
    reasons = [_not_a_slice(ds) for ds in datasets]
    keep = [n for n, r in enumerate(reasons) if r is None]
    kinds = ", ".join(f"{c} {r}" for r, c in Counter(r for r in reasons if r is not None).items())
    if not keep and set(reasons) == {"secondary capture"} and "ImageOrientationPatient" in datasets[0]:
        return paths, datasets   # a CT series exported as secondary captures that kept its geometry
    if not keep:
        raise DicomReadError(f"series {uid}: no CT slices to make a volume of ({kinds}; e.g. {paths[0]})")
    if len(keep) < len(paths):
        dropped = [(paths[n], r) for n, r in enumerate(reasons) if r is not None]
        warnings.append(f"{len(dropped)} files of the series are no CT slices and were ignored ({kinds}; e.g. "
                        f"{dropped[0][0]})")
    return [paths[n] for n in keep], [datasets[n] for n in keep]


def _place_unpositioned(frames: list[_Frame], uid: str, warnings: list[str]) -> list[_Frame]:
    """Frames without ImagePositionPatient, when others have one: placed by their SliceLocation where it maps
    onto the others' positions along the normal (a straight line, residual under 0.1 mm), else dropped (the
    gap is then interpolated). When no frame has one: placed along the normal by SliceLocation, else by
    InstanceNumber x slice spacing, with a warning (the volume's origin, and for InstanceNumber its head/feet
    direction, are then a guess: numbers taken to run against the normal, i.e. head to feet for axial
    slices, as scanners number a cranio-caudal acquisition)."""
    missing = [fr for fr in frames if fr.position is None]
    if not missing:
        return frames
    ref = frames[0]
    normal = _slice_normal(ref.row_dir, ref.col_dir, ref.path)
    located = [fr for fr in frames if fr.position is not None]
    if len(located) >= 2:
        fit = [fr for fr in located if fr.slice_location is not None]
        if len(fit) >= 2 and all(fr.slice_location is not None for fr in missing):
            loc = np.array([fr.slice_location for fr in fit])
            s = np.array([fr.position @ normal for fr in fit])
            if np.ptp(loc) > 0:
                a, b = np.polyfit(loc, s, 1)
                if abs(abs(a) - 1) < 0.01 and np.abs(a * loc + b - s).max() < 0.1:
                    for fr in missing:   # the nearest located slice's in-plane origin, moved along the normal
                        near = fit[int(np.argmin(np.abs(loc - fr.slice_location)))]
                        fr.position = near.position + normal * (a * fr.slice_location + b - near.position @ normal)
                    warnings.append(f"{len(missing)} images without ImagePositionPatient placed by their "
                                    f"SliceLocation (series {uid}; e.g. {missing[0].path})")
                    return frames
        warnings.append(f"{len(missing)} images without ImagePositionPatient ignored (series {uid}; e.g. "
                        f"{missing[0].path})")
        return located
    locations = [fr.slice_location for fr in frames]
    if None not in locations and len(set(locations)) == len(frames):
        for fr, loc in zip(frames, locations):
            fr.position = normal * loc
        warnings.append(f"ImagePositionPatient missing (series {uid}): slices placed by SliceLocation, in-plane "
                        f"origin unknown (taken as 0)")
        return frames
    instances = [fr.instance for fr in frames]
    step = ref.spacing_between_slices
    if len(set(instances)) == len(frames) and step:
        for fr in frames:
            fr.position = normal * (-fr.instance * step)
        warnings.append(f"ImagePositionPatient and SliceLocation missing (series {uid}): slices placed by "
                        f"InstanceNumber every {step:g} mm, assumed numbered head to feet; origin unknown")
        return frames
    raise DicomReadError(f"{missing[0].path}: ImagePositionPatient is missing (and SliceLocation / InstanceNumber "
                         f"cannot order the {len(frames)} slices of series {uid})")


def _one_reconstruction(frames: list[_Frame], normal: np.ndarray, uid: str, warnings: list[str]) -> list[_Frame]:
    """The commonest (SliceThickness, AcquisitionNumber) stack, when slices of another one lie within its
    range along the normal: a thin and a thick reconstruction, or an inspiration and an expiration scan,
    exported under one series UID interleave. Other stacks outside that range stay: a thicker zone at one end,
    or the rotations of a sequential (step-and-shoot) scan, each with its AcquisitionNumber, are one volume."""
    keys = [(None if fr.thickness is None else round(fr.thickness, 2), fr.acquisition) for fr in frames]
    counts = Counter(keys)
    if len(counts) < 2:
        return frames
    best = counts.most_common(1)[0][0]
    s = np.array([fr.position @ normal for fr in frames])
    mine = s[[k == best for k in keys]]
    lo, hi = mine.min() - 1e-3, mine.max() + 1e-3

    def other(k) -> bool:   # a missing element matches anything
        return any(a is not None and b is not None and a != b for a, b in zip(k, best))
    drop = [n for n, k in enumerate(keys) if other(k) and lo <= s[n] <= hi]
    if not drop:
        return frames
    def label(k) -> str:
        return ", ".join([f"{k[0]:g} mm"] * (k[0] is not None) + [f"acquisition {k[1]}"] * (k[1] is not None))
    what = "; ".join(sorted({label(keys[n]) for n in drop}))
    warnings.append(f"{len(drop)} slices of another reconstruction or acquisition ({what}) interleaved with the "
                    f"{label(best)} slices ignored (series {uid}; e.g. {frames[drop[0]].path})")
    gone = set(drop)
    return [fr for n, fr in enumerate(frames) if n not in gone]


def _e_g(paths: list, n: int = 3) -> str:
    """'a, b, c and 4 more': the first files of a list, for a warning."""
    names = [str(p) for p in paths[:n]]
    return ", ".join(names) + (f" and {len(paths) - n} more" if len(paths) > n else "")


def _fill_missing_rescale(frames: list[_Frame], uid: str, warnings: list[str]) -> list[_Frame]:
    """Images without RescaleSlope / RescaleIntercept among images that carry them (an export that lost the
    elements of a few files): read with the series' rescale when all the others agree on one, else dropped (the
    gap is interpolated); either way with a warning naming the files. Read as stored values they would be off by
    the intercept (1024 HU too bright at the usual -1024)."""
    missing = [fr for fr in frames if not fr.rescale_given]
    if not missing or len(missing) == len(frames):
        return frames
    given = {(fr.slope, fr.intercept) for fr in frames if fr.rescale_given}
    files = _e_g(sorted({fr.path for fr in missing}))
    if len(given) == 1:
        slope, intercept = next(iter(given))
        for fr in missing:
            fr.slope, fr.intercept = slope, intercept
        warnings.append(f"{len(missing)} images without RescaleSlope/RescaleIntercept read with the slope {slope:g} "
                        f"and intercept {intercept:g} of the series' other images (series {uid}; {files})")
        return frames
    warnings.append(f"{len(missing)} images without RescaleSlope/RescaleIntercept ignored: the series' other images "
                    f"disagree on theirs, so their HU are unknown (series {uid}; {files})")
    return [fr for fr in frames if fr.rescale_given]


def _keep_consistent(frames: list[_Frame], uid: str, warnings: list[str]) -> list[_Frame]:
    """Frames sharing the commonest size, orientation and pixel spacing; others (a localizer) are dropped.
    Orientation and spacing match within a tolerance, so rounding jitter between slices splits nothing."""
    def key(fr: _Frame):
        return fr.shape, tuple(np.round(np.r_[fr.row_dir, fr.col_dir], 2)), tuple(np.round(fr.pixel_spacing, 3))
    keys = [key(fr) for fr in frames]
    best = frames[keys.index(Counter(keys).most_common(1)[0][0])]

    def same(fr: _Frame) -> bool:
        return (fr.shape == best.shape and np.allclose(np.r_[fr.row_dir, fr.col_dir], np.r_[best.row_dir,
                                                                                          best.col_dir], atol=0.02)
                and np.allclose(fr.pixel_spacing, best.pixel_spacing, rtol=2e-3, atol=1e-4))
    kept, dropped = [], set()
    for fr in frames:
        if same(fr):
            kept.append(fr)
        else:
            dropped.add(str(fr.path))
    if dropped:
        dropped = sorted(dropped)
        warnings.append(f"{len(frames) - len(kept)} images of another size/orientation/pixel spacing ignored "
                        f"(series {uid}; e.g. {dropped[0]})")
    return kept


def _no_two_alike(frames: list[_Frame], uid: str) -> str:
    """The error for a series of several images of which no two share size, orientation and spacing (what is
    left is one slice): say so, rather than "a single slice", which hides the images dropped."""
    orientations = len({tuple(np.round(np.r_[fr.row_dir, fr.col_dir], 1)) for fr in frames})
    shapes = len({fr.shape for fr in frames})
    what = " and ".join([f"{orientations} orientations"] * (orientations > 1) + [f"{shapes} sizes"] * (shapes > 1))
    paths = sorted({str(fr.path) for fr in frames})
    return (f"series {uid}: {len(frames)} images in {what or 'different pixel spacings'}, no two alike "
            f"({_e_g(paths, 2)}): a scout/localizer (e.g. AP and lateral), not a CT volume of parallel slices")


def ct_series(series: list[SeriesInfo]) -> tuple[list[SeriesInfo], list[SeriesInfo]]:
    """(the series that are CT: Modality CT, or where none says CT those naming no other imaging modality;
    the rest: PET, MR, ... beside them, and anything else beside a series that says CT)."""
    ct = ([s for s in series if s.modality == "CT"]
          or [s for s in series if s.modality not in NON_CT_IMAGE_MODALITIES])
    return ct, [s for s in series if s not in ct]


def load_series(series: SeriesInfo, *, allow_single_slice: bool = False, threads: int | None = None) -> CTVolume:
    """The series as a CT volume in HU on a uniform orthogonal grid (see the module docstring).

    Any damaged element is a DicomReadError naming the file, or the series where no one file is to blame; a
    series of another imaging modality (PET, MR, ...; NON_CT_IMAGE_MODALITIES) is a DicomReadError too.
    """
    if series.modality in NON_CT_IMAGE_MODALITIES:
        raise DicomReadError(f"series {series.series_uid} ('{series.description}', {len(series.files)} files) is "
                             f"Modality {series.modality}, not CT: its values are no Hounsfield units")
    try:
        return _load_series(series, allow_single_slice=allow_single_slice, threads=threads)
    except DicomReadError:
        raise
    except _MALFORMED as exc:
        raise DicomReadError(f"series {series.series_uid}: malformed DICOM element "
                             f"({type(exc).__name__}: {exc})") from exc


def _load_series(series: SeriesInfo, *, allow_single_slice: bool = False, threads: int | None = None) -> CTVolume:
    """load_series without the guard.

    threads: read files in parallel (default 1: pydicom parsing holds the GIL, so threads only pay off when
    file reads are slow, e.g. network storage).
    """
    if not series.files:
        raise DicomReadError(f"series {series.series_uid}: no files")
    warnings: list[str] = []
    threads = _LOAD_THREADS if threads is None else max(1, threads)
    paths = list(series.files)
    notes: list[tuple[str, str]] = []   # (message, file) of the warnings pydicom raised while reading
    if threads > 1 and len(paths) > 8:
        with ThreadPoolExecutor(threads) as pool:
            datasets = list(pool.map(lambda p: _noted(notes, p, _read, p), paths))
    else:
        datasets = [_noted(notes, p, _read, p) for p in paths]
    paths, datasets = _drop_non_slices(paths, datasets, series.series_uid, warnings)
    frames: list[_Frame] = []
    by_path = {}
    for path, ds in zip(paths, datasets):
        frames.extend(_frames_of(ds, path))
        by_path[path] = ds
    frames = _fill_missing_rescale(frames, series.series_uid, warnings)
    all_frames = frames
    frames = _keep_consistent(frames, series.series_uid, warnings)
    if len(frames) == 1 and len(all_frames) > 1 and not allow_single_slice:
        raise DicomReadError(_no_two_alike(all_frames, series.series_uid))
    frames = _place_unpositioned(frames, series.series_uid, warnings)
    ref = frames[0]
    normal = _slice_normal(ref.row_dir, ref.col_dir, ref.path)
    row_dir, col_dir = ref.row_dir / np.linalg.norm(ref.row_dir), ref.col_dir / np.linalg.norm(ref.col_dir)
    frames = _one_reconstruction(frames, normal, series.series_uid, warnings)
    s = np.array([fr.position @ normal for fr in frames])
    order = np.lexsort((np.array([fr.instance for fr in frames]), s))
    frames, s = [frames[o] for o in order], s[order]
    dup = np.flatnonzero(np.diff(s) < 1e-3) + 1          # same position twice: keep the first
    if len(dup):
        drop = set(dup.tolist())
        frames, s = [fr for n, fr in enumerate(frames) if n not in drop], np.delete(s, dup)
        warnings.append(f"{len(dup)} images at duplicate slice positions ignored (series {series.series_uid})")
    if len(frames) == 1 and not allow_single_slice:
        raise DicomReadError(f"series {series.series_uid}: a single slice ({frames[0].path}); a CT volume needs "
                             f"at least 2 slices")

    rows, cols = ref.shape
    stack = np.empty((len(frames), rows, cols), dtype=np.float32)   # sorted slices, before regridding
    decoded: dict[Path, np.ndarray] = {}
    padded: list[int] = []   # the kept frames where padding became air (list.append: safe from fill's threads)
    word_marked: list[int] = []   # frames holding a padding value as a whole word that needs the unused bits
    by_value_only: dict[int, np.ndarray] = {}   # frame -> flat pixels matching it as stored values only

    def decode(path: Path) -> np.ndarray:
        return _noted(notes, path, _pixels, by_path[path], path)

    def fill(n: int) -> None:
        fr = frames[n]
        if fr.frame is None:
            words = decode(fr.path)
        else:   # multi-frame: decode the file once, keep it for its other frames
            if fr.path not in decoded:
                decoded[fr.path] = decode(fr.path)
            arr = decoded[fr.path]
            words = arr[fr.frame] if arr.ndim == 3 else arr
        if words.shape != (rows, cols):
            raise DicomReadError(f"{fr.path}: pixel data shape {words.shape} != Rows x Columns {(rows, cols)}")
        stored = _stored_values(words, fr.bits_stored)
        _modality_lut(by_path[fr.path], stored, fr, stack[n])
        np.maximum(stack[n], AIR_HU, out=stack[n])
        masks = _padding_masks(fr, words, stored)
        if masks is None:
            return
        by_word, by_value = masks
        if by_word is not None and by_word.any():
            stack[n][by_word] = AIR_HU
            padded.append(n)
            word_marked.append(n)
        elif by_word is not None:   # decided once all frames are read: the series may mark padding by whole words
            by_value_only[n] = np.flatnonzero(by_value)
        elif by_value.any():
            stack[n][by_value] = AIR_HU
            padded.append(n)

    multi = any(fr.frame is not None for fr in frames)
    threaded = threads > 1 and len(frames) > 8 and not multi
    if threaded:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(fill, range(len(frames))))
    else:
        for n in range(len(frames)):
            fill(n)
    warnings.extend(_summarise_notes(notes, series.series_uid))
    if not any(fr.rescale_given for fr in frames):
        _assume_usual_intercept(stack, series.series_uid, warnings)
    if not word_marked:   # no slice carries the whole word: the stored value is all there is to compare
        for n, flat in by_value_only.items():
            if flat.size:
                stack[n].reshape(-1)[flat] = AIR_HU
                padded.append(n)
    if padded:
        warnings.append(f"pixels at PixelPaddingValue (outside the field of view) set to air in {len(padded)} of "
                        f"{len(frames)} images")
    thickness = float(by_path[ref.path].get("SliceThickness", 0) or 0) or 1.0
    del decoded, datasets, by_path

    sy, sx = ref.pixel_spacing
    p0 = frames[0].position
    if len(frames) == 1:
        warnings.append(f"single-slice series; slice spacing taken as the slice thickness, {thickness:g} mm")
        hu, step = stack, normal * thickness
    else:
        hu, s_grid, spacing_warn = _regrid(stack, s)
        warnings.extend(spacing_warn)
        dz = float(s_grid[-1] - s_grid[0]) / (len(s_grid) - 1)
        # in-plane drift of the slice positions per mm along the normal (gantry tilt shears the grid)
        span = frames[-1].position - p0
        shear = (span - normal * (s[-1] - s[0])) / (s[-1] - s[0])
        step = (normal + shear) * dz
        tilt = math.degrees(math.atan(np.linalg.norm(shear)))
        if tilt > _TILT_DEG:
            hu, p0, step = _untilt(hu, p0, row_dir * sx, col_dir * sy, step, normal * dz)
            warnings.append(f"gantry tilt {tilt:.1f} deg corrected (resampled onto an orthogonal grid)")
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2], affine[:3, 3] = row_dir * sx, col_dir * sy, step, p0
    hu, affine = to_lps(hu, affine)
    source = series.files[0] if len(series.files) == 1 else Path(os.path.commonpath([str(p.parent)
                                                                                     for p in series.files]))
    for w in warnings:
        log.warning("%s: %s", source, w)
    return CTVolume(hu, _spacing(affine), affine, series.series_uid, series.study_uid, source, warnings)


# pydicom's warnings while a file is read or decoded are routed to that file's notes by a thread-local sink:
# warnings.catch_warnings swaps module globals and is not thread-safe (parallel loads of the API left the
# filters and showwarning broken), so nothing here enters it. pydicom sends each warning to its logger, then to
# warnings.warn: a logging filter on pydicom's loggers (thread-safe, no once-per-location registry) records it
# and stops it there (no anonymous 'pydicom: ...' line through the root logger), and a showwarning hook keeps
# the Python warning off stderr for the thread that recorded it (and records warnings of other libraries); both
# are installed once, and pass everything else on.
_sink = threading.local()        # .notes: list of (message, file) being filled by this thread; .where: the file
_hook_lock = threading.Lock()


class _NoteFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        notes = getattr(_sink, "notes", None)
        if notes is None:
            return True
        if record.levelno >= logging.WARNING:
            notes.append((record.getMessage().strip(), _sink.where))
        return False


_NOTE_FILTER = _NoteFilter()
_shown_before = [pywarnings.showwarning]   # the showwarning the hook passes other threads' warnings to
# The _showwarnmsg_impl current when the hook replaced warnings' stand-in (catch_warnings(record=True) sets
# showwarning to _showwarning_orig): while that block lasts, warnings go to its recorder, and the hook saved
# before (pytest's, logging.captureWarnings') is kept for after it.
_standin_impl = [None]


def _show_routed(message, category, filename, lineno, file=None, line=None) -> None:
    notes = getattr(_sink, "notes", None)
    if notes is not None:
        notes.append((str(message).strip(), _sink.where))
        return
    previous = _shown_before[0]
    # The standard one (honouring a catch_warnings(record=True)); also when a hook installed after this one calls
    # back into it (it saved this one as its previous and this one saved it: no endless ping-pong).
    if (_standin_impl[0] is not None and _standin_impl[0] is pywarnings._showwarnmsg_impl) \
            or previous is getattr(pywarnings, "_showwarning_orig", None) or getattr(_sink, "passing", False):
        pywarnings._showwarnmsg_impl(pywarnings.WarningMessage(message, category, filename, lineno, file, line))
        return
    _sink.passing = True
    try:
        previous(message, category, filename, lineno, file, line)
    finally:
        _sink.passing = False


def _pydicom_loggers() -> list[logging.Logger]:
    """pydicom's logger and its children (pydicom.pixels.decoders.base...): a logger's filters see only its own
    records, not those its children propagate."""
    names = [n for n in list(logging.root.manager.loggerDict) if n.startswith("pydicom.")]
    return [logging.getLogger("pydicom"), *(logging.getLogger(n) for n in names)]


def _install_note_hooks() -> None:
    """Once (and again after a catch_warnings elsewhere restored its own showwarning)."""
    if pywarnings.showwarning is _show_routed and _NOTE_FILTER in logging.getLogger("pydicom").filters:
        return
    with _hook_lock:
        current = pywarnings.showwarning
        if current is not _show_routed:
            if current is getattr(pywarnings, "_showwarning_orig", None):
                _standin_impl[0] = pywarnings._showwarnmsg_impl   # the stand-in: keep the hook saved before
            else:
                _shown_before[0], _standin_impl[0] = current, None
            pywarnings.showwarning = _show_routed
        for logger in _pydicom_loggers():
            if _NOTE_FILTER not in logger.filters:
                logger.addFilter(_NOTE_FILTER)


def _noted(notes: list[tuple[str, str]], where, fn, *args):
    """fn(*args) with the warnings it raises recorded as (message, where) in notes (pydicom's, e.g. an RLE
    segment with non-conformant padding, a value of the wrong VR) instead of reaching stderr unattributed."""
    _install_note_hooks()
    saved = getattr(_sink, "notes", None), getattr(_sink, "where", None)
    _sink.notes, _sink.where = notes, str(where)
    try:
        return fn(*args)
    finally:
        _sink.notes, _sink.where = saved


def _summarise_notes(notes: list[tuple[str, str]], uid: str) -> list[str]:
    """One warning per distinct message, naming its file (and how many others raised it)."""
    by_message: dict[str, list[str]] = {}
    for message, where in notes:
        by_message.setdefault(message, []).append(where)
    out = []
    for message, files in by_message.items():
        files = sorted(set(files))
        more = f" and {len(files) - 1} other files" if len(files) > 1 else ""
        out.append(f"{files[0]}{more}: while reading (series {uid}): {message}")
    return out


def _regrid(stack_ZYX: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Slices at sorted normal positions s -> a uniform grid at the median spacing.

    A hand-written 1D linear interpolation along the normal: MONAI's resamplers need a regular source grid, and
    irregular slice positions are not one.
    """
    gaps = np.diff(s)
    med = float(np.median(gaps))
    tol = max(0.05, 0.02 * med)
    if np.all(np.abs(gaps - med) <= tol):
        return stack_ZYX, s, []
    warnings = []
    missing = int(sum(round(g / med) - 1 for g in gaps if g > 1.5 * med))
    if missing:
        warnings.append(f"{missing} missing slice{'s' * (missing > 1)} interpolated (gaps up to {gaps.max():.2f} mm "
                        f"at median spacing {med:.2f} mm)")
    uneven = gaps[gaps <= 1.5 * med]
    if len(uneven) and np.any(np.abs(uneven - med) > tol):
        warnings.append(f"uneven slice spacing ({gaps.min():.2f}-{gaps.max():.2f} mm) resampled to {med:.2f} mm")
    n = int(np.floor((s[-1] - s[0]) / med + 1e-6)) + 1   # never past the last slice (no extrapolation)
    grid = s[0] + med * np.arange(n)
    hi = np.clip(np.searchsorted(s, grid, side="right"), 1, len(s) - 1)
    lo = hi - 1
    w = ((grid - s[lo]) / (s[hi] - s[lo])).clip(0, 1).astype(np.float32)[:, None, None]
    out = stack_ZYX[lo] * (1 - w) + stack_ZYX[hi] * w
    return out.astype(np.float32, copy=False), grid, warnings


def _untilt(hu_ZYX, p0, di, dj, step, step_orth):
    """Resample a sheared (gantry-tilted) grid onto the orthogonal one with MONAI's SpatialResample; the new
    grid is centred on the middle slice so the shear moves both ends by half."""
    from monai.transforms import SpatialResample
    src = np.eye(4)
    src[:3, 0], src[:3, 1], src[:3, 2], src[:3, 3] = di, dj, step, p0
    depth = hu_ZYX.shape[0]
    p0_new = p0 + (step - step_orth) * (depth - 1) / 2
    dst = src.copy()
    dst[:3, 2], dst[:3, 3] = step_orth, p0_new
    img = _to_monai(hu_ZYX + 1024.0, src)
    out = SpatialResample(mode="bilinear", padding_mode="zeros", dtype=np.float32)(
        img, dst_affine=_torch(dst), spatial_size=img.shape[1:])
    hu, _ = _from_monai(out)
    return hu - 1024.0, p0_new, step_orth


# ------------------------------------------------------------------------------------------------ MONAI glue


def _torch(a: np.ndarray):
    import torch
    return torch.as_tensor(a, dtype=torch.float64)


def _to_monai(hu_ZYX: np.ndarray, affine: np.ndarray):
    """(1, i, j, k) MetaTensor with the affine as given (LPS here unless converted by the caller)."""
    import torch
    from monai.data import MetaTensor
    arr = torch.from_numpy(np.ascontiguousarray(np.asarray(hu_ZYX, dtype=np.float32).transpose(2, 1, 0)))
    return MetaTensor(arr[None], affine=_torch(affine))


def _from_monai(img) -> tuple[np.ndarray, np.ndarray]:
    arr = img[0].detach().cpu().numpy() if hasattr(img, "detach") else np.asarray(img)[0]
    affine = np.asarray(img.affine.detach().cpu().numpy() if hasattr(img.affine, "detach") else img.affine,
                        dtype=np.float64)
    return np.ascontiguousarray(arr.transpose(2, 1, 0), dtype=np.float32), affine


def _spacing(affine: np.ndarray) -> tuple[float, float, float]:
    n = np.linalg.norm(affine[:3, :3], axis=0)
    return float(n[2]), float(n[1]), float(n[0])


def to_lps(hu_ZYX: np.ndarray, affine_lps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same volume with its axes reordered and flipped so that i points left, j posterior, k superior, and
    its affine (MONAI Orientation: exact, no interpolation; the arrays themselves when already so)."""
    import nibabel as nib
    if nib.orientations.aff2axcodes(_LPS_RAS @ affine_lps) == ("L", "P", "S"):
        return hu_ZYX, affine_lps
    from monai.transforms import Orientation
    img = _to_monai(hu_ZYX, _LPS_RAS @ affine_lps)       # MONAI affines are RAS
    labels = (("L", "R"), ("P", "A"), ("I", "S"))                       # RAS world, as nibabel
    hu, affine_ras = _from_monai(Orientation(axcodes="LPS", labels=labels)(img))
    return hu, _LPS_RAS @ affine_ras


@functools.cache
def _image_loader():
    """One MONAI LoadImage per process (NIfTI through nibabel, MetaImage/NRRD through ITK)."""
    from monai.transforms import LoadImage
    return LoadImage(image_only=True, ensure_channel_first=False)


def _load_image_file(path: Path, allow_single_slice: bool = False) -> CTVolume:
    """NIfTI / MetaImage / NRRD through MONAI LoadImage, converted to the CTVolume convention (LPS affine).

    Errors (DicomReadError naming the file): a DICOM file under an image suffix, an unreadable file, a 2D or 4D
    image, a single slice (unless allow_single_slice), NaN or infinite voxels. Warnings: no air in the volume (not
    HU?), a NIfTI header without orientation (qform and sform codes 0: mm positions are only voxel sizes).
    """
    if _looks_like_dicom(path)[0]:
        raise DicomReadError(f"{path}: a DICOM file, though named like a {'/'.join(VOLUME_SUFFIXES)} image; give "
                             f"the folder of its series (or rename a multi-frame file to .dcm)")
    try:
        img = _image_loader()(str(path))
    except Exception as exc:  # noqa: BLE001 - reader failures name the file
        hint = ("" if path.name.endswith(VOLUME_SUFFIXES)
                else " (ITK readers want a lower-case suffix: rename the file)")
        raise DicomReadError(f"{path}: cannot read image ({type(exc).__name__}: {exc}){hint}") from exc
    shape = tuple(int(n) for n in img.shape)
    while img.ndim > 3 and img.shape[-1] == 1:      # (I, J, K, 1): NIfTI's unused time axis
        img = img[..., 0]
    if img.ndim == 2:
        raise DicomReadError(f"{path}: a 2D image {shape}; a CT volume needs slices along a third axis")
    if img.ndim != 3:
        raise DicomReadError(f"{path}: a {len(shape)}D image {shape}, e.g. a time series or a multi-channel/RGB "
                             f"image; expected one 3D CT volume")
    if min(img.shape) < 2 and not allow_single_slice:
        raise DicomReadError(f"{path}: a single slice {shape}; a CT volume needs at least 2 slices")
    hu_IJK = np.asarray(img.detach().cpu().numpy() if hasattr(img, "detach") else img, dtype=np.float32)
    bad = int(np.count_nonzero(~np.isfinite(hu_IJK)))
    if bad:
        raise DicomReadError(f"{path}: {bad} of {hu_IJK.size} voxels are NaN or infinite; expected CT in HU with a "
                             f"value in every voxel (fill them, e.g. with -1024 HU air, and retry)")
    warnings = []
    if min(img.shape) < 2:
        warnings.append(f"single-slice image {shape}")
    if float(hu_IJK.min()) > _NO_AIR_HU:
        warnings.append(f"no voxel below {_NO_AIR_HU:g} (values {hu_IJK.min():g} to {hu_IJK.max():g}): a chest CT "
                        f"in Hounsfield units always holds air near -1000; is this CT in HU?")
    meta = getattr(img, "meta", {}) or {}
    if "sform_code" in meta and int(meta["sform_code"]) == 0 and int(meta.get("qform_code", 0)) == 0:
        warnings.append("the NIfTI header has no orientation (qform and sform codes 0): positions in mm are "
                        "taken from the voxel sizes alone")
    affine_lps = _LPS_RAS @ np.asarray(img.affine, dtype=np.float64)
    hu_IJK = np.maximum(hu_IJK, np.float32(AIR_HU))
    hu, affine = to_lps(np.ascontiguousarray(hu_IJK.transpose(2, 1, 0)), affine_lps)
    for w in warnings:   # info: they travel with the volume (findings.json carries them)
        log.info("%s: %s", path, w)
    return CTVolume(hu, _spacing(affine), affine, series_uid="", study_uid="", source=path, warnings=warnings)


def _listing(series: list[SeriesInfo]) -> str:
    return "; ".join(f"{s.series_uid} ({s.modality or 'no Modality'} '{s.description}', {len(s.files)} files)"
                     for s in series)


def split_volume_series(series: list[SeriesInfo]) -> tuple[list[SeriesInfo], list[SeriesInfo]]:
    """(the series that can be CT volumes, the localizers / screens / reports beside them). A single series,
    or a group where none is a volume, is kept whole, so that loading it says what is wrong."""
    if len(series) < 2:
        return series, []
    volumes = [s for s in series if is_volume_series(s)]
    return (volumes, [s for s in series if s not in volumes]) if volumes else (series, [])


def is_volume_series(series: SeriesInfo) -> bool:
    """Whether a series can be a CT volume: several slices (files or frames) that are no localizer, screen
    save or report (see _not_a_slice). Reads the headers of the first, middle and last files only, so a scout
    stored first in the CT series' own UID does not hide the slices behind it."""
    import pydicom
    files = series.files
    sample = sorted({0, len(files) // 2, len(files) - 1}) if files else []
    slices = 0
    planes: Counter = Counter()   # sampled slices by orientation: an AP + lateral scout pair is no volume
    for n in sample:
        try:
            ds = pydicom.dcmread(files[n], stop_before_pixels=True, force=True)
        except Exception:  # noqa: BLE001 - unreadable: load_series will say why
            return True
        if _not_a_slice(ds) is None:
            try:
                frames = int(ds.get("NumberOfFrames", 1) or 1)
                planes[tuple(np.round([float(v) for v in ds.get("ImageOrientationPatient") or []], 1))] += 1
            except _MALFORMED:
                frames = 1
            slices += frames if len(files) == 1 else 1
    if len(files) == len(sample) > 1 and planes:   # every file seen: count the parallel ones only
        slices = min(slices, max(planes.values()))
    return slices > 1 or (slices == 1 and len(files) > len(sample))


def load_volume(path: str | Path, *, allow_single_slice: bool = False) -> CTVolume:
    """A CT volume from a folder holding exactly one CT series, a multi-frame DICOM file, or a
    .nii/.nii.gz/.mha/.mhd/.nrrd image. Several CT series in the folder -> DicomReadError listing them
    (localizer and single-image series beside one volume series are ignored, with a warning)."""
    path = Path(path)
    if path.is_dir():
        scan = scan_folder(path)
        ct, other = ct_series(scan.series)
        if not ct and other:
            raise DicomReadError(f"{path}: no CT series, only {_listing(other)}")
        if not ct:
            reasons = "; ".join(f"{p.name}: {r}" for p, r in scan.skipped[:3])
            raise DicomReadError(f"{path}: no DICOM series found ({len(scan.skipped)} files skipped"
                                 f"{': ' + reasons if reasons else ''})")
        ct, ignored = split_volume_series(ct)   # a scout or dose screen beside the scan is no rival volume
        if len(ct) > 1:
            raise DicomReadError(f"{path}: {len(ct)} CT series in one folder, load them one by one with "
                                 f"scan_folder + load_series: {_listing(ct)}")
        vol = load_series(ct[0], allow_single_slice=allow_single_slice)
        lost = lost_slice_files(scan, ct[0])
        if lost:
            vol.warnings.append(lost_slices_warning(lost))
        vol.warnings += [f"series {s.series_uid} ('{s.description}', {len(s.files)} files) ignored: a localizer "
                         f"or single image" for s in ignored]
        vol.warnings += [f"series {s.series_uid} ('{s.description}', {len(s.files)} files) ignored: Modality "
                         f"{s.modality or 'not given'}, not CT" for s in other]
        return vol
    if not path.is_file():
        raise DicomReadError(f"{path}: no such file or folder")
    if path.name.lower().endswith(VOLUME_SUFFIXES):
        return _load_image_file(path, allow_single_slice)
    if not any(_looks_like_dicom(path)):
        raise DicomReadError(f"{path}: not a DICOM file (nor {'/'.join(VOLUME_SUFFIXES)})")
    ds = _read(path)
    uid = str(ds.get("SeriesInstanceUID", "") or "")
    if int(ds.get("NumberOfFrames", 1) or 1) < 2 and not allow_single_slice:
        raise DicomReadError(f"{path}: a single-frame DICOM file; give the folder holding its series")
    return load_series(SeriesInfo(uid, files=[path], **_series_header(ds)), allow_single_slice=allow_single_slice)
