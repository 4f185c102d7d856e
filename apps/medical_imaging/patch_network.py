"""The Swin patch rater: the core's 3D vision stream (task "nodule_detection") rates each candidate's
patch alone, and the detector's image trees read its logit beside the measurements
(DetectorConfig.network_feature).

It is trained before the trees, on the candidate patches of synthetic studies. K networks, each on K-1
folds of the scans, give every training candidate an out-of-fold logit: the trees fit on those, so they
see the network's logit as an unseen scan gets it. One more network, on all scans, is the one the
detector keeps.

    moe-suite medical train-patch-network --out DIR --studies 200 --device cuda
    moe-suite medical train-detector --network-feature DIR --out MODEL ...

DIR holds network.safetensors (the vision stream and head of the all-scans network), oof.npz (per
training candidate: scan index, grid centre, label, out-of-fold logit) and config.json.

Shape legend: N candidates (all scans), B batch, P patch side.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from core.vision.swin import VisionStreamConfig

from .detection import DetectorConfig, NoduleRater, candidate_set, labels_for, map_studies

NETWORK_FILE = "network.safetensors"
OOF_FILE = "oof.npz"
CONFIG_FILE = "config.json"


def patch_vision() -> VisionStreamConfig:
    """The patch rater's Swin: twice tiny_vision's width, two blocks in stage 2, MoE MLPs in the last stage
    (2.7-3.7 s for 200 patches on one CPU thread in float32, 1.5x less in bfloat16)."""
    return VisionStreamConfig(spatial_dims=3, in_channels=1, embed_dim=24, depths=(1, 1, 2, 1),
                              num_heads=(2, 4, 8, 16), out_dim=64, moe_stages=(3,), num_experts=4, top_k=2)


@dataclass
class PatchNetworkConfig:
    studies: int = 200               # synthetic training studies (make_study 0..N-1 of `seed`)
    seed: int = 0
    folds: int = 4                   # out-of-fold networks (by scan); 0: only the all-scans network
    epochs: int = 16                 # the shipped rater: 16 (about 36 s a network on one H200)
    samples_per_epoch: int = 16384   # patches drawn per epoch (positives at positive_share)
    batch_size: int = 512
    lr: float = 2e-3
    weight_decay: float = 0.05
    positive_share: float = 0.25     # share of each batch drawn from the positive candidates
    shift: int = 2                   # random shift of a patch, voxels (a candidate is never exactly centred)
    workers: int = 1                 # processes making the synthetic studies' candidates
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.folds == 1 or self.folds < 0:
            raise ValueError(f"folds must be 0 (no out-of-fold logits) or at least 2, got {self.folds}")
        if not 0 < self.positive_share < 1:
            raise ValueError(f"positive_share must be in (0, 1), got {self.positive_share}")


@dataclass
class PatchSet:
    patches_NP3: np.ndarray          # float16 in [0, 1] (detection.crop_patch)
    label_N: np.ndarray              # 1 = within a true nodule's radius
    scan_N: np.ndarray               # study index
    centre_N3: np.ndarray            # sub-voxel grid centre (k, j, i): matches the candidates made elsewhere


def _study_patches(index: int, seed: int, cfg: DetectorConfig, synth_cfg=None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from .synth import make_study

    torch.set_num_threads(1)
    study = make_study(index, seed, synth_cfg)
    cs = candidate_set(study.hu_ZYX, study.affine, cfg)
    centres = np.stack([c.center for c in cs.candidates]) if cs.candidates else np.zeros((0, 3))
    return cs.patches_BP3, labels_for(cs, study.nodules, cfg), centres


def patch_set(studies: int, seed: int, cfg: DetectorConfig, workers: int = 1, synth_cfg=None) -> PatchSet:
    """The candidate patches of synthetic studies 0..studies-1 (no report reading: the network reads none);
    synth_cfg: the generator's settings (None: its defaults, which the detector is trained on)."""
    parts = map_studies(_study_patches, [(i, seed, cfg, synth_cfg) for i in range(studies)], workers)
    return PatchSet(np.concatenate([p for p, _, _ in parts]), np.concatenate([lab for _, lab, _ in parts]),
                    np.concatenate([np.full(len(lab), i) for i, (_, lab, _) in enumerate(parts)]),
                    np.concatenate([c for _, _, c in parts]))


