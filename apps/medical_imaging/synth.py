"""Synthetic chest CT studies with known nodules, their radiology reports, and DICOM export.

    study = make_study(3, seed=0)               # deterministic per (index, seed)
    study.hu_ZYX, study.affine, study.nodules, study.report
    write_dataset(Path("out"), n=20)            # out/studies/<id>/*.dcm, out/reports/<id>.txt, out/truth.csv

Anatomy (in mm, body-centred, DICOM LPS axes: x to the patient's left, y posterior, z superior): air outside the
body (-1000 HU), a subcutaneous fat ring (~-100), soft tissue (~40), two lungs (~-850 with texture) whose sections
taper to the apex and sit on domed diaphragms, a heart notch in the left lung, ribs, sternum and a vertebra (bone
300-1000), branching vessel trees in the lungs (bright tubes: the distractors a detector must learn to reject),
solid nodules (-60..+80 HU, lobulated) and ground-glass nodules (-650..-400, fuzzy), then Gaussian noise. Values
are rounded to whole HU so that a DICOM round trip (intercept -1024) is exact.

Reports are free text with several templates and synonyms, deliberately imperfect: some sizes off by a few mm,
some nodules unmentioned, some true nodules denied ("no nodule in the left lower lobe"), some mentions of nodules
that are not there, and sometimes no report at all (report == ""). Each SynthNodule records what the report said.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

LOBES = ("right upper lobe", "right middle lobe", "right lower lobe", "left upper lobe", "left lower lobe")
LOBE_ABBREV = {"right upper lobe": "RUL", "right middle lobe": "RML", "right lower lobe": "RLL",
               "left upper lobe": "LUL", "left lower lobe": "LLL"}
TRUTH_COLUMNS = ("study", "series_uid", "nodule_id", "x_mm", "y_mm", "z_mm", "i", "j", "k", "diameter_mm", "kind",
                 "lobe", "mentioned", "negated", "reported_diameter_mm")


@dataclass
class SynthConfig:
    shape_zyx: tuple[int, int, int] = (64, 128, 128)         # slices, rows, columns
    spacing_zyx: tuple[float, float, float] = (2.5, 2.7, 2.7)  # mm: slice spacing, row spacing, column spacing
    nodules_per_study: tuple[int, int] = (0, 4)               # inclusive range, uniform
    diameter_mm: tuple[float, float] = (4.0, 30.0)            # log-uniform (small nodules are commoner)
    ground_glass_share: float = 0.3                           # fraction of nodules that are ground-glass
    noise_hu: float = 18.0                                    # std of the additive Gaussian noise
    vessel_roots: int = 6                                     # vessel trees per lung (0: no distractors)
    vessel_depth: int = 5                                     # branching generations per tree
    # report imperfection rates
    p_no_report: float = 0.1          # the study comes without a report
    p_unmentioned: float = 0.2        # a true nodule is not mentioned
    p_negated: float = 0.08           # a true nodule's lobe is reported clear ("no nodule in the ...")
    p_size_error: float = 0.3         # a mentioned size is off by size_error_mm
    size_error_mm: tuple[float, float] = (2.0, 5.0)
    p_false_mention: float = 0.12     # the report mentions a nodule where there is none
    p_clear_lobe: float = 0.35        # a nodule-free lobe is explicitly reported clear (a true negation)

    @classmethod
    def clinical(cls, **overrides) -> SynthConfig:
        """A full-size series: 150 slices of 512 x 512 at 1.25 mm / 0.68 mm."""
        return cls(**{"shape_zyx": (150, 512, 512), "spacing_zyx": (1.25, 0.68, 0.68), **overrides})


@dataclass
class SynthNodule:
    nodule_id: int
    center_xyz: tuple[float, float, float]   # mm, DICOM patient coordinates (LPS)
    center_ijk: tuple[float, float, float]   # voxel (column, row, slice), float
    diameter_mm: float
    kind: str                                # "solid" | "ground_glass"
    lobe: str                                # e.g. "right upper lobe"
    mentioned: bool                          # the report describes it (in its lobe)
    negated: bool                            # the report says its lobe has no nodule
    reported_diameter_mm: float | None       # the size the report gives, when mentioned


@dataclass
class SynthStudy:
    study_id: str                            # "synth-0003"
    hu_ZYX: np.ndarray                       # float32, whole HU
    spacing_zyx: tuple[float, float, float]
    affine: np.ndarray                       # 4x4, (i, j, k, 1) -> (x, y, z, 1) mm LPS
    nodules: list[SynthNodule]
    report: str                              # "" when the study has no report
    series_uid: str
    study_uid: str
    false_mentions: list[tuple[str, float]] = field(default_factory=list)  # (lobe, size mm) reported, not there


# ---------------------------------------------------------------------------------------------- anatomy


def _interp_matrix(n_out: int, n_in: int, cell: float) -> np.ndarray:
    """(n_out, n_in) linear-interpolation weights: output sample t sits at t / cell on the coarse grid."""
    pos = np.arange(n_out) / cell
    lo = np.minimum(np.floor(pos).astype(int), n_in - 2)
    frac = (pos - lo).astype(np.float32)
    m = np.zeros((n_out, n_in), dtype=np.float32)
    m[np.arange(n_out), lo] = 1 - frac
    m[np.arange(n_out), lo + 1] = frac
    return m


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int, int], cell_zyx) -> np.ndarray:
    """Low-frequency noise (std ~0.6) of the given shape: a coarse random grid with one sample per cell
    (in voxels, per axis) interpolated linearly, separably (three small matrix products)."""
    coarse_shape = [int(math.ceil(s / c)) + 2 for s, c in zip(shape, cell_zyx)]
    out = rng.standard_normal(coarse_shape, dtype=np.float32)
    mz, my, mx = (_interp_matrix(s, n, c) for s, n, c in zip(shape, coarse_shape, cell_zyx))
    out = out @ mx.T                                   # (cz, cy, W)
    out = np.einsum("yc,zcx->zyx", my, out)            # (cz, H, W)
    return np.tensordot(mz, out, axes=1)               # (D, H, W)


def _lung_masks(X, Y, Z, scale: float, z_lo: float, z_hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Right and left lung masks (bool, ZYX) from body-centred mm grids X (1,1,W), Y (1,H,1), Z (D,1,1)."""
    masks = []
    for side, cx, ax in ((-1, -68.0, 50.0), (1, 70.0, 46.0)):
        cx, ax, ay, cy = cx * scale, ax * scale, 78.0 * scale, 6.0 * scale
        t = (Z - z_lo) / (z_hi - z_lo)                                     # 0 at the base, 1 at the apex
        taper = np.sqrt(np.clip(1 - ((t - 0.35) / 0.65).clip(0) ** 2, 0, 1))  # narrows towards the apex
        ex = (X - cx) / ax
        ey = (Y - cy) / ay
        inside = ex ** 2 + ey ** 2 < taper ** 2
        dome = z_lo + 28.0 * scale * np.clip(1 - ex ** 2 - ey ** 2, 0, 1)  # diaphragm, higher in the middle
        mask = inside & (Z > dome)
        if side == 1:   # heart notch, anterior-medial, in the lower half
            heart = ((X - 22 * scale) / (58 * scale)) ** 2 + ((Y + 38 * scale) / (55 * scale)) ** 2 < 1
            mask &= ~(heart & (t < 0.55))
        masks.append(mask)
    return masks[0], masks[1]


