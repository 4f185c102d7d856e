"""The dense nodule map: a small 3D U-Net (MONAI) reads the detector's whole 2 mm grid and gives every voxel
a nodule-centre score, trained as CenterNet's heatmap (one Gaussian peak per nodule whatever its size). The
detector uses it twice: its peaks become candidates where the blob measure proposes none, or proposes one a
few millimetres off a small nodule's centre (small ground-glass nodules barely above the lung texture), and its
values at every candidate are inputs of a logistic map stage after the image trees.

Each part is fitted on synthetic studies of its own seed, so that it answers on the next part's studies as on
any unseen scan: the map on seed 5, the map stage on seed 3 (the trees were fitted on seed 0, the operating
point is chosen on seed 1):

    moe-suite medical train-nodule-map --out MAP
    moe-suite medical attach-nodule-map --map MAP --out DETECTOR

Shape legend: B batch, C input channels, Z Y X grid voxels, S crop side, N peaks.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from core.checkpoint import config_from_dict

WINDOWS_HU = ((-1000.0, 400.0), (-900.0, -300.0))   # input channels: the whole range, and a ground-glass window
NETWORK_FILE = "nodule_map.safetensors"
CONFIG_FILE = "config.json"


@dataclass
class NoduleMapConfig:
    channels: tuple[int, ...] = (8, 16, 32, 64)   # U-Net widths per level (0.15 M parameters)
    strides: tuple[int, ...] = (2, 2, 2)          # between levels; the grid is padded to their product
    res_units: int = 1                            # residual units per level (MONAI UNet)


@dataclass
class NoduleMapTrainConfig:
    studies: int = 150               # synthetic studies (make_study 0..N-1 of `seed`): never the detector's
    seed: int = 5                    # the detector trains on seed 0 and chooses on seed 1
    steps: int = 4000
    batch_size: int = 8
    crop: int = 48                   # crop side S in grid voxels (96 mm at 2 mm)
    lr: float = 3e-3
    weight_decay: float = 1e-4
    positive_share: float = 0.5      # share of crops centred (+- crop/4) on a nodule; the rest anywhere in the lungs
    workers: int = 1                 # processes making the studies' grids
    device: str = "cpu"              # torch device of the training steps (a GPU makes a wider map affordable)
    network: NoduleMapConfig = field(default_factory=NoduleMapConfig)


def build_network(cfg: NoduleMapConfig) -> nn.Module:
    from monai.networks.nets import UNet

    network = UNet(spatial_dims=3, in_channels=len(WINDOWS_HU) + 1, out_channels=1, channels=cfg.channels,
                   strides=cfg.strides, num_res_units=cfg.res_units)
    with torch.no_grad():   # start near the map's prior (almost every voxel is no centre), as CenterNet does
        [p for name, p in network.named_parameters() if name.endswith("bias")][-1].fill_(-4.0)
    return network


def network_inputs(hu_ZYX: np.ndarray, lung_ZYX: np.ndarray) -> np.ndarray:
    """[C, Z, Y, X] float32: each HU window scaled to [0, 1], then the lung mask."""
    hu = hu_ZYX.astype(np.float32)
    chans = [(np.clip(hu, lo, hi) - lo) / (hi - lo) for lo, hi in WINDOWS_HU]
    return np.stack(chans + [lung_ZYX.astype(np.float32)])


@torch.no_grad()
def predict_map(network: nn.Module, hu_ZYX: np.ndarray, lung_ZYX: np.ndarray) -> np.ndarray:
    """[Z, Y, X] float32 nodule-centre score in [0, 1] for every voxel of the grid (zero outside the lungs)."""
    multiple = math.prod(network.strides)           # the grid is padded so that every level halves evenly
    x_CZYX = network_inputs(hu_ZYX, lung_ZYX)
    pad = [(0, (-n) % multiple) for n in x_CZYX.shape[1:]]
    x = torch.from_numpy(np.pad(x_CZYX, [(0, 0)] + pad))[None]
    network.eval()
    logits = network(x)[0, 0, :hu_ZYX.shape[0], :hu_ZYX.shape[1], :hu_ZYX.shape[2]]
    return np.where(lung_ZYX, torch.sigmoid(logits).numpy(), 0.0).astype(np.float32)


def map_peaks(map_ZYX: np.ndarray, min_p: float, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """([N, 3] grid voxels (k, j, i), [N] scores) of the map's local maxima (3x3x3) at or above
    min_p and above zero (the zeroed outside of the lungs is no peak), most probable first, at most `limit`."""
    from scipy import ndimage as ndi

    peaks = (map_ZYX == ndi.maximum_filter(map_ZYX, size=3)) & (map_ZYX >= min_p) & (map_ZYX > 0)
    kji_N3 = np.argwhere(peaks)
    p_N = map_ZYX[tuple(kji_N3.T)]
    order = np.argsort(-p_N, kind="stable")[:limit]
    return kji_N3[order], p_N[order]


# ---------------------------------------------------------------------------------------------- training


def grid_kji(grid_affine: np.ndarray, xyz_mm) -> np.ndarray:
    """The grid position (k, j, i), float, of a patient point (x, y, z) mm."""
    return (np.linalg.inv(grid_affine) @ np.array([*xyz_mm, 1.0]))[2::-1]


def centre_heatmap(shape_ZYX: tuple[int, int, int], grid_affine: np.ndarray, nodules) -> np.ndarray:
    """[Z, Y, X] float32 target: a Gaussian around each nodule's centre (sigma a third of its radius, at least
    one voxel; the larger where two meet), exactly 1 at the voxel nearest the centre. One peak per nodule
    whatever its size, so a 4 mm nodule weighs as much as a 30 mm one and its peak says where its centre is
    (nodules: center_xyz mm and diameter_mm, as synth.SynthNodule)."""
    out = np.zeros(shape_ZYX, np.float32)
    voxel_mm = float(np.linalg.norm(grid_affine[:3, 0]))
    for n in nodules:
        centre = grid_kji(grid_affine, n.center_xyz)
        sigma = max(1.0, n.diameter_mm / 2 / voxel_mm / 3)
        R = int(np.ceil(3 * sigma))
        lo = np.clip(np.round(centre).astype(int) - R, 0, shape_ZYX)
        hi = np.clip(np.round(centre).astype(int) + R + 1, 0, shape_ZYX)
        if np.any(hi <= lo):
            continue
        kk, jj, ii = np.meshgrid(*(np.arange(a, b) for a, b in zip(lo, hi)), indexing="ij")
        d2 = (kk - centre[0]) ** 2 + (jj - centre[1]) ** 2 + (ii - centre[2]) ** 2
        g = np.exp(-d2 / (2 * sigma ** 2)).astype(np.float32)
        g[np.unravel_index(np.argmin(d2), d2.shape)] = 1.0
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        out[box] = np.maximum(out[box], g)
    return out


def focal_heatmap_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, beta: float = 4.0
                       ) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss (Zhou et al. 2019): centre voxels (target 1) pull the map up,
    every other voxel pushes it down, less near a centre; the sum over the batch per centre voxel."""
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    centre = target >= 1.0
    pos = ((1 - p) ** alpha * torch.log(p))[centre].sum()
    neg = ((1 - target) ** beta * p ** alpha * torch.log(1 - p))[~centre].sum()
    return -(pos + neg) / centre.sum().clamp_min(1)


