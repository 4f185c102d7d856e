"""Lung-nodule malignancy: a 3D classifier on the core's vision stream (task "malignancy").

    model = load_default_malignancy_model()
    cube = crop_around(hu_ZYX, spacing_zyx, center_ijk, model.cfg.crop_mm)     # 1 mm isotropic HU cube
    p = model.predict_hu([(cube, (1.0, 1.0, 1.0))], diameters_mm=[8.5])        # P(malignant) per crop

Input definition (train and inference run the same code, `MalignancyModel.prepare`):
  1. the CT around the nodule centre, resampled to 1 mm isotropic by MONAI's `Spacing` (bilinear), cut to a
     `crop_mm`^3 cube centred on the nodule (outside the scan: -1000 HU, air);
  2. a box around the nodule is kept and the rest set to -1000 HU: along z (the slice axis) |dz| <= d/2 +
     `slab_margin_mm`, in-plane |dy|, |dx| <= max(`context_mm`, d/2 + 4 mm), d the nodule diameter (given by the
     caller, e.g. the detector or nodules.csv, else estimated from the image by `estimate_diameter_mm`). The
     LIDC crops this model learns from stop along z at the nodule's extent; the box gives a full CT the same
     field of view, so a crop from a whole scan looks like a training crop;
  3. HU window [hu_min, hu_max] scaled to [0, 1] (MONAI `ScaleIntensityRange`, clipped).
No mask channel, no radiologist rating. Size is visible to the network (isotropic voxels) and through the box;
with `diameter_input` the head also gets log(d) (the diameter the box used), and with `measures_input` the
nodule's shape and density measures (`nodule_measures`, taken on the boxed HU cube of step 2).

Training folders are laid out like LIDC `lidc-nodule-crops`: `nodules.csv` (patient_id, nodule_id and a label;
optional coordX/Y/Z world centre in LPS mm and diameter_mm; columns in any order and case, common other names
accepted, see `read_crop_table`) and `image/<patient_id>_R_<nodule_id>` with any of .nii.gz/.nii/.mha/.mhd/.nrrd,
in HU (or an `image` column naming each file; optional `nodule_mask/` of the same name: only used to find the
centre when no coordinates are given). Labels: 0/1 or Malign/Benign (Diagnosis_value, Diagnosis, label,
malignant...), else a 1-5 malignancy rating (Malignancy_value...), malignant above 3. Research software, not a
medical device.

Shape legend: N crops, B batch, S cube side (voxels = mm).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from apps.settings import cache_dir
from core import registry
from core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from core.tasks import task_id
from core.vision.swin import VisionStream, VisionStreamConfig
from data_connectors.text_files import decoded_file, table_rows

from .tables import compact_key, drop_duplicate_rows

if TYPE_CHECKING:
    from data_connectors.dicom import CTVolume

KIND = "malignancy_classifier"          # the checkpoint kind (registered below)
TASK = "malignancy"
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[2] / "assets" / "medical_imaging" / "malignancy" / "model"
AIR_HU = -1000.0


class CropFolderError(ValueError):
    """A crops folder that is missing a file or a column, or holds an unreadable one."""


@dataclass
class MalignancyConfig:
    # input (see the module docstring)
    crop_mm: int = 32                # cube side in mm = voxels at 1 mm; a multiple of 32 (the vision stream's stride)
    hu_min: float = -1000.0          # HU window scaled to [0, 1]
    hu_max: float = 400.0
    slab_margin_mm: float = 2.0      # kept beyond the nodule's radius along z
    context_mm: float = 12.0         # in-plane half-width kept around the centre (at least d/2 + 4 mm)
    # network: the core's vision stream in 3D, MoE MLPs in the last stage, gates told the task
    embed_dim: int = 12              # stage-0 width (stages: 12, 24, 48, 96; features 192)
    depths: tuple[int, ...] = (1, 1, 1, 1)
    num_heads: tuple[int, ...] = (1, 2, 4, 8)
    out_dim: int = 96                # the stream's token width here (the head's input)
    num_experts: int = 4
    top_k: int = 2
    drop_path: float = 0.1
    dropout: float = 0.3             # before the linear head
    diameter_input: bool = True      # also feed log(diameter) to the head (a learned size term added to the logit)
    measures_input: bool = True      # also feed nodule_measures (shape, density) to the head: a learned linear term
    # training
    epochs: int = 36                 # chosen by patient-level CV among 12, 24, 36 (model card); ~7 min on 1 CPU thread
    batch_size: int = 32
    lr: float = 1e-3                 # AdamW peak, cosine decay after a 1-epoch warm-up
    weight_decay: float = 0.05
    size_lr_mult: float = 30.0       # lr multiplier of the diameter and measures terms
    aux_coef: float = 1.0            # weight of the MoE balance loss (already scaled by the stream's balance_coef)
    augment: bool = True             # flips, axial rot90, small affine, intensity jitter (MONAI)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.crop_mm <= 0 or self.crop_mm % 32:
            raise ValueError(f"crop_mm must be a positive multiple of 32 (the vision stream's stride), "
                             f"got {self.crop_mm}")
        if self.hu_max <= self.hu_min:
            raise ValueError(f"hu_max ({self.hu_max}) must exceed hu_min ({self.hu_min})")

    def stream_config(self) -> VisionStreamConfig:
        return VisionStreamConfig(spatial_dims=3, in_channels=1, embed_dim=self.embed_dim, depths=self.depths,
                                  num_heads=self.num_heads, drop_path=self.drop_path, out_dim=self.out_dim,
                                  num_experts=self.num_experts, top_k=self.top_k,
                                  capacity_factor=0.0)  # dropless: a crop's score must not depend on its batch

    def input_key(self) -> str:
        """The preprocessing fields, as text: part of the cache key of prepared cubes."""
        return json.dumps([self.crop_mm, self.hu_min, self.hu_max, self.slab_margin_mm, self.context_mm, 5])


# ---- crops ----

def crop_around(hu_ZYX: np.ndarray, spacing_zyx: Sequence[float], center_ijk: Sequence[float],
                size_mm: float, pad_hu: float = AIR_HU) -> np.ndarray:
    """A 1 mm isotropic HU cube [S, S, S] (S = round(size_mm)) of `hu_ZYX` centred on voxel `center_ijk`.

    Resampled by MONAI's Spacing (bilinear) from a sub-volume a little larger than the cube; voxel S // 2 along
    each axis is the centre (to 0.5 mm); outside the volume is `pad_hu`.
    """
    from monai.data import MetaTensor
    from monai.transforms import Spacing

    hu = np.asarray(hu_ZYX, dtype=np.float32)
    spacing = np.asarray(spacing_zyx, dtype=np.float64)
    if hu.ndim != 3 or min(hu.shape) < 1:
        raise ValueError(f"crop_around: expected a 3D volume hu_ZYX, got shape {hu.shape}")
    if spacing.shape != (3,) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise ValueError(f"crop_around: spacing_zyx must be 3 positive numbers, got {tuple(spacing_zyx)}")
    center_zyx = np.asarray(center_ijk, dtype=np.float64)[::-1]
    if center_zyx.shape != (3,) or not np.all(np.isfinite(center_zyx)):
        raise ValueError(f"crop_around: center_ijk must be 3 finite numbers, got {tuple(center_ijk)}")
    side = int(round(size_mm))
    if side < 1:
        raise ValueError(f"crop_around: size_mm must be >= 1, got {size_mm}")
    # The sub-volume: the cube plus 2 mm, in source voxels, padded with air where it leaves the scan.
    half_vox = np.ceil((side / 2 + 2) / spacing).astype(int)
    lo = np.floor(center_zyx).astype(int) - half_vox
    sub = _cut(hu, lo, 2 * half_vox + 1, pad_hu)
    image = MetaTensor(torch.from_numpy(sub)[None], affine=torch.diag(torch.tensor([*spacing, 1.0])))
    iso = Spacing(pixdim=(1.0, 1.0, 1.0), mode="bilinear", padding_mode="border")(image)
    center_mm = np.append((center_zyx - lo) * spacing, 1.0)
    center_iso = (np.linalg.inv(np.asarray(iso.affine, dtype=np.float64)) @ center_mm)[:3]
    start = np.round(center_iso).astype(int) - side // 2
    return _cut(np.asarray(iso[0], dtype=np.float32), start, np.array([side] * 3), pad_hu)


def _cut(volume: np.ndarray, start: np.ndarray, size: np.ndarray, fill: float) -> np.ndarray:
    """volume[start : start + size] along each axis, `fill` where that leaves the volume."""
    out = np.full(tuple(int(s) for s in size), fill, dtype=np.float32)
    src = tuple(slice(max(0, a), min(n, a + s)) for a, s, n in zip(start, size, volume.shape))
    dst = tuple(slice(sl.start - a, sl.stop - a) for sl, a in zip(src, start))
    if all(sl.stop > sl.start for sl in src):
        out[dst] = volume[src]
    return out


def estimate_diameter_mm(cube_hu: np.ndarray, threshold_hu: float = -500.0, reach_mm: int = 3) -> float:
    """The nodule's diameter in a 1 mm HU cube centred on it: the equivalent-sphere diameter of the
    connected region above `threshold_hu` that touches the centre (within `reach_mm`), clipped to [3, S]."""
    from scipy import ndimage

    side = cube_hu.shape[0]
    labels, _ = ndimage.label(cube_hu > threshold_hu)
    c = side // 2
    near = labels[c - reach_mm:c + reach_mm + 1, c - reach_mm:c + reach_mm + 1, c - reach_mm:c + reach_mm + 1]
    ids = near[near > 0]
    if ids.size == 0:
        return 3.0
    region = np.count_nonzero(labels == np.bincount(ids).argmax())
    return float(np.clip((6.0 * region / math.pi) ** (1 / 3), 3.0, side))


# What the shape and density of the nodule say beyond its size: calcification (benign), a ground-glass or
# part-solid texture, irregular or spiculated margins and strands into the lung (suspicious). Measured on the
# boxed 1 mm HU cube (`box_cube`: the field of view a training crop and a whole CT share; before the window,
# which clips HU at hu_max). The box is air beyond d/2 + 2 mm along z, so the shells mostly see the nodule's
# in-plane surroundings. Any change here changes the cached inputs: bump MalignancyConfig.input_key's version.
MEASURE_NAMES = (
    "segment_diameter_ratio",   # log(equivalent-sphere diameter of the > -500 HU region at the centre / d)
    "segment_mean_hu", "segment_sd_hu",          # / 1000
    "segment_calcified_share",  # share of the region above 150 HU
    "ball_max_hu",              # / 1000, within d/2 of the centre
    "ball_ground_glass_share",  # -800..-300 HU within d/2
    "ball_solid_share",         # > -300 HU within d/2
    "sphericity",               # (36 pi V^2)^(1/3) / surface, the surface counted in voxel faces
    "elongation_minor", "elongation_middle",     # sqrt of the region's 3rd and 2nd / 1st principal variances
    "margin_gradient",          # mean HU gradient / 1000 on the region's boundary
    "segment_reach",            # share of the shell at 1.5 d/2 + 2..3 mm the region reaches (attached, strands)
    "near_shell_dense_share",   # > -500 HU within d/2 + 1..5 mm
    "far_shell_dense_share",    # > -500 HU within d/2 + 5..10 mm
    "near_shell_mean_hu",       # / 1000
    "ball_mean_hu",             # / 1000
)


MEASURE_CLIP = 5.0            # standardised measures are clipped to +-this (MalignancyModel._standard)
MEASURE_SCALE_FLOOR = 0.05    # least scale a measure is standardised by (its training spread, at least this)


def nodule_measures(cube_hu: np.ndarray, diameter_mm: float) -> np.ndarray:
    """MEASURE_NAMES [M] of the nodule at the centre of a 1 mm HU cube [S, S, S] of diameter `diameter_mm`.

    The region is the > -500 HU component touching the centre (within 2 mm), limited to 1.5 radii + 3 mm so a
    vessel or the pleura it touches does not count as nodule."""
    from scipy import ndimage

    side = cube_hu.shape[0]
    c = side // 2
    r = diameter_mm / 2
    offsets = np.arange(side) - c
    dist_SSS = np.sqrt(offsets[:, None, None] ** 2 + offsets[None, :, None] ** 2 + offsets[None, None, :] ** 2)
    labels, _ = ndimage.label(cube_hu > -500)
    near = labels[c - 2:c + 3, c - 2:c + 3, c - 2:c + 3]
    ids = near[near > 0]
    region = (labels == np.bincount(ids).argmax()) if ids.size else (dist_SSS <= 1)
    region &= dist_SSS <= 1.5 * r + 3
    if not region.any():       # the dense voxel near the centre lies beyond the limit of a sub-mm diameter
        region = dist_SSS <= 1
    volume = int(region.sum())
    padded = np.pad(region, 1).astype(np.int8)      # faces on the cube's border count too
    faces = sum(np.count_nonzero(np.diff(padded, axis=a)) for a in range(3))
    points = np.argwhere(region).astype(np.float64)
    variances = (np.sort(np.linalg.eigvalsh(np.cov(points.T)))[::-1] + 1e-6 if len(points) > 3
                 else np.ones(3))
    gradient = np.sqrt(sum(g ** 2 for g in np.gradient(cube_hu)))
    boundary = region & ~ndimage.binary_erosion(region)
    hu = cube_hu[region]
    ball = cube_hu[dist_SSS <= max(r, 1.5)]
    near_shell = cube_hu[(dist_SSS > r + 1) & (dist_SSS <= r + 5)]
    far_shell = cube_hu[(dist_SSS > r + 5) & (dist_SSS <= r + 10)]
    limit = (dist_SSS > 1.5 * r + 2) & (dist_SSS <= 1.5 * r + 3)
    share = lambda mask: float(mask.mean()) if mask.size else 0.0
    measures = np.array([
        math.log((6 * volume / math.pi) ** (1 / 3) / diameter_mm), hu.mean() / 1000, hu.std() / 1000,
        share(hu > 150), ball.max() / 1000, share((ball > -800) & (ball < -300)), share(ball > -300),
        (36 * math.pi * volume ** 2) ** (1 / 3) / max(faces, 1),
        math.sqrt(variances[2] / variances[0]), math.sqrt(variances[1] / variances[0]),
        gradient[boundary].mean() / 1000 if boundary.any() else 0.0,
        float((region & limit).sum()) / max(int(limit.sum()), 1),
        share(near_shell > -500), share(far_shell > -500),
        near_shell.mean() / 1000 if near_shell.size else AIR_HU / 1000, ball.mean() / 1000,
    ], dtype=np.float32)
    return np.nan_to_num(measures, nan=0.0, posinf=0.0, neginf=0.0)   # NaN voxels must not poison the logit


def resolve_diameter(cube_hu: np.ndarray, diameter_mm: float | None) -> float:
    """`diameter_mm` when it is a positive number, else the estimate from the 1 mm HU cube."""
    if diameter_mm is None or not np.isfinite(diameter_mm) or diameter_mm <= 0:
        return estimate_diameter_mm(cube_hu)
    return float(diameter_mm)


def box_cube(cube_hu: np.ndarray, diameter_mm: float, cfg: MalignancyConfig) -> np.ndarray:
    """Step 2 of the input definition: the nodule box of a 1 mm HU cube kept, the rest air (HU)."""
    side = cube_hu.shape[0]
    if cube_hu.shape != (side, side, side) or side != cfg.crop_mm:
        raise ValueError(f"expected a {cfg.crop_mm}^3 cube, got {cube_hu.shape}")
    half_z = min(max(diameter_mm / 2 + cfg.slab_margin_mm, 2.0), side / 2)
    half_yx = min(max(cfg.context_mm, diameter_mm / 2 + 4.0), side / 2)
    offset = np.abs(np.arange(side) - side // 2)
    keep = ((offset <= half_z)[:, None, None] & (offset <= half_yx)[None, :, None]
            & (offset <= half_yx)[None, None, :])
    return np.where(keep, cube_hu, AIR_HU).astype(np.float32)


def model_inputs(cube_hu: np.ndarray, diameter_mm: float | None, cfg: MalignancyConfig
                 ) -> tuple[np.ndarray, float, np.ndarray]:
    """The model's inputs from a 1 mm HU cube centred on a nodule: the finished cube [S, S, S], the diameter
    (`diameter_mm`, else estimated) and the measures [M]. Training crops and inference share this."""
    d = resolve_diameter(cube_hu, diameter_mm)
    boxed = box_cube(cube_hu, d, cfg)
    return _window(boxed, cfg), d, nodule_measures(boxed, d)


def finish_cube(cube_hu: np.ndarray, diameter_mm: float | None, cfg: MalignancyConfig) -> np.ndarray:
    """Step 2 and 3 of the input definition: the nodule box kept (rest air), HU window to [0, 1]."""
    return _window(box_cube(cube_hu, resolve_diameter(cube_hu, diameter_mm), cfg), cfg)


def _window(boxed_hu: np.ndarray, cfg: MalignancyConfig) -> np.ndarray:
    """Step 3: the HU window [hu_min, hu_max] scaled to [0, 1], clipped."""
    from monai.transforms import ScaleIntensityRange

    window = ScaleIntensityRange(a_min=cfg.hu_min, a_max=cfg.hu_max, b_min=0.0, b_max=1.0, clip=True)
    return np.asarray(window(boxed_hu), dtype=np.float32)


# ---- crops folders ----

@dataclass
class CropSet:
    """Prepared crops of a folder: model inputs, labels and who they came from."""
    cubes: np.ndarray                # [N, S, S, S] float32 in [0, 1], the model's input definition
    labels: np.ndarray               # [N] int64, 1 = malignant
    patient_ids: list[str]
    names: list[str]                 # image file names
    diameters_mm: np.ndarray         # [N] the diameter the box used (csv, else estimated)
    measures: np.ndarray             # [N, M] nodule_measures of each crop (MEASURE_NAMES)
    label_rule: str = ""             # which nodules.csv column(s) gave the labels, and how
    warnings: list[str] = field(default_factory=list)   # what reading nodules.csv left out (duplicate rows)


# nodules.csv headers, compared lower-case with spaces, '_' and '-' removed: canonical name -> accepted spellings.
COLUMN_ALIASES = {
    "patient_id": ("patientid", "patient", "subjectid", "subject", "caseid", "case", "pid"),
    "nodule_id": ("noduleid", "nodule", "lesionid", "lesion", "noduleno", "nodulenumber"),
    "image": ("image", "imagefile", "imagepath", "filename", "file", "path", "crop"),
    "coordX": ("coordx",), "coordY": ("coordy",), "coordZ": ("coordz",),   # world centre, LPS mm (LIDC)
    "diameter_mm": ("diametermm", "diameter", "diam", "diammm", "sizemm"),
}
# Label columns in order of preference (a row's label comes from the first one it has a value in). Binary
# columns take 0/1, true/false, yes/no, malign(ant)/benign; rating columns take LIDC's 1-5 malignancy rating
# (number or words), called malignant above 3 (LIDC's rule per radiologist); a rating-named column holding
# only 0/1 (at least one 0) or label words is read as binary, one of only 1s as ratings (label_rule says so).
LABEL_COLUMNS = ("diagnosisvalue", "diagnosis", "label", "malignant", "ismalignant", "target", "class",
                 "malignancyvalue", "malignancy", "malignancyscore", "malignancyrating", "rating")
RATING_COLUMNS = ("malignancyvalue", "malignancy", "malignancyscore", "malignancyrating", "rating")
LABEL_WORDS = {"1": 1, "0": 0, "true": 1, "false": 0, "yes": 1, "no": 0, "malign": 1, "malignant": 1,
               "benign": 0, "m": 1, "b": 0, "cancer": 1}
RATING_WORDS = {"highlyunlikely": 1, "moderatelyunlikely": 2, "indeterminate": 3, "moderatelysuspicious": 4,
                "highlysuspicious": 5}
IMAGE_DIRS = ("image", "images", ".")     # where <patient_id>_R_<nodule_id>.<suffix> is looked for
MASK_DIRS = ("nodule_mask", "mask", "masks")


@dataclass
class CropTable:
    """nodules.csv read and resolved: one entry per row, labels decided, files found."""
    path: Path
    rows: list[dict]                 # canonical keys (COLUMN_ALIASES) -> cell text; "line": CSV line number
    labels: list[int]
    label_rule: str                  # which column(s) and rule gave the labels
    images: list[Path]
    masks: list[Path | None]
    warnings: list[str] = field(default_factory=list)   # duplicate rows left out


def _table_error(path: Path, problem: str, line: int | None = None) -> CropFolderError:
    return CropFolderError(f"{path}{'' if line is None else f' line {line}'}: {problem}")


def _sniff_rows(table: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(header, [(line number, stripped cells)] of the non-blank rows) of nodules.csv, read as the text
    readers read tables (data_connectors.text_files): UTF-8, UTF-16 with a BOM or Windows-1252, the
    delimiter sniffed over the rows, quoted cells may hold delimiters and newlines."""
    text, _ = decoded_file(table, _table_error)
    _, rows = table_rows(table, text, _table_error)
    return rows[0][1], rows[1:]


