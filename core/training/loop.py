"""Progressive training: the stages in order, each starting from the one before and resumable.

    from core.training import TrainConfig, Trainer
    summary = Trainer(TrainConfig(out_dir="runs/demo")).run(("pretrain", "align", "finetune"))

What `out_dir` holds:
    metrics.jsonl            one record per logged step of every stage
    summary.json             each stage's last logged losses and held-out evaluation
    <stage>/checkpoint/      a core.checkpoint folder (kind "shape_world_core": the core with its
                             training heads) with its train state: the stage's resume point, and
                             (once the stage is done) the next stage's starting weights
    <stage>/losses.png       the stage's loss terms over its steps
    <stage>/expert_load.png  per task, each MoE layer's share of assignments per expert

Shape legend: E experts of an MoE layer, L MoE layers.
"""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from core.checkpoint import TRAIN_STATE, load_checkpoint, load_train_state, save_checkpoint, save_train_state
from core.data import ShapeWorld, make_tokenizer
from core.model import MultimodalCore
from core.moe import update_expert_biases

from .config import STAGES, TrainConfig
from .stages import Objectives, StepOutput, add_training_heads, make_batch

KIND = "shape_world_core"  # the checkpoint kind of the trained core (registered in core/registry.py)


def build_model(cfg: TrainConfig) -> MultimodalCore:
    """The core with every stage's training heads."""
    vocab_size = make_tokenizer(cfg.tokenizer).vocab_size
    if cfg.model.text.vocab_size < vocab_size:
        raise ValueError(f"text vocab_size ({cfg.model.text.vocab_size}) is smaller than the "
                         f"{cfg.tokenizer} tokenizer's ({vocab_size})")
    core = MultimodalCore(cfg.model)
    add_training_heads(core, vocab_size, cfg)
    return core


def calibration_inputs(cfg: TrainConfig, batch_size: int, g: torch.Generator) -> tuple:
    """Forward arguments (text, images, audio, task) of a shape world batch, e.g. for core.compress."""
    seed = int(torch.randint(2**31, (1,), generator=g))
    batch = make_batch("align", ShapeWorld(cfg.data), make_tokenizer(cfg.tokenizer), batch_size, seed)
    return batch.text, batch.images, None, cfg.finetune_task


@torch.no_grad()
def held_out_metrics(model: MultimodalCore, cfg: TrainConfig) -> dict[str, float]:
    """Image-text recall@1 and visual-question accuracy on held-out shape world data."""
    tokenizer, world = make_tokenizer(cfg.tokenizer), ShapeWorld(cfg.data)
    device = next(model.parameters()).device
    objectives = Objectives(model, tokenizer, cfg)
    was_training = model.training
    model.eval()
    metrics = objectives.retrieval(world, device)
    metrics.pop("temperature")
    metrics["vqa_accuracy"] = objectives.vqa_accuracy(world, device)
    model.train(was_training)
    return metrics


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW, decaying matrices and embeddings only (not biases, norms or the temperature)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr)


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warm-up to cfg.lr over the first warmup_steps, then cosine decay to lr * min_lr_ratio."""
    if step <= cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class MetricsLog:
    """metrics.jsonl: one JSON record per logged step."""

    def __init__(self, path: Path):
        self.path = path

    def records(self, stage: str | None = None) -> list[dict]:
        if not self.path.exists():
            return []
        records = [json.loads(line) for line in self.path.read_text().splitlines() if line]
        return [r for r in records if stage is None or r["stage"] == stage]

    def append(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def restart(self, stage: str, step: int) -> None:
        """Drop what a stage training on from `step` will log again, and the later stages' records
        (their weights came from the stage's old state)."""
        index = STAGES.index(stage)
        kept = [r for r in self.records() if STAGES.index(r["stage"]) < index
                or (r["stage"] == stage and r["step"] <= step)]
        tmp = self.path.with_name(f".{self.path.name}.tmp")  # a crash mid-write keeps the old log
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, self.path)


