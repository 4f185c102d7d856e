"""`moe-suite video stylize FILE --style NAME_OR_IMAGE_OR_TEXT --out FILE [--json]` and
`moe-suite video style-bench [--resolution 720p] [--frames 48] [--json]` (added to the `video` group by
apps/video_generation/__init__.py through add_stylize_command). Heavy imports happen inside the handlers."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


MIN_WORK_SIDE = 32   # --work-side below this leaves too few pixels for the experts (8 px would make 8x6 frames)
MAX_WORK_SIDE = 4096


def _work_side(text: str) -> int:
    """argparse type of --work-side: an integer in MIN_WORK_SIDE..MAX_WORK_SIDE pixels."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--work-side must be a whole number of pixels, got {text!r}") from None
    if not MIN_WORK_SIDE <= value <= MAX_WORK_SIDE:
        raise argparse.ArgumentTypeError(f"--work-side must be {MIN_WORK_SIDE}..{MAX_WORK_SIDE} pixels "
                                         f"(the longer side the experts work at), got {value}")
    return value


def add_stylize_command(video_group) -> None:
    """Add `stylize` and `style-bench` to the `video` command group (an apps.cli.CommandTable)."""
    from apps.cli import positive_int

    p = video_group.command("stylize", "Restyle an image or a video by a style name, a description or a "
                                       "reference image", _stylize)
    p.add_argument("file", type=Path, help="image (.png .jpg ...) or video (.mp4 .webm ...) to restyle")
    p.add_argument("--style", required=True,
                   help="a style name (watercolor, pencil, color_pencil, oil, cartoon, detail, smooth), a "
                        "description ('like a charcoal drawing') or a reference image path")
    p.add_argument("--out", required=True, type=Path, help="output: .png/.jpg for an image, .mp4/.webm for a video")
    p.add_argument("--work-side", type=_work_side, default=None,
                   help="run the experts with the longer side at most this many pixels (default: full size for "
                        "images, 640 for videos)")
    p.add_argument("--no-stabilise", action="store_true",
                   help="per-frame statistics, no temporal smoothing (the flickering baseline)")
    p.add_argument("--flow", action="store_true", help="warp the previous frame by optical flow before blending")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    b = video_group.command("style-bench", "Stylisation frames per second per expert and flicker with and "
                                           "without stabilisation, on a synthetic clip", _bench)
    b.add_argument("--resolution", default="720p", choices=["360p", "720p", "1080p"])
    b.add_argument("--frames", type=positive_int, default=48)
    b.add_argument("--experts", nargs="*", default=None, help="only these experts (default: all)")
    b.add_argument("--json", action="store_true", help="print one JSON object")


def _stylize(args: argparse.Namespace) -> None:
    from dataclasses import replace

    import torch

    from .style import StyleConfig, is_still_image, stylize_file_result

    # the learned expert's small convolutions: 1 thread ran 13.8 fps, 2 threads 1.4 fps on the shared 2 cores
    torch.set_num_threads(1)

    cfg = None
    if args.work_side is not None or args.no_stabilise or args.flow:
        is_image = is_still_image(args.file, args.out)   # content over name, as stylize_file decides
        cfg = replace(StyleConfig(), work_side=args.work_side or (None if is_image else StyleConfig.work_side),
                      stabilise=not args.no_stabilise, flow=args.flow)
    out, result = stylize_file_result(args.file, args.style, args.out, cfg=cfg)
    summary = {"out": str(out), "experts": result.experts, "weights": result.weights, "route": result.source,
               "seconds": result.seconds, "bytes": out.stat().st_size, "audio_copied": result.audio,
               "warnings": result.warnings}
    if result.scores:
        summary["scores"] = result.scores
    if args.json:
        print(json.dumps(summary))
    else:
        used = ", ".join(f"{n} {w:.2f}" for n, w in result.weights.items())
        print(f"{args.file} -> {out} in {result.seconds} s (experts: {used}; routed by {result.source})")
        for w in result.warnings:
            print(f"  warning: {w}")


def _bench(args: argparse.Namespace) -> None:
    import torch

    from .style import bench_stylize_fps, flicker_report

    torch.set_num_threads(1)
    out = bench_stylize_fps(args.resolution, args.frames, experts=args.experts)
    out.update(flicker_report(experts=args.experts))
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:32s} {v}")