@dataclass
class MapStudy:
    x_CZYX: np.ndarray               # float16 network inputs
    target_ZYX: np.ndarray           # float16 centre heatmap (see centre_heatmap)
    lung_box: tuple[np.ndarray, np.ndarray]
    nodule_kji: np.ndarray           # [M, 3] grid voxel of each nodule's centre


def map_study(index: int, seed: int, detector_cfg=None, synth_cfg=None) -> MapStudy:
    """One synthetic study on the detector's grid (its lung mask), with its centre heatmap."""
    from .detection import DetectorConfig, prepare_grid
    from .synth import make_study

    torch.set_num_threads(1)
    study = make_study(index, seed, synth_cfg)
    grid = prepare_grid(study.hu_ZYX, study.affine, detector_cfg or DetectorConfig())
    target = centre_heatmap(grid.hu_ZYX.shape, grid.affine, study.nodules)
    kji = np.array([np.round(grid_kji(grid.affine, n.center_xyz)) for n in study.nodules], int).reshape(-1, 3)
    return MapStudy(network_inputs(grid.hu_ZYX, grid.lung_ZYX).astype(np.float16), target.astype(np.float16),
                    grid.lung_box, kji)


def _crop(study: MapStudy, centre: np.ndarray, S: int) -> tuple[np.ndarray, np.ndarray]:
    """([C, S, S, S], [S, S, S]) around centre, padded with zeros (air, outside the lungs, no nodule)."""
    shape = np.array(study.target_ZYX.shape)
    lo = np.asarray(centre) - S // 2
    x = np.zeros((study.x_CZYX.shape[0], S, S, S), np.float32)
    y = np.zeros((S, S, S), np.float32)
    src = tuple(slice(max(0, a), min(n, a + S)) for a, n in zip(lo, shape))
    dst = tuple(slice(s.start - a, s.stop - a) for s, a in zip(src, lo))
    x[(slice(None),) + dst] = study.x_CZYX[(slice(None),) + src]
    y[dst] = study.target_ZYX[src]
    return x, y