def _label_kind(key: str, cells: list[str]) -> str:
    """"binary" or "rating" for a label column, from its name and its non-empty cells. A rating-named
    column is binary only when it holds a 0 or label words (malignant, yes, ...): a column of only 1s
    could be either, and is read as ratings (1 = highly unlikely)."""
    if key not in RATING_COLUMNS:
        return "binary"
    words = [compact_key(c) for c in cells]
    if key != "malignancyvalue" and all(w in LABEL_WORDS for w in words) and any(w != "1" for w in words):
        return "binary"
    return "rating"


def _parse_label(cell: str, kind: str) -> int | None:
    word = compact_key(cell)
    try:
        number = float(cell)
    except ValueError:
        number = None
    if kind == "binary":
        if number is not None:
            return int(number) if number in (0.0, 1.0) else None
        return LABEL_WORDS.get(word)
    rating = RATING_WORDS.get(word) if number is None else number
    return None if rating is None or not 1 <= rating <= 5 else int(rating > 3)


def _find_file(folder: Path, dirs: Sequence[str], stem: str) -> Path | None:
    from data_connectors.dicom import VOLUME_SUFFIXES

    for d in dirs:
        for suffix in VOLUME_SUFFIXES:
            path = folder / d / f"{stem}{suffix}"
            if path.is_file():
                return path
    return None