def _lobe(x: float, y: float, z: float, scale: float, z_lo: float, z_hi: float) -> str:
    """Lobe from a body-centred position: oblique fissure (posterior-superior to anterior-inferior) and, on the
    right, a horizontal fissure."""
    t = (z - z_lo) / (z_hi - z_lo)
    yn = float(np.clip((y - 6.0 * scale) / (78.0 * scale), -1, 1))  # -1 anterior .. +1 posterior
    lower = t < 0.25 + 0.4 * (yn + 1) / 2
    if x < 0:
        return "right lower lobe" if lower else ("right middle lobe" if t < 0.55 else "right upper lobe")
    return "left lower lobe" if lower else "left upper lobe"


def _vessel_segments(rng: np.random.Generator, cfg: SynthConfig, in_lung, scale: float, zc: float):
    """Branching trees from each hilum: a list of (p0, p1, radius) in body-centred mm."""
    segs = []
    for hx in (-30.0 * scale, 32.0 * scale):
        for _ in range(cfg.vessel_roots):
            hilum = np.array([hx, 5.0 * scale, zc + rng.uniform(-15, 15)])
            d = np.array([np.sign(hx) * rng.uniform(0.6, 1.0), rng.uniform(-0.7, 0.7), rng.uniform(-0.9, 0.9)])
            stack = [(hilum, d / np.linalg.norm(d), 3.5 * scale, 0)]
            while stack:
                p0, d, r, gen = stack.pop()
                p1 = p0 + d * rng.uniform(22, 38) * scale * (0.85 ** gen)
                segs.append((p0, p1, r))
                if gen + 1 >= cfg.vessel_depth or (gen > 0 and not in_lung(p1)):
                    continue
                for sgn in (-1, 1):
                    perp = np.cross(d, rng.standard_normal(3))
                    perp /= np.linalg.norm(perp) + 1e-9
                    nd = d + sgn * perp * math.tan(math.radians(rng.uniform(20, 40)))
                    stack.append((p1, nd / np.linalg.norm(nd), max(0.8, r * rng.uniform(0.65, 0.8)), gen + 1))
    return segs