def augment(x_B1P3: torch.Tensor, shift: int, g: torch.Generator) -> torch.Tensor:
    """Random flips along each axis (per patch), a random order of the axes (the grid is isotropic) and a
    random shift (per batch)."""
    dims = (2, 3, 4)
    for d in dims:
        flip_B = (torch.rand(len(x_B1P3), generator=g) < 0.5).to(x_B1P3.device)
        x_B1P3 = torch.where(flip_B[:, None, None, None, None], x_B1P3.flip(d), x_B1P3)
    order = torch.randperm(3, generator=g).tolist()
    x_B1P3 = x_B1P3.permute(0, 1, *(2 + o for o in order))
    if shift:
        s = torch.randint(-shift, shift + 1, (3,), generator=g).tolist()
        x_B1P3 = x_B1P3.roll(s, dims)
    return x_B1P3.contiguous()


def network_state(model: NoduleRater) -> dict[str, torch.Tensor]:
    """The patch rater's weights inside a NoduleRater: its vision stream and patch head."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
            if k.startswith(("vision.", "patch_head."))}


def _rater(cfg: DetectorConfig) -> NoduleRater:
    return NoduleRater(dataclasses.replace(cfg, network_feature=True))


def train_one(cfg: DetectorConfig, data: PatchSet, rows: np.ndarray, pcfg: PatchNetworkConfig, seed: int,
              log=print) -> NoduleRater:
    """A patch rater trained on the candidates `rows` of `data`."""
    from core.moe import moe_train_step

    device = torch.device(pcfg.device)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = _rater(cfg).to(device)
    params = list(model.vision.parameters()) + list(model.patch_head.parameters())
    opt = torch.optim.AdamW(params, lr=pcfg.lr, weight_decay=pcfg.weight_decay)
    steps_per_epoch = max(1, pcfg.samples_per_epoch // pcfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=pcfg.lr, total_steps=pcfg.epochs * steps_per_epoch,
                                                pct_start=0.1)
    patches = torch.from_numpy(data.patches_NP3[rows]).to(device)          # float16, all on the device
    labels = torch.from_numpy(data.label_N[rows].astype(np.float32)).to(device)
    pos, neg = torch.nonzero(labels > 0).flatten(), torch.nonzero(labels == 0).flatten()
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError(f"the training candidates need positives and negatives, got {len(pos)} and {len(neg)}: "
                         "use more studies")
    n_pos = max(1, round(pcfg.batch_size * pcfg.positive_share))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)   # as the detector runs it (patch_logits)
    start = time.perf_counter()
    for epoch in range(pcfg.epochs):
        model.train()
        losses = []
        for _ in range(steps_per_epoch):
            pick = torch.cat([pos[torch.randint(len(pos), (n_pos,), generator=g).to(device)],
                              neg[torch.randint(len(neg), (pcfg.batch_size - n_pos,), generator=g).to(device)]])
            x = augment(patches[pick].float()[:, None], pcfg.shift, g)
            with autocast:
                logit, aux = model.patch_logit(x)
                loss = F.binary_cross_entropy_with_logits(logit.float(), labels[pick]) + aux.float()
            losses.append(moe_train_step(model, loss, opt, sched))
        log(f"  epoch {epoch + 1}/{pcfg.epochs}: loss {np.mean(losses):.4f} ({time.perf_counter() - start:.0f} s)")
    return model.eval()


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    from .malignancy import auc

    return auc(s, y) if 0 < y.sum() < len(y) else float("nan")


def train_patch_network(cfg: DetectorConfig, pcfg: PatchNetworkConfig, out: str | Path, log=print,
                        synth_cfg=None) -> dict:
    """Out-of-fold networks, then the all-scans network; writes OUT/network.safetensors, oof.npz, config.json."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = patch_set(pcfg.studies, pcfg.seed, cfg, pcfg.workers, synth_cfg)
    prep = time.perf_counter() - start
    log(f"{len(data.label_N)} candidate patches from {pcfg.studies} studies ({int(data.label_N.sum())} positive) "
        f"in {prep:.0f} s")
    oof = np.full(len(data.label_N), np.nan, np.float32)
    fold_auc = []
    for f in range(pcfg.folds):
        held = data.scan_N % pcfg.folds == f
        log(f"fold {f + 1}/{pcfg.folds}: {int((~held).sum())} training candidates")
        model = train_one(cfg, data, np.flatnonzero(~held), pcfg, pcfg.seed + 1 + f, log)
        oof[held] = model.patch_logits(data.patches_NP3[held], batch=1024).numpy()
        fold_auc.append(round(_auc(data.label_N[held], oof[held]), 4))
        log(f"fold {f + 1}: out-of-fold AUC {fold_auc[-1]}")
    log("all scans")
    model = train_one(cfg, data, np.arange(len(data.label_N)), pcfg, pcfg.seed, log)
    save_file(network_state(model), str(out / NETWORK_FILE))
    np.savez_compressed(out / OOF_FILE, scan_N=data.scan_N, centre_N3=data.centre_N3.astype(np.float32),
                        label_N=data.label_N, logit_N=oof)
    summary = {"studies": pcfg.studies, "seed": pcfg.seed, "epochs": pcfg.epochs, "candidates": int(len(data.label_N)),
               "positives": int(data.label_N.sum()), "folds": pcfg.folds, "out_of_fold_auc_per_fold": fold_auc,
               "out_of_fold_auc": round(_auc(data.label_N, oof), 4) if pcfg.folds else None,
               "prep_seconds": round(prep, 1), "seconds": round(time.perf_counter() - start, 1),
               "device": torch.cuda.get_device_name() if pcfg.device.startswith("cuda") else pcfg.device}
    (out / CONFIG_FILE).write_text(json.dumps({"train": dataclasses.asdict(pcfg), "vision": dataclasses.asdict(
        cfg.vision), "summary": summary}, indent=2))
    return summary