def _stems(patient: str, nodule: str) -> list[str]:
    """File stems to try: <patient>_R_<nodule>, and with '1.0' written '1' (ids through a spreadsheet)."""
    stems = [f"{patient}_R_{nodule}"]
    try:
        if float(nodule) == int(float(nodule)) and str(int(float(nodule))) != nodule:
            stems.append(f"{patient}_R_{int(float(nodule))}")
    except (ValueError, OverflowError):
        pass
    return stems


def read_crop_table(folder: str | Path) -> CropTable:
    """nodules.csv of a crops folder with its labels decided and its image (and mask) files found.

    Columns are matched by name in any order and case (COLUMN_ALIASES, LABEL_COLUMNS); a ',', ';', tab or '|'
    delimiter is sniffed (data_connectors.text_files). Raises CropFolderError naming the file, line or column at fault.
    """
    from data_connectors.dicom import VOLUME_SUFFIXES

    folder = Path(folder)
    if not folder.is_dir():
        raise CropFolderError(f"{folder}: no such folder")
    table = folder / "nodules.csv"
    if not table.is_file():
        raise CropFolderError(f"{folder}: no nodules.csv (expected the lidc-nodule-crops layout: nodules.csv "
                              "and image/<patient_id>_R_<nodule_id>.nii.gz)")
    header, lines = _sniff_rows(table)
    index: dict[str, int] = {}
    for n, h in enumerate(header):
        index.setdefault(compact_key(h), n)
    where = {name: next((index[a] for a in (compact_key(name), *aliases) if a in index), None)
             for name, aliases in COLUMN_ALIASES.items()}
    if where["patient_id"] is None or (where["nodule_id"] is None and where["image"] is None):
        missing = [n for n in ("patient_id", "nodule_id") if where[n] is None]
        raise CropFolderError(f"{table}: missing column(s) {', '.join(missing)} (found: {', '.join(header)})")
    label_cols = [(k, index[k]) for k in LABEL_COLUMNS if k in index]
    if not label_cols:
        raise CropFolderError(f"{table}: missing the label column (Diagnosis_value 0/1, Diagnosis Malign/Benign, "
                              f"label, malignant, or a 1-5 Malignancy_value rating; found: {', '.join(header)})")
    if not lines:
        raise CropFolderError(f"{table}: no rows (only a header)")
    # a row pasted twice would count its nodule twice
    lines, table_warnings = drop_duplicate_rows(table, lines, key=lambda cells: tuple(c.strip() for c in cells))
    kinds = {k: _label_kind(k, [c[i].strip() for _, c in lines if i < len(c) and c[i].strip()])
             for k, i in label_cols}
    rows, labels, used, images, masks = [], [], Counter(), [], []
    for line, cells in lines:
        cell = lambda i: cells[i].strip() if i is not None and i < len(cells) else ""   # noqa: E731
        row = {name: cell(i) for name, i in where.items()}
        row["line"] = line
        if not row["patient_id"] or not (row["nodule_id"] or row["image"]):
            raise CropFolderError(f"{table} line {line}: empty patient_id or nodule_id")
        label = None
        for k, i in label_cols:
            if cell(i):
                label = _parse_label(cell(i), kinds[k])
                if label is None:
                    raise CropFolderError(f"{table} line {line}: {header[i]} {cell(i)!r} is no label; expected "
                                          + ("a 1-5 malignancy rating" if kinds[k] == "rating"
                                             else "0/1, Malign/Benign, true/false or yes/no"))
                used[(header[i], kinds[k])] += 1
                break
        if label is None:
            raise CropFolderError(f"{table} line {line}: no label (every label column is empty: "
                                  f"{', '.join(header[i] for _, i in label_cols)})")
        if row["image"]:
            given = Path(row["image"])
            image = next((p for p in (given, folder / given, folder / "image" / given) if p.is_file()), None)
            if image is None:
                raise CropFolderError(f"{folder / given}: missing (named by {table.name} line {line})")
        else:
            stems = _stems(row["patient_id"], row["nodule_id"])
            image = next(filter(None, (_find_file(folder, IMAGE_DIRS, s) for s in stems)), None)
            if image is None:
                raise CropFolderError(f"{folder / 'image' / stems[0]}.nii.gz: missing (named by {table.name} line "
                                      f"{line}; also looked for {', '.join(VOLUME_SUFFIXES)} under "
                                      f"{', '.join(d + '/' for d in IMAGE_DIRS)})")
        suffix = next((s for s in VOLUME_SUFFIXES if image.name.lower().endswith(s)), image.suffix)
        rows.append(row)
        labels.append(label)
        images.append(image)
        masks.append(_find_file(folder, MASK_DIRS, image.name[:len(image.name) - len(suffix)]))
    ones = {header[i] for k, i in label_cols
            if kinds[k] == "rating" and {compact_key(c[i]) for _, c in lines if i < len(c) and c[i]} == {"1"}}
    how = {"rating": "1-5 rating, malignant above 3", "binary": "0/1"}
    ambiguous = "; only 1s, which could be 0/1 labels too: read as ratings, 1 = highly unlikely"
    rule = "; ".join(f"{col} ({how[kind]}{ambiguous if col in ones else ''}): {n} rows"
                     for (col, kind), n in used.items())
    return CropTable(table, rows, labels, rule, images, masks, table_warnings)


