"""Handlers of the `moe-suite video ...` commands (registered in apps/video_generation/__init__.py).
Each imports torch and the models itself, so that `moe-suite --help` stays quick."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def _print(args: argparse.Namespace, summary: dict, text: str) -> None:
    print(json.dumps(summary) if args.json else text)


def generate(args: argparse.Namespace) -> None:
    import torch

    from .studio import generate_video

    torch.set_num_threads(args.threads) if args.threads else None
    # --allow-guesses: render even when no shape or colour word was understood (reported as guessed)
    result = generate_video(args.prompt, seconds=args.seconds, resolution=args.resolution, fps=args.fps,
                            style=args.style, out=args.out, allow_guesses=args.allow_guesses, lexicon=args.lexicon)
    from .world import caption_scene
    lines = [f"{result.path} ({result.frames} frames, {result.size_hw[1]}x{result.size_hw[0]} at {result.fps} fps), "
             f"preview {result.preview_path}"]
    bounds = [0] + result.cut_frames + [result.frames]
    for i, scene in enumerate(result.script.scenes):
        lines.append(f"  scene {i + 1} frames {bounds[i]}-{bounds[i + 1] - 1}: {caption_scene(scene)}")
    if result.script.style:
        lines.append(f"  style: {result.script.style} {result.style_experts}")
    lines.append("  " + ", ".join(f"{k} {v:.2f}" for k, v in result.timings.items()))
    u = result.understanding
    if u is not None:
        lines.append(f"  understood as: {u.summary()}")
        if guesses := u.guesses_text():
            lines.append("  guessed: " + guesses)
        lines += [f"  warning: {w}" for w in u.warnings]
    _print(args, result.to_dict(), "\n".join(lines))


def fit_stages(args: argparse.Namespace) -> None:
    import torch

    from .captioner import Captioner, StageConfig, evaluate_captioner, fit_stages, save_captioner

    torch.set_num_threads(args.threads)
    start = Captioner.load(args.captioner).without_stages()   # stages it has are refitted from the heads alone
    sc = StageConfig(motion_frames=args.motion_frames, shape_crop=args.shape_crop, backdrop_de=args.backdrop_de,
                     clips=args.clips, val_clips=args.val_clips, seed=args.seed)
    fitted, metrics = fit_stages(start, sc, log=(lambda s: None) if args.json else print)
    metrics["out"] = str(save_captioner(fitted, args.out))   # keeps the folder's model card
    if args.eval_clips:   # the checkpoint as saved (float16), against the heads it started from
        metrics["held_out_heads_only"] = evaluate_captioner(start, args.eval_clips, seed=args.seed + 1)
        metrics["held_out_with_stages"] = evaluate_captioner(Captioner.load(args.out), args.eval_clips,
                                                             seed=args.seed + 1)
    _print(args, metrics, json.dumps(metrics, indent=2))


def train_planner(args: argparse.Namespace) -> None:
    import torch

    from .planner import (Planner, PlannerConfig, PlannerTrainConfig, evaluate_planner, heldout_sets,
                          save_planner, train_planner)

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    tcfg = PlannerTrainConfig(train_prompts=args.prompts, steps=args.steps, batch_size=args.batch_size,
                              lr=args.lr, word_noise=args.word_noise, joiner_noise=args.joiner_noise,
                              seed=args.seed)
    log = (lambda s: None) if args.json else print
    model = train_planner(PlannerConfig(), tcfg, log=log)
    metrics = {name: evaluate_planner(Planner(model), *data)
               for name, data in heldout_sets(args.eval_prompts, args.seed + 1).items()}
    path = save_planner(model, args.out, metadata={"train": vars(tcfg), "eval": metrics})
    summary = {"out": str(path), "train_seconds": round(time.perf_counter() - t0, 1), **metrics}
    _print(args, summary, json.dumps(summary, indent=2))


def ensemble_planner(args: argparse.Namespace) -> None:
    import copy

    from .planner import ensemble_planner, load_planner, save_planner

    members = [load_planner(path).model for path in args.members]   # all read before --out may replace one
    model = ensemble_planner(members)
    stored = copy.deepcopy(model).half() if args.float16 else model
    path = save_planner(stored, args.out, metadata={"members": [str(p) for p in args.members],
                                                    "float16": args.float16})
    summary = {"out": str(path), "readers": model.cfg.readers,
               "parameters": sum(p.numel() for p in model.parameters())}
    _print(args, summary, json.dumps(summary, indent=2))


def eval_planner(args: argparse.Namespace) -> None:
    import torch

    from .planner import evaluate_planner, heldout_sets, load_planner

    torch.set_num_threads(args.threads)
    planner = load_planner(args.model)
    t0 = time.perf_counter()
    metrics = {name: evaluate_planner(planner, *data, lexicon=args.lexicon)
               for name, data in heldout_sets(args.prompts, args.seed).items()}
    metrics["lexicon"] = args.lexicon
    metrics["seconds"] = round(time.perf_counter() - t0, 1)
    _print(args, metrics, json.dumps(metrics, indent=2))


def train_generator(args: argparse.Namespace) -> None:
    import torch

    from .generator import (Generator, GeneratorConfig, GeneratorTrainConfig, evaluate_generator,
                            save_generator, train_generator)

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    tcfg = GeneratorTrainConfig(layout_steps=args.layout_steps, sprite_steps=args.sprite_steps, seed=args.seed)
    model = train_generator(GeneratorConfig(), tcfg, log=(lambda s: None) if args.json else print)
    metrics = evaluate_generator(Generator(model), n_scenes=args.eval_scenes, seed=args.seed + 1)
    path = save_generator(model, args.out, metadata={"train": vars(tcfg), "eval": metrics})
    summary = {"out": str(path), "train_seconds": round(time.perf_counter() - t0, 1), **metrics}
    _print(args, summary, json.dumps(summary, indent=2))


def eval_generator(args: argparse.Namespace) -> None:
    from .generator import evaluate_generator, load_generator

    metrics = evaluate_generator(load_generator(args.model), n_scenes=args.scenes, seed=args.seed)
    _print(args, metrics, json.dumps(metrics, indent=2))


def caption(args: argparse.Namespace) -> None:
    from .captioner import caption_file

    if not Path(args.file).is_file():
        raise ValueError(f"{args.file}: " + ("not a regular file" if Path(args.file).exists() else "no such file"))
    result = caption_file(args.file)   # the page's Caption tab reads files the same way
    text = "\n".join([f"{s.start_s:7.2f}-{s.end_s:7.2f} s  {s.caption}  ({s.source})" for s in result.shots]
                     + [f"  warning: {w}" for w in result.warnings])
    _print(args, result.to_dict(), text)


def evaluate(args: argparse.Namespace) -> None:
    from .evaluation import evaluate as run

    result = run(args.prompts, args.clips, args.seed, resolution=args.resolution, fps=args.fps,
                 lexicon=args.lexicon, log=(lambda s: None) if args.json else print)
    _print(args, result, json.dumps(result, indent=2))


def bench(args: argparse.Namespace) -> None:
    from .bench import bench_video

    result = bench_video(runs=args.runs, seconds=args.seconds, resolution=args.resolution, fps=args.fps,
                         extras=not args.no_extras)
    _print(args, result, json.dumps(result, indent=2))