def _box(center_mm, radius_mm, origin, spacing_xyz, shape_xyz):
    """Voxel index slices (per axis x, y, z) of the box around a body-centred point, clipped to the volume."""
    lo = np.floor((np.asarray(center_mm) - radius_mm - origin) / spacing_xyz).astype(int)
    hi = np.ceil((np.asarray(center_mm) + radius_mm - origin) / spacing_xyz).astype(int) + 1
    lo, hi = np.clip(lo, 0, shape_xyz), np.clip(hi, 0, shape_xyz)
    return [slice(a, b) for a, b in zip(lo, hi)]


def _paint(hu, weight, value, box):
    """Blend value into hu_ZYX over a box (x, y, z slices) with weight (z, y, x) in [0, 1]."""
    sx, sy, sz = box
    region = hu[sz, sy, sx]
    region += weight * (value - region)


# ---------------------------------------------------------------------------------------------- reports

_HEADERS = ["CT CHEST WITHOUT CONTRAST", "CT THORAX", "CHEST CT, NON-CONTRAST", "LOW-DOSE CT CHEST"]
_TECHNIQUE = ["Technique: Axial images of the chest were obtained without intravenous contrast.",
              "TECHNIQUE: Helical CT of the thorax, {mm} mm reconstructions.",
              "Comparison: None.", ""]
_NOISE = ["The heart is normal in size. No pericardial effusion.", "No pleural effusion or pneumothorax.",
          "Mild centrilobular emphysema in the upper lobes.", "Degenerative changes of the thoracic spine.",
          "The airways are patent.", "No mediastinal or hilar lymphadenopathy.", "Small hiatal hernia.",
          "Scattered coronary artery calcifications.", "Dependent atelectasis at both lung bases."]
_NOUN = {"solid": ["nodule", "solid nodule", "soft tissue nodule", "pulmonary nodule", "solid lesion"],
         "ground_glass": ["ground-glass nodule", "ground glass opacity", "GGO", "subsolid nodule",
                          "nonsolid nodule", "ground-glass density"]}
_POSITIVE = ["There is a {size} {noun} in the {lobe}.",
             "A {noun} measuring {size} is seen in the {lobe}.",
             "{Lobe}: {size} {noun}.",
             "In the {lobe} there is a {noun} of {size}.",
             "Redemonstrated {size} {noun} within the {lobe}.",
             "{size} {noun}, {lobe}.",
             "The {lobe} contains a {noun}, approximately {size}."]