def _number(row: dict, key: str) -> float | None:
    try:
        value = float(row.get(key) or "nan")
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def load_crop_volume(path: Path) -> CTVolume:
    """A NIfTI/MetaImage/NRRD crop in LPS orientation (axis i toward the patient's left, j posterior, k superior:
    the DICOM convention), read by data_connectors.dicom.load_volume (MONAI LoadImage + Orientation).
    Unreadable files and NaN voxels are CropFolderErrors naming the file."""
    from data_connectors.dicom import load_volume

    try:
        return load_volume(path, allow_single_slice=True)
    except ValueError as exc:
        raise CropFolderError(str(exc) if str(path) in str(exc) else f"{path}: {exc}") from None


def _centre_ijk(row: dict, vol: CTVolume, mask_path: Path | None) -> np.ndarray:
    """The nodule centre in voxels: nodules.csv's world centre (LPS mm), else the mask's centroid, else the
    middle of the crop."""
    shape_ijk = np.array(vol.hu_ZYX.shape[::-1])
    xyz = [_number(row, k) for k in ("coordX", "coordY", "coordZ")]
    if None not in xyz:
        ijk = vol.to_voxel(np.array(xyz))[0]
        if np.all(ijk >= -0.5) and np.all(ijk <= shape_ijk - 0.5):
            return ijk
    if mask_path is not None:
        mask_ZYX = load_crop_volume(mask_path).hu_ZYX
        if mask_ZYX.shape == vol.hu_ZYX.shape and np.any(mask_ZYX > 0):
            return np.argwhere(mask_ZYX > 0).mean(axis=0)[::-1]
    return (shape_ijk - 1) / 2