class MetricWindow:
    """Sums over the steps since the last record; each record holds their means."""

    def __init__(self):
        self.steps, self.balance = 0, 0.0
        self.losses: dict[str, torch.Tensor] = {}
        self.load: dict[str, torch.Tensor] = {}  # MoE layer -> [E] assignments, summed

    def add(self, out: StepOutput) -> None:
        self.steps += 1
        for name, value in out.terms.items():  # tensors: no device sync until the record
            self.losses[name] = self.losses.get(name, 0) + value
        self.balance += float(np.mean([s.balance for s in out.stats.values()]))
        for name, s in out.stats.items():
            self.load[name] = self.load.get(name, 0) + s.expert_load

    def record(self, stage: str, step: int, lr: float, task: str) -> dict:
        return {"stage": stage, "step": step, "lr": lr,
                "losses": {name: value.item() / self.steps for name, value in self.losses.items()},
                "balance": self.balance / self.steps,
                "expert_load": {task: {name: load_E.tolist() for name, load_E in self.load.items()}}}


class Trainer:
    """Trains one MultimodalCore through the stages on shape world, writing everything under cfg.out_dir."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.out_dir = Path(cfg.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.device = resolve_device(cfg.device)
        self.tokenizer = make_tokenizer(cfg.tokenizer)
        self.world = ShapeWorld(cfg.data)
        torch.manual_seed(cfg.seed)
        self._use(build_model(cfg).to(self.device))
        self.metrics = MetricsLog(self.out_dir / "metrics.jsonl")

    def run(self, stages: Sequence[str] = STAGES, resume: bool = False) -> dict[str, dict]:
        """Train `stages` in order; returns (and adds to summary.json) each one's final metrics."""
        path = self.out_dir / "summary.json"
        summary = json.loads(path.read_text()) if path.exists() else {}
        for stage in stages:
            summary[stage] = self.train_stage(stage, resume)
            path.write_text(json.dumps(summary, indent=2) + "\n")
        return {stage: summary[stage] for stage in stages}

    def train_stage(self, stage: str, resume: bool = False) -> dict:
        """Train one stage to cfg.steps(stage): from its own checkpoint with `resume` (where there is
        one), else from the last earlier stage's (where there is one), else from the current weights."""
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        cfg, total = self.cfg, self.cfg.steps(stage)
        checkpoint = self.out_dir / stage / "checkpoint"
        if resume and (checkpoint / TRAIN_STATE).is_file():
            init = self._load(checkpoint)
            optimizer = make_optimizer(self.model, cfg)
            start = load_train_state(checkpoint, optimizer).step  # and the RNG states
        else:
            init = self._load_previous_stage(stage)
            optimizer = make_optimizer(self.model, cfg)
            start = 0
            seed = np.random.SeedSequence([cfg.seed, STAGES.index(stage)]).generate_state(1).item()
            torch.manual_seed(seed)  # masks and dropout: the same whichever stages ran before in this process
        if start < total:
            self.metrics.restart(stage, start)

        began = time.perf_counter()
        window = MetricWindow()
        self.model.train()
        for step in tqdm(range(start + 1, total + 1), desc=stage, initial=start, total=total,
                         disable=not cfg.progress):
            lr = lr_at(step, total, cfg)
            window.add(self._step(stage, step, lr, optimizer))
            save = step % cfg.ckpt_every == 0 or step == total
            # A record at every checkpoint too: a resumed run restarts the log there, so its records
            # then average the same steps as an uninterrupted run's.
            if step % cfg.log_every == 0 or save:
                self.metrics.append(window.record(stage, step, lr, cfg.task(stage)))
                window = MetricWindow()
            if save:
                save_checkpoint(self.model, checkpoint, kind=KIND, config=cfg,
                                metadata={"stage": stage, "step": step})
                save_train_state(checkpoint, optimizer, step)

        records = self.metrics.records(stage)
        plot_losses(records, self.out_dir / stage / "losses.png")
        plot_expert_load(records, self.out_dir / stage / "expert_load.png")
        return {"steps": total, "init": init, "seconds": round(time.perf_counter() - began, 2),
                **records[-1]["losses"], **self.evaluate(stage)}

    def _step(self, stage: str, step: int, lr: float, optimizer: torch.optim.Optimizer) -> StepOutput:
        cfg = self.cfg
        for group in optimizer.param_groups:
            group["lr"] = lr
        # Each step's batch depends on (seed, stage, step) only: a resumed run sees the same data.
        seed = (cfg.seed, STAGES.index(stage), step)
        batch = make_batch(stage, self.world, self.tokenizer, cfg.batch_size, seed).to(self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            out = self.objectives(stage, batch)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        optimizer.step()
        update_expert_biases(self.model)
        return out

    def evaluate(self, stage: str) -> dict[str, float]:
        """Held-out recall@1 after every stage; VQA accuracy once the answer head is trained."""
        self.model.eval()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16):
            result = self.objectives.retrieval(self.world, self.device)
            if stage == "finetune":
                result["vqa_accuracy"] = self.objectives.vqa_accuracy(self.world, self.device)
        self.model.train()
        return result

    def _use(self, model: MultimodalCore) -> None:
        self.model = model
        self.objectives = Objectives(model, self.tokenizer, self.cfg)

    def _load(self, checkpoint: Path) -> str:
        """Continue from the core saved at `checkpoint` (of this run's model config); returns its
        "<stage> step <n>"."""
        model, info = load_checkpoint(checkpoint, map_location=self.device)
        if info.config.model != self.cfg.model or info.config.tokenizer != self.cfg.tokenizer:
            raise ValueError(f"{checkpoint} holds a core of another model config or tokenizer "
                             "than this run's")
        self._use(model)
        return f"{info.metadata['stage']} step {info.metadata['step']}"

    def _load_previous_stage(self, stage: str) -> str:
        """Load the weights of the last earlier stage with a checkpoint; returns where the stage starts."""
        for earlier in reversed(STAGES[:STAGES.index(stage)]):
            checkpoint = self.out_dir / earlier / "checkpoint"
            if checkpoint.is_dir():
                return self._load(checkpoint)
        return "current weights"