_NEGATIVE = ["No nodule in the {lobe}.", "The {lobe} is clear.", "No suspicious nodule is identified in the {lobe}.",
             "{Lobe}: no nodules.", "No focal opacity in the {lobe}.", "There is no mass or nodule in the {lobe}."]
_NORMAL = ["No pulmonary nodules.", "The lungs are clear.", "No suspicious pulmonary nodule or mass.",
           "Lungs: no nodules or consolidation."]


def _size_text(rng: np.random.Generator, mm: float) -> str:
    r = rng.random()
    if r < 0.6:
        return f"{round(mm):d} mm"
    if r < 0.8:
        return f"{mm / 10:.1f} cm"
    if r < 0.9:
        return f"{round(mm):d}mm"
    return f"{round(mm):d} millimeter"


def _report(rng: np.random.Generator, cfg: SynthConfig, nodules: list[SynthNodule],
            false_mentions: list[tuple[str, float]]) -> str:
    """Findings + impression; nodule entries (true, false and negations) in shuffled order among other findings."""
    lung_lines, positives = [], []
    for n in nodules:
        if n.negated:
            lung_lines.append(rng.choice(_NEGATIVE))
            lung_lines[-1] = lung_lines[-1].format(lobe=n.lobe, Lobe=n.lobe.capitalize())
        elif n.mentioned:
            positives.append((n.lobe, n.reported_diameter_mm, n.kind))
    for lobe, mm in false_mentions:
        positives.append((lobe, mm, "solid" if rng.random() < 0.7 else "ground_glass"))
    for lobe, mm, kind in positives:
        lobe_txt = LOBE_ABBREV[lobe] if rng.random() < 0.15 else lobe
        line = rng.choice(_POSITIVE).format(size=_size_text(rng, mm), noun=rng.choice(_NOUN[kind]),
                                            lobe=lobe_txt, Lobe=lobe_txt[0].upper() + lobe_txt[1:])
        lung_lines.append(line[0].upper() + line[1:])
    occupied = {n.lobe for n in nodules} | {lobe for lobe, _ in false_mentions}
    for lobe in LOBES:
        if lobe not in occupied and rng.random() < cfg.p_clear_lobe:
            lung_lines.append(rng.choice(_NEGATIVE).format(lobe=lobe, Lobe=lobe.capitalize()))
    if not positives and rng.random() < 0.7:
        lung_lines.append(str(rng.choice(_NORMAL)))
    order = rng.permutation(len(lung_lines))
    other = list(rng.choice(_NOISE, size=rng.integers(1, 4), replace=False))
    findings = [lung_lines[i] for i in order] + other

    if not positives:
        impression = [str(rng.choice(["No pulmonary nodules.", "No acute cardiopulmonary abnormality.",
                                      "No suspicious pulmonary nodule."]))]
    else:
        big = max(positives, key=lambda p: p[1])
        abbr = LOBE_ABBREV[big[0]]
        if len(positives) == 1:
            impression = [str(rng.choice([f"Solitary {round(big[1])} mm pulmonary nodule, {abbr}.",
                                          f"{big[0].capitalize()} nodule as above.",
                                          f"Single {round(big[1])} mm nodule in the {big[0]}."]))]
        else:
            impression = [f"{len(positives)} pulmonary nodules, the largest {round(big[1])} mm in the {abbr}."]
        impression.append(str(rng.choice(["Recommend follow-up CT per Fleischner Society guidelines.",
                                          "Follow-up chest CT in 3-6 months is suggested.",
                                          "Consider PET-CT for the larger nodule.", ""])))
    head = [str(rng.choice(_HEADERS)), str(rng.choice(_TECHNIQUE)).format(mm=cfg.spacing_zyx[0])]
    sections = ["\n".join(h for h in head if h), "FINDINGS:\n" + " ".join(findings),
                "IMPRESSION:\n" + " ".join(s for s in impression if s)]
    return "\n\n".join(sections) + "\n"


