"""`moe-suite bench video`: seconds from a prompt to a finished, browser-playable clip (median of
`runs`, models already loaded; the one-off loading time is reported apart), with the breakdown
(planning, generation, encoding, preview), plus captioning fps (captioner.bench_caption_fps) and
stylisation fps at 720p (style.bench_stylize_fps) when those modules are present."""
from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

BENCH_PROMPT = ("a red ball rolls left on a beach, then cut to a blue square rising at night "
                "while a yellow star spins, the camera pans right")


def bench_video(runs: int = 3, seconds: float = 3.0, resolution: str = "1080p", fps: int = 24,
                extras: bool = True, prompt: str = BENCH_PROMPT) -> dict:
    import torch

    from .generator import load_generator
    from .planner import load_planner
    from .studio import check_request, generate_video

    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    with tempfile.TemporaryDirectory() as tmp:
        check_request(prompt, seconds, resolution, fps, Path(tmp) / "x.mp4")
        t0 = time.perf_counter()
        planner, generator = load_planner(), load_generator()
        planner.plan("a red ball", 1.0)  # first call builds the tokenizer and caches
        load_s = time.perf_counter() - t0
        results = []
        for i in range(runs):
            t = time.perf_counter()
            r = generate_video(prompt, seconds=seconds, resolution=resolution, fps=fps,
                               out=Path(tmp) / f"bench{i}.mp4", planner=planner, generator=generator)
            wall = time.perf_counter() - t
            results.append({**r.timings, "wall_s": wall, "bytes": r.path.stat().st_size})
    med = lambda k: round(statistics.median(x.get(k, 0.0) for x in results), 3)  # noqa: E731
    out = {
        "prompt_to_video_seconds": med("wall_s"),
        "planning_s": med("planning_s"), "generation_s": med("generation_s"), "encoding_s": med("encoding_s"),
        "preview_s": med("preview_s"),
        "runs_s": [round(x["wall_s"], 3) for x in results], "runs": runs,
        "model_load_s": round(load_s, 3), "clip_seconds": seconds, "resolution": resolution, "fps": fps,
        "frames": int(round(seconds * fps)), "file_kb": results[-1]["bytes"] // 1024, "codec": "h264 mp4",
        "target_s": 6.0, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "note": "encoding_s is the encoder's time not hidden behind generation (frames stream into ffmpeg)",
    }
    if extras:
        for name, module, fn, kwargs in (("caption", "captioner", "bench_caption_fps", {}),
                                         ("stylize", "style", "bench_stylize_fps", {"resolution": "720p"})):
            try:
                mod = __import__(f"apps.video_generation.{module}", fromlist=[fn])
                res = getattr(mod, fn)(**kwargs)
                out[f"{name}_bench"] = res
            except (ImportError, AttributeError) as exc:
                out[f"{name}_bench"] = f"skipped: {exc}"
        cap = out.get("caption_bench")
        if isinstance(cap, dict) and "caption_fps" in cap:
            out["caption_fps"] = cap["caption_fps"]
        sty = out.get("stylize_bench")
        if isinstance(sty, dict):
            out["stylize_fps_720p"] = {k[4:]: v for k, v in sty.items() if k.startswith("fps_")}
    return out