def with_patch_network(cfg: DetectorConfig, folder: str | Path) -> DetectorConfig:
    """`cfg` set up for the patch network in `folder` (network_feature on, its vision stream's config),
    reading only the folder's config.json."""
    from core.model import config_from_dict

    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {CONFIG_FILE}; run `moe-suite medical train-patch-network --out {folder}`")
    vision = config_from_dict(VisionStreamConfig, json.loads(path.read_text())["vision"])
    return dataclasses.replace(cfg, network_feature=True, vision=vision, dim=vision.out_dim)


def load_patch_network(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray], dict]:
    """(network weights, out-of-fold logits, config.json) written by train_patch_network."""
    from safetensors.torch import load_file

    folder = Path(folder)
    for name in (NETWORK_FILE, OOF_FILE, CONFIG_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder}: no {name}; run `moe-suite medical train-patch-network --out {folder}`")
    with np.load(folder / OOF_FILE) as z:
        oof = {k: z[k] for k in z.files}
    return load_file(str(folder / NETWORK_FILE)), oof, json.loads((folder / CONFIG_FILE).read_text())


def oof_logits_for(oof: dict[str, np.ndarray], scan: int, centres_B3: np.ndarray, tol: float = 0.05) -> np.ndarray:
    """The out-of-fold logits of one training scan's candidates, matched by grid centre (the candidates were
    made on another machine: the order may differ, the centres may not)."""
    rows = np.flatnonzero(oof["scan_N"] == scan)
    have_R3 = oof["centre_N3"][rows]
    if len(centres_B3) == 0:
        return np.zeros(0, np.float32)
    if len(rows) == 0:
        raise ValueError(f"no out-of-fold logits for training scan {scan}: train the patch network on as many studies")
    dist_BR = np.linalg.norm(centres_B3[:, None, :] - have_R3[None], axis=2)
    best = dist_BR.argmin(1)
    found_B = dist_BR[np.arange(len(best)), best] <= tol
    if found_B.mean() < 0.9:
        raise ValueError(f"training scan {scan}: its candidates differ from the ones the patch network was trained on")
    # a candidate found on one machine only (float differences at the cut-off) has no logit: the trees take
    # NaN as missing
    return np.where(found_B, oof["logit_N"][rows[best]], np.nan).astype(np.float32)