# ---------------------------------------------------------------------------------------------- study


def _torso(rng: np.random.Generator, X2, Y2, z_col, scale: float) -> np.ndarray:
    """Air, skin fat, soft tissue, vertebra, aorta (constant along z), then ribs and sternum: hu_ZYX float32.
    X2 (1, W), Y2 (H, 1), z_col (D, 1): body-centred mm."""
    D, H, W = len(z_col), len(Y2), X2.shape[1]
    a, b = 160.0 * scale, 112.0 * scale
    rho = np.sqrt((X2 / a) ** 2 + (Y2 / b) ** 2)                         # (H, W), 1 at the skin
    plane = np.full((H, W), -1000.0, dtype=np.float32)
    plane[rho < 1] = 40.0
    plane[(rho < 1) & (rho > 1 - 14 / b)] = -100.0                       # subcutaneous fat
    r_vert = np.sqrt(X2 ** 2 + (Y2 - 0.72 * b) ** 2)
    plane[r_vert < 17 * scale] = 350.0                                   # cancellous bone
    plane[(r_vert < 17 * scale) & (r_vert > 14 * scale)] = 950.0         # cortex
    plane[((X2 - 22 * scale) ** 2 + (Y2 - 0.45 * b) ** 2) < (12 * scale) ** 2] = 45.0   # aorta
    hu = np.broadcast_to(plane, (D, H, W)).copy()
    # ribs (sloping arcs in a shell, skipping the anterior midline) and sternum: only their few pixels in 3D
    theta = np.arctan2(Y2, X2) + np.zeros_like(X2)                       # (H, W), -pi/2 anterior
    jj, ii = np.nonzero((rho > 0.8) & (rho < 0.87) & (np.abs(theta + np.pi / 2) > 0.3))
    on = np.mod(z_col + 20 * np.cos(theta[jj, ii]) + rng.uniform(0, 25), 25.0) < 9
    hu[:, jj, ii] = np.where(on, 650.0, hu[:, jj, ii])
    jj, ii = np.nonzero(((X2 / 14) ** 2 + ((Y2 + b * 0.9) / 8) ** 2) < 1)
    hu[:, jj, ii] = np.where(np.mod(z_col, 40) < 30, 450.0, hu[:, jj, ii])
    return hu


def _render_vessel(hu, lung, p0, p1, r: float, o, spacing_xyz) -> None:
    """Blend a tube (segment p0-p1, radius r mm, body-centred) of blood (40 HU) into hu_ZYX, inside the lung."""
    shape_xyz = np.array(hu.shape[::-1])
    bx = _box((p0 + p1) / 2, np.linalg.norm(p1 - p0) / 2 + r + 2, o, spacing_xyz, shape_xyz)
    gx, gy, gz = (o[n] + spacing_xyz[n] * np.arange(bx[n].start, bx[n].stop) for n in range(3))
    P = np.stack(np.meshgrid(gz, gy, gx, indexing="ij")[::-1], axis=-1)   # (z, y, x, 3) as xyz
    seg = p1 - p0
    t = np.clip(((P - p0) @ seg) / (seg @ seg), 0, 1)
    dist = np.linalg.norm(P - (p0 + t[..., None] * seg), axis=-1)
    w = np.clip((r - dist) / max(0.5, 0.4 * min(spacing_xyz[:2])) + 0.5, 0, 1).astype(np.float32)
    _paint(hu, w * lung[bx[2], bx[1], bx[0]], 40.0, bx)


