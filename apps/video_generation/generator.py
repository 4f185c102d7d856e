"""Planned scene -> frames: a learned layout network and a learned sprite decoder, composited at full
resolution with OpenCV over the world's rendered background and camera.

    gen = load_generator()                                     # assets/video_generation/generator
    for frame_HW3 in gen.scene_frames(scene, frames=72, size_hw=(1080, 1920)): ...

What is learned (trained by `moe-suite video train-generator` on the rendered world):
- LayoutNet: (motion, objects in the scene, start anchor, time t) -> the object's centre, size and
  rotation at t. One network for every motion; it never sees shape or colour, so a (shape, colour,
  motion) combination held out of training needs no example of its own.
- SpriteDecoder: shape embedding -> coverage and interior maps at sprite_px (a small transposed-conv
  decoder), colour embedding -> fill RGB, plus a learned outline colour. Trained on every shape and
  every colour but not on the (shape, colour) pairs of world.HELD_OUT_COMBOS.
What is not learned: the backgrounds (world.background_plate), the camera path (world.camera_transform),
the start anchors of objects (world.object_slots: random placement), rotating the decoded sprite by the
predicted angle, scaling it to the predicted size and alpha-compositing (OpenCV).

Shape legend: B batch, P sprite side (pixels), F frames.
"""
from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from core import registry

from . import world
from .world import Scene, Script

KIND = "video_generator"
DEFAULT_PATH = Path(__file__).resolve().parents[2] / "assets" / "video_generation" / "generator"
COLOUR_NAMES = tuple(world.COLOURS)
FOURIER = 4  # sin/cos harmonics of t fed to the layout network
ALPHA_FLOOR = 0.08  # decoded coverage below this is treated as empty (and above 1 - this as full)
LAYOUT_LOSS_WEIGHTS = torch.tensor([1.0, 1.0, 20.0, 4.0])  # cx, cy, half-size, turns


@dataclass
class GeneratorConfig:
    sprite_px: int = 96          # side P of decoded sprites (upscaled with edge sharpening when composited)
    embed_dim: int = 32          # shape / colour / motion embedding width (and sprite basis size)
    layout_hidden: int = 128     # LayoutNet MLP width


class LayoutNet(nn.Module):
    """(motion id [B], objects in scene [B], anchor [B, 2], t [B]) -> [B, 4]: cx, cy, half-size, angle/360."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.motion = nn.Embedding(len(world.MOTIONS), cfg.embed_dim)
        self.count = nn.Embedding(world.MAX_OBJECTS, 8)
        d_in = cfg.embed_dim + 8 + 2 + 1 + 2 * FOURIER
        self.mlp = nn.Sequential(nn.Linear(d_in, cfg.layout_hidden), nn.GELU(),
                                 nn.Linear(cfg.layout_hidden, cfg.layout_hidden), nn.GELU(),
                                 nn.Linear(cfg.layout_hidden, cfg.layout_hidden), nn.GELU(),
                                 nn.Linear(cfg.layout_hidden, 4))

    def forward(self, motion_B: torch.Tensor, count_B: torch.Tensor, anchor_B2: torch.Tensor,
                t_B: torch.Tensor) -> torch.Tensor:
        k = torch.arange(1, FOURIER + 1, dtype=t_B.dtype)
        phase_BK = 2 * np.pi * t_B[:, None] * k
        x = torch.cat([self.motion(motion_B), self.count(count_B - 1), anchor_B2, t_B[:, None],
                       phase_BK.sin(), phase_BK.cos()], -1)
        out_B4 = self.mlp(x)
        # offsets from the anchor, and the size as a log-ratio to the scene's base size
        base_B = torch.tensor([world.motion_params(int(c))[0] for c in count_B], dtype=t_B.dtype)
        return torch.stack([anchor_B2[:, 0] + out_B4[:, 0], anchor_B2[:, 1] + out_B4[:, 1],
                            base_B * out_B4[:, 2].exp(), out_B4[:, 3]], -1)


class SpriteDecoder(nn.Module):
    """shape id [B] -> coverage and interior maps [B, 2, P, P] in [0, 1]; colour id [B] -> RGB [B, 3].

    The maps come from a linear decoder of the shape embedding (a learned low-rank sprite basis: every
    shape is a mix of embed_dim basis images), the fill colour from the colour embedding alone."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.px = cfg.sprite_px
        self.shape = nn.Embedding(len(world.SHAPES), cfg.embed_dim)
        self.colour = nn.Embedding(len(COLOUR_NAMES), cfg.embed_dim)
        self.to_rgb = nn.Sequential(nn.Linear(cfg.embed_dim, 32), nn.GELU(), nn.Linear(32, 3))
        self.outline_logit = nn.Parameter(torch.full((3,), -2.0))
        self.basis = nn.Linear(cfg.embed_dim, 2 * cfg.sprite_px ** 2)

    def maps(self, shape_B: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.basis(self.shape(shape_B))).view(-1, 2, self.px, self.px)

    def rgb(self, colour_B: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.to_rgb(self.colour(colour_B)))

    def outline(self) -> torch.Tensor:
        return torch.sigmoid(self.outline_logit)