def _cache_file(crops: CropTable, cfg: MalignancyConfig) -> Path:
    """Keyed by the table, every image and mask file (path, size, mtime) and the input settings."""
    def stamp(p: Path | None) -> list:
        if p is None:
            return []
        s = p.stat()
        return [str(p.resolve()), s.st_size, s.st_mtime_ns]

    key = json.dumps([stamp(crops.path), [stamp(p) for p in crops.images], [stamp(p) for p in crops.masks],
                      len(crops.rows), cfg.input_key()])
    return cache_dir() / "medical" / f"malignancy-crops-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"


def load_crops(folder: str | Path, cfg: MalignancyConfig | None = None, use_cache: bool = True,
               progress: Callable[[int, int], None] | None = None) -> CropSet:
    """Every nodule of a folder laid out like lidc-nodule-crops, prepared as the model's input.

    Prepared cubes are cached under cache_dir()/medical (keyed by nodules.csv, the image and mask files and the
    input settings), so a second call is quick. Raises CropFolderError naming the missing file or column.
    """
    cfg = cfg or MalignancyConfig()
    crops = read_crop_table(folder)
    names = [p.name for p in crops.images]
    labels = np.array(crops.labels, dtype=np.int64)
    patients = [r["patient_id"] for r in crops.rows]
    cache = _cache_file(crops, cfg)
    if use_cache and cache.is_file():
        with np.load(cache) as saved:
            if list(saved["names"]) == names:
                return CropSet(saved["cubes"].astype(np.float32), labels, patients, names, saved["diameters_mm"],
                               saved["measures"], crops.label_rule, crops.warnings)
    cubes, diameters, measures = [], [], []
    for n, (row, image, mask) in enumerate(zip(crops.rows, crops.images, crops.masks)):
        vol = load_crop_volume(image)
        cube_hu = crop_around(vol.hu_ZYX, vol.spacing_zyx, _centre_ijk(row, vol, mask), cfg.crop_mm)
        cube, d, measured = model_inputs(cube_hu, _number(row, "diameter_mm"), cfg)
        cubes.append(cube)
        diameters.append(d)
        measures.append(measured)
        if progress:
            progress(n + 1, len(crops.rows))
    out = CropSet(np.stack(cubes), labels, patients, names, np.array(diameters, dtype=np.float32),
                  np.stack(measures), crops.label_rule, crops.warnings)
    if use_cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        # a name of its own per writer: processes preparing the same folder at once (CV runs side by side,
        # torchrun shards) must not replace each other's half-written file
        tmp = cache.with_name(f"{cache.stem}.tmp-{uuid.uuid4().hex[:8]}.npz")
        try:
            np.savez(tmp, cubes=out.cubes.astype(np.float16), names=np.array(names), diameters_mm=out.diameters_mm,
                     measures=out.measures)
            tmp.replace(cache)
        except BaseException:   # a full disk or Ctrl-C mid-write leaves no stray file behind
            tmp.unlink(missing_ok=True)
            raise
    return out


# ---- the model ----

