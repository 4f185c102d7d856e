"""The learned arbitrary-style expert: a small AdaIN network (Huang & Belongie 2017) that the suite trains itself.

No pretrained VGG can be downloaded here, so the encoder is the suite's own: a 4-layer conv encoder first
trained as an autoencoder (reconstruction), then frozen; the decoder is then trained the AdaIN way: decode
AdaIN(content features, style features) so that the result's encoder features keep the AdaIN target (content
loss) and its per-channel feature mean/std at every encoder level match the style image's (style loss).
A self-trained 4-layer encoder sees much less than VGG: the style it carries over is mostly colour, contrast
and coarse texture, not brush strokes. See assets/video_generation/style/MODEL_CARD.md for data and figures.

    python -m apps.video_generation.style_net --out assets/video_generation/style/adain --json   # ~3 CPU-minutes
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ASSET_DIR = Path(__file__).resolve().parents[2] / "assets" / "video_generation" / "style" / "adain"
WEIGHTS, CONFIG = "model.safetensors", "config.json"


@dataclass
class StyleNetConfig:
    channels: tuple[int, int, int] = (16, 32, 64)  # encoder widths at 1/1, 1/2, 1/4 resolution
    eps: float = 1e-5                              # AdaIN variance floor


class Encoder(nn.Module):
    """RGB [B, 3, H, W] in 0..1 -> features at three levels; the last (1/4 resolution) is the AdaIN space."""

    def __init__(self, cfg: StyleNetConfig):
        super().__init__()
        c1, c2, c3 = cfg.channels
        self.block1 = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(3, c1, 3), nn.ReLU())
        self.block2 = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(c1, c2, 3, stride=2), nn.ReLU(),
                                    nn.ReflectionPad2d(1), nn.Conv2d(c2, c2, 3), nn.ReLU())
        self.block3 = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(c2, c3, 3, stride=2), nn.ReLU())

    def forward(self, x_B3HW: torch.Tensor) -> list[torch.Tensor]:
        f1 = self.block1(x_B3HW)
        f2 = self.block2(f1)
        return [f1, f2, self.block3(f2)]


class Decoder(nn.Module):
    def __init__(self, cfg: StyleNetConfig):
        super().__init__()
        c1, c2, c3 = cfg.channels

        def conv(i, o, act=True):
            layers = [nn.ReflectionPad2d(1), nn.Conv2d(i, o, 3)]
            return layers + [nn.ReLU()] if act else layers
        self.net = nn.Sequential(*conv(c3, c2), nn.Upsample(scale_factor=2, mode="nearest"), *conv(c2, c2),
                                 *conv(c2, c1), nn.Upsample(scale_factor=2, mode="nearest"), *conv(c1, c1),
                                 *conv(c1, 3, act=False))

    def forward(self, f_BCHW: torch.Tensor) -> torch.Tensor:
        return self.net(f_BCHW)


def mean_std(f_BCHW: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std over space: [B, C, 1, 1] each."""
    mean = f_BCHW.mean(dim=(2, 3), keepdim=True)
    std = (f_BCHW.var(dim=(2, 3), keepdim=True, unbiased=False) + eps).sqrt()
    return mean, std


def adain(content_BCHW: torch.Tensor, style_mean: torch.Tensor, style_std: torch.Tensor,
          eps: float = 1e-5) -> torch.Tensor:
    mean, std = mean_std(content_BCHW, eps)
    return (content_BCHW - mean) / std * style_std + style_mean