def _render_nodule(rng: np.random.Generator, hu, c, r: float, solid: bool, o, spacing_xyz) -> None:
    """Blend a nodule centred at c (body-centred mm), radius r: solid (-60..80 HU, lobulated, sharp) or
    ground-glass (-650..-400 HU, fuzzy edge, patchy)."""
    shape_xyz = np.array(hu.shape[::-1])
    bx = _box(c, r * 1.6 + 4, o, spacing_xyz, shape_xyz)
    gx, gy, gz = (o[n] + spacing_xyz[n] * np.arange(bx[n].start, bx[n].stop) - c[n] for n in range(3))
    dX, dY, dZ = gx[None, None, :], gy[None, :, None], gz[:, None, None]
    dist = np.sqrt(dX ** 2 + dY ** 2 + dZ ** 2) + 1e-6
    r_eff = np.full_like(dist, r)
    for _ in range(3 if solid else 2):                      # lobulation: low-order shape modes
        v = rng.standard_normal(3)
        v /= np.linalg.norm(v)
        cos = (dX * v[0] + dY * v[1] + dZ * v[2]) / dist
        r_eff += r * rng.uniform(0.0, 0.25 if solid else 0.12) * (cos ** 2 - 1 / 3)
    edge = 0.3 * min(spacing_xyz[:2]) + (0.0 if solid else 1.2)   # partial volume (+ the fuzzy rim of a GGN)
    w = 1 / (1 + np.exp(-(r_eff - dist) / edge))
    value = rng.uniform(-60, 80) if solid else rng.uniform(-650, -400)
    if not solid:
        w = w * (0.85 + 0.25 * _smooth_noise(rng, w.shape, (2.0, 2.0, 2.0)).clip(-0.6, 0.6))
    _paint(hu, w.astype(np.float32), value, bx)


def _uid(*parts) -> str:
    from pydicom.uid import generate_uid
    return generate_uid(entropy_srcs=["moe-suite-synth", *map(str, parts)])


