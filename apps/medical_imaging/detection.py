"""Lung-nodule detection: candidates over the lungs, rated from the image, then fused with the report.

    detector = load_detector()                       # the shipped checkpoint (assets/medical_imaging/detector)
    detections = detector.detect(hu_ZYX, affine, reading)   # reading: report.ReportReading or None

1. Reorder the volume's axes to LPS (MONAI `Orientation`, exact: a volume read by data_connectors already is;
   any other array gives the same findings), resample to an isotropic `grid_mm` grid (MONAI `Spacing`).
2. Lung mask: smoothed HU below `lung_hu`, air components not touching the in-plane border, holes
   filled slice by slice and closed, so vessels and juxtapleural nodules are inside.
3. Candidates: scale-normalised Hessian blob maxima (a ball of radius r answers most at
   sigma = r / sqrt(3)) inside the lungs, strongest first, suppressed within each other's radius; with
   `per_scale_peaks` the maxima of each scale (suppressed within the smaller radius, so a small nodule
   beside a vessel keeps its own candidate), sub-voxel centres and the measures at every scale.
4. Rating, shipped checkpoint (`rich_features`, `network_feature`, `network` off): the core's VisionStream
   (3D Swin, task "nodule_detection") reads each candidate's `patch`^3 crop and gives a nodule logit
   (patch_network.py trains it); boosted trees (fitted with sklearn, kept as TreeEnsemble buffers) over
   58 image features per candidate and that logit give the image logit; with a report, a logistic report
   stage over (image logit, report fit incl. the stated density, where the candidate ranks among those a
   mention could mean) gives the fused logit; non-maximum suppression by the image rating drops duplicates.
   Rating, networks (`network` on, older checkpoints): each candidate's `patch`^3 crop goes through the
   core's VisionStream (3D, task "nodule_detection"); the report's mentions (text-stream sentence vector + how well the mention's lobe,
   side and size fit the candidate) are text tokens; CrossModalAttention mixes the two and a linear head
   gives the nodule logit, added to frozen priors fitted first by logistic regression: a "blob prior" on
   the candidate's measurements (blob strength, scale, centre HU, position), their products and the ball
   against the shell around it in the patch (an isolated nodule sits in lung, a vessel junction has
   vessels leaving it), and, with a report, a "report prior" on the candidate's best lobe / side / size
   fit to the positive and negated mentions. The head starts at zero, so training begins at the priors
   and the networks learn what image and report add.
   Without a report the same network runs on the image tokens alone (trained with the report dropped at
   random, so both paths are learned). The epoch kept is the best on held-out studies (ties: the later),
   epoch 0 (the prior alone) included.
5. Optional dense nodule map (`nodule_map`, nodule_map.py; not in the shipped checkpoint): a 3D U-Net's
   nodule-centre heatmap over the grid proposes candidates at its peaks and a logistic map stage after the
   image trees reads it.

Shape legend: B candidates, M report mentions, P patch side, F feature width, D fusion width.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from core import registry
from core.fusion.cross_modal import CrossModalAttention
from core.tasks import task_id
from core.vision.swin import VisionStream, VisionStreamConfig
from data_connectors.dicom import to_lps

from .nodule_map import NoduleMapConfig, build_network, map_peaks, predict_map
from .report import EMBED_DIM, LOBES, Mention, ReportReading

KIND = "nodule_detector"
DEFAULT_DIR = Path(__file__).resolve().parents[2] / "assets" / "medical_imaging" / "detector" / "model"
HU_RANGE = (-1000.0, 400.0)   # patches are clipped to this window and scaled to [0, 1]
CACHE_VERSION = 3             # bump when candidate generation changes
CAND_FEATURES = 8
PAIR_FEATURES = 26
QUAD_FEATURES = 6             # products of the blob measurements (see quad_features)
SHAPE_FEATURES = 5            # inside vs shell of the candidate's ball in its patch (see shape_features)
REPORT_FEATURES = 9           # a candidate's best fit to the report's mentions (see report_features)
RANK_FEATURES = 4             # where a candidate ranks among those a mention could mean (see mention_rank_features)
MAP_FEATURES = 4              # what the nodule map says of a candidate (see map_features)
MAP_STAGE_INPUTS = 8          # what the map stage reads (see map_stage_inputs)
# A candidate's smoothed centre HU that fits a mention's stated density: ground-glass nodules centre at
# -740..-510 HU on the 2 mm grid, solid ones (small ones lose density to partial volume) at -610 and above
# (candidates of 40 synthetic training studies, 1st-99th percentiles); vessel junctions mostly above -400.
SUBSOLID_MAX_HU = -480.0
SOLID_MIN_HU = -650.0
PROFILE_RADII = (1.0, 2.0, 3.0, 4.5, 6.5, 9.5, 13.5)   # outer radii (grid voxels) of the patch's radial shells


def tiny_vision() -> VisionStreamConfig:
    """A small 3D Swin with MoE MLPs in its last stage: cheap on two CPU cores."""
    return VisionStreamConfig(spatial_dims=3, in_channels=1, embed_dim=12, depths=(1, 1, 1, 1),
                              num_heads=(1, 2, 4, 8), out_dim=64, moe_stages=(3,), num_experts=4, top_k=2)


@dataclass
class DetectorConfig:
    grid_mm: float = 2.0              # isotropic spacing candidates and patches are taken on
    patch: int = 32                   # patch side P in grid voxels (a multiple of the Swin's stride 32)
    lung_hu: float = -400.0           # air/lung below this (after smoothing)
    lung_closing_mm: float = 15.0     # radius of the lung mask's closing: a nodule on the pleura up to ~2x this
                                      # wide is filled back into the lung (10 before 2026-11-30)
    sigmas_mm: tuple[float, ...] = (1.2, 1.7, 2.4, 3.4, 4.8, 6.8, 9.0)  # LoG scales: radii ~2..16 mm
    blob_hu_max: float = -550.0       # HU ceiling of the image blobs are measured on
    min_response: float = 5.0         # blob measure (HU, scale-normalised) a candidate needs
    max_candidates: int = 160         # strongest candidates kept per scan
    vision: VisionStreamConfig = field(default_factory=tiny_vision)
    dim: int = 64                     # fusion width D (= vision.out_dim)
    heads: int = 4                    # cross-modal attention heads
    mention_dim: int = 16             # bottleneck width of a report mention's sentence vector
    dropout: float = 0.2              # before the head
    threshold: float = 0.3            # default operating point for reported findings
    extra_priors: bool = False        # frozen logistic priors on measurement products, ball-vs-shell and report
                                      # fit (off: checkpoints from before they existed; training turns it on)
    per_scale_peaks: bool = False     # candidates: maxima of each scale's response, suppressed within the smaller
                                      # blob's radius (a small nodule beside a vessel keeps its own candidate);
                                      # False: maxima of the maximum over scales (older checkpoints)
    subvoxel: bool = False            # refine candidate centres by a parabola through the response (reported mm)
    rich_features: bool = False       # cand_BF carries the tree rater's features (see image_features), not 8 only
    network: bool = True              # the Swin / fusion network rates too; False with image trees: the trees
                                      # alone, no Swin pass (the networks did not beat the priors on validation)
    image_trees: tuple[int, int, int] = (0, 0, 0)    # (nodes, trees, depth) of the boosted-tree image prior
    report_stage: bool = False        # with image trees: a logistic stage over (image logit, report fit, mention
                                      # ranks) rates the scan's candidates together (see NoduleRater.report_stage)
    nms: float = 0.0                  # after rating, drop a candidate within nms x the radius of a better-rated one
                                      # (by the image rating; 0: keep all): a structure answers at several scales
    network_feature: bool = False     # the Swin rates each candidate's patch alone (patch_network.py: trained first,
                                      # then frozen) and its logit is one more input of the image trees
    nodule_map: NoduleMapConfig | None = None   # a dense nodule map (nodule_map.py, trained first, then frozen):
                                      # its peaks join the candidates and a logistic map stage after the image trees
                                      # reads its values at each candidate (None: older checkpoints)
    map_candidates: int = 20          # with nodule_map: at most this many map peaks per scan become candidates
    map_min_p: float = 0.3            # the map probability such a peak needs

    @property
    def cand_features(self) -> int:
        """Width of cand_BF: the 8 classic measurements, then (rich_features) the tree rater's extras."""
        return CAND_FEATURES + (rich_feature_count(len(self.sigmas_mm)) if self.rich_features else 0)

    def __post_init__(self) -> None:
        if self.patch % self.vision.stride:
            raise ValueError(f"patch {self.patch} must be a multiple of the vision stride {self.vision.stride}")
        if self.vision.out_dim != self.dim:
            raise ValueError(f"vision.out_dim ({self.vision.out_dim}) must equal dim ({self.dim})")
        if self.nodule_map is not None and (self.network or not self.per_scale_peaks):
            raise ValueError("a nodule map works with per_scale_peaks and the image trees (network off)")
        if not 0 < self.map_min_p <= 1:
            raise ValueError(f"map_min_p must lie in (0, 1], got {self.map_min_p}")


# ---------------------------------------------------------------------------------------------- grid + lungs


@dataclass
class Grid:
    hu_ZYX: np.ndarray                # float32 on the isotropic grid
    affine: np.ndarray                # 4x4: grid (i, j, k, 1) -> patient (x, y, z, 1)
    lung_ZYX: np.ndarray              # bool lung mask (filled)
    search_ZYX: np.ndarray            # bool region where candidate centres may lie
    lung_box: tuple[np.ndarray, np.ndarray]   # (lo, hi) of the lung mask, grid (k, j, i)
    midline_i: float                  # grid column between the two lungs