class StyleNet(nn.Module):
    def __init__(self, cfg: StyleNetConfig = StyleNetConfig()):
        super().__init__()
        self.cfg = cfg
        self.encoder, self.decoder = Encoder(cfg), Decoder(cfg)

    def style_code(self, style_B3HW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of the style image's deepest features; fixed once per clip for steady video."""
        return mean_std(self.encoder(style_B3HW)[-1], self.cfg.eps)

    def forward(self, content_B3HW: torch.Tensor, style_mean: torch.Tensor, style_std: torch.Tensor,
                content_stats: tuple[torch.Tensor, torch.Tensor] | None = None, alpha: float = 1.0) -> torch.Tensor:
        """Stylised RGB (not clamped). content_stats: the content's (mean, std), fixed per clip when given
        (otherwise per image) so that a video frame's own statistics do not make the output flicker."""
        f = self.encoder(content_B3HW)[-1]
        mean, std = content_stats if content_stats is not None else mean_std(f, self.cfg.eps)
        t = (f - mean) / std * style_std + style_mean
        return self.decoder(alpha * t + (1 - alpha) * f)


def save(model: StyleNet, folder: Path, metadata: dict) -> Path:
    from safetensors.torch import save_file
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{WEIGHTS}.part"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    tmp.replace(folder / WEIGHTS)
    (folder / CONFIG).write_text(json.dumps({"config": asdict(model.cfg), "metadata": metadata}, indent=2) + "\n")
    return folder


def load(folder: str | Path = ASSET_DIR) -> StyleNet:
    """The trained network (eval mode); ValueError naming the folder if it is missing or does not fit."""
    from safetensors.torch import load_file
    folder = Path(folder)
    try:
        header = json.loads((folder / CONFIG).read_text())
        cfg = StyleNetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in header["config"].items()})
        model = StyleNet(cfg)
        model.load_state_dict(load_file(str(folder / WEIGHTS)))
    except (OSError, KeyError, TypeError, RuntimeError, json.JSONDecodeError) as e:
        raise ValueError(f"{folder}: not a trained style network ({type(e).__name__}: {e})") from None
    return model.eval()


# ---------------------------------------------------------------- training


@dataclass
class TrainConfig:
    ae_steps: int = 600           # phase 1: encoder + decoder as an autoencoder
    adain_steps: int = 900        # phase 2: frozen encoder, decoder trained with AdaIN content + style losses
    batch_size: int = 8
    crop: int = 96                # training crop side (px)
    lr: float = 2e-3
    style_weight: float = 2.0     # style loss weight against the content loss
    seed: int = 0
    images: list[str] = field(default_factory=list)  # content/style image and video files (read by path)


