"""Video studio: text-to-video with time-axis experts, captioning per shot, style experts.

Modules: world (the synthetic world), planner (prompt -> Script: text and time-axis experts),
generator (scene -> frames), studio (generate_video), shots / captioner / evaluation (captioning and
`video eval`), style / style_cli (style experts), page (Gradio), api (HTTP), bench (`bench video`).

Light to import: this module only registers the commands; handlers (cli.py) import torch when they run.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from apps.cli import positive_int

if TYPE_CHECKING:
    from apps.cli import CommandTable

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "video_generation"


def _train_captioner(args: argparse.Namespace) -> None:
    from .captioner import main

    main(args.options)


def _lexicon_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lexicon", action=argparse.BooleanOptionalAction, default=True,
                   help="rewrite words the planner never saw into its training words first (prompt_lexicon; "
                        "--no-lexicon: the planner alone)")


def register(cli: CommandTable) -> None:
    """Add `video generate|train-captioner|fit-stages|train-planner|ensemble-planner|eval-planner|train-generator|
    eval-generator|caption|eval|stylize|style-bench` and `bench video` (see apps.cli)."""
    from . import cli as handlers
    from .style_cli import add_stylize_command

    video = cli.group("video", "video studio: text to video, captions per shot, style transfer")
    p = video.command("generate", "prompt -> a browser-playable video (+ GIF preview), planned by text and "
                                  "time-axis experts", handlers.generate)
    p.add_argument("prompt", help='e.g. "a red ball rolls left on a beach, then cut to a blue square rising at night"')
    p.add_argument("--seconds", type=float, default=3.0, help="length, 0.5..20 (default: %(default)s)")
    p.add_argument("--resolution", default="360p", help="360p, 720p or 1080p (default: %(default)s)")
    p.add_argument("--fps", type=int, default=24, help="frames per second, 8..30 (default: %(default)s)")
    p.add_argument("--style", default=None, help="style name or description (default: the one the prompt names)")
    p.add_argument("--out", required=True, type=Path, help="output .mp4 (H.264) or .webm (VP9)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--allow-guesses", action="store_true",
                   help="render a guess even when no shape or colour word of the prompt was understood")
    _lexicon_flag(p)
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")

    p = video.command("train-captioner", "train the shot captioner on rendered world clips and save it; options: "
                                         "--out --steps --batch-size --eval-clips --pool --init --lr --seed --json",
                      _train_captioner)
    p.add_argument("options", nargs=argparse.REMAINDER, help="passed to the captioner's trainer (see above)")

    p = video.command("fit-stages", "fit the captioner's motion stage (each object's region at more frames, moved "
                                    "back through the camera) and shape stage (its crops at the shot's own "
                                    "resolution) on rendered clips, and save the captioner with them",
                      handlers.fit_stages)
    p.add_argument("--captioner", type=Path, default=ASSETS / "captioner",
                   help="captioner checkpoint to start from (default: the shipped one; stages it has are refitted)")
    p.add_argument("--out", type=Path, required=True, help="checkpoint folder to write (may be --captioner's)")
    p.add_argument("--motion-frames", type=int, default=7,
                   help="frames of each shot the motion evidence is measured at (0: no motion stage)")
    p.add_argument("--shape-crop", type=int, default=32, help="shape crops' side in pixels (0: no shape stage)")
    p.add_argument("--backdrop-de", type=float, default=8.0,
                   help="the stages' colour masks leave out pixels within this Lab distance of the predicted "
                        "background under the predicted camera (0: kept; default: the shipped stages')")
    p.add_argument("--clips", type=positive_int, default=4000, help="train-split clips fitted on")
    p.add_argument("--val-clips", type=positive_int, default=1500, help="train-split clips the epochs are chosen on")
    p.add_argument("--eval-clips", type=int, default=200,
                   help="held-out clips scored with the heads alone and with the stages (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=positive_int, default=1)
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")

    p = video.command("train-planner", "train the prompt planner on synthetic prompts, evaluate it on held-out "
                                       "phrasing and combinations, save it", handlers.train_planner)
    p.add_argument("--out", type=Path, default=ASSETS / "planner", help="checkpoint folder (default: the shipped one)")
    p.add_argument("--prompts", type=positive_int, default=6000, help="training prompts")
    p.add_argument("--steps", type=positive_int, default=2500)
    p.add_argument("--batch-size", type=positive_int, default=24)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--word-noise", type=float, default=0.1,
                   help="random-word noise on half the prompts, per word (0 turns it off)")
    p.add_argument("--joiner-noise", type=float, default=0.0,
                   help="share of scene joiners replaced by 0-2 random words (0 turns it off)")
    p.add_argument("--eval-prompts", type=positive_int, default=200, help="prompts per evaluation set")
    p.add_argument("--threads", type=positive_int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")

    p = video.command("ensemble-planner", "join separately trained planners into one that averages their "
                                          "readers (the first one's time axis and exemplars)",
                      handlers.ensemble_planner)
    p.add_argument("members", nargs="+", type=Path, help="planner checkpoint folders (at least 2)")
    p.add_argument("--out", type=Path, default=ASSETS / "planner", help="checkpoint folder (default: the shipped one)")
    p.add_argument("--float16", action="store_true", help="store the weights in float16 (loaded as float32)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")

    p = video.command("eval-planner", "planner accuracy per attribute on train phrasing, held-out phrasing and "
                                      "held-out combinations", handlers.eval_planner)
    p.add_argument("--model", type=Path, default=None, help="checkpoint folder (default: the shipped one)")
    p.add_argument("--prompts", type=positive_int, default=200, help="prompts per set")
    p.add_argument("--threads", type=positive_int, default=1)
    p.add_argument("--seed", type=int, default=1)
    _lexicon_flag(p)
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")

    p = video.command("train-generator", "train the layout network and sprite decoder on the rendered world, "
                                         "evaluate on held-out combinations, save", handlers.train_generator)
    p.add_argument("--out", type=Path, default=ASSETS / "generator", help="checkpoint folder (default: the shipped one)")
    p.add_argument("--layout-steps", type=positive_int, default=1500)
    p.add_argument("--sprite-steps", type=positive_int, default=400)
    p.add_argument("--eval-scenes", type=positive_int, default=40)
    p.add_argument("--threads", type=positive_int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")

    p = video.command("eval-generator", "generator on held-out (shape, colour, motion) combinations: layout "
                                        "error, sprite IoU, PSNR against the world's rendering", handlers.eval_generator)
    p.add_argument("--model", type=Path, default=None, help="checkpoint folder (default: the shipped one)")
    p.add_argument("--scenes", type=positive_int, default=40)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")

    p = video.command("caption", "caption a video shot by shot, with time stamps", handlers.caption)
    p.add_argument("file", type=Path, help="video file (.mp4, .webm, ...)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")

    p = video.command("eval", "the studio on held-out synthetic prompts and clips: text-video consistency, "
                              "caption attribute accuracy, BLEU-4, cut accuracy", handlers.evaluate)
    p.add_argument("--prompts", type=int, default=20,
                   help="held-out scripts to generate and check; each is generated twice, in held-out and in "
                        "training wording (the *_train_wording keys)")
    p.add_argument("--clips", type=int, default=200, help="held-out rendered clips to caption")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resolution", default="360p")
    p.add_argument("--fps", type=int, default=12)
    _lexicon_flag(p)
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")

    add_stylize_command(video)

    p = cli.group("bench", "benchmarks").command(
        "video", "seconds from prompt to a finished browser-playable clip (median, with its breakdown), "
                 "captioning and stylisation frames per second", handlers.bench)
    p.add_argument("--runs", type=positive_int, default=3, help="timed generations (median reported)")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--resolution", default="1080p")
    p.add_argument("--fps", type=int, default=24)
    p.add_argument("--no-extras", action="store_true", help="skip the captioning and stylisation benchmarks")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
