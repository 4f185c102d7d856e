"""Text to video, end to end: prompt -> plan (planner.py) -> frames (generator.py) -> optional style
(style.py) -> browser-playable file and preview (data_connectors.video).

    result = generate_video("a red ball rolls left on a beach, then a blue square rises at night",
                            seconds=3, resolution="1080p", fps=24, out=Path("clip.mp4"))
    result.path, result.preview_path, result.script, result.cut_frames, result.experts, result.timings
    result.understanding.summary()   # what was read from which words, what was guessed (understanding.py)

Limits (ValueError naming the field when broken): prompt 1..2000 characters, seconds 0.5..20,
fps 8..30, resolution one of RESOLUTIONS, output .mp4 (H.264) or .webm (VP9).
Frames stream straight into the encoder (ffmpeg runs alongside generation), styled or not: a style is
fitted once on frames drawn at evenly spread indices (the look stays steady across the clip), then applied
frame by frame, so memory does not grow with the clip's length.
"""
from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from data_connectors.video import WRITE_SUFFIXES

from .prompt_lexicon import RewrittenPrompt, rewrite_prompt
from .prompt_lists import plan_listed, restructure
from .understanding import NothingUnderstoodError, Understanding, check_understood, understand
from .world import Script

RESOLUTIONS: dict[str, tuple[int, int]] = {"360p": (360, 640), "720p": (720, 1280), "1080p": (1080, 1920)}
MAX_PROMPT_CHARS = 2000
MIN_SECONDS, MAX_SECONDS = 0.5, 20.0
MIN_FPS, MAX_FPS = 8, 30
SUFFIXES = WRITE_SUFFIXES
PREVIEW_SIDE = 320
MAX_FILES = 200   # results kept in each results folder (the API's, the page's): the newest, see keep_newest


class GenerationError(ValueError):
    """A request outside the studio's documented limits."""


@dataclass
class GenerationResult:
    path: Path                        # the video file
    preview_path: Path                # animated GIF preview beside it
    script: Script                    # what the planner decided (scene seconds included)
    cut_frames: list[int]             # first frame of scenes 2..n
    experts: list[dict]               # per scene: {"text_experts": {id: weight}, "time_experts": {id: weight}}
    timings: dict[str, float]         # seconds: planning, generation, style, encoding, preview, total
    fps: int = 24
    size_hw: tuple[int, int] = (360, 640)
    frames: int = 0
    style_experts: dict[str, float] = field(default_factory=dict)   # style expert -> weight, if styled
    understanding: Understanding | None = None   # which words carried what, guesses, warnings

    def to_dict(self) -> dict:
        u = self.understanding
        return {"path": str(self.path), "preview_path": str(self.preview_path), "script": self.script.to_dict(),
                "cut_frames": self.cut_frames, "experts": self.experts, "timings": self.timings,
                "fps": self.fps, "width": self.size_hw[1], "height": self.size_hw[0], "frames": self.frames,
                "style_experts": self.style_experts, "understanding": u.to_dict() if u else None,
                "warnings": u.warnings if u else []}


