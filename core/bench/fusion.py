"""`moe-suite bench fusion`: does dynamic fusion answer visual questions better than concatenation?

Each fusion strategy (core.fusion: task_gate, confidence, progressive, concat) goes into the same
small core (core.training's shape_world_core: a 2-layer MoE text stream over the question, a narrow
Swin over the scene), which core.training's Trainer fine-tunes from scratch on shape world's VQA
(13 answer classes) and then scores on held-out questions. For one seed, every strategy starts from
the same stream weights and sees the same batches; only the fusion module differs. Reported: the
held-out accuracy's mean and std over the seeds, and each dynamic strategy's gain over concat in
points.

Caveats: the finetune stage routes every step under one task id, so task_gate learns one fixed
weighting of text and vision here (its per-task gating is not exercised); confidence fusion also
trains each modality's own answer head (core.training's finetune objective), a supervised signal
the other strategies lack. The seed's claim is +4.2 points for dynamic fusion. The default run
(12 runs of 300 steps) takes about 5 minutes on one busy CPU thread; a longer one (about 25):
`moe-suite bench fusion --steps 1000 --seeds 5 --json`.
"""
from __future__ import annotations

import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, replace

import torch

from core.data import ANSWERS
from core.fusion import STRATEGIES
from core.training import TrainConfig, Trainer, shape_world_core

BASELINE = "concat"


@dataclass
class FusionBenchConfig:
    steps: int = 300                 # finetune steps of every run
    seeds: int = 3                   # runs per strategy, seeds 0 .. seeds-1
    dim: int = 64                    # shared width of shape_world_core
    batch_size: int = 32             # questions per step
    lr: float = 1e-3                 # AdamW peak learning rate (core.training's schedule)
    eval_questions: int = 512        # held-out questions per run (the same for every strategy of a seed)

    def __post_init__(self) -> None:
        for name in ("steps", "seeds", "batch_size", "eval_questions"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def finetune(strategy: str, seed: int, cfg: FusionBenchConfig) -> dict:
    """Trainer's finetune stage for one strategy and seed, in a scratch folder: its summary."""
    core = shape_world_core(cfg.dim)
    core = replace(core, fusion=replace(core.fusion, strategy=strategy))
    with tempfile.TemporaryDirectory() as out_dir:
        train = TrainConfig(model=core, finetune_steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr,
                            bf16=False, seed=seed, out_dir=out_dir, progress=False, ckpt_every=cfg.steps,
                            eval_questions=cfg.eval_questions)
        return Trainer(train).run(("finetune",))["finetune"]


def run(cfg: FusionBenchConfig) -> dict:
    began = time.perf_counter()
    accuracy = {s: [] for s in STRATEGIES}
    seconds = {s: 0.0 for s in STRATEGIES}
    for seed in range(cfg.seeds):
        for strategy in STRATEGIES:
            summary = finetune(strategy, seed, cfg)
            accuracy[strategy].append(100 * summary["vqa_accuracy"])
            seconds[strategy] += summary["seconds"]

    mean = {s: statistics.fmean(acc) for s, acc in accuracy.items()}
    gain = {s: mean[s] - mean[BASELINE] for s in STRATEGIES if s != BASELINE}
    best = max(gain, key=gain.get)
    return {
        "benchmark": "vqa_fusion_strategies",
        "data": f"shape world VQA, {len(ANSWERS)} answer classes, fine-tuned from scratch",
        "config": asdict(cfg),
        "accuracy_percent": {s: {"mean": mean[s], "std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                                 "per_seed": acc} for s, acc in accuracy.items()},
        "gain_points_vs_concat": gain,
        "best_dynamic_strategy": best,
        "fusion_gain_points": gain[best],
        "train_seconds": {s: round(t, 1) for s, t in seconds.items()},
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"),
        "wall_seconds": round(time.perf_counter() - began, 1),
    }