class MalignancyModel(nn.Module):
    """forward(cubes [B, 1, S, S, S]) -> (logits [B], MoE aux loss); predict_hu for HU crops."""

    def __init__(self, cfg: MalignancyConfig):
        super().__init__()
        self.cfg = cfg
        self.stream = VisionStream(cfg.stream_config())
        self.head = nn.Sequential(nn.LayerNorm(cfg.out_dim), nn.Dropout(cfg.dropout), nn.Linear(cfg.out_dim, 1))
        # The operating point: P(malignant) >= threshold is called malignant (saved with the weights).
        # log(d / 8 mm) -> a logit term, when the config feeds the diameter to the head
        self.size_term = nn.Linear(1, 1) if cfg.diameter_input else None
        # standardised nodule_measures -> a logit term; the centre and scale are the training crops' (train sets
        # them), saved with the weights
        self.measures_term = None
        if cfg.measures_input:
            M = len(MEASURE_NAMES)
            self.measures_term = nn.Linear(M, 1)
            self.register_buffer("measures_mean", torch.zeros(M))
            self.register_buffer("measures_scale", torch.ones(M))
        self.register_buffer("threshold", torch.tensor(0.5))
        self.task = task_id(TASK)

    def forward(self, cubes_B1SSS: torch.Tensor, diameters_B: torch.Tensor | None = None,
                measures_BM: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.stream(cubes_B1SSS, self.task)
        logits_B = self.head(out.pooled).squeeze(-1)
        if self.size_term is not None:
            if diameters_B is None:
                raise ValueError("this malignancy model takes the nodule diameters (diameter_input=True)")
            logits_B = logits_B + self.size_term(torch.log(diameters_B.clamp(min=1.0) / 8.0)[:, None]).squeeze(-1)
        if self.measures_term is not None:
            if measures_BM is None:
                raise ValueError("this malignancy model takes the nodule measures (measures_input=True)")
            logits_B = logits_B + self.measures_term(self._standard(measures_BM)).squeeze(-1)
        return logits_B, out.aux_loss

    def _standard(self, measures_BM: torch.Tensor) -> torch.Tensor:
        """Standardised by the training crops; clipped, so that a measure far outside what training saw (a
        shape no LIDC crop had) moves the logit by a bounded amount."""
        return ((measures_BM - self.measures_mean) / self.measures_scale).clamp(-MEASURE_CLIP, MEASURE_CLIP)

    def prepare(self, hu_ZYX: np.ndarray, spacing_zyx: Sequence[float], diameter_mm: float | None = None
                ) -> tuple[np.ndarray, float, np.ndarray]:
        """The model's input [S, S, S] from a HU crop centred on a nodule (any spacing and size), the diameter
        it used (`diameter_mm`, else estimated from the crop) and the nodule's measures [M]."""
        hu = np.asarray(hu_ZYX, dtype=np.float32)
        if hu.ndim != 3:
            raise ValueError(f"expected a 3D HU crop (z, y, x), got shape {hu.shape}")
        cube_hu = crop_around(hu, spacing_zyx, [s // 2 for s in hu.shape[::-1]], self.cfg.crop_mm)
        return model_inputs(cube_hu, diameter_mm, self.cfg)

    @torch.no_grad()
    def predict_cubes(self, cubes_NSSS: np.ndarray, diameters_N: np.ndarray | None = None,
                      measures_NM: np.ndarray | None = None, batch_size: int = 64) -> np.ndarray:
        """P(malignant) [N] of prepared cubes (and their diameters and measures, for a model that takes them)."""
        was_training = self.training
        self.eval()
        try:
            probs = []
            for i in range(0, len(cubes_NSSS), batch_size):
                batch = torch.as_tensor(np.asarray(cubes_NSSS[i:i + batch_size], dtype=np.float32))[:, None]
                d, m = (None if a is None else torch.as_tensor(np.asarray(a[i:i + batch_size], dtype=np.float32))
                        for a in (diameters_N, measures_NM))
                probs.append(torch.sigmoid(self(batch, d, m)[0]).numpy())
            return np.concatenate(probs) if probs else np.zeros(0, dtype=np.float32)
        finally:
            self.train(was_training)

    def prepare_many(self, crops: list[tuple[np.ndarray, tuple[float, float, float]]],
                     diameters_mm: Sequence[float | None] | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`prepare` over (hu_ZYX crop centred on a nodule, its spacing_zyx) pairs: cubes [N, S, S, S], the
        diameters [N] and measures [N, M]. `diameters_mm`: the nodules' diameters if known (e.g. from the
        detector); unknown ones are estimated from the image."""
        if diameters_mm is not None and len(diameters_mm) != len(crops):
            raise ValueError(f"got {len(diameters_mm)} diameters for {len(crops)} crops")
        diameters = list(diameters_mm) if diameters_mm is not None else [None] * len(crops)
        S, M = self.cfg.crop_mm, len(MEASURE_NAMES)
        if not crops:
            return np.zeros((0, S, S, S), np.float32), np.zeros(0, np.float32), np.zeros((0, M), np.float32)
        cubes, used, measures = zip(*(self.prepare(hu, spacing, d) for (hu, spacing), d in zip(crops, diameters)))
        return np.stack(cubes), np.array(used, dtype=np.float32), np.stack(measures)

    def predict_hu(self, crops: list[tuple[np.ndarray, tuple[float, float, float]]],
                   diameters_mm: Sequence[float | None] | None = None) -> np.ndarray:
        """P(malignant) per (hu_ZYX crop centred on a nodule, its spacing_zyx); see `prepare_many`."""
        return self.predict_cubes(*self.prepare_many(crops, diameters_mm))

    def measure_terms(self, measures_NM: np.ndarray) -> np.ndarray | None:
        """What each measure adds to the logit [N, M] (weight x standardised value; MEASURE_NAMES order), or
        None for a model without measures_input."""
        if self.measures_term is None:
            return None
        standard_NM = self._standard(torch.as_tensor(np.asarray(measures_NM, dtype=np.float32)))
        return (standard_NM * self.measures_term.weight.detach()[0]).numpy()

    def save(self, path: str | Path, metadata: dict | None = None) -> Path:
        return save_checkpoint(self, path, kind=KIND, config=self.cfg, metadata=metadata)


def _synthetic_inputs(cfg: MalignancyConfig, B: int, g: torch.Generator) -> tuple:
    return (torch.rand(B, 1, cfg.crop_mm, cfg.crop_mm, cfg.crop_mm, generator=g),
            3.0 + 20.0 * torch.rand(B, generator=g), torch.randn(B, len(MEASURE_NAMES), generator=g))


def _register() -> None:
    if KIND not in registry.MODELS:
        registry.register(KIND, MalignancyConfig, MalignancyModel, _synthetic_inputs)


_register()


def load_model(path: str | Path) -> MalignancyModel:
    try:
        model, info = load_checkpoint(path)
    except CheckpointError as exc:
        if "missing: measures_" in str(exc):
            raise CheckpointError(f"{path}: saved before the nodule measures (2026-12-02): set \"measures_input\": "
                                  f"false in its config.json to load it as it was trained, or retrain it") from None
        raise
    if info.kind != KIND:
        raise CheckpointError(f"{path}: a {info.kind!r} checkpoint, not a malignancy model ({KIND!r})")
    return model.eval()


def load_default_malignancy_model() -> MalignancyModel:
    """The shipped model (assets/medical_imaging/malignancy/model; see its MODEL_CARD.md)."""
    if not (DEFAULT_MODEL_DIR / "config.json").is_file():
        raise CheckpointError(f"{DEFAULT_MODEL_DIR}: the default malignancy model is missing; rebuild it with "
                                "`moe-suite medical train-malignancy` (command in the model card)")
    return load_model(DEFAULT_MODEL_DIR)


# ---- training ----

def _augmenter(seed: int):
    from monai.transforms import (Compose, RandAffine, RandFlip, RandGaussianNoise, RandRotate90,
                                  RandScaleIntensity, RandShiftIntensity)

    aug = Compose([
        RandFlip(prob=0.5, spatial_axis=0), RandFlip(prob=0.5, spatial_axis=1), RandFlip(prob=0.5, spatial_axis=2),
        RandRotate90(prob=0.75, spatial_axes=(1, 2)),          # in the axial plane: z is the box's slab axis
        RandAffine(prob=0.5, rotate_range=(0.2, 0.2, 0.2), scale_range=(0.1, 0.1, 0.1),
                   translate_range=(1.5, 1.5, 1.5), padding_mode="zeros"),
        RandScaleIntensity(factors=0.1, prob=0.5), RandShiftIntensity(offsets=0.05, prob=0.5),
        RandGaussianNoise(prob=0.3, std=0.02),
    ])
    aug.set_random_state(seed=seed)
    return aug


@dataclass
class TrainResult:
    seconds: float
    steps: int
    history: list[dict] = field(default_factory=list)   # per epoch: loss (and val_auc when validating)


def train(cubes_NSSS: np.ndarray, labels_N: np.ndarray, cfg: MalignancyConfig,
          diameters_N: np.ndarray | None = None, measures_NM: np.ndarray | None = None,
          val: CropSet | None = None, log: Callable[[str], None] | None = None
          ) -> tuple[MalignancyModel, TrainResult]:
    """A MalignancyModel trained on prepared cubes (and their diameters and measures, needed with
    cfg.diameter_input and cfg.measures_input); class-balanced BCE (+ MoE balance loss), AdamW, cosine.
    val: crops scored per epoch."""
    labels_N = np.asarray(labels_N, dtype=np.int64)
    if len(cubes_NSSS) != len(labels_N) or len(labels_N) == 0:
        raise ValueError(f"need as many labels as cubes (> 0), got {len(cubes_NSSS)} cubes, {len(labels_N)} labels")
    n_pos = int(labels_N.sum())
    if n_pos == 0 or n_pos == len(labels_N):
        raise ValueError("training needs both malignant and benign crops")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = MalignancyModel(cfg)
    if model.measures_term is not None:
        if measures_NM is None or len(measures_NM) != len(labels_N):
            raise ValueError("this config takes the nodule measures (measures_input): pass one row per cube")
        measures_NM = np.asarray(measures_NM, dtype=np.float32)
        model.measures_mean.copy_(torch.as_tensor(measures_NM.mean(axis=0)))
        # a floor: a measure constant over the training crops keeps its initial weight (no gradient), and
        # must not turn a small difference at inference into a large term
        model.measures_scale.copy_(torch.as_tensor(measures_NM.std(axis=0)).clamp(min=MEASURE_SCALE_FLOOR))
    aug = _augmenter(cfg.seed) if cfg.augment else None
    # The size and measures terms are a few weights and a bias: at the network's lr, Adam would move each by
    # < 0.3 in a whole run, too little for a logit term; they get their own, larger lr and no weight decay.
    terms = [p for t in (model.size_term, model.measures_term) if t is not None for p in t.parameters()]
    rest = [p for p in model.parameters() if all(p is not q for q in terms)]
    groups = [{"params": rest}] + ([{"params": terms, "lr": cfg.lr * cfg.size_lr_mult, "weight_decay": 0.0}]
                                   if terms else [])
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(labels_N) / cfg.batch_size)
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = min(steps_per_epoch, total // 4 + 1)

    def lr_scale(s: int) -> float:  # linear warm-up, then cosine to 0
        if s < warmup:
            return (s + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_scale)
    pos_weight = torch.tensor((len(labels_N) - n_pos) / n_pos)
    result, start, step = TrainResult(0.0, 0), time.perf_counter(), 0
    for epoch in range(cfg.epochs):
        model.train()
        order, losses = rng.permutation(len(labels_N)), []
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            batch = torch.as_tensor(np.asarray(cubes_NSSS[idx], dtype=np.float32))[:, None]
            if aug is not None:
                batch = torch.stack([torch.as_tensor(aug(x)) for x in batch])
            target = torch.as_tensor(labels_N[idx], dtype=torch.float32)
            d, m = (None if a is None else torch.as_tensor(np.asarray(a[idx], dtype=np.float32))
                    for a in (diameters_N, measures_NM))
            logits, aux = model(batch, d, m)
            loss = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight) + cfg.aux_coef * aux
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            losses.append(loss.item())
        entry = {"epoch": epoch + 1, "loss": round(float(np.mean(losses)), 4)}
        if val is not None:
            entry["val_auc"] = round(auc(model.predict_cubes(val.cubes, val.diameters_mm, val.measures), val.labels), 4)
        result.history.append(entry)
        if log:
            log(json.dumps(entry))
    model.eval()
    result.seconds, result.steps = time.perf_counter() - start, step
    return model, result


# ---- metrics ----

def auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """ROC AUC by ranks (Mann-Whitney U): P(score of a random positive > a random negative), ties count 1/2."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError(f"auc: scores and labels must be 1D and of one length, got {s.shape} and {y.shape}")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("auc: needs at least one positive and one negative")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average rank over each run of tied scores
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def binary_metrics(probs: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    """auc, accuracy, sensitivity, specificity at `threshold`, n, n_malignant (None where undefined: AUC needs
    both classes), so the result is valid JSON."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels).astype(bool)
    if not np.all(np.isfinite(probs)):
        raise ValueError(f"{int(np.sum(~np.isfinite(probs)))} of {len(probs)} predicted probabilities are not finite")
    called = probs >= threshold
    tp, tn = int(np.sum(called & labels)), int(np.sum(~called & ~labels))
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    return {
        "auc": round(auc(probs, labels), 4) if n_pos and n_neg else None,
        "accuracy": round((tp + tn) / len(labels), 4) if len(labels) else None,
        "sensitivity": round(tp / n_pos, 4) if n_pos else None,
        "specificity": round(tn / n_neg, 4) if n_neg else None,
        "n": int(len(labels)), "n_malignant": n_pos, "threshold": round(float(threshold), 4),
    }


def evaluate(model: MalignancyModel, folder: str | Path, limit: int | None = None) -> dict:
    """Metrics of `model` on a crops folder (at the model's saved threshold); `limit` takes the first N crops."""
    crops = load_crops(folder, model.cfg)
    probs = model.predict_cubes(crops.cubes[:limit], crops.diameters_mm[:limit], crops.measures[:limit])
    metrics = binary_metrics(probs, crops.labels[:limit], float(model.threshold))
    metrics["label_rule"] = crops.label_rule
    metrics["warnings"] = crops.warnings + _class_warnings(crops.labels[:limit], folder)
    return metrics


def _class_warnings(labels_N: np.ndarray, folder: str | Path) -> list[str]:
    n_pos = int(np.sum(labels_N))
    if 0 < n_pos < len(labels_N):
        return []
    kind = "malignant" if n_pos else "benign"
    return [f"{folder}: all {len(labels_N)} crops are {kind}: AUC and {'specificity' if n_pos else 'sensitivity'} "
            f"are undefined (null)"]


def patient_folds(patient_ids: Sequence[str], labels: Sequence[int], folds: int, seed: int = 0) -> np.ndarray:
    """Fold number [N] per crop: whole patients per fold, stratified by whether a patient has a malignant nodule
    (patients of each kind shuffled, then dealt round-robin)."""
    patient_ids, labels = list(patient_ids), np.asarray(labels)
    worst: dict[str, int] = {}
    for p, y in zip(patient_ids, labels):
        worst[p] = max(worst.get(p, 0), int(y))
    if folds < 2 or folds > len(worst):
        raise ValueError(f"folds must be between 2 and the number of patients ({len(worst)}), got {folds}")
    rng = np.random.default_rng(seed)
    fold_of: dict[str, int] = {}
    dealt = 0
    for kind in (1, 0):
        group = sorted(p for p, y in worst.items() if y == kind)
        for p in rng.permutation(group):
            fold_of[str(p)] = dealt % folds
            dealt += 1
    return np.array([fold_of[p] for p in patient_ids])


PREDICTION_COLUMNS = ("image", "patient_id", "fold", "label", "diameter_mm", "probability")


def cross_validate(folder: str | Path, folds: int = 5, cfg: MalignancyConfig | None = None,
                   log: Callable[[str], None] | None = None, predictions: str | Path | None = None) -> dict:
    """Patient-level k-fold CV: per-fold AUC, pooled out-of-fold metrics (threshold 0.5), and the AUC of the
    diameter alone as a reference (pooled, and per fold like auc_mean). `predictions`: a CSV to write with
    each crop's out-of-fold P(malignant) (PREDICTION_COLUMNS)."""
    cfg = cfg or MalignancyConfig()
    start = time.perf_counter()
    crops = load_crops(folder, cfg)
    if problems := _class_warnings(crops.labels, folder):
        raise CropFolderError(problems[0] + "; cross-validation needs both classes")
    fold_N = patient_folds(crops.patient_ids, crops.labels, folds, cfg.seed)
    probs = np.zeros(len(crops.labels))
    per_fold: list[float | None] = []
    diameter_per_fold: list[float] = []
    warnings = list(crops.warnings)
    for k in range(folds):
        test = fold_N == k
        shared = ({p for p, t in zip(crops.patient_ids, test) if t}
                  & {p for p, t in zip(crops.patient_ids, test) if not t})
        if shared:  # patient_folds guarantees this; a patient on both sides would inflate the AUC
            raise RuntimeError(f"fold {k}: patients in both train and test: {sorted(shared)[:5]}")
        if len(set(crops.labels[~test].tolist())) < 2:
            raise CropFolderError(f"{folder}: fold {k}'s training set holds only one class; {folds}-fold "
                                  f"cross-validation needs at least 2 patients with a malignant nodule and 2 "
                                  f"with a benign one (use fewer folds or more patients)")
        model, result = train(crops.cubes[~test], crops.labels[~test], cfg, crops.diameters_mm[~test],
                              crops.measures[~test])
        probs[test] = model.predict_cubes(crops.cubes[test], crops.diameters_mm[test], crops.measures[test])
        n_pos = int(crops.labels[test].sum())
        fold_auc = round(auc(probs[test], crops.labels[test]), 4) if 0 < n_pos < int(test.sum()) else None
        if fold_auc is not None:
            diameter_per_fold.append(auc(crops.diameters_mm[test], crops.labels[test]))
        if fold_auc is None:
            warnings.append(f"fold {k}: its {int(test.sum())} test crops are all "
                            f"{'malignant' if n_pos else 'benign'}: no AUC (left out of auc_mean)")
        per_fold.append(fold_auc)
        if log:
            log(json.dumps({"fold": k, "auc": fold_auc, "n_test": int(test.sum()),
                            "train_seconds": round(result.seconds, 1)}))
    pooled = binary_metrics(probs, crops.labels, 0.5)
    defined = [a for a in per_fold if a is not None]
    if predictions is not None:
        from .tables import write_csv_atomic

        write_csv_atomic(predictions, PREDICTION_COLUMNS, [
            dict(zip(PREDICTION_COLUMNS, (name, patient, int(k), int(y), round(float(d), 3), round(float(p), 6))))
            for name, patient, k, y, d, p in zip(crops.names, crops.patient_ids, fold_N, crops.labels,
                                                  crops.diameters_mm, probs)])
    return {
        "auc_mean": round(float(np.mean(defined)), 4) if defined else None,
        "auc_std": round(float(np.std(defined)), 4) if defined else None,
        "auc_per_fold": per_fold, "auc_pooled": pooled["auc"], "accuracy": pooled["accuracy"],
        "sensitivity": pooled["sensitivity"], "specificity": pooled["specificity"], "threshold": 0.5,
        "n": pooled["n"], "n_malignant": pooled["n_malignant"], "n_patients": len(set(crops.patient_ids)),
        "folds": folds, "epochs": cfg.epochs, "diameter_only_auc": round(auc(crops.diameters_mm, crops.labels), 4),
        "diameter_only_auc_mean": round(float(np.mean(diameter_per_fold)), 4) if diameter_per_fold else None,
        "seconds": round(time.perf_counter() - start, 1), "label_rule": crops.label_rule, "warnings": warnings,
        "config": dataclasses.asdict(cfg),
    }