def plot_losses(records: list[dict], path: Path) -> None:
    """One curve per loss term over the stage's logged steps."""
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    steps = [r["step"] for r in records]
    for name in records[0]["losses"]:
        ax.plot(steps, [r["losses"][name] for r in records], label=name)
    ax.set(xlabel="step", ylabel="loss", yscale="log", title=f"{records[0]['stage']} losses")
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def plot_expert_load(records: list[dict], path: Path) -> None:
    """Per task, a heat map of each MoE layer's share of assignments per expert, over the whole stage."""
    loads: dict[str, dict[str, np.ndarray]] = {}  # task -> layer -> [E] summed over the records
    for record in records:
        for task, layers in record["expert_load"].items():
            for layer, load in layers.items():
                by_layer = loads.setdefault(task, {})
                by_layer[layer] = by_layer.get(layer, 0) + np.asarray(load, dtype=float)
    fig = Figure(figsize=(7, 1.5 + 2.5 * len(loads)), layout="constrained")
    for ax, (task, by_layer) in zip(fig.subplots(len(loads), 1, squeeze=False)[:, 0], loads.items()):
        E = max(len(load) for load in by_layer.values())
        share_LE = np.full((len(by_layer), E), np.nan)  # layers with fewer experts leave blanks
        for i, load_E in enumerate(by_layer.values()):
            share_LE[i, :len(load_E)] = load_E / max(load_E.sum(), 1)
        image = ax.imshow(share_LE, aspect="auto", cmap="viridis", vmin=0)
        ax.set(title=f"task {task}: share of assignments", xlabel="expert", xticks=range(E),
               yticks=range(len(by_layer)), yticklabels=list(by_layer))
        fig.colorbar(image, ax=ax)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