def _batch(studies: list[MapStudy], rng: np.random.Generator, tcfg: NoduleMapTrainConfig
           ) -> tuple[torch.Tensor, torch.Tensor]:
    S = tcfg.crop
    with_nodules = [s for s in studies if len(s.nodule_kji)]
    xs, ys = [], []
    for _ in range(tcfg.batch_size):
        if with_nodules and rng.random() < tcfg.positive_share:
            s = with_nodules[rng.integers(len(with_nodules))]
            centre = s.nodule_kji[rng.integers(len(s.nodule_kji))] + rng.integers(-S // 4, S // 4 + 1, 3)
        else:
            s = studies[rng.integers(len(studies))]
            lo, hi = s.lung_box
            centre = np.array([rng.integers(int(a), int(b) + 1) for a, b in zip(lo, hi)])
        x, y = _crop(s, centre, S)
        for axis in (1, 2):                              # in-plane flips (the slice axis is blurrier: kept)
            if rng.random() < 0.5:
                x, y = np.flip(x, axis + 1), np.flip(y, axis)
        xs.append(np.ascontiguousarray(x))
        ys.append(np.ascontiguousarray(y))
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))[:, None]


def train_nodule_map(tcfg: NoduleMapTrainConfig, out: str | Path | None = None, log=print, synth_cfg=None) -> dict:
    """Train the map on synthetic studies (synth.SynthConfig `synth_cfg`, default the standard one); save it
    to `out` (safetensors + config.json)."""
    from .detection import DetectorConfig, map_studies

    _check_out(out)
    device = torch.device(tcfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {tcfg.device!r}: no CUDA device here")
    start = time.perf_counter()
    torch.manual_seed(tcfg.seed)
    rng = np.random.default_rng(tcfg.seed)
    threads = torch.get_num_threads()   # map_study keeps a worker process to one thread; not this one
    studies = map_studies(map_study, [(i, tcfg.seed, None, synth_cfg) for i in range(tcfg.studies)], tcfg.workers)
    torch.set_num_threads(threads)
    log(f"{len(studies)} studies ready in {time.perf_counter() - start:.0f} s, "
        f"{sum(len(s.nodule_kji) for s in studies)} nodules")
    network = build_network(tcfg.network).to(tcfg.device)
    opt = torch.optim.AdamW(network.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=tcfg.lr, total_steps=tcfg.steps, pct_start=0.1)
    history, losses = [], []
    network.train()
    for step in range(tcfg.steps):
        x, y = (t.to(tcfg.device) for t in _batch(studies, rng, tcfg))
        logits = network(x)
        loss = focal_heatmap_loss(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if (step + 1) % 250 == 0 or step + 1 == tcfg.steps:
            history.append({"step": step + 1, "loss": round(float(np.mean(losses[-250:])), 4),
                            "seconds": round(time.perf_counter() - start, 1)})
            log(str(history[-1]))
    summary = {"studies": tcfg.studies, "seed": tcfg.seed, "steps": tcfg.steps, "grid": grid_settings(DetectorConfig()),
               "seconds": round(time.perf_counter() - start, 1),
               "parameters": sum(p.numel() for p in network.parameters()), "history": history}
    if out is not None:
        save_nodule_map(network.cpu(), tcfg, summary, out)
        summary["out"] = str(out)
    return summary


def save_nodule_map(network: nn.Module, tcfg: NoduleMapTrainConfig, summary: dict, out: str | Path) -> None:
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(out / NETWORK_FILE))
    (out / CONFIG_FILE).write_text(json.dumps({"train": asdict(tcfg), "summary": summary}, indent=1))


def load_nodule_map(folder: str | Path) -> tuple[nn.Module, dict]:
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file() or not (folder / NETWORK_FILE).is_file():
        raise ValueError(f"{folder}: not a train-nodule-map folder (it needs {CONFIG_FILE} and {NETWORK_FILE})")
    info = json.loads((folder / CONFIG_FILE).read_text())
    network = build_network(config_from_dict(NoduleMapConfig, info["train"]["network"]))
    network.load_state_dict(load_file(str(folder / NETWORK_FILE)))
    return network.eval(), info


# ---------------------------------------------------------------------------------------------- joining a detector


@dataclass
class MapStageConfig:
    nodule_map: str = ""             # a train-nodule-map folder
    detector: str | None = None      # the detector the map joins (None: the shipped one); its trees stay as they are
    studies: int = 120               # synthetic studies the map stage and the report stage are fitted on: a seed
    seed: int = 3                    # none of the parts was trained or chosen on (trees 0, validation 1, map 5)
    val_studies: int = 60            # the operating point (1 FP per scan) and the reported figures
    val_seed: int = 1
    map_candidates: int = 20         # map peaks per scan that may join the candidates
    map_min_p: float = 0.3           # the map probability such a peak needs
    folds: int = 5                   # out-of-fold map-stage logits (by scan) the report stage is fitted on
    l2: float = 1e-3                 # L2 weight of both logistic stages
    workers: int = 1                 # processes making the studies' candidates


def attach_nodule_map(mcfg: MapStageConfig, out: str | Path | None = None, log=print, synth_cfg=None) -> dict:
    """A detector with the map: the given detector's rater and trees unchanged, the map network added, the
    logistic map stage (trees' logit + map features) and the report stage (refitted on the map stage's
    out-of-fold logits) fitted on studies of `seed`, the operating point set on the validation studies."""
    import dataclasses

    from core.checkpoint import save_checkpoint

    from .detection import (KIND, NoduleDetector, NoduleRater, evaluate_scans, fit_linear, load_detector,
                            map_stage_inputs, report_stage_inputs, synth_scans, text_inputs)

    start = time.perf_counter()
    _check_out(out)
    base = load_detector(mcfg.detector)
    if not base.cfg.per_scale_peaks or base.cfg.network or base.model.image_trees is None \
            or base.model.report_linear is None or base.cfg.nodule_map is not None:
        raise ValueError("a nodule map joins a detector with per-scale candidates, image trees (network off), a "
                         "report stage and no map yet")
    network, info = load_nodule_map(mcfg.nodule_map)
    if info["summary"].get("grid") != grid_settings(base.cfg):
        raise ValueError(f"{mcfg.nodule_map}: trained on the grid {info['summary'].get('grid')}, the detector "
                         f"uses {grid_settings(base.cfg)}")
    threads = torch.get_num_threads()   # synth_scan keeps a worker process to one thread; not this one
    cfg = dataclasses.replace(base.cfg, nodule_map=config_from_dict(NoduleMapConfig, info["train"]["network"]),
                              map_candidates=mcfg.map_candidates, map_min_p=mcfg.map_min_p)
    model = NoduleRater(cfg)
    missing = model.load_state_dict(base.model.state_dict(), strict=False).missing_keys
    if any(not k.startswith(("nodule_map.", "map_linear.")) for k in missing):
        raise ValueError(f"the detector lacks weights its rater needs: {missing[:3]}")
    model.nodule_map.load_state_dict(network.state_dict())
    model.eval()
    detector = NoduleDetector(model, base.metadata)

    scans = synth_scans(0, mcfg.studies, mcfg.seed, cfg, synth_cfg, mcfg.workers, model.nodule_map)
    torch.set_num_threads(threads)
    log(f"{len(scans)} studies' candidates in {time.perf_counter() - start:.0f} s: "
        f"{sum(int(c.from_map) for s in scans for c in s.cs.candidates)} from the map")
    X = [map_stage_inputs(detector.tree_logits(s.cs), torch.from_numpy(s.cs.map_BF)).numpy() for s in scans]
    y = [s.labels_B for s in scans]
    fit_linear(model.map_linear, np.concatenate(X), np.concatenate(y), mcfg.l2)
    oof = [None] * len(scans)
    probe = torch.nn.Linear(X[0].shape[1], 1)
    for f in range(mcfg.folds):
        fit_linear(probe, np.concatenate([x for n, x in enumerate(X) if n % mcfg.folds != f]),
                   np.concatenate([l for n, l in enumerate(y) if n % mcfg.folds != f]), mcfg.l2)
        with torch.no_grad():
            for n in range(f, len(scans), mcfg.folds):
                oof[n] = probe(torch.from_numpy(X[n])).squeeze(-1).numpy()
    rows = [(report_stage_inputs(oof[n], t, s.cs.candidates, cfg), s.labels_B)
            for n, s in enumerate(scans) if (t := text_inputs(s.cs, s.reading)) is not None and len(s.labels_B)]
    if not rows:
        raise ValueError(f"none of the {len(scans)} studies of seed {mcfg.seed} has a report naming a nodule: "
                         f"the report stage cannot be refitted (use more studies)")
    fit_linear(model.report_linear, np.concatenate([r for r, _ in rows]), np.concatenate([l for _, l in rows]),
               mcfg.l2)
    val = synth_scans(0, mcfg.val_studies, mcfg.val_seed, cfg, synth_cfg, mcfg.workers, model.nodule_map)
    metrics = evaluate_scans(detector, val)
    cfg.threshold = metrics["threshold_at_1fp_per_scan"]
    summary = {"map_stage": asdict(mcfg), "map": info["summary"] | {"train": info["train"]},
               "seconds": round(time.perf_counter() - start, 1), **metrics}
    if out is not None:
        save_checkpoint(model, out, kind=KIND, config=cfg,
                        metadata={**base.metadata, "map_stage": summary, "validation": metrics})
        summary["out"] = str(out)
    return summary


def grid_settings(cfg) -> list:
    """What shapes the grid and lung mask a map reads (DetectorConfig fields): a map joins only a detector
    whose grid it was trained on."""
    return [cfg.grid_mm, cfg.lung_hu, cfg.lung_closing_mm]


def _check_out(out: str | Path | None) -> None:
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise ValueError(f"{out}: a file is in the way of the output folder")