def check_request(prompt: str, seconds: float, resolution: str, fps: int, out: Path | str) -> Path:
    """Validate a request against the documented limits; returns `out` as a Path."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise GenerationError("prompt is empty: describe the video, e.g. 'a red ball rolls left on a beach'")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise GenerationError(f"prompt is {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}")
    try:
        seconds = float(seconds)
    except (TypeError, ValueError):
        raise GenerationError(f"seconds must be a number, got {seconds!r}") from None
    if not (MIN_SECONDS <= seconds <= MAX_SECONDS):  # also rejects nan
        raise GenerationError(f"seconds must be in {MIN_SECONDS}..{MAX_SECONDS}, got {seconds}")
    if resolution not in RESOLUTIONS:
        raise GenerationError(f"resolution must be one of {', '.join(RESOLUTIONS)}, got {resolution!r}")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not (MIN_FPS <= fps <= MAX_FPS) \
            or int(fps) != fps:
        raise GenerationError(f"fps must be a whole number in {MIN_FPS}..{MAX_FPS}, got {fps!r}")
    out = Path(out)
    if out.suffix.lower() not in SUFFIXES:
        raise GenerationError(f"out {out} must end in {' or '.join(SUFFIXES)}")
    if not out.parent.is_dir():
        raise GenerationError(f"out folder {out.parent} does not exist")
    if out.is_dir():
        raise GenerationError(f"out {out} is a folder: name the video file to write, e.g. {out / 'clip.mp4'}")
    if out.exists() and not out.is_file():
        raise GenerationError(f"out {out} exists and is not a regular file")
    return out


def keep_newest(folder: Path, keep: int, name: re.Pattern) -> list[Path]:
    """Delete all but the `keep` newest files in `folder` whose names match `name` (the API's and the
    page's result folders); returns the files deleted."""
    dated = []
    for p in folder.iterdir():
        if name.match(p.name):
            try:   # another request's prune may delete it between the listing and here
                dated.append((p.stat().st_mtime_ns, p.name, p))
            except FileNotFoundError:
                continue
    files = [p for _, _, p in sorted(dated) if p.is_file()]
    old = files[:-keep] if keep > 0 else files
    for path in old:
        path.unlink(missing_ok=True)
    return old


def preview_path_for(out: Path) -> Path:
    """The GIF preview beside a video: "clip.mp4" -> "clip.mp4.preview.gif" (clip.webm has its own)."""
    return out.with_name(out.name + ".preview.gif")


class _Tap:
    """Passes frames through, timing the producer and keeping small copies for the preview."""

    def __init__(self, frames: Iterator[np.ndarray], total: int, keep: int = 48):
        self.frames, self.seconds, self.small = iter(frames), 0.0, []
        self.every = max(1, total // keep) if keep else 0   # keep=0: timing only
        self.count = 0

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            t0 = time.perf_counter()
            try:
                frame = next(self.frames)
            except StopIteration:
                self.seconds += time.perf_counter() - t0
                return
            if self.every and self.count % self.every == 0:
                h, w = frame.shape[:2]
                s = PREVIEW_SIDE / max(h, w)
                self.small.append(cv2.resize(frame, (max(2, round(w * s)), max(2, round(h * s))),
                                             interpolation=cv2.INTER_AREA))
            self.count += 1
            self.seconds += time.perf_counter() - t0
            yield frame


def load_models() -> None:
    """Load the shipped planner, generator, text stream and colour-name table once per process (the
    server's `load`), so that the first request pays none of it."""
    from .colour_names import colour_affinity
    from .generator import load_generator
    from .planner import load_planner, text_stream
    from .understanding import world_vocabulary

    load_planner()
    load_generator()
    text_stream()
    colour_affinity("red")
    world_vocabulary()


def generate_video(prompt: str, *, seconds: float = 3.0, resolution: str = "360p", fps: int = 24,
                   style: str | None = None, out: Path | str, apply_style: bool = True, planner=None,
                   generator=None, allow_guesses: bool = False, style_files: bool = True,
                   lexicon: bool = True) -> GenerationResult:
    """Prompt -> a playable video at `out` (.mp4 or .webm) and a GIF preview beside it.

    The result says what was understood (understanding.py: the words behind each planned value, guesses,
    unknown words, warnings). A prompt in which no shape or colour word was understood raises
    NothingUnderstoodError (a ValueError) before anything is rendered, since its video would be a random
    one; allow_guesses=True renders the planner's guess anyway (still reported as guessed).

    style: a style name, a description or (style_files=True) a reference image's path, routed by
    style.StyleRouter and applied by style.clip_stylizer; None uses the style the prompt names, if any. apply_style=False plans the style but renders without it (for pixel checks).
    style_files=False: `style` is a name or description only, never read as a reference image's path (the
    HTTP API: no look-ups on the server's disk); the CLI keeps reference image paths.
    planner / generator: loaded models (default: the shipped checkpoints).
    lexicon: rewrite words the planner never saw into its training words first (prompt_lexicon; the
    understanding's read_as lists them); False: the planner reads the prompt as written."""
    from data_connectors.video import write_preview, write_video

    from .generator import load_generator
    from .planner import load_planner, text_stream
    from .world import scene_frame_counts

    out = check_request(prompt, seconds, resolution, fps, out)
    if style is not None and (not isinstance(style, str) or not style.strip()):
        raise GenerationError(f"style must be a non-empty name or description, got {style!r}")
    fps = int(fps)
    size_hw = RESOLUTIONS[resolution]
    t0 = time.perf_counter()
    planner = planner or load_planner()
    generator = generator or load_generator()
    text_stream()  # MiniLM, loaded once per process: counted as loading, not planning
    t_load = time.perf_counter()
    rewritten = rewrite_prompt(prompt) if lexicon else RewrittenPrompt(prompt)   # "crimson" -> "red", ...
    listed = restructure(rewritten.text)   # "1. ... 2. ...", "Scene 1: ...", one scene a line -> joined prose
    plan = plan_listed(planner, listed, float(seconds), style=style)
    t_plan = time.perf_counter()
    understanding = understand(listed.text, plan, style=style)
    understanding.warnings[:0] = listed.warnings()
    understanding.read_as = [asdict(r) for r in rewritten.replaced]
    if not allow_guesses:
        check_understood(prompt, understanding)
    t_understood = time.perf_counter()

    frames_it, cuts = generator.script_frames(plan.script, fps, size_hw)
    total = sum(scene_frame_counts(plan.script, fps))
    timings = {"load_s": t_load - t0, "planning_s": t_plan - t_load, "understanding_s": t_understood - t_plan}
    style_weights: dict[str, float] = {}
    if plan.script.style is not None and apply_style:
        # fitted on frames drawn at evenly spread indices, then styled frame by frame on the way to the
        # encoder: memory does not grow with the clip's length (style.clip_stylizer, as stylize_file)
        from .style import StyleConfig, clip_stylizer, default_router, fit_indices
        t_style = time.perf_counter()
        cfg = StyleConfig()
        # a bad style fails before anything is encoded
        route = default_router().route(plan.script.style, files=style_files)
        sample_NHW3 = generator.script_frames_at(plan.script, fps, size_hw, fit_indices(total, cfg.fit_frames),
                                                 max_side=cfg.work_side)
        stylizer = clip_stylizer(route, sample_NHW3, cfg=cfg)
        style_weights = route.ranked_weights()
        fit_s = time.perf_counter() - t_style
        raw = _Tap(frames_it, total, keep=0)
        tap = _Tap(stylizer.stream(raw), total)
    else:
        raw = tap = _Tap(frames_it, total)
        fit_s = 0.0
    t1 = time.perf_counter()
    write_video(tap, out, fps)
    timings["generation_s"] = raw.seconds
    if raw is not tap:
        timings["style_s"] = fit_s + tap.seconds - raw.seconds
    timings["encoding_s"] = time.perf_counter() - t1 - tap.seconds
    small = tap.small
    t4 = time.perf_counter()
    preview = write_preview(np.stack(small), preview_path_for(out), fps=min(fps, 12))
    timings["preview_s"] = time.perf_counter() - t4
    timings["total_s"] = time.perf_counter() - t0
    experts = [{"text_experts": e.text_experts, "time_experts": e.time_experts} for e in plan.experts]
    return GenerationResult(out, preview, plan.script, cuts, experts,
                            {k: round(v, 4) for k, v in timings.items()}, fps, size_hw, total, style_weights,
                            understanding)