class GeneratorModel(nn.Module):
    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.cfg = cfg
        self.layout = LayoutNet(cfg)
        self.sprites = SpriteDecoder(cfg)


def build_generator(cfg: GeneratorConfig) -> GeneratorModel:
    return GeneratorModel(cfg)


if KIND not in registry.MODELS:
    registry.register(KIND, GeneratorConfig, build_generator)


@contextlib.contextmanager
def one_torch_thread():
    """Run small models on one torch thread. On the shared 2-core machine, two threads for these tiny
    forwards made planning ~60x slower (4 s instead of 0.06 s, measured): the threads spin on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            yield
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------- training

@dataclass
class GeneratorTrainConfig:
    layout_steps: int = 1500
    sprite_steps: int = 400
    batch_size: int = 256        # layout samples per step
    lr: float = 3e-3
    seed: int = 0


def layout_loss(pred_B4: torch.Tensor, target_B4: torch.Tensor) -> torch.Tensor:
    """Weighted MSE: size and angle weigh more (a 10% size or 10-degree error shows more than a small shift)."""
    return (((pred_B4 - target_B4) ** 2) * LAYOUT_LOSS_WEIGHTS).mean()


def layout_batch(rng: np.random.Generator, n: int) -> tuple[torch.Tensor, ...]:
    """Random (motion, count, anchor, t) and the world's true layout at t."""
    motion = rng.integers(len(world.MOTIONS), size=n)
    count = rng.integers(1, world.MAX_OBJECTS + 1, size=n)
    t = rng.random(n)
    anchors, target = np.zeros((n, 2)), np.zeros((n, 4))
    for i in range(n):
        slots = world.object_slots(int(count[i]), int(rng.integers(1 << 30)))
        anchors[i] = slots[rng.integers(count[i])]
        lay = world.object_layout(world.MOTIONS[motion[i]], 101, tuple(anchors[i]), int(count[i]))
        j = int(round(t[i] * 100))
        t[i] = j / 100
        target[i] = (lay.cx_F[j], lay.cy_F[j], lay.size_F[j], lay.angle_F[j] / 360.0)
    as_t = lambda a, dt=torch.float32: torch.as_tensor(a, dtype=dt)  # noqa: E731
    return as_t(motion, torch.long), as_t(count, torch.long), as_t(anchors), as_t(t), as_t(target)


def sprite_pairs() -> list[tuple[int, int]]:
    """(shape, colour) index pairs the sprite decoder trains on: all but the held-out combos' pairs."""
    held = {(s, c) for s, c, _ in world.HELD_OUT_COMBOS}
    return [(i, j) for i, s in enumerate(world.SHAPES) for j, c in enumerate(COLOUR_NAMES) if (s, c) not in held]