def make_study(index: int, seed: int = 0, cfg: SynthConfig | None = None) -> SynthStudy:
    """One synthetic chest CT with its nodules and report; the same (index, seed, cfg) gives the same study."""
    cfg = cfg or SynthConfig()
    rng = np.random.default_rng([seed, index, 5])
    D, H, W = cfg.shape_zyx
    sz, sy, sx = cfg.spacing_zyx
    scale = rng.uniform(0.9, 1.05)   # patient size
    # patient-coordinate origin of voxel (0, 0, 0): centred in x/y, a realistic table position in z
    origin_xyz = np.array([-(W - 1) / 2 * sx, -(H - 1) / 2 * sy + rng.uniform(-5, 5),
                           -round(rng.uniform(100, 300) * 2) / 2])
    body_c = np.array([rng.uniform(-6, 6), rng.uniform(-6, 6) + origin_xyz[1] + (H - 1) / 2 * sy,
                       origin_xyz[2] + (D - 1) / 2 * sz])            # body centre in patient mm
    affine = np.array([[sx, 0, 0, origin_xyz[0]], [0, sy, 0, origin_xyz[1]], [0, 0, sz, origin_xyz[2]],
                       [0, 0, 0, 1]], dtype=np.float64)
    o = origin_xyz - body_c                                              # body-centred origin
    X = (o[0] + sx * np.arange(W, dtype=np.float32))[None, None, :]
    Y = (o[1] + sy * np.arange(H, dtype=np.float32))[None, :, None]
    Z = (o[2] + sz * np.arange(D, dtype=np.float32))[:, None, None]
    half_z = (D - 1) / 2 * sz
    z_lo = -min(75.0, 0.9 * half_z) + rng.uniform(-5, 5)                # lung base (dome rim) ...
    z_hi = z_lo + min(175.0 * scale, 1.95 * half_z)                      # ... and apex

    hu = _torso(rng, X[0], Y[0], Z[:, :, 0], scale)
    right, left = _lung_masks(X, Y, Z, scale, z_lo, z_hi)
    lung = right | left
    texture = _smooth_noise(rng, (D, H, W), (8.0 / sz, 8.0 / sy, 8.0 / sx))   # ~8 mm blobs
    texture *= 55.0
    texture -= 850.0
    np.copyto(hu, texture, where=lung)
    del texture

    spacing_xyz = np.array([sx, sy, sz])

    def in_lung(p) -> bool:
        i, j, k = np.round((np.asarray(p) - o) / spacing_xyz).astype(int)
        return bool(0 <= i < W and 0 <= j < H and 0 <= k < D and lung[k, j, i])

    for p0, p1, r in _vessel_segments(rng, cfg, in_lung, scale, (z_lo + min(z_hi, half_z)) / 2):
        _render_vessel(hu, lung, p0, p1, r, o, spacing_xyz)

    # nodules: centres inside a lung, well separated, the sphere mostly inside the lung
    n_nod = int(rng.integers(cfg.nodules_per_study[0], cfg.nodules_per_study[1] + 1))
    lung_idx = np.flatnonzero(lung)
    dirs = np.array([(dx, dy, dz) for dx in (-1, 0, 1) for dy in (-1, 0, 1) for dz in (-1, 0, 1)
                     if (dx, dy, dz) != (0, 0, 0)], dtype=float)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    placed: list[tuple[np.ndarray, float, str]] = []
    for _ in range(n_nod):
        lo, hi = np.log(cfg.diameter_mm[0]), np.log(cfg.diameter_mm[1])
        diam = float(np.exp(rng.uniform(lo, hi)))
        kind = "ground_glass" if rng.random() < cfg.ground_glass_share else "solid"
        for _attempt in range(200):
            k, j, i = np.unravel_index(lung_idx[rng.integers(len(lung_idx))], lung.shape)
            c = o + spacing_xyz * (np.array([i, j, k]) + rng.uniform(-0.5, 0.5, 3))
            r = diam / 2
            ok = sum(in_lung(c + r * dv) for dv in dirs) >= len(dirs) - 3
            if ok and all(np.linalg.norm(c - pc) > r + pr + 6 for pc, pr, _ in placed):
                placed.append((c, r, kind))   # no room after 200 tries (tiny lungs only): the nodule is dropped
                break
    for c, r, kind in placed:
        _render_nodule(rng, hu, c, r, kind == "solid", o, spacing_xyz)

    noise = rng.standard_normal(hu.shape, dtype=np.float32)
    noise *= cfg.noise_hu
    hu += noise
    del noise
    np.round(hu, out=hu)
    np.clip(hu, -1024, 3071, out=hu)

    nodules = []
    for n, (c, r, kind) in enumerate(placed):
        xyz = c + body_c
        ijk = (np.linalg.inv(affine) @ np.append(xyz, 1))[:3]
        negated = rng.random() < cfg.p_negated
        mentioned = not negated and rng.random() >= cfg.p_unmentioned
        reported = None
        if mentioned:
            err = rng.uniform(*cfg.size_error_mm) * rng.choice([-1, 1]) if rng.random() < cfg.p_size_error else 0.0
            reported = float(max(2.0, round(2 * r + err)))
        nodules.append(SynthNodule(nodule_id=n, center_xyz=tuple(float(v) for v in xyz),
                                   center_ijk=tuple(float(v) for v in ijk), diameter_mm=round(2 * r, 2), kind=kind,
                                   lobe=_lobe(*c, scale, z_lo, z_hi), mentioned=mentioned, negated=negated,
                                   reported_diameter_mm=reported))
    occupied = {n.lobe for n in nodules}
    false_mentions = []
    if rng.random() < cfg.p_false_mention:
        free = [lobe for lobe in LOBES if lobe not in occupied]
        if free:
            false_mentions.append((str(rng.choice(free)), float(round(np.exp(rng.uniform(np.log(4), np.log(15)))))))
    report = "" if rng.random() < cfg.p_no_report else _report(rng, cfg, nodules, false_mentions)
    if not report:   # nothing was said about anything
        false_mentions = []
        for n in nodules:
            n.mentioned, n.negated, n.reported_diameter_mm = False, False, None
    study_id = f"synth-{index:04d}"
    return SynthStudy(study_id=study_id, hu_ZYX=hu, spacing_zyx=(float(sz), float(sy), float(sx)), affine=affine,
                      nodules=nodules, report=report, series_uid=_uid(seed, index, "series"),
                      study_uid=_uid(seed, index, "study"), false_mentions=false_mentions)