def _procedural_styles(rng: np.random.Generator, n: int, side: int) -> list[np.ndarray]:
    """Strokes, stripes and blotches in random palettes: styles with texture the photos lack."""
    import cv2
    out = []
    for _ in range(n):
        palette = rng.integers(0, 256, (5, 3))
        img = np.full((side, side, 3), palette[0], np.uint8)
        kind = rng.integers(3)
        for _ in range(rng.integers(40, 160)):
            c = tuple(int(v) for v in palette[rng.integers(1, 5)])
            p = rng.integers(0, side, 2)
            if kind == 0:
                q = p + rng.integers(-side // 6, side // 6, 2)
                cv2.line(img, tuple(map(int, p)), tuple(map(int, q)), c, int(rng.integers(2, 9)))
            elif kind == 1:
                cv2.circle(img, tuple(map(int, p)), int(rng.integers(3, side // 8)), c, -1)
            else:
                y = int(p[0])
                img[y:y + int(rng.integers(2, 10))] = c
        out.append(cv2.GaussianBlur(img, (3, 3), 0))
    return out


def _load_pool(paths: list[str], side: int) -> list[np.ndarray]:
    from data_connectors.video import iter_video, read_image
    pool = []
    for p in paths:
        if Path(p).suffix.lower() in (".mp4", ".webm", ".mov", ".avi", ".mkv"):
            pool += [f for i, f in enumerate(iter_video(p, max_side=side * 3)) if i % 10 == 0]
        else:
            pool.append(read_image(p))
    return pool


def _batch(pool: list[np.ndarray], rng: np.random.Generator, n: int, crop: int) -> torch.Tensor:
    import cv2
    out = []
    for _ in range(n):
        img = pool[rng.integers(len(pool))]
        scale = rng.uniform(0.5, 1.0) * min(img.shape[:2]) / crop
        small = cv2.resize(img, (max(crop, int(img.shape[1] / scale)), max(crop, int(img.shape[0] / scale))),
                           interpolation=cv2.INTER_AREA)
        y, x = rng.integers(0, small.shape[0] - crop + 1), rng.integers(0, small.shape[1] - crop + 1)
        patch = small[y:y + crop, x:x + crop]
        out.append(patch[:, ::-1] if rng.random() < 0.5 else patch)
    return torch.from_numpy(np.stack(out).copy()).permute(0, 3, 1, 2).float() / 255


def train(cfg: TrainConfig, out: Path) -> dict:
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    content_pool = _load_pool(cfg.images, cfg.crop)
    if not content_pool:
        raise ValueError("no training images given (--images)")
    style_pool = content_pool + _procedural_styles(rng, 24, 256)
    model = StyleNet()
    t0 = time.perf_counter()
    history = {}
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    for step in range(cfg.ae_steps):
        x = _batch(style_pool, rng, cfg.batch_size, cfg.crop)
        loss = F.l1_loss(model.decoder(model.encoder(x)[-1]), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 250 == 0 or step == cfg.ae_steps - 1:
            history[f"ae_{step}"] = round(loss.item(), 4)
    ae_l1 = loss.item()
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam(model.decoder.parameters(), lr=cfg.lr / 2)
    for step in range(cfg.adain_steps):
        c = _batch(content_pool, rng, cfg.batch_size, cfg.crop)
        s = _batch(style_pool, rng, cfg.batch_size, cfg.crop)
        with torch.no_grad():
            fs = model.encoder(s)
            target = adain(model.encoder(c)[-1], *mean_std(fs[-1]))
        y = model.decoder(target)
        fy = model.encoder(y)
        content_loss = F.mse_loss(fy[-1], target)
        style_loss = sum(F.mse_loss(a, b) for fy_l, fs_l in zip(fy, fs)
                         for a, b in zip(mean_std(fy_l), mean_std(fs_l)))
        loss = content_loss + cfg.style_weight * style_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 250 == 0 or step == cfg.adain_steps - 1:
            history[f"adain_{step}"] = [round(content_loss.item(), 4), round(style_loss.item(), 4)]
    seconds = time.perf_counter() - t0
    summary = {"ae_l1": round(ae_l1, 4), "content_loss": round(content_loss.item(), 4),
               "style_loss": round(style_loss.item(), 4), "train_seconds": round(seconds, 1),
               "parameters": sum(p.numel() for p in model.parameters()),
               "train": {k: v for k, v in asdict(cfg).items() if k != "images"},
               "images": [Path(p).name for p in cfg.images], "history": history}
    save(model, out, summary)
    return summary


def main(argv: list[str] | None = None) -> None:
    from apps.settings import shared_datasets_dir
    media = shared_datasets_dir() / "media"
    p = argparse.ArgumentParser(description="Train the learned style expert (AdaIN with a self-trained encoder).")
    p.add_argument("--images", nargs="*", default=None,
                   help="image/video files (default: the shared media folder's *.png and *.mp4)")
    p.add_argument("--out", type=Path, default=ASSET_DIR)
    p.add_argument("--ae-steps", type=int, default=TrainConfig.ae_steps)
    p.add_argument("--adain-steps", type=int, default=TrainConfig.adain_steps)
    p.add_argument("--crop", type=int, default=TrainConfig.crop, help="training crop side (px)")
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    images = args.images if args.images is not None else sorted(str(p) for p in media.glob("*.png")) + sorted(
        str(p) for p in media.glob("*.mp4"))
    summary = train(TrainConfig(ae_steps=args.ae_steps, adain_steps=args.adain_steps, crop=args.crop,
                                batch_size=args.batch_size, images=images), args.out)
    summary = {"out": str(args.out), **{k: v for k, v in summary.items() if k != "history"}}
    print(json.dumps(summary) if args.json else f"trained style network -> {args.out}: {summary}")


if __name__ == "__main__":
    main()