def sprite_targets(pairs: list[tuple[int, int]], px: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rendered RGBA sprites [N, 4, P, P] of the pairs, and the index rows [N, 2]."""
    rgba = np.stack([world.render_sprite(world.SHAPES[s], COLOUR_NAMES[c], px) for s, c in pairs])
    return torch.from_numpy(rgba).permute(0, 3, 1, 2).contiguous(), torch.tensor(pairs)


def sprite_rgba(model: GeneratorModel, shape_B: torch.Tensor, colour_B: torch.Tensor) -> torch.Tensor:
    """Decoded sprites [B, 4, P, P]: fill colour inside, learned outline colour at the rim."""
    maps_B2PP = model.sprites.maps(shape_B)
    cov, inner = maps_B2PP[:, :1], maps_B2PP[:, 1:]
    rgb_B3 = model.sprites.rgb(colour_B)[:, :, None, None]
    out = inner * rgb_B3 + (1 - inner) * model.sprites.outline()[None, :, None, None]
    return torch.cat([out, cov], 1)


def train_generator(cfg: GeneratorConfig, tcfg: GeneratorTrainConfig, log=print) -> GeneratorModel:
    torch.manual_seed(tcfg.seed)
    rng = np.random.default_rng(tcfg.seed)
    model = GeneratorModel(cfg).train()
    opt = torch.optim.Adam(model.layout.parameters(), lr=tcfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, tcfg.layout_steps)
    for step in range(tcfg.layout_steps):
        motion, count, anchor, t, target = layout_batch(rng, tcfg.batch_size)
        pred = model.layout(motion, count, anchor, t)
        loss = layout_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 250 == 0 or step == tcfg.layout_steps - 1:
            log(f"layout step {step:5d} mse {loss.item():.6f}")
    pairs = sprite_pairs()
    target_N4PP, idx_N2 = sprite_targets(pairs, cfg.sprite_px)
    opt = torch.optim.Adam(model.sprites.parameters(), lr=tcfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, tcfg.sprite_steps)
    for step in range(tcfg.sprite_steps):
        pick = torch.from_numpy(rng.choice(len(pairs), size=min(64, len(pairs)), replace=False))
        pred = sprite_rgba(model, idx_N2[pick, 0], idx_N2[pick, 1])
        tgt = target_N4PP[pick]
        # alpha, and colour where the sprite is (premultiplied)
        loss = F.l1_loss(pred[:, 3:], tgt[:, 3:]) + F.l1_loss(pred[:, :3] * tgt[:, 3:], tgt[:, :3] * tgt[:, 3:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == tcfg.sprite_steps - 1:
            log(f"sprite step {step:5d} l1 {loss.item():.5f}")
    return model.eval()


# ---------------------------------------------------------------- inference

def _sharpen(a: np.ndarray, gain: float) -> np.ndarray:
    """Steepen a soft edge that was upscaled by `gain` back to about one pixel wide."""
    if gain <= 1.0:
        return a
    return np.clip((a - 0.5) * gain + 0.5, 0.0, 1.0)


@dataclass
class SceneDraft:
    """What the learned parts decided for one scene: trajectories [F, 4] and sprites [P, P, 4]."""
    layouts: list[np.ndarray]
    sprites: list[np.ndarray]


class Generator:
    def __init__(self, model: GeneratorModel):
        self.model = model.eval()
        self.cfg = model.cfg

    def draft(self, scene: Scene, frames: int, seed: int = 0) -> SceneDraft:
        """Run the learned parts for one scene: each object's trajectory and its sprite."""
        with one_torch_thread():
            return self._draft(scene, frames, seed)

    def _draft(self, scene: Scene, frames: int, seed: int) -> SceneDraft:
        n = len(scene.objects)
        anchors = world.object_slots(n, seed)
        t_F = torch.linspace(0.0, 1.0, frames) if frames > 1 else torch.zeros(1)
        layouts = []
        for obj, anchor in zip(scene.objects, anchors):
            motion = torch.full((frames,), world.MOTIONS.index(obj.motion), dtype=torch.long)
            count = torch.full((frames,), n, dtype=torch.long)
            layouts.append(self.model.layout(motion, count, torch.tensor([anchor] * frames, dtype=torch.float32),
                                             t_F).numpy())
        shape_B = torch.tensor([world.SHAPES.index(o.shape) for o in scene.objects])
        colour_B = torch.tensor([COLOUR_NAMES.index(o.colour) for o in scene.objects])
        sprites = sprite_rgba(self.model, shape_B, colour_B).permute(0, 2, 3, 1).numpy()
        # a small dead zone: the decoder's faint residue outside the shape would show as a pale box
        sprites[..., 3] = np.clip((sprites[..., 3] - ALPHA_FLOOR) / (1 - 2 * ALPHA_FLOOR), 0.0, 1.0)
        return SceneDraft(layouts, list(np.ascontiguousarray(sprites)))

    def scene_frames(self, scene: Scene, frames: int, size_hw: tuple[int, int], seed: int = 0,
                     draft: SceneDraft | None = None, only: Iterable[int] | None = None) -> Iterator[np.ndarray]:
        """Frames [H, W, 3] uint8 of one scene, one at a time (for streaming into an encoder); `only`: just
        those frame indices, in order (each frame is drawn on its own, so the others cost nothing)."""
        h, w = size_hw
        draft = draft or self.draft(scene, frames, seed)
        plate = world.background_plate(scene.background, size_hw, seed)
        scale_F, shift_F = world.camera_transform(scene.camera, frames)
        P = self.cfg.sprite_px
        for f in (range(frames) if only is None else sorted(only)):
            if scale_F[f] == 1.0:  # pans and static shots: a crop of the plate
                x0 = int(round((plate.shape[1] - w) / 2 + shift_F[f] * w))
                frame = plate[:, x0:x0 + w].copy()
            else:
                frame = world.camera_view(plate, size_hw, scale_F[f], shift_F[f])
            for lay_F4, rgba_PP4 in zip(draft.layouts, draft.sprites):
                cx, cy, half, turn = lay_F4[f]
                sx, sy, half_px = world.to_screen(cx, cy, max(half, 0.005), size_hw, scale_F[f], shift_F[f])
                sprite = rgba_PP4
                if abs(turn) > 1e-3:
                    m = cv2.getRotationMatrix2D((P / 2, P / 2), -360.0 * float(turn), 1.0)
                    sprite = cv2.warpAffine(rgba_PP4, m, (P, P), flags=cv2.INTER_LINEAR)
                side = max(2, int(round(2 * half_px)))
                big = cv2.resize(sprite, (side, side), interpolation=cv2.INTER_LINEAR if side > P else cv2.INTER_AREA)
                gain = side / P
                big[..., 3] = _sharpen(big[..., 3], gain)
                world.composite(frame, big, sx, sy, half_px)
            yield frame

    def script_frames(self, script: Script, fps: float, size_hw: tuple[int, int]
                      ) -> tuple[Iterator[np.ndarray], list[int]]:
        """All scenes back to back (lazily) and the cut frame indices, as world.render_script."""
        counts = world.scene_frame_counts(script, fps)
        cuts = list(np.cumsum(counts)[:-1].astype(int).tolist())

        def frames() -> Iterator[np.ndarray]:
            for i, (scene, n) in enumerate(zip(script.scenes, counts)):
                yield from self.scene_frames(scene, n, size_hw, seed=i)
        return frames(), cuts

    def script_frames_at(self, script: Script, fps: float, size_hw: tuple[int, int],
                         indices: Iterable[int], max_side: int | None = None) -> np.ndarray:
        """Frames [N, H, W, 3] at the given indices of script_frames' stream (sorted, the same pixels), drawn
        without the frames in between: a style is fitted on a few frames before the clip streams.
        max_side: each frame shrunk (INTER_AREA) to this longer side as it is drawn."""
        from .style import _resize_to   # (style imports the studio, which imports this module)

        counts = world.scene_frame_counts(script, fps)
        starts = np.concatenate([[0], np.cumsum(counts)]).astype(int)
        wanted = sorted(set(int(i) for i in indices))
        if wanted and not 0 <= wanted[0] <= wanted[-1] < starts[-1]:
            raise ValueError(f"frame indices must be in 0..{starts[-1] - 1}, got {wanted[0]}..{wanted[-1]}")
        out = []
        for i, (scene, n) in enumerate(zip(script.scenes, counts)):
            local = [f - starts[i] for f in wanted if starts[i] <= f < starts[i + 1]]
            for frame in self.scene_frames(scene, n, size_hw, seed=i, only=local) if local else ():
                out.append(_resize_to(frame, max_side))
        return np.stack(out) if out else np.zeros((0, *size_hw, 3), np.uint8)


# ---------------------------------------------------------------- evaluation, save, load

@torch.inference_mode()
def evaluate_generator(gen: Generator, n_scenes: int = 40, seed: int = 0, size_hw=(72, 128),
                       frames: int = 12) -> dict:
    """Held-out (shape, colour, motion) combinations: layout error against the world's true
    trajectories (frame fractions), sprite IoU on held-out (shape, colour) pairs, and PSNR of the
    generated frames against the world's rendering of the same scene."""
    rng = np.random.default_rng(seed)
    errs, psnr = [], []
    for _ in range(n_scenes):
        scene = world.sample_scene(rng, "test")
        draft = gen.draft(scene, frames, seed=0)
        anchors = world.object_slots(len(scene.objects), 0)
        for obj, lay, a in zip(scene.objects, draft.layouts, anchors):
            true = world.object_layout(obj.motion, frames, a, len(scene.objects))
            errs.append(np.abs(lay[:, :2] - np.stack([true.cx_F, true.cy_F], 1)).mean())
        fake = np.stack(list(gen.scene_frames(scene, frames, size_hw, 0, draft))).astype(np.float32)
        real = world.render_scene(scene, frames, size_hw, 0).astype(np.float32)
        mse = float(((fake - real) ** 2).mean())
        psnr.append(10 * np.log10(255.0 ** 2 / max(mse, 1e-6)))
    held = sorted({(world.SHAPES.index(s), COLOUR_NAMES.index(c)) for s, c, _ in world.HELD_OUT_COMBOS})
    tgt, idx = sprite_targets(held, gen.cfg.sprite_px)
    pred = sprite_rgba(gen.model, idx[:, 0], idx[:, 1])
    a, b = pred[:, 3] > 0.5, tgt[:, 3] > 0.5
    iou = ((a & b).sum((1, 2)).float() / (a | b).sum((1, 2)).clamp(min=1).float()).mean().item()
    colour_err = (((pred[:, :3] - tgt[:, :3]).abs() * tgt[:, 3:] * 255).sum() / (tgt[:, 3:].sum() * 3)).item()
    return {"layout_mae_frame_fraction": round(float(np.mean(errs)), 5),
            "heldout_sprite_iou": round(iou, 4), "heldout_sprite_colour_mae": round(colour_err, 2),
            "frame_psnr_db": round(float(np.mean(psnr)), 2), "scenes": n_scenes}


def save_generator(model: GeneratorModel, path: str | Path, metadata: dict | None = None) -> Path:
    from core.checkpoint import save_checkpoint
    return save_checkpoint(model, path, kind=KIND, config=model.cfg, metadata=metadata)


@functools.cache
def _load(path: str) -> Generator:
    from core.checkpoint import load_checkpoint
    model, _ = load_checkpoint(path)
    return Generator(model)


def load_generator(path: str | Path | None = None) -> Generator:
    """The generator checkpoint at `path` (default: the shipped one), cached per process."""
    from core.checkpoint import MissingCheckpointError

    path = Path(path) if path is not None else DEFAULT_PATH
    try:
        return _load(str(path.resolve()))
    except MissingCheckpointError as exc:
        raise MissingCheckpointError(f"no generator checkpoint: {exc}; build it with "
                                     f"`moe-suite video train-generator`") from None