def resample(hu_ZYX: np.ndarray, affine: np.ndarray, grid_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """The volume on an isotropic grid (MONAI Spacing, bilinear) and that grid's (i, j, k) affine."""
    from monai.data import MetaTensor
    from monai.transforms import Spacing

    perm = np.eye(4)[[2, 1, 0, 3]]                   # (k, j, i) <-> (i, j, k)
    affine_kji = affine @ perm                       # array axes (k, j, i) -> patient mm
    image = MetaTensor(torch.from_numpy(np.ascontiguousarray(hu_ZYX, dtype=np.float32))[None],
                       affine=torch.from_numpy(affine_kji))
    out = Spacing(pixdim=(grid_mm,) * 3, mode="bilinear", padding_mode="border")(image)
    return out[0].numpy().astype(np.float32), out.affine.numpy().astype(np.float64) @ perm


def midline_column(mask_ZYX: np.ndarray) -> float:
    """The mediastinum's column: the emptiest column of the mask between the lungs' outer edges."""
    cols = np.argwhere(mask_ZYX)[:, 2]
    lo, hi = np.percentile(cols, [5, 95])
    hist = np.bincount(cols, minlength=mask_ZYX.shape[2]).astype(float)
    mid_range = np.arange(int(lo + 0.25 * (hi - lo)), int(lo + 0.75 * (hi - lo)) + 1)
    return float(mid_range[np.argmin(hist[mid_range])]) if len(mid_range) else float(cols.mean())


def _closing(mask_ZYX: np.ndarray, r: float) -> np.ndarray:
    """Closing with a ball of radius r voxels (dilate, then erode) through distance transforms: exact for a
    Euclidean ball and far cheaper than a structuring element of that size."""
    from scipy import ndimage as ndi

    out = np.zeros_like(mask_ZYX)
    if not mask_ZYX.any():
        return out
    where = np.argwhere(mask_ZYX)
    box = tuple(slice(lo, hi + 1) for lo, hi in zip(where.min(0), where.max(0)))   # the closing stays inside it
    pad = int(np.ceil(r)) + 1
    dilated = ndi.distance_transform_edt(~np.pad(mask_ZYX[box], pad)) <= r
    out[box] = (ndi.distance_transform_edt(dilated) > r)[pad:-pad, pad:-pad, pad:-pad]
    return out


def lung_mask(hu_ZYX: np.ndarray, lung_hu: float, grid_mm: float, closing_mm: float = 15.0) -> np.ndarray:
    """Both lungs, filled: air below lung_hu not connected to the in-plane border, big components only,
    closed with a ball of closing_mm (a nodule on the pleura is filled back in), each side of the midline
    on its own (the closing never bridges the mediastinum between the lungs)."""
    from scipy import ndimage as ndi

    air = ndi.gaussian_filter(hu_ZYX, 1.0) < lung_hu
    labels, n = ndi.label(air)
    if n == 0:
        return np.zeros_like(air)
    border = np.unique(np.concatenate([labels[:, 0].ravel(), labels[:, -1].ravel(),
                                       labels[:, :, 0].ravel(), labels[:, :, -1].ravel()]))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    sizes[border] = 0
    min_voxels = max(50_000 / grid_mm ** 3, 0.05 * sizes.max())     # 50 ml, or a twentieth of the biggest
    mask = np.isin(labels, np.flatnonzero(sizes >= min_voxels))
    if not mask.any():
        return mask
    low_side_X = np.arange(mask.shape[2]) < int(midline_column(mask))
    mask = _closing(mask & low_side_X, closing_mm / grid_mm) | _closing(mask & ~low_side_X, closing_mm / grid_mm)
    for k in range(mask.shape[0]):
        mask[k] = ndi.binary_fill_holes(mask[k])
    return mask


def prepare_grid(hu_ZYX: np.ndarray, affine: np.ndarray, cfg: DetectorConfig) -> Grid:
    """The isotropic LPS grid, its lung mask and where candidates may lie. The axis order matters beyond
    the affine (the midline is a column, patches are seen as laid out), so any orientation is made LPS first."""
    hu, grid_affine = resample(*to_lps(hu_ZYX, affine), cfg.grid_mm)
    lung = lung_mask(hu, cfg.lung_hu, cfg.grid_mm, cfg.lung_closing_mm)
    search = lung
    if lung.any():
        where = np.argwhere(lung)
        box = (where.min(0).astype(float), where.max(0).astype(float))
        midline = midline_column(lung)
    else:
        box = (np.zeros(3), np.array(hu.shape, float) - 1)
        midline = hu.shape[2] / 2
    return Grid(hu, grid_affine, lung, search, box, midline)


# ---------------------------------------------------------------------------------------------- candidates


@dataclass
class Candidate:
    kji: np.ndarray                   # grid voxel (k, j, i), int
    response: float                   # scale-normalised LoG response (HU)
    diameter_mm: float                # from the best LoG scale: 2 * sqrt(3) * sigma
    center_hu: float                  # smoothed HU at the centre
    kji_f: np.ndarray | None = None   # sub-voxel centre (grid k, j, i), float; None: kji
    scales_S: np.ndarray | None = None   # blob measure at each scale, at the centre
    tubes_S: np.ndarray | None = None    # tube measure (sigma^2 * -middle eigenvalue) at each scale, at the centre
    from_map: bool = False            # proposed by the nodule map's peak, not by the blob measure

    @property
    def center(self) -> np.ndarray:
        return self.kji if self.kji_f is None else self.kji_f


def largest_eigenvalue(a00, a11, a22, a01, a02, a12) -> np.ndarray:
    """Largest eigenvalue of many symmetric 3x3 matrices, in closed form (trigonometric solution of the
    characteristic cubic): vectorised, unlike a LAPACK call per matrix."""
    return eigenvalues(a00, a11, a22, a01, a02, a12)[0]


def eigenvalues(a00, a11, a22, a01, a02, a12) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(largest, middle, smallest) eigenvalues of many symmetric 3x3 matrices, in closed form."""
    q = (a00 + a11 + a22) / 3
    p1 = a01 ** 2 + a02 ** 2 + a12 ** 2
    p = np.sqrt(((a00 - q) ** 2 + (a11 - q) ** 2 + (a22 - q) ** 2 + 2 * p1) / 6)
    safe = np.where(p > 1e-12, p, 1.0)
    b00, b11, b22 = (a00 - q) / safe, (a11 - q) / safe, (a22 - q) / safe
    b01, b02, b12 = a01 / safe, a02 / safe, a12 / safe
    det = b00 * (b11 * b22 - b12 ** 2) - b01 * (b01 * b22 - b12 * b02) + b02 * (b01 * b12 - b11 * b02)
    phi = np.arccos(np.clip(det / 2, -1, 1)) / 3
    big = np.where(p > 1e-12, q + 2 * p * np.cos(phi), q)
    small = np.where(p > 1e-12, q + 2 * p * np.cos(phi + 2 * math.pi / 3), q)
    return big, 3 * q - big - small, small


def blob_response(hu_ZYX: np.ndarray, mask_ZYX: np.ndarray, sigma_vox: float,
                  tube: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Scale-normalised bright-blob measure at one scale: sigma^2 * -lambda_max of the Hessian where all
    three eigenvalues are negative (a ball), near 0 for tubes (vessels: one eigenvalue ~ 0) and sheets.
    With `tube`, also sigma^2 * -lambda_mid (large for a ball and for a tube, ~0 for a sheet)."""
    from scipy import ndimage as ndi

    g = ndi.gaussian_filter(hu_ZYX, sigma_vox)
    grads = np.gradient(g)
    idx = np.nonzero(mask_ZYX)
    h = {}
    for a in range(3):
        second = np.gradient(grads[a])
        for b in range(a, 3):
            h[a, b] = second[b][idx].astype(np.float64)
    lam_max, lam_mid, _ = eigenvalues(h[0, 0], h[1, 1], h[2, 2], h[0, 1], h[0, 2], h[1, 2])
    out = np.zeros(hu_ZYX.shape, np.float32)
    out[idx] = np.maximum(0.0, -lam_max) * sigma_vox ** 2
    if not tube:
        return out
    tubes = np.zeros(hu_ZYX.shape, np.float32)
    tubes[idx] = np.maximum(0.0, -lam_mid) * sigma_vox ** 2
    return out, tubes


def blob_image(grid: Grid, cfg: DetectorConfig) -> np.ndarray:
    """The image blobs are measured on: outside the lungs set to lung parenchyma, so the chest wall, heart
    and bone make no blobs; the ceiling at blob_hu_max gives ground-glass nodules (-700..-400 HU) nearly the
    contrast of solid ones."""
    return np.where(grid.lung_ZYX, np.clip(grid.hu_ZYX, HU_RANGE[0], cfg.blob_hu_max), -850.0).astype(np.float32)


def find_candidates(grid: Grid, cfg: DetectorConfig, map_ZYX: np.ndarray | None = None) -> list[Candidate]:
    """The scan's candidates; with a nodule map (per_scale_peaks only), its peaks too (see map_candidates)."""
    from scipy import ndimage as ndi

    if cfg.per_scale_peaks:
        return find_candidates_per_scale(grid, cfg, map_ZYX)
    if map_ZYX is not None:
        raise ValueError("a nodule map needs per_scale_peaks (the measures at every scale of its peaks)")

    hu = blob_image(grid, cfg)
    best = np.zeros(hu.shape, dtype=np.float32)
    best_s = np.zeros(hu.shape, dtype=np.int8)
    for s, sigma_mm in enumerate(cfg.sigmas_mm):
        response = blob_response(hu, grid.search_ZYX, sigma_mm / cfg.grid_mm)
        better = response > best
        best[better], best_s[better] = response[better], s
    peaks = (best == ndi.maximum_filter(best, size=3)) & grid.search_ZYX & (best >= cfg.min_response)
    kji_N3 = np.argwhere(peaks)
    kji_N3 = kji_N3[np.argsort(-best[peaks], kind="stable")]
    smooth = ndi.gaussian_filter(grid.hu_ZYX, 0.7)
    kept: list[Candidate] = []
    for kji in kji_N3:
        sigma_mm = cfg.sigmas_mm[best_s[tuple(kji)]]
        if any(np.linalg.norm(kji - c.kji) < max(1.5, 0.8 * c.diameter_mm / 2 / cfg.grid_mm) for c in kept):
            continue
        kept.append(Candidate(kji, float(best[tuple(kji)]), 2 * math.sqrt(3) * sigma_mm, float(smooth[tuple(kji)])))
        if len(kept) == cfg.max_candidates:
            break
    return kept


def _parabola_offset(r_ZYX: np.ndarray, kji: np.ndarray) -> np.ndarray:
    """Sub-voxel offset (-0.5..0.5 per axis) of a response maximum: the vertex of the parabola through it
    and its two neighbours along each axis."""
    off = np.zeros(3)
    f0 = r_ZYX[tuple(kji)]
    for a in range(3):
        if not 0 < kji[a] < r_ZYX.shape[a] - 1:
            continue
        lo, hi = kji.copy(), kji.copy()
        lo[a] -= 1
        hi[a] += 1
        fm, fp = r_ZYX[tuple(lo)], r_ZYX[tuple(hi)]
        den = fm - 2 * f0 + fp
        if den < -1e-6:
            off[a] = float(np.clip(0.5 * (fm - fp) / den, -0.5, 0.5))
    return off


def find_candidates_per_scale(grid: Grid, cfg: DetectorConfig, map_ZYX: np.ndarray | None = None) -> list[Candidate]:
    """Maxima of each scale's blob measure (not of their maximum: there a vessel's larger-scale answer
    swallows a small nodule beside it), strongest first; one suppresses another within max(1.5 voxels,
    0.8 x the smaller of the two radii), so a blob's answers at neighbouring scales merge but a small
    blob next to a big one stays. Each keeps its measures at all scales (features for the rater)."""
    from scipy import ndimage as ndi

    hu = blob_image(grid, cfg)
    S = len(cfg.sigmas_mm)
    blob_SZYX = np.zeros((S,) + hu.shape, np.float32)
    tube_SZYX = np.zeros((S,) + hu.shape, np.float32)
    peaks = []
    for s, sigma_mm in enumerate(cfg.sigmas_mm):
        blob_SZYX[s], tube_SZYX[s] = blob_response(hu, grid.search_ZYX, sigma_mm / cfg.grid_mm, tube=True)
        r = blob_SZYX[s]
        kji_N3 = np.argwhere((r == ndi.maximum_filter(r, size=3)) & grid.search_ZYX & (r >= cfg.min_response))
        peaks.append(np.c_[kji_N3, np.full(len(kji_N3), s), r[tuple(kji_N3.T)]])
    P_N5 = np.concatenate(peaks) if peaks else np.zeros((0, 5))
    P_N5 = P_N5[np.argsort(-P_N5[:, 4], kind="stable")]
    smooth = ndi.gaussian_filter(grid.hu_ZYX, 0.7)
    radius_S = np.array([math.sqrt(3) * s / cfg.grid_mm for s in cfg.sigmas_mm])   # blob radius, voxels
    kept: list[Candidate] = []
    kept_kji, kept_r = np.zeros((cfg.max_candidates, 3)), np.zeros(cfg.max_candidates)
    for row in P_N5:
        kji, s = row[:3].astype(int), int(row[3])
        n = len(kept)
        if n and np.any(np.linalg.norm(kept_kji[:n] - kji, axis=1)
                        < np.maximum(1.5, 0.8 * np.minimum(kept_r[:n], radius_S[s]))):
            continue
        k = tuple(kji)
        off = _parabola_offset(blob_SZYX[s], kji) if cfg.subvoxel else None
        kept.append(Candidate(kji, float(row[4]), 2 * math.sqrt(3) * cfg.sigmas_mm[s], float(smooth[k]),
                              None if off is None else kji + off, blob_SZYX[(slice(None),) + k].copy(),
                              tube_SZYX[(slice(None),) + k].copy()))
        kept_kji[n], kept_r[n] = kji, radius_S[s]
        if len(kept) == cfg.max_candidates:
            break
    if map_ZYX is not None:
        kept += map_candidates(map_ZYX, grid, cfg, blob_SZYX, tube_SZYX, smooth, kept)
    return kept


def map_candidates(map_ZYX: np.ndarray, grid: Grid, cfg: DetectorConfig, blob_SZYX: np.ndarray,
                   tube_SZYX: np.ndarray, smooth_ZYX: np.ndarray, kept: list[Candidate]) -> list[Candidate]:
    """Candidates at the nodule map's peaks inside the search region (most probable first, at least
    cfg.map_min_p, at most cfg.map_candidates) that no kept candidate covers (within 0.8 x the smaller radius,
    as the blob candidates suppress each other, but at least one voxel, not their 1.5): a small ground-glass
    nodule the blob measure never ranks, or ranks a voxel or two off its centre, outside the nodule (rating
    and non-maximum suppression then choose between the two). Each takes the scale whose blob measure is
    largest at its voxel and (subvoxel) the map's sub-voxel peak as its centre."""
    kji_N3, _ = map_peaks(np.where(grid.search_ZYX, map_ZYX, 0.0), cfg.map_min_p, 25 * cfg.map_candidates)
    taken_kji = [c.center for c in kept]
    taken_r = [c.diameter_mm / 2 / cfg.grid_mm for c in kept]                 # blob radius, voxels
    out: list[Candidate] = []
    for kji in kji_N3:
        if len(out) == cfg.map_candidates:
            break
        k = tuple(kji)
        s = int(np.argmax(blob_SZYX[(slice(None),) + k]))
        diameter_mm = 2 * math.sqrt(3) * cfg.sigmas_mm[s]
        if taken_kji and np.any(np.linalg.norm(np.asarray(taken_kji) - kji, axis=1)
                                < np.maximum(1.0, 0.8 * np.minimum(taken_r, diameter_mm / 2 / cfg.grid_mm))):
            continue
        out.append(Candidate(kji, float(blob_SZYX[(s,) + k]), diameter_mm, float(smooth_ZYX[k]),
                             kji + _parabola_offset(map_ZYX, kji) if cfg.subvoxel else None,
                             blob_SZYX[(slice(None),) + k].copy(), tube_SZYX[(slice(None),) + k].copy(), True))
        taken_kji.append(out[-1].center)
        taken_r.append(diameter_mm / 2 / cfg.grid_mm)
    return out


def crop_patch(hu_ZYX: np.ndarray, kji: np.ndarray, P: int) -> np.ndarray:
    """The P^3 crop centred on kji (padded with air), HU clipped and scaled to [0, 1]."""
    lo = np.asarray(kji) - P // 2
    out = np.full((P, P, P), HU_RANGE[0], dtype=np.float32)
    src = tuple(slice(max(0, a), min(n, a + P)) for a, n in zip(lo, hu_ZYX.shape))
    dst = tuple(slice(s.start - a, s.stop - a) for s, a in zip(src, lo))
    out[dst] = hu_ZYX[src]
    return (np.clip(out, *HU_RANGE) - HU_RANGE[0]) / (HU_RANGE[1] - HU_RANGE[0])


# ---------------------------------------------------------------------------------------------- geometry


def position(grid: Grid, kji: np.ndarray) -> tuple[float, float, float]:
    """(side, height, depth) of a grid voxel within the lungs: side < 0 right lung, > 0 left (patient);
    height 0 at the lung base .. 1 at the apex; depth -1 anterior .. 1 posterior."""
    lo, hi = grid.lung_box
    patient = grid.affine @ np.array([kji[2], kji[1], kji[0], 1.0])
    mid = grid.affine @ np.array([grid.midline_i, kji[1], kji[0], 1.0])
    side = float(np.sign(patient[0] - mid[0]))                     # LPS: x grows to the patient's left
    # height along patient z (superior), depth along patient y (posterior), whatever the grid's axes
    corners = np.array([grid.affine @ np.array([i, j, k, 1.0]) for k in (lo[0], hi[0])
                        for j in (lo[1], hi[1]) for i in (lo[2], hi[2])])
    z_lo, z_hi = corners[:, 2].min(), corners[:, 2].max()
    y_lo, y_hi = corners[:, 1].min(), corners[:, 1].max()
    height = float(np.clip((patient[2] - z_lo) / max(z_hi - z_lo, 1e-6), 0, 1))
    depth = float(np.clip(2 * (patient[1] - y_lo) / max(y_hi - y_lo, 1e-6) - 1, -1, 1))
    return side, height, depth


def estimate_lobe(side: float, height: float, depth: float) -> str:
    """A coarse lobe from position: the oblique fissure runs from posterior-superior to anterior-inferior;
    on the right the horizontal fissure separates the middle lobe."""
    lower = height < 0.25 + 0.4 * (depth + 1) / 2
    if side < 0:
        return "right lower lobe" if lower else ("right middle lobe" if height < 0.55 else "right upper lobe")
    return "left lower lobe" if lower else "left upper lobe"


def candidate_features(c: Candidate, pos: tuple[float, float, float]) -> np.ndarray:
    side, height, depth = pos
    # The blob measure is by far the strongest cue, and its useful range is narrow: given both on a log
    # scale and linearly (in units where a linear model's weights stay near 1).
    return np.array([math.log(max(c.response, 1e-3) / 20.0), math.log(c.diameter_mm / 8.0),
                     (c.center_hu + 400) / 500.0, side, height, depth, 1.0, c.response / 10.0], dtype=np.float32)


def pair_features(c: Candidate, pos: tuple[float, float, float], m: Mention) -> np.ndarray:
    """How well a report mention fits a candidate: lobe, side and size agreement, and the negation."""
    side, height, depth = pos
    cand_lobe = estimate_lobe(side, height, depth)
    m_side = m.side or (m.lobe.split()[0] if m.lobe else None)
    lobe_1h = [float(m.lobe == lobe) for lobe in LOBES] + [float(m.lobe is None)]
    cand_1h = [float(cand_lobe == lobe) for lobe in LOBES]
    side_1h = [float(m_side == "right"), float(m_side == "left"), float(m_side is None)]
    side_match = 0.0 if m_side is None else float((m_side == "left") == (side > 0))
    lobe_match = 0.0 if m.lobe is None else float(m.lobe == cand_lobe)
    if m.size_mm:
        ratio = math.log(max(c.diameter_mm, 1.0) / max(m.size_mm, 1.0))
        size = [1.0, float(np.clip(ratio, -2, 2)), float(min(abs(ratio), 2.0))]
    else:
        size = [0.0, 0.0, 0.0]
    density_fit = {None: 1.0, "subsolid": float(c.center_hu <= SUBSOLID_MAX_HU),
                   "solid": float(c.center_hu >= SOLID_MIN_HU)}[m.density]
    return np.array(lobe_1h + cand_1h + side_1h + [side_match, lobe_match, float(m.negated)] + size
                    + [side, height, depth, 1.0, float(m.density is not None), density_fit],
                    dtype=np.float32)


def quad_features(cand_BF: torch.Tensor) -> torch.Tensor:
    """[B, 6] products of the blob measurements: a big blob is a nodule when its centre is dense and a
    vessel junction or a fissure crossing when it is not, which a linear prior cannot say."""
    resp, diam, hu = cand_BF[:, 0], cand_BF[:, 1], cand_BF[:, 2]
    return torch.stack([diam * hu, resp * diam, resp * hu, diam ** 2, hu ** 2, resp ** 2], dim=-1)


def shape_features(patches_B1P3: torch.Tensor, cand_BF: torch.Tensor) -> torch.Tensor:
    """[B, 5] the candidate's ball against the shell around it, from its patch (HU window scaled to
    [0, 1]): mean inside, inside minus shell, the share of the shell denser than -500 HU (vessels leaving a
    junction, a wall; an isolated nodule's shell is all lung) and the inside's spread, at the blob's radius
    (the patch is on the `grid_mm` = 2 mm grid, hence the 4 mm per voxel of diameter)."""
    P = patches_B1P3.shape[-1]
    x = patches_B1P3.reshape(len(patches_B1P3), -1).float()
    ax = torch.arange(P, dtype=torch.float32) - P // 2
    rho = (ax[:, None, None] ** 2 + ax[None, :, None] ** 2 + ax[None, None, :] ** 2).sqrt().reshape(-1)
    r_B = (8.0 * torch.exp(cand_BF[:, 1]) / 4.0).clamp(1.0, P / 4)[:, None]            # radius in voxels
    inner = (rho[None] <= torch.maximum(0.7 * r_B, torch.ones_like(r_B))).float()
    shell = ((rho[None] > 1.3 * r_B + 0.5) & (rho[None] <= 2.0 * r_B + 2.5)).float()

    def mean(w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return (w * v).sum(1) / w.sum(1).clamp_min(1.0)

    dense = (x > (-500.0 - HU_RANGE[0]) / (HU_RANGE[1] - HU_RANGE[0])).float()
    m_in, m_shell = mean(inner, x), mean(shell, x)
    spread = (mean(inner, x ** 2) - m_in ** 2).clamp_min(0).sqrt()
    return torch.stack([4 * m_in - 1, 4 * (m_in - m_shell), 2 * mean(shell, dense), 10 * spread,
                        2 * mean(shell, dense) * (4 * m_in - 1)], dim=-1)


def rich_feature_count(n_scales: int) -> int:
    """Width of image_features for a detector with n_scales LoG scales."""
    return QUAD_FEATURES + SHAPE_FEATURES + 2 * n_scales + 2 + 3 * len(PROFILE_RADII)


def radial_profile(patches_BP3: np.ndarray) -> np.ndarray:
    """[B, 3 R] per shell of the patch around its centre (PROFILE_RADII, grid voxels): the mean of the
    window-scaled HU, the share denser than -500 HU (solid) and the share denser than -700 HU (ground glass
    too): a nodule is dense inside and lung around, a vessel keeps dense voxels in every shell."""
    B, P = len(patches_BP3), patches_BP3.shape[-1]
    ax = np.arange(P) - P // 2
    rho = np.sqrt(ax[:, None, None] ** 2 + ax[None, :, None] ** 2 + ax[None, None, :] ** 2)
    shell = np.digitize(rho, (0.0,) + PROFILE_RADII, right=False) - 1          # -> 0..R-1, R beyond the last
    keep = shell < len(PROFILE_RADII)
    shell_N, x_BN = shell[keep], patches_BP3.reshape(B, -1)[:, keep.ravel()].astype(np.float32)
    onehot_NR = np.eye(len(PROFILE_RADII), dtype=np.float32)[shell_N]
    onehot_NR /= onehot_NR.sum(0, keepdims=True)
    cut = [(t - HU_RANGE[0]) / (HU_RANGE[1] - HU_RANGE[0]) for t in (-500.0, -700.0)]
    return np.concatenate([x_BN @ onehot_NR, (x_BN > cut[0]).astype(np.float32) @ onehot_NR,
                           (x_BN > cut[1]).astype(np.float32) @ onehot_NR], axis=1)


def image_features(cands: list[Candidate], cand_BF: np.ndarray, patches_BP3: np.ndarray) -> np.ndarray:
    """[B, rich_feature_count] what the tree rater reads beyond the 8 classic measurements: their products,
    the ball against its shell, the blob and tube measures at every scale (a ball answers at one scale and
    is no tube; a vessel answers as a tube over a range of scales), the candidate's rank in its scan and
    strength against the scan's strongest, and the radial profile of its patch."""
    cand = torch.from_numpy(cand_BF[:, :CAND_FEATURES])
    patches = torch.from_numpy(patches_BP3)[:, None]
    resp_B = np.array([c.response for c in cands], np.float32)
    parts = [quad_features(cand).numpy(), shape_features(patches, cand).numpy(),
             np.log1p(np.stack([c.scales_S for c in cands])), np.log1p(np.stack([c.tubes_S for c in cands])),
             (np.arange(len(cands), dtype=np.float32) / 100.0)[:, None], (resp_B / resp_B.max())[:, None],
             radial_profile(patches_BP3)]
    return np.concatenate(parts, axis=1).astype(np.float32)


def map_stage_inputs(image_logit_B: torch.Tensor, map_BF: torch.Tensor) -> torch.Tensor:
    """[B, MAP_STAGE_INPUTS] what the map stage reads: the trees' image logit, the map features (see
    map_features), the logit again for map-proposed candidates (the trees never saw such candidates in
    training, so their logit is trusted apart), and the map's centre and ball maximum on a log scale."""
    logit = image_logit_B.float()[:, None]
    from_map, centre, ball_max = map_BF[:, :1], map_BF[:, 1:2], map_BF[:, 2:3]
    return torch.cat([logit, map_BF.float(), from_map * logit, torch.log(centre + 1e-3), torch.log(ball_max + 1e-3)],
                     dim=1)


def report_features(pair_BMP: torch.Tensor, mask_BM: torch.Tensor | None = None) -> torch.Tensor:
    """[B, 9] how well a candidate fits the report as a whole, from the per-mention fit features (see
    pair_features): the best side / lobe / size agreement over the positive mentions (last: with the
    stated density too), the same over the negated ones, and whether the report names any nodule at all."""
    valid_BM = torch.ones(pair_BMP.shape[:2], dtype=torch.bool) if mask_BM is None else mask_BM.bool()
    side, lobe, negated = pair_BMP[..., 14], pair_BMP[..., 15], pair_BMP[..., 16]
    has_size, abs_ratio = pair_BMP[..., 17], pair_BMP[..., 19]
    no_lobe = pair_BMP[..., 5]
    no_place = no_lobe * pair_BMP[..., 13]          # "a 6 mm nodule": neither lobe nor side
    size_fit = torch.where(has_size > 0, torch.exp(-2.0 * abs_ratio), torch.full_like(abs_ratio, 0.5))
    region = torch.maximum(torch.maximum(lobe, 0.5 * side), 0.25 * no_place)
    pos = valid_BM & (negated == 0)
    neg = valid_BM & (negated > 0)

    def best(x_BM: torch.Tensor, keep_BM: torch.Tensor) -> torch.Tensor:
        return torch.where(keep_BM, x_BM, torch.zeros_like(x_BM)).amax(dim=1) if x_BM.shape[1] else x_BM.sum(1)

    any_pos = pos.any(dim=1).float()
    return torch.stack([best(side, pos), best(lobe, pos), best(region * size_fit, pos),
                        best(lobe * size_fit, pos), best(side * size_fit, pos),
                        best(torch.maximum(lobe, side * no_lobe), neg), any_pos,
                        pos.float().sum(dim=1) / 4.0, best(region * size_fit * pair_BMP[..., 25], pos)], dim=-1)


def mention_rank_features(image_logit_B: torch.Tensor, pair_BMP: torch.Tensor,
                          rival_B: torch.Tensor | None = None) -> torch.Tensor:
    """[B, 4] over ONE scan's candidates: where a candidate ranks, by its image logit, among the candidates
    a positive mention could mean (same lobe; same side when the mention names only a side; any when it
    names neither): log(1 + rank) among those, the same among those whose size also fits (within a
    factor 2), its logit minus the best of them, and log(1 + rank) among those whose size and stated
    density (ground-glass or solid, SUBSOLID_MAX_HU / SOLID_MIN_HU) fit; sentinels (6, 6, -10, 6) when no
    mention could mean it.
    "A 6 mm nodule in the RUL" then lifts the most nodule-like 6 mm blob of the RUL, not all of them.
    rival_B: the candidates that count as rivals (those surviving suppression; default all)."""
    B, M = pair_BMP.shape[:2]
    if B == 0 or M == 0:
        return torch.tensor([6.0, 6.0, -10.0, 6.0]).expand(B, 4).clone()
    side, lobe, negated = pair_BMP[..., 14], pair_BMP[..., 15], pair_BMP[..., 16]
    has_lobe, has_side = pair_BMP[..., 5] == 0, pair_BMP[..., 13] == 0
    region_BM = (negated == 0) & torch.where(has_lobe, lobe > 0, torch.where(has_side, side > 0,
                                                                              torch.ones_like(side, dtype=torch.bool)))
    size_BM = region_BM & ((pair_BMP[..., 17] == 0) | (pair_BMP[..., 19] < math.log(2.0)))
    logit = image_logit_B.float()
    rival = torch.ones(B, dtype=torch.bool) if rival_B is None else rival_B.bool()
    higher_BB = ((logit[None, :] > logit[:, None]) & rival[None, :]).float()   # [c, c']: rival c' rates above c

    def rank(ok_BM: torch.Tensor) -> torch.Tensor:
        above_BM = higher_BB @ ok_BM.float()                              # candidates of the mention above c
        r_BM = torch.where(ok_BM, torch.log1p(above_BM), torch.full_like(above_BM, 6.0))
        return r_BM.amin(dim=1).clamp(max=6.0)

    best_M = torch.where(region_BM & rival[:, None], logit[:, None],
                         torch.full_like(region_BM, -1e4, dtype=torch.float32)).amax(0)
    gap_BM = torch.where(region_BM, logit[:, None] - best_M[None], torch.full((B, M), -10.0))
    density_BM = size_BM & (pair_BMP[..., 25] > 0)
    return torch.stack([rank(region_BM), rank(size_BM), gap_BM.amax(dim=1).clamp(min=-10.0), rank(density_BM)],
                       dim=-1)


class TreeEnsemble(nn.Module):
    """Boosted trees (fitted by sklearn's HistGradientBoostingClassifier, then frozen) as flat node buffers,
    so they save and load with the checkpoint's safetensors: forward(x [B, F]) -> raw logit [B]. Node n
    goes to left[n] when x[feature[n]] <= threshold[n], else to right[n]; a leaf points to itself."""

    def __init__(self, nodes: int, trees: int, depth: int):
        super().__init__()
        self.depth = depth
        self.register_buffer("feature", torch.zeros(nodes, dtype=torch.int64))
        self.register_buffer("threshold", torch.zeros(nodes, dtype=torch.float64))
        self.register_buffer("left", torch.zeros(nodes, dtype=torch.int64))
        self.register_buffer("right", torch.zeros(nodes, dtype=torch.int64))
        self.register_buffer("value", torch.zeros(nodes, dtype=torch.float64))
        self.register_buffer("roots", torch.zeros(max(trees, 1), dtype=torch.int64))
        self.register_buffer("bias", torch.zeros(1, dtype=torch.float64))

    def forward(self, x_BF: torch.Tensor) -> torch.Tensor:
        x = x_BF.double()
        node_BT = self.roots.expand(len(x), -1)
        for _ in range(self.depth):
            go_left = x.gather(1, self.feature[node_BT]) <= self.threshold[node_BT]
            node_BT = torch.where(go_left, self.left[node_BT], self.right[node_BT])
        return (self.value[node_BT].sum(1) + self.bias).float()

    @staticmethod
    def shape_of(clf) -> tuple[int, int, int]:
        """(nodes, trees, depth) of a fitted binary HistGradientBoostingClassifier."""
        nodes = [pred.nodes for (pred,) in clf._predictors]
        return sum(len(n) for n in nodes), len(nodes), max(int(n["depth"].max()) for n in nodes)

    def load_sklearn(self, clf) -> None:
        """Copy a fitted binary HistGradientBoostingClassifier (of shape_of(clf)) into the buffers."""
        feats, thr, left, right, val, roots, offset = [], [], [], [], [], [], 0
        for (pred,) in clf._predictors:
            n = pred.nodes
            leaf, idx = n["is_leaf"].astype(bool), np.arange(len(n)) + offset
            roots.append(offset)
            feats.append(np.where(leaf, 0, n["feature_idx"]))
            thr.append(np.where(leaf, np.inf, n["num_threshold"]))
            left.append(np.where(leaf, idx, n["left"].astype(np.int64) + offset))
            right.append(np.where(leaf, idx, n["right"].astype(np.int64) + offset))
            val.append(np.where(leaf, n["value"], 0.0))
            offset += len(n)
        with torch.no_grad():
            for name, arrays in (("feature", feats), ("threshold", thr), ("left", left), ("right", right),
                                 ("value", val)):
                getattr(self, name).copy_(torch.from_numpy(np.concatenate(arrays)))
            self.roots.copy_(torch.tensor(roots))
            self.bias.fill_(float(np.ravel(clf._baseline_prediction)[0]))


# ---------------------------------------------------------------------------------------------- network


class NoduleRater(nn.Module):
    """forward(patches [B, 1, P, P, P], cand [B, 8], text [B, M, 384 + 26] | None, text_mask [B, M] | None)
    -> (logits [B], aux_loss): the image tokens attend to the report tokens (when given) in the core's
    CrossModalAttention; the head reads the fused image tokens."""

    def __init__(self, cfg: DetectorConfig):
        super().__init__()
        self.cfg = cfg
        self.vision = VisionStream(cfg.vision)
        self.cand = nn.Sequential(nn.Linear(CAND_FEATURES, cfg.dim), nn.GELU(), nn.Linear(cfg.dim, cfg.dim))
        # A mention token: its sentence vector through a narrow bottleneck (a few hundred labelled nodules
        # cannot fit 384 free directions), joined with the explicit lobe / side / size / negation fit.
        self.mention = nn.Linear(EMBED_DIM, cfg.mention_dim)
        self.text = nn.Sequential(nn.Linear(cfg.mention_dim + PAIR_FEATURES, cfg.dim), nn.GELU(),
                                  nn.Linear(cfg.dim, cfg.dim))
        self.fusion = CrossModalAttention(cfg.dim, cfg.heads, modalities=("text", "vision"))
        self.head = nn.Sequential(nn.LayerNorm(cfg.dim), nn.Dropout(cfg.dropout), nn.Linear(cfg.dim, 1))
        # A direct path from the blob measurements (fitted first, then frozen: see fit_prior); the head starts
        # at zero, so the networks begin exactly at the prior and learn what the image and report add.
        self.prior = nn.Linear(CAND_FEATURES, 1)
        # boosted trees over cand_BF, then a logistic stage over (image logit, report fit, mention ranks):
        # both fitted and frozen (see fit_trees)
        self.image_trees = TreeEnsemble(*cfg.image_trees) if cfg.image_trees[0] else None
        self.report_linear = nn.Linear(1 + REPORT_FEATURES + RANK_FEATURES, 1) if cfg.report_stage else None
        if cfg.extra_priors:   # likewise fitted first and frozen: products of the measurements, report fit
            self.prior_quad = nn.Linear(QUAD_FEATURES + SHAPE_FEATURES, 1)
            self.report_prior = nn.Linear(REPORT_FEATURES, 1)
            for layer in (self.prior_quad, self.report_prior):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)
        # network_feature: the vision stream rates a patch alone through this head (see patch_logit)
        self.patch_head = nn.Linear(cfg.dim, 1) if cfg.network_feature else None
        # nodule_map: the dense map network (trained first, frozen) and the logistic map stage after the
        # image trees (fitted on studies neither the trees nor the map were trained on: see nodule_map.py)
        self.nodule_map = build_network(cfg.nodule_map) if cfg.nodule_map is not None else None
        self.map_linear = nn.Linear(MAP_STAGE_INPUTS, 1) if cfg.nodule_map is not None else None

    def encode(self, patches: torch.Tensor, cand_BF: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image tokens [B, T + 1, D]: Swin tokens + a candidate-feature token, the blob prior logit [B],
        the MoE aux loss)."""
        out = self.vision(patches, task_id("nodule_detection"))
        vision_BTD = torch.cat([out.tokens, self.cand(cand_BF[:, :CAND_FEATURES])[:, None]], dim=1)
        return vision_BTD, self.blob_prior(cand_BF, patches), out.aux_loss

    def patch_logit(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """([B] the vision stream's nodule logit for each patch [B, 1, P, P, P] alone, MoE aux loss)."""
        out = self.vision(patches, task_id("nodule_detection"))
        return self.patch_head(out.pooled).squeeze(-1), out.aux_loss

    @torch.no_grad()
    def patch_logits(self, patches_NP3: np.ndarray, batch: int = 64) -> torch.Tensor:
        """[N] the patch logit of each patch [N, P, P, P] (float16 or float32, on the CPU), in batches on the
        model's device, in bfloat16 as the patch network was trained and gave the out-of-fold logits the
        trees were fitted on (on CPU also 1.5x faster than float32)."""
        device = next(self.parameters()).device
        out = []
        with torch.autocast(device.type, dtype=torch.bfloat16):
            for s in range(0, len(patches_NP3), batch):
                x = torch.from_numpy(patches_NP3[s:s + batch]).to(device).float()[:, None]
                out.append(self.patch_logit(x)[0].float().cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def tree_inputs(self, cand_BF: torch.Tensor, network_B: torch.Tensor | None) -> torch.Tensor:
        """[B, F] what the image trees read: the candidate's features, then (network_feature) the patch logit."""
        if not self.cfg.network_feature:
            return cand_BF
        if network_B is None:
            raise ValueError("this detector's trees read the patch network's logit: pass it (patch_logit)")
        return torch.cat([cand_BF, network_B[:, None].to(cand_BF.dtype)], dim=1)

    def blob_prior(self, cand_BF: torch.Tensor, patches: torch.Tensor | None) -> torch.Tensor:
        """[B] the frozen prior logit from the candidate's measurements (and its patch's ball vs shell);
        the image trees when fitted (they read the whole cand_BF and, with network_feature, the patch logit)."""
        if self.image_trees is not None:
            network_B = self.patch_logit(patches)[0] if self.cfg.network_feature else None
            return self.image_trees(self.tree_inputs(cand_BF, network_B))
        cand_BF = cand_BF[:, :CAND_FEATURES]
        logit = self.prior(cand_BF).squeeze(-1)
        if self.cfg.extra_priors:
            extra_BF = torch.cat([quad_features(cand_BF), shape_features(patches, cand_BF)], dim=1)
            logit = logit + self.prior_quad(extra_BF).squeeze(-1)
        return logit

    def map_stage(self, image_logit_B: torch.Tensor, map_BF: torch.Tensor) -> torch.Tensor:
        """[B] the image logit after the map stage (see map_stage_inputs)."""
        return self.map_linear(map_stage_inputs(image_logit_B, map_BF)).squeeze(-1)

    def fuse(self, vision_BTD: torch.Tensor, prior_B: torch.Tensor, text_BMF: torch.Tensor | None = None,
             text_mask_BM: torch.Tensor | None = None) -> torch.Tensor:
        """Nodule logits [B] from image tokens, attending to the report tokens when there are any."""
        tokens, masks = {"vision": vision_BTD}, {}
        if text_BMF is not None and text_BMF.shape[1] > 0:
            emb_BMD, pair_BMP = text_BMF.split([EMBED_DIM, PAIR_FEATURES], dim=-1)
            tokens["text"] = self.text(torch.cat([self.mention(emb_BMD), pair_BMP], dim=-1))
            if text_mask_BM is not None:
                masks["text"] = text_mask_BM
            if self.cfg.extra_priors and self.report_linear is None:
                # rows whose report was dropped (all masked) get the report prior's no-mention value
                report_B = self.report_prior(report_features(pair_BMP, text_mask_BM)).squeeze(-1)
                prior_B = prior_B + (report_B if text_mask_BM is None else report_B * text_mask_BM.any(1))
        fused = self.fusion(tokens, masks)["vision"]
        return self.head(fused.mean(dim=1)).squeeze(-1) + prior_B

    def report_stage(self, image_logit_B: torch.Tensor, pair_BMP: torch.Tensor,
                     rival_B: torch.Tensor | None = None) -> torch.Tensor:
        """[B] the report-fused logit of ONE scan's candidates (all of them: the mention ranks compare them)
        from their image logits, the report fit and the mention ranks."""
        x_BF = torch.cat([image_logit_B[:, None].float(), report_features(pair_BMP),
                          mention_rank_features(image_logit_B, pair_BMP, rival_B)], dim=1)
        return self.report_linear(x_BF).squeeze(-1)

    def forward(self, patches: torch.Tensor, cand_BF: torch.Tensor, text_BMF: torch.Tensor | None = None,
                text_mask_BM: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        vision_BTD, prior_B, aux = self.encode(patches, cand_BF)
        return self.fuse(vision_BTD, prior_B, text_BMF, text_mask_BM), aux


def _rater_inputs(cfg: DetectorConfig, B: int, g: torch.Generator) -> tuple:
    return (torch.rand(B, 1, cfg.patch, cfg.patch, cfg.patch, generator=g),
            torch.randn(B, cfg.cand_features, generator=g),
            torch.randn(B, 2, EMBED_DIM + PAIR_FEATURES, generator=g))


if KIND not in registry.MODELS:
    registry.register(KIND, DetectorConfig, NoduleRater, _rater_inputs)


# ---------------------------------------------------------------------------------------------- detector


@dataclass
class Detection:
    kji_grid: np.ndarray
    xyz_mm: tuple[float, float, float]
    diameter_mm: float
    probability: float
    probability_image_only: float
    lobe: str                         # estimated from position
    mention: int | None               # index of the report mention that fits best (None: no mention)
    candidate: Candidate = field(repr=False, default=None)


@dataclass
class CandidateSet:
    """Everything about one scan's candidates that does not depend on the rater (cacheable)."""
    grid: Grid
    candidates: list[Candidate]
    positions: list[tuple[float, float, float]]
    patches_BP3: np.ndarray           # [B, P, P, P] float16
    cand_BF: np.ndarray               # [B, cfg.cand_features]: the 8 classic measurements first
    map_BF: np.ndarray | None = None  # [B, MAP_FEATURES] with a nodule map (see map_features)


def map_features(cands: list[Candidate], map_ZYX: np.ndarray, cfg: DetectorConfig) -> np.ndarray:
    """[B, MAP_FEATURES] per candidate: whether the map proposed it, the map at its centre voxel, and the
    map's maximum and mean over the candidate's ball (its blob radius, at least one voxel)."""
    out = np.zeros((len(cands), MAP_FEATURES), np.float32)
    shape = np.array(map_ZYX.shape)
    for n, c in enumerate(cands):
        centre = np.asarray(c.center, np.float64)
        r = max(1.0, c.diameter_mm / 2 / cfg.grid_mm)
        lo = np.clip(np.floor(centre - r).astype(int), 0, shape - 1)
        hi = np.clip(np.ceil(centre + r).astype(int) + 1, 1, shape)
        kk, jj, ii = np.meshgrid(*(np.arange(a, b) for a, b in zip(lo, hi)), indexing="ij")
        ball = (kk - centre[0]) ** 2 + (jj - centre[1]) ** 2 + (ii - centre[2]) ** 2 <= r * r
        values = map_ZYX[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]][ball]
        at_centre = map_ZYX[tuple(np.clip(np.round(centre).astype(int), 0, shape - 1))]
        out[n] = (float(c.from_map), at_centre, values.max(initial=at_centre), values.mean() if values.size else at_centre)
    return out


def candidate_set(hu_ZYX: np.ndarray, affine: np.ndarray, cfg: DetectorConfig,
                  nodule_map: nn.Module | None = None) -> CandidateSet:
    """The scan's grid, candidates, their positions, patches and measurements; `nodule_map` (the
    detector's map network) is needed exactly when cfg.nodule_map is set."""
    if (cfg.nodule_map is not None) != (nodule_map is not None):
        raise ValueError("a detector with a nodule map needs its map network (NoduleDetector.candidates), "
                         "and only such a detector takes one")
    grid = prepare_grid(hu_ZYX, affine, cfg)
    map_ZYX = predict_map(nodule_map, grid.hu_ZYX, grid.lung_ZYX) if nodule_map is not None else None
    cands = find_candidates(grid, cfg, map_ZYX)
    positions = [position(grid, c.kji) for c in cands]
    patches = np.stack([crop_patch(grid.hu_ZYX, c.kji, cfg.patch) for c in cands]).astype(np.float16) \
        if cands else np.zeros((0, cfg.patch, cfg.patch, cfg.patch), np.float16)
    feats = np.stack([candidate_features(c, p) for c, p in zip(cands, positions)]) if cands \
        else np.zeros((0, CAND_FEATURES), np.float32)
    if cfg.rich_features:
        if not cfg.per_scale_peaks:
            raise ValueError("rich_features needs per_scale_peaks (the per-scale measures of each candidate)")
        extra = image_features(cands, feats, patches) if cands else np.zeros((0, cfg.cand_features - CAND_FEATURES))
        feats = np.concatenate([feats, extra], axis=1).astype(np.float32)
    return CandidateSet(grid, cands, positions, patches, feats,
                        None if map_ZYX is None else map_features(cands, map_ZYX, cfg))


def text_inputs(cs: CandidateSet, reading: ReportReading | None) -> tuple[np.ndarray, np.ndarray] | None:
    """[B, M, 384 + 26] report tokens per candidate (mention vector + fit features), or None without mentions."""
    if reading is None or reading.empty:
        return None
    emb_MD = reading.embeddings_MD
    if emb_MD.shape[0] != len(reading.mentions):
        from .report import embed_sentences
        emb_MD = embed_sentences([m.sentence for m in reading.mentions])
    rows = []
    for c, pos in zip(cs.candidates, cs.positions):
        rows.append(np.stack([np.concatenate([emb_MD[n], pair_features(c, pos, m)])
                              for n, m in enumerate(reading.mentions)]))
    return np.stack(rows).astype(np.float32) if rows else np.zeros((0, len(reading.mentions), EMBED_DIM + PAIR_FEATURES), np.float32)


class NoduleDetector:
    def __init__(self, model: NoduleRater, metadata: dict | None = None):
        self.model = model.eval()
        self.cfg = model.cfg
        self.metadata = metadata or {}

    @torch.no_grad()
    def tree_logits(self, cs: CandidateSet, batch: int = 64) -> torch.Tensor:
        """[B] the image trees' logit of each candidate (with network_feature, after the Swin's patch pass)."""
        network_B = self.model.patch_logits(cs.patches_BP3, batch) if self.cfg.network_feature else None
        return self.model.image_trees(self.model.tree_inputs(torch.from_numpy(cs.cand_BF), network_B))

    @torch.no_grad()
    def rate(self, cs: CandidateSet, text_BMF: np.ndarray | None,
             batch: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(P(nodule) with the report, P(nodule) from the image alone, kept by non-maximum suppression on the
        image rating) per candidate; the image tokens are computed once for both. With a report stage, it
        rates the scan's candidates together from their image logits (see NoduleRater.report_stage), the
        suppressed ones not counting as rivals."""
        if not cs.candidates:
            return np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros(0, bool)
        trees = self.model.report_linear is not None
        if not self.cfg.network and self.model.image_trees is not None:   # the trees (and the patch logit)
            image_B = self.tree_logits(cs, batch)
            if self.model.map_linear is not None:
                if cs.map_BF is None:
                    raise ValueError("this detector rates with its nodule map: make the candidate set with "
                                     "NoduleDetector.candidates")
                image_B = self.model.map_stage(image_B, torch.from_numpy(cs.map_BF))
            fused_B = image_B
        else:
            fused, image = [], []
            for s in range(0, len(cs.candidates), batch):
                patches = torch.from_numpy(cs.patches_BP3[s:s + batch].astype(np.float32))[:, None]
                vision_BTD, prior_B, _ = self.model.encode(patches, torch.from_numpy(cs.cand_BF[s:s + batch]))
                image.append(self.model.fuse(vision_BTD, prior_B))
                fused.append(image[-1] if text_BMF is None or trees else self.model.fuse(
                    vision_BTD, prior_B, torch.from_numpy(text_BMF[s:s + batch])))
            image_B, fused_B = torch.cat(image), torch.cat(fused)
        keep_B = nms_keep(cs.candidates, image_B.numpy(), self.cfg)
        if trees and text_BMF is not None:
            fused_B = self.model.report_stage(image_B, torch.from_numpy(text_BMF[..., EMBED_DIM:]),
                                              None if keep_B is None else torch.from_numpy(keep_B))
        keep_B = np.ones(len(cs.candidates), bool) if keep_B is None else keep_B
        return torch.sigmoid(fused_B).numpy(), torch.sigmoid(image_B).numpy(), keep_B

    def candidates(self, hu_ZYX: np.ndarray, affine: np.ndarray) -> CandidateSet:
        """The scan's candidate set as this detector makes it (with its nodule map, when it has one)."""
        return candidate_set(hu_ZYX, affine, self.cfg, self.model.nodule_map)

    def detect(self, hu_ZYX: np.ndarray, affine: np.ndarray, reading: ReportReading | None = None,
               threshold: float | None = 0.0) -> list[Detection]:
        """All candidates rated (threshold 0.0), or those at or above `threshold` (None: the model's
        operating point), most probable first."""
        cs = self.candidates(hu_ZYX, affine)
        return self.detect_candidates(cs, reading, self.cfg.threshold if threshold is None else threshold)

    def detect_candidates(self, cs: CandidateSet, reading: ReportReading | None,
                          threshold: float = 0.0) -> list[Detection]:
        p_fused, p_image, keep = self.rate(cs, text_inputs(cs, reading))
        out = []
        for n, c in enumerate(cs.candidates):
            if p_fused[n] < threshold or not keep[n]:
                continue
            xyz = (cs.grid.affine @ np.array([c.center[2], c.center[1], c.center[0], 1.0]))[:3]
            lobe = estimate_lobe(*cs.positions[n])
            out.append(Detection(c.kji, tuple(float(v) for v in xyz), round(c.diameter_mm, 1), float(p_fused[n]),
                                 float(p_image[n]), lobe, _best_mention(c, cs.positions[n], reading), c))
        return sorted(out, key=lambda d: -d.probability)


def nms_keep(cands: list[Candidate], score_B: np.ndarray, cfg: DetectorConfig) -> np.ndarray | None:
    """[B] bool: the candidates suppress() keeps at cfg.nms by `score_B`; None when cfg.nms is 0 (all kept)."""
    return suppress(cands, score_B, cfg.nms / cfg.grid_mm) if cfg.nms > 0 else None


def suppress(cands: list[Candidate], score_B: np.ndarray, factor: float) -> np.ndarray:
    """[B] bool: the candidates kept by non-maximum suppression, best score first; one is dropped within
    max(1.5 voxels, factor x the kept one's blob radius in mm) of a kept one (its duplicate at another
    scale, or a second answer of the same structure): factor = nms / grid_mm gives voxels."""
    keep = np.zeros(len(cands), bool)
    if not cands:
        return keep
    centre_B3 = np.stack([c.center for c in cands]).astype(np.float64)
    radius_B = np.array([c.diameter_mm / 2 for c in cands])
    kept: list[int] = []
    for b in np.argsort(-score_B, kind="stable"):
        dist = np.linalg.norm(centre_B3[kept] - centre_B3[b], axis=1) if kept else np.zeros(0)
        if np.any(dist < np.maximum(1.5, factor * radius_B[kept])):
            continue
        kept.append(int(b))
    keep[kept] = True
    return keep


def _best_mention(c: Candidate, pos, reading: ReportReading | None) -> int | None:
    """The positive mention that fits the candidate: same side, then same lobe, then closest size. A mention
    naming no place fits only a candidate of its size (within a factor 1.5): else it would fit every finding."""
    if reading is None:
        return None
    best, best_score = None, 0.0
    for n, m in enumerate(reading.mentions):
        if m.negated:
            continue
        f = pair_features(c, pos, m)
        side_match, lobe_match = f[14], f[15]
        if (m.side or m.lobe) and not side_match:
            continue
        if not (m.side or m.lobe) and not (f[17] and f[19] <= math.log(1.5)):
            continue
        score = 1.0 + 2.0 * lobe_match + (1.0 - min(abs(f[19]), 1.0) if f[17] else 0.0)
        if score > best_score:
            best, best_score = n, score
    return best


def load_detector(path: str | Path | None = None) -> NoduleDetector:
    """The detector checkpoint at `path` (default: the shipped assets/medical_imaging/detector/model)."""
    from core.checkpoint import CheckpointError, load_checkpoint

    path = Path(path) if path is not None else DEFAULT_DIR
    model, info = load_checkpoint(path)
    if info.kind != KIND:
        raise CheckpointError(f"{path}: a {info.kind!r} checkpoint, not a {KIND!r}")
    return NoduleDetector(model, info.metadata)


# ---------------------------------------------------------------------------------------------- training


@dataclass
class DetectorTrainConfig:
    train_studies: int = 40           # synthetic studies (make_study index 0..N-1, seed `seed`)
    val_studies: int = 12             # held-out studies: seed `seed + 1` (a different stream)
    seed: int = 0
    epochs: int = 12
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    p_drop_report: float = 0.35       # rows trained without their report, so the image path learns too
    negatives: int = 24               # negative candidates per scan and epoch (half the strongest, half random)
    pos_repeat: int = 4               # each positive candidate seen this many times per epoch (shifted, flipped)
    workers: int = 2                  # processes preparing the synthetic studies' candidates
    eval_every: int = 3               # epochs between validation evaluations (and at the end)
    # boosted trees (model.rich_features): sklearn HistGradientBoostingClassifier settings
    tree_iters: int = 300             # boosting rounds of the image trees
    tree_lr: float = 0.05
    tree_leaves: int = 15             # leaves per tree
    tree_min_leaf: int = 20           # candidates per leaf, at least
    report_l2: float = 1e-3           # L2 weight of the logistic report stage
    folds: int = 5                    # out-of-fold image logits (by scan) the report stage learns on
    patch_network: str | None = None  # with model.network_feature: a train-patch-network folder (its network and
                                      # out-of-fold logits of these training studies)
    train_lung_closing_mm: float | None = None  # the training studies' lung closing when it differs from the
                                      # model's: a patch network's out-of-fold logits are for the candidates it was
                                      # trained on (10 mm for the shipped one); validation uses the model's
    model: DetectorConfig = field(default_factory=lambda: DetectorConfig(
        extra_priors=True, per_scale_peaks=True, subvoxel=True, rich_features=True, network=False,
        max_candidates=200, nms=1.5))


@dataclass
class ScanCache:
    study_id: str
    cs: CandidateSet
    labels_B: np.ndarray              # 1 = within a true nodule's radius
    reading: ReportReading
    truth: list                       # evaluation.Nodule
    report_text: str = ""


def labels_for(cs: CandidateSet, nodules, cfg: DetectorConfig) -> np.ndarray:
    """1 for candidates within a true nodule's radius of its centre (LUNA16's hit rule)."""
    labels = np.zeros(len(cs.candidates), np.float32)
    for n, c in enumerate(cs.candidates):
        xyz = (cs.grid.affine @ np.array([c.center[2], c.center[1], c.center[0], 1.0]))[:3]
        labels[n] = float(any(np.linalg.norm(xyz - np.array(t.center_xyz)) <= t.diameter_mm / 2 for t in nodules))
    return labels


def _weights_digest(module: nn.Module) -> str:
    import hashlib

    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def _cache_file(index: int, seed: int, cfg: DetectorConfig, synth_cfg, nodule_map: nn.Module | None = None) -> Path:
    """Where a synthetic study's candidates are kept: keyed by everything that shapes them."""
    import hashlib

    from apps.settings import cache_dir

    key = json.dumps([index, seed, cfg.grid_mm, cfg.patch, cfg.lung_hu, cfg.lung_closing_mm, list(cfg.sigmas_mm),
                      cfg.blob_hu_max, cfg.min_response, cfg.max_candidates, cfg.per_scale_peaks, cfg.subvoxel,
                      cfg.rich_features, cfg.network, repr(synth_cfg), CACHE_VERSION]
                     + (["network_feature"] if cfg.network_feature else [])
                     + ([_weights_digest(nodule_map), cfg.map_candidates, cfg.map_min_p] if nodule_map is not None else []))
    return cache_dir() / "medical" / "candidates" / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.npz"


def save_scan(scan: ScanCache, path: Path) -> None:
    """Write a ScanCache as a plain .npz (arrays and strings only: loading runs no code), atomically.
    The report reading is not kept: load_scan reads the report text again."""
    cs, cands = scan.cs, scan.cs.candidates
    S = len(cands[0].scales_S) if cands and cands[0].scales_S is not None else 0
    arrays = {
        "study_id": np.array(scan.study_id), "report_text": np.array(scan.report_text), "labels_B": scan.labels_B,
        "truth_xyz_N3": np.array([t.xyz_mm for t in scan.truth], np.float64).reshape(-1, 3),
        "truth_diameter_N": np.array([t.diameter_mm for t in scan.truth], np.float64),
        "grid_hu_ZYX": cs.grid.hu_ZYX, "grid_affine": cs.grid.affine, "grid_lung_ZYX": cs.grid.lung_ZYX,
        "grid_search_ZYX": cs.grid.search_ZYX, "grid_lung_box": np.stack(cs.grid.lung_box),
        "grid_midline_i": np.array(cs.grid.midline_i),
        "kji_B3": np.array([c.kji for c in cands], np.int64).reshape(-1, 3),
        "response_B": np.array([c.response for c in cands]), "diameter_B": np.array([c.diameter_mm for c in cands]),
        "center_hu_B": np.array([c.center_hu for c in cands]),
        "kji_f_B3": np.array([c.kji_f if c.kji_f is not None else np.full(3, np.nan) for c in cands]).reshape(-1, 3),
        "scales_BS": np.array([c.scales_S if c.scales_S is not None else np.full(S, np.nan) for c in cands]
                              ).reshape(len(cands), S),
        "tubes_BS": np.array([c.tubes_S if c.tubes_S is not None else np.full(S, np.nan) for c in cands]
                             ).reshape(len(cands), S),
        "positions_B3": np.array(cs.positions, np.float64).reshape(-1, 3),
        "patches_BP3": cs.patches_BP3, "cand_BF": cs.cand_BF,
        "from_map_B": np.array([c.from_map for c in cands], bool),
    }
    if cs.map_BF is not None:
        arrays["map_BF"] = cs.map_BF
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.tmp{os.getpid()}.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def load_scan(path: Path) -> ScanCache:
    """The ScanCache save_scan wrote (ValueError / OSError / KeyError when the file is damaged)."""
    from .evaluation import Nodule
    from .report import read_report

    with np.load(path, allow_pickle=False) as z:
        a = {k: z[k] for k in z.files}
    study_id, report_text = str(a["study_id"]), str(a["report_text"])

    def optional(row: np.ndarray) -> np.ndarray | None:
        return None if row.size == 0 or np.isnan(row).all() else row

    from_map_B = a.get("from_map_B", np.zeros(len(a["kji_B3"]), bool))   # absent: cached before nodule maps
    cands = [Candidate(kji, float(r), float(d), float(h), optional(f), optional(sc), optional(tu), bool(m))
             for kji, r, d, h, f, sc, tu, m in zip(a["kji_B3"], a["response_B"], a["diameter_B"], a["center_hu_B"],
                                                  a["kji_f_B3"], a["scales_BS"], a["tubes_BS"], from_map_B)]
    grid = Grid(a["grid_hu_ZYX"], a["grid_affine"], a["grid_lung_ZYX"], a["grid_search_ZYX"],
                (a["grid_lung_box"][0], a["grid_lung_box"][1]), float(a["grid_midline_i"]))
    cs = CandidateSet(grid, cands, [tuple(p) for p in a["positions_B3"].tolist()], a["patches_BP3"], a["cand_BF"],
                      a.get("map_BF"))
    truth = [Nodule(study_id, tuple(xyz), float(d)) for xyz, d in zip(a["truth_xyz_N3"].tolist(), a["truth_diameter_N"])]
    return ScanCache(study_id, cs, a["labels_B"], read_report(report_text), truth, report_text)


def synth_scan(index: int, seed: int, cfg: DetectorConfig, synth_cfg=None, cache: bool = True,
               nodule_map: nn.Module | None = None) -> ScanCache:
    """One synthetic study's candidate set (with `nodule_map`: the map network of a detector that has one),
    labelled, with its report reading; computed in memory and kept in the cache folder
    (apps.settings.cache_dir, as .npz: see save_scan) for the next training run."""
    import zipfile

    from .evaluation import Nodule
    from .report import read_report
    from .synth import make_study

    torch.set_num_threads(1)
    path = _cache_file(index, seed, cfg, synth_cfg, nodule_map)
    if cache and path.is_file():
        try:
            return load_scan(path)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            pass   # unreadable: recompute
    study = make_study(index, seed, synth_cfg)
    cs = candidate_set(study.hu_ZYX, study.affine, cfg, nodule_map)
    cs.grid.hu_ZYX = cs.grid.hu_ZYX.astype(np.float16)        # kept for nothing but geometry: halve it
    if cfg.rich_features and not (cfg.network or cfg.network_feature):  # the trees read cand_BF only: 10 MB less
        cs.patches_BP3 = cs.patches_BP3[:, :0, :0, :0]
    truth = [Nodule(study.study_id, t.center_xyz, t.diameter_mm) for t in study.nodules]
    scan = ScanCache(study.study_id, cs, labels_for(cs, study.nodules, cfg), read_report(study.report), truth,
                     study.report)
    if cache:
        save_scan(scan, path)
    return scan


def map_studies(fn, args: list[tuple], workers: int = 1) -> list:
    """[fn(*a) for a in args], in `workers` spawned processes when workers > 1 (fn must be importable)."""
    if workers <= 1:
        return [fn(*a) for a in args]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        return list(pool.map(fn, *zip(*args)))


def synth_scans(first: int, n: int, seed: int, cfg: DetectorConfig, synth_cfg=None, workers: int = 1,
                nodule_map: nn.Module | None = None) -> list[ScanCache]:
    """synth_scan for studies first .. first + n - 1, in `workers` processes."""
    return map_studies(synth_scan, [(i, seed, cfg, synth_cfg, True, nodule_map) for i in range(first, first + n)],
                       workers)


def _epoch_rows(scans: list[ScanCache], rng: np.random.Generator, negatives: int,
                pos_repeat: int = 1) -> list[tuple[int, int]]:
    """(scan, candidate) rows of one epoch: every positive, the strongest negatives and random others
    (negatives / 2 each, fresh draw per epoch): the full candidate lists would cost 10x more per epoch."""
    rows = []
    for s, scan in enumerate(scans):
        pos = np.flatnonzero(scan.labels_B > 0)
        neg = np.flatnonzero(scan.labels_B == 0)          # candidates come strongest first
        hard = neg[:negatives // 2]
        rest = neg[negatives // 2:]
        easy = rng.choice(rest, size=min(len(rest), negatives - len(hard)), replace=False) if len(rest) else rest
        rows += [(s, int(b)) for b in np.concatenate([np.repeat(pos, pos_repeat), hard, easy])]
    return rows


def _batches(scans: list[ScanCache], texts: list, rng: np.random.Generator, batch_size: int, p_drop: float,
             negatives: int, pos_repeat: int = 1):
    """Shuffled training batches of one epoch; the report tokens padded to the batch's max M."""
    rows = _epoch_rows(scans, rng, negatives, pos_repeat)
    order = rng.permutation(len(rows))
    for start in range(0, len(order), batch_size):
        chosen = [rows[i] for i in order[start:start + batch_size]]
        patches = np.stack([scans[s].cs.patches_BP3[b] for s, b in chosen]).astype(np.float32)
        flips = rng.random((len(chosen), 3)) < 0.5
        shifts = rng.integers(-2, 3, size=(len(chosen), 3))   # +-2 voxels: the candidate is never exactly centred
        for r, f in enumerate(flips):
            axes = tuple(a for a, on in enumerate(f) if on)
            if axes:
                patches[r] = np.flip(patches[r], axes)
            patches[r] = np.roll(patches[r], tuple(shifts[r]), axis=(0, 1, 2))
        cand = np.stack([scans[s].cs.cand_BF[b] for s, b in chosen])
        y = np.array([scans[s].labels_B[b] for s, b in chosen], np.float32)
        M = max((texts[s].shape[1] for s, _ in chosen if texts[s] is not None), default=0)
        text = np.zeros((len(chosen), max(M, 1), EMBED_DIM + PAIR_FEATURES), np.float32)
        mask = np.zeros((len(chosen), max(M, 1)), bool)
        for r, (s, b) in enumerate(chosen):
            if texts[s] is not None and rng.random() >= p_drop:
                m = texts[s].shape[1]
                text[r, :m], mask[r, :m] = texts[s][b], True
        yield (torch.from_numpy(np.ascontiguousarray(patches))[:, None], torch.from_numpy(cand),
               torch.from_numpy(text), torch.from_numpy(mask), torch.from_numpy(y))


def evaluate_scans(detector: NoduleDetector, scans: list[ScanCache]) -> dict:
    """FROC of the fused and the image-only ratings over cached scans, plus candidate recall."""
    from .evaluation import Prediction, froc, match

    fused, image, truth = [], [], []
    for scan in scans:
        for d in detector.detect_candidates(scan.cs, scan.reading):
            fused.append(Prediction(scan.study_id, d.xyz_mm, d.probability))
            image.append(Prediction(scan.study_id, d.xyz_mm, d.probability_image_only))
        truth += scan.truth
    n_scans = len(scans)
    r_fused, r_image = froc(fused, truth, n_scans), froc(image, truth, n_scans)
    # candidate recall: share of true nodules hit by any candidate (the ceiling of sensitivity)
    _, is_tp, _ = match([Prediction(p.study, p.xyz_mm, 1.0) for p in fused], truth)
    # the operating point: the lowest fused probability that keeps false positives at <= 1 per scan
    prob_P, tp_P, ignored_P = match(fused, truth)
    order = np.argsort(-prob_P[~ignored_P], kind="stable")
    fp_cum = np.cumsum(~tp_P[~ignored_P][order])
    within = np.flatnonzero(fp_cum <= n_scans)
    threshold = float(prob_P[~ignored_P][order][within[-1]]) if len(within) else 1.0
    return {"scans": n_scans, "nodules": len(truth), "candidates_per_scan": round(len(fused) / n_scans, 1),
            "candidate_recall": round(int(is_tp.sum()) / max(1, len(truth)), 4),
            "threshold_at_1fp_per_scan": round(threshold, 4),
            "cpm_fused": round(r_fused.cpm, 4), "cpm_image_only": round(r_image.cpm, 4),
            "sensitivity_at_1fp_fused": round(r_fused.sensitivity_at[1.0], 4),
            "sensitivity_at_1fp_image_only": round(r_image.sensitivity_at[1.0], 4),
            "froc_fused": {str(k): round(v, 4) for k, v in r_fused.sensitivity_at.items()},
            "froc_image_only": {str(k): round(v, 4) for k, v in r_image.sensitivity_at.items()}}


def _logistic(X: torch.Tensor, y: torch.Tensor, offset: torch.Tensor, pos_weight: float,
              l2: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights, bias) of a class-weighted, L2-regularised logistic regression on top of `offset` logits."""
    w, b = torch.zeros(X.shape[1], requires_grad=True), torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(offset + X @ w + b, y, pos_weight=torch.tensor(pos_weight)) \
            + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def fit_prior(model: NoduleRater, scans: list[ScanCache], texts: list | None = None,
              pos_weight: float = 10.0) -> None:
    """Start the priors as (class-weighted) logistic regressions, then freeze them: first on the
    candidates' measurements (and their products), then the report fit on top of that, over the scans
    whose report names nodules. The networks then learn what the image and the report add to them."""
    cand_BF = torch.from_numpy(np.concatenate([s.cs.cand_BF for s in scans]))
    y = torch.from_numpy(np.concatenate([s.labels_B for s in scans]))
    extra = model.cfg.extra_priors
    if extra:
        shape_BF = torch.cat([shape_features(torch.from_numpy(s.cs.patches_BP3), torch.from_numpy(s.cs.cand_BF))
                              for s in scans])
        X = torch.cat([cand_BF, quad_features(cand_BF), shape_BF], dim=1)
    else:
        X = cand_BF
    w, b = _logistic(X, y, torch.zeros(len(y)), pos_weight)
    shift = math.log(pos_weight)                    # undo the class weight's shift of the odds
    with torch.no_grad():
        model.prior.weight.copy_(w[None, :CAND_FEATURES])
        model.prior.bias.copy_(b - shift)
        if extra:
            model.prior_quad.weight.copy_(w[None, CAND_FEATURES:])
            model.prior_quad.bias.zero_()
    model.prior.requires_grad_(False)
    if not extra:
        return
    model.prior_quad.requires_grad_(False)
    rows = [(s, t) for s, t in zip(scans, texts or []) if t is not None and len(s.labels_B)]
    if rows:
        with torch.no_grad():
            offset = torch.cat([model.blob_prior(torch.from_numpy(s.cs.cand_BF), torch.from_numpy(s.cs.patches_BP3))
                                for s, _ in rows]) + shift
            R = torch.cat([report_features(torch.from_numpy(t[..., EMBED_DIM:])) for _, t in rows])
        w, b = _logistic(R, torch.from_numpy(np.concatenate([s.labels_B for s, _ in rows])), offset, pos_weight)
        with torch.no_grad():
            model.report_prior.weight.copy_(w[None])
            model.report_prior.bias.copy_(b)
    model.report_prior.requires_grad_(False)


def _tree_classifier(iters: int, lr: float, leaves: int, min_leaf: int, seed: int):
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(max_iter=iters, learning_rate=lr, max_leaf_nodes=leaves,
                                          min_samples_leaf=min_leaf, l2_regularization=1.0, early_stopping=False,
                                          random_state=seed)


def report_stage_inputs(image_logit_B: np.ndarray, text_BMF: np.ndarray, cands: list[Candidate],
                        cfg: DetectorConfig) -> np.ndarray:
    """[B, 1 + REPORT_FEATURES + RANK_FEATURES] what the report stage reads for one scan (see report_stage)."""
    logit, pair = torch.from_numpy(image_logit_B).float(), torch.from_numpy(text_BMF[..., EMBED_DIM:])
    keep = nms_keep(cands, image_logit_B, cfg)
    rival = None if keep is None else torch.from_numpy(keep)
    return torch.cat([logit[:, None], report_features(pair), mention_rank_features(logit, pair, rival)], 1).numpy()


def fit_trees(model_cfg: DetectorConfig, tcfg: DetectorTrainConfig, scans: list[ScanCache],
              texts: list, network_logits: list[np.ndarray] | None = None) -> NoduleRater:
    """A rater whose image prior is boosted trees (sklearn, training only; the trees are then buffers of
    the module) on every candidate's cand_BF (and, with network_feature, the patch network's out-of-fold
    logit: `network_logits`, one array per scan), and whose report stage is a logistic regression, on the
    scans with a report, over the candidates' out-of-fold image logits (by scan, so it sees logits as an
    unseen scan gets them), the report fit and the mention ranks. Sets model_cfg.image_trees / report_stage."""
    if model_cfg.network_feature != (network_logits is not None):
        raise ValueError("network_logits are needed exactly when model_cfg.network_feature is on")
    X = np.concatenate([s.cs.cand_BF for s in scans])
    if network_logits is not None:
        X = np.concatenate([X, np.concatenate(network_logits)[:, None].astype(np.float32)], axis=1)
    y = np.concatenate([s.labels_B for s in scans]).astype(int)
    scan_N = np.concatenate([np.full(len(s.labels_B), n) for n, s in enumerate(scans)])
    image = _tree_classifier(tcfg.tree_iters, tcfg.tree_lr, tcfg.tree_leaves, tcfg.tree_min_leaf, tcfg.seed).fit(X, y)
    oof = np.zeros(len(y))
    for f in range(tcfg.folds):
        held = scan_N % tcfg.folds == f
        part = _tree_classifier(tcfg.tree_iters, tcfg.tree_lr, tcfg.tree_leaves, tcfg.tree_min_leaf, tcfg.seed)
        oof[held] = part.fit(X[~held], y[~held]).decision_function(X[held])
    rows = [(report_stage_inputs(oof[scan_N == n], t, s.cs.candidates, model_cfg), s.labels_B)
            for n, (s, t) in enumerate(zip(scans, texts)) if t is not None and len(s.labels_B)]
    model_cfg.image_trees, model_cfg.report_stage = TreeEnsemble.shape_of(image), bool(rows)
    model = NoduleRater(model_cfg)
    model.image_trees.load_sklearn(image)
    if rows:
        fit_linear(model.report_linear, np.concatenate([r for r, _ in rows]), np.concatenate([l for _, l in rows]),
                   tcfg.report_l2)
    return model


def fit_linear(layer: nn.Linear, X_NF: np.ndarray, y_N: np.ndarray, l2: float) -> None:
    """Set a one-output linear layer to the L2-regularised logistic regression of y on X (a frozen stage)."""
    w, b = _logistic(torch.from_numpy(X_NF).float(), torch.from_numpy(y_N).float(), torch.zeros(len(y_N)),
                     pos_weight=1.0, l2=l2)
    with torch.no_grad():
        layer.weight.copy_(w[None])
        layer.bias.copy_(b)


def train_detector(tcfg: DetectorTrainConfig, out: str | Path | None = None, log=print) -> dict:
    """Train the rater on synthetic studies; save the best epoch (by held-out fused CPM) to `out`."""
    from core.checkpoint import save_checkpoint
    from core.moe import moe_train_step

    start = time.perf_counter()
    torch.manual_seed(tcfg.seed)
    rng = np.random.default_rng(tcfg.seed)
    cfg = tcfg.model
    train_cand_cfg = cfg if tcfg.train_lung_closing_mm is None else dataclasses.replace(
        cfg, lung_closing_mm=tcfg.train_lung_closing_mm)
    train = synth_scans(0, tcfg.train_studies, tcfg.seed, train_cand_cfg, workers=tcfg.workers)
    val = synth_scans(0, tcfg.val_studies, tcfg.seed + 1, cfg, workers=tcfg.workers)
    prep_seconds = time.perf_counter() - start
    log(f"candidates ready in {prep_seconds:.0f} s: {sum(len(s.cs.candidates) for s in train)} train, "
        f"{sum(int(s.labels_B.sum()) for s in train)} positive")
    texts = [text_inputs(scan.cs, scan.reading) for scan in train]
    network, network_logits = None, None
    if cfg.network_feature:
        from .patch_network import load_patch_network, oof_logits_for

        if tcfg.patch_network is None or not cfg.rich_features:
            raise ValueError("network_feature needs rich_features and a train-patch-network folder (patch_network)")
        network, oof, info = load_patch_network(tcfg.patch_network)
        if info["train"]["folds"] < 2:
            raise ValueError(f"{tcfg.patch_network}: trained without out-of-fold logits (folds 0); the trees need them")
        if (info["train"]["studies"], info["train"]["seed"]) < (tcfg.train_studies, tcfg.seed):
            raise ValueError(f"{tcfg.patch_network}: trained on {info['train']['studies']} studies of seed "
                             f"{info['train']['seed']}, fewer than these {tcfg.train_studies} of seed {tcfg.seed}")
        network_logits = [oof_logits_for(oof, n, np.stack([c.center for c in s.cs.candidates]) if s.cs.candidates
                                         else np.zeros((0, 3))) for n, s in enumerate(train)]
    if cfg.rich_features:
        model = fit_trees(cfg, tcfg, train, texts, network_logits)
        if network is not None:
            unexpected = model.load_state_dict(network, strict=False).unexpected_keys
            if unexpected:
                raise ValueError(f"{tcfg.patch_network}: weights this detector has no place for: {unexpected[:3]}")
        log(f"trees fitted in {time.perf_counter() - start - prep_seconds:.0f} s: image {cfg.image_trees} "
            f"(nodes, trees, depth), report stage {cfg.report_stage}")
    else:
        model = NoduleRater(cfg)
        fit_prior(model, train, texts)
    if not cfg.network and tcfg.epochs:
        log("network=False: no network to train, the epochs are skipped")
        tcfg = dataclasses.replace(tcfg, epochs=0)
    detector = NoduleDetector(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=tcfg.lr,
                            weight_decay=tcfg.weight_decay)
    n_rows = len(_epoch_rows(train, np.random.default_rng(0), tcfg.negatives, tcfg.pos_repeat))
    total = tcfg.epochs * math.ceil(n_rows / tcfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=tcfg.lr, total_steps=max(total, 1), pct_start=0.15)
    n_pos = float(sum(s.labels_B.sum() for s in train)) * tcfg.pos_repeat
    pos_weight = torch.tensor(max(1.0, (n_rows - n_pos) / max(1.0, n_pos)) ** 0.5)
    train_cfg = dataclasses.asdict(tcfg)
    train_cfg.pop("model")
    if network is not None:   # what the patch network was, not where it lay on the training machine
        train_cfg["patch_network"] = {"train": info["train"], **info["summary"]}

    def save(metrics: dict) -> None:
        """The model as it is now, its operating point the validation probability at 1 FP per scan."""
        cfg.threshold = metrics["threshold_at_1fp_per_scan"]
        if out is not None:
            save_checkpoint(model, out, kind=KIND, config=cfg, metadata={"train": train_cfg, "validation": metrics,
                                                                        "history": history})

    model.eval()
    best_metrics = evaluate_scans(detector, val)        # epoch 0: the priors alone
    best, best_state = best_metrics["cpm_fused"], {k: v.clone() for k, v in model.state_dict().items()}
    history = [{"epoch": 0, **{k: best_metrics[k] for k in ("cpm_fused", "cpm_image_only", "sensitivity_at_1fp_fused",
                                                            "sensitivity_at_1fp_image_only")}}]
    log(str(history[-1]))
    save(best_metrics)
    for epoch in range(tcfg.epochs):
        model.train()
        losses = []
        for patches, cand, text, mask, y in _batches(train, texts, rng, tcfg.batch_size, tcfg.p_drop_report,
                                                     tcfg.negatives, tcfg.pos_repeat):
            logits, aux = model(patches, cand, text, mask)
            loss = F.binary_cross_entropy_with_logits(logits, y, pos_weight=pos_weight) + aux
            losses.append(moe_train_step(model, loss, opt, sched))
        model.eval()
        history.append({"epoch": epoch + 1, "loss": round(float(np.mean(losses)), 4),
                        "seconds": round(time.perf_counter() - start, 1)})
        if (epoch + 1) % tcfg.eval_every and epoch + 1 != tcfg.epochs:
            log(str(history[-1]))
            continue
        metrics = evaluate_scans(detector, val)
        history[-1].update({k: metrics[k] for k in ("cpm_fused", "cpm_image_only", "sensitivity_at_1fp_fused",
                                                    "sensitivity_at_1fp_image_only")})
        log(str(history[-1]))
        if metrics["cpm_fused"] >= best:   # ties go to the more trained model
            best, best_state, best_metrics = metrics["cpm_fused"], {k: v.clone() for k, v in model.state_dict().items()}, metrics
            save(best_metrics)             # a long run stopped early still leaves its best epoch
    model.load_state_dict(best_state)
    save(best_metrics)
    summary = {"train_studies": tcfg.train_studies, "val_studies": tcfg.val_studies, "seed": tcfg.seed,
               "epochs": tcfg.epochs, "seconds": round(time.perf_counter() - start, 1),
               "parameters": sum(p.numel() for p in model.parameters()), **best_metrics, "history": history}
    if out is not None:
        summary["out"] = str(out)
    return summary


def evaluate_on_synth(detector: NoduleDetector, first: int = 0, n: int = 12, seed: int = 1000,
                      workers: int = 2) -> dict:
    """FROC, fused vs image only, on synthetic studies never trained on (another seed)."""
    scans = synth_scans(first, n, seed, detector.cfg, workers=workers, nodule_map=detector.model.nodule_map)
    return {"seed": seed, **evaluate_scans(detector, scans)}