# ---------------------------------------------------------------------------------------------- DICOM export


def write_study_dicom(study: SynthStudy, folder: Path, *, signed: bool = False) -> Path:
    """Write the study as a CT Image Storage series, one file per slice (0001.dcm, ...), into folder.

    Stored values are HU + 1024 as uint16 (RescaleIntercept -1024), or int16 HU with intercept 0 when signed.
    Returns the folder.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    D, H, W = study.hu_ZYX.shape
    sz, sy, sx = study.spacing_zyx
    number = study.study_id.rsplit("-", 1)[-1]
    frame_uid = _uid(study.study_uid, "frame")
    for k in range(D):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = _uid(study.series_uid, k)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID = f"SYNTH^{number}", f"SYN{number}"
        ds.PatientBirthDate, ds.PatientSex = "", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study.study_uid, study.series_uid, frame_uid
        ds.StudyID, ds.AccessionNumber = number, ""
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240101"
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
        ds.Modality, ds.Manufacturer = "CT", "MoE Suite synthetic"
        ds.SeriesDescription, ds.StudyDescription = "Synthetic chest CT", "CT CHEST"
        ds.ReferringPhysicianName = ""
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.BodyPartExamined, ds.KVP = "CHEST", 120
        ds.PatientPosition = "FFS"
        ds.ImagePositionPatient = [f"{v:.4f}" for v in (study.affine @ [0, 0, k, 1])[:3]]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*study.affine[:3, 0] / sx, *study.affine[:3, 1] / sy)]
        ds.SliceLocation = f"{(study.affine @ [0, 0, k, 1])[2]:.4f}"
        ds.SliceThickness, ds.SpacingBetweenSlices = f"{sz:.4f}", f"{sz:.4f}"
        ds.PixelSpacing = [f"{sy:.6f}", f"{sx:.6f}"]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = H, W
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16 if signed else 12, 15 if signed else 11
        ds.PixelRepresentation = 1 if signed else 0
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, 0 if signed else -1024, "HU"
        ds.WindowCenter, ds.WindowWidth = -600, 1500
        plane = study.hu_ZYX[k]
        stored = plane.astype(np.int16) if signed else np.clip(plane + 1024, 0, 4095).astype(np.uint16)
        ds.PixelData = stored.tobytes()
        ds.save_as(folder / f"{k + 1:04d}.dcm", enforce_file_format=True)
    return folder


def truth_rows(study: SynthStudy) -> list[dict]:
    """The truth.csv rows of one study (see TRUTH_COLUMNS)."""
    rows = []
    for n in study.nodules:
        rows.append(dict(zip(TRUTH_COLUMNS, (
            study.study_id, study.series_uid, n.nodule_id, *(f"{v:.2f}" for v in n.center_xyz),
            *(f"{v:.2f}" for v in n.center_ijk), f"{n.diameter_mm:.2f}", n.kind, n.lobe, int(n.mentioned),
            int(n.negated), "" if n.reported_diameter_mm is None else f"{n.reported_diameter_mm:g}"))))
    return rows


def write_dataset(out: Path, n: int, seed: int = 0, cfg: SynthConfig | None = None) -> Path:
    """n studies: out/studies/<study_id>/*.dcm, out/reports/<study_id>.txt (absent when the study has no
    report), out/truth.csv (one row per nodule; studies without nodules have no row). Returns truth.csv."""
    out = Path(out)
    (out / "reports").mkdir(parents=True, exist_ok=True)
    truth = out / "truth.csv"
    tmp = truth.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=TRUTH_COLUMNS)
        writer.writeheader()
        for index in range(n):
            study = make_study(index, seed, cfg)
            write_study_dicom(study, out / "studies" / study.study_id)
            if study.report:
                (out / "reports" / f"{study.study_id}.txt").write_text(study.report)
            writer.writerows(truth_rows(study))
    tmp.replace(truth)
    return truth
