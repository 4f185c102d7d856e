"""Does sparse upcycling pay? MiniLM upcycled into an MoE text stream vs the same stream from scratch.

Both classifiers share the shape, data, seed and training budget (steps, batch, lr schedule) and the
trainer (core.text.classifier.train_classifier); every layer trains in both. Reported: test accuracy.
"""
from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from core.text.classifier import (
    ClassifierConfig, TrainConfig, accuracy, default_stream, new_classifier, read_labelled_csv,
    train_classifier,
)
from core.text.config import TextStreamConfig

# Banking77 (Casanueva et al. 2020, CC BY 4.0), beside the project: <root>/../shared/datasets/banking77
BANKING77 = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "banking77"


@dataclass
class UpcycleBenchConfig:
    data: Path = BANKING77           # folder with train.csv and test.csv (text,label or text,category)
    steps: int = 100                 # optimizer steps of each model (about 10 minutes for both on 2 CPU cores)
    batch_size: int = 32
    lr: float = 1e-4                 # peak lr, linear warmup then linear decay (TrainConfig's schedule)
    seed: int = 0
    stream: TextStreamConfig = field(default_factory=default_stream)


def run(cfg: UpcycleBenchConfig) -> dict:
    """Train both classifiers on train.csv, score them on test.csv; a JSON-able summary."""
    data = Path(cfg.data)
    if not (data / "train.csv").is_file() or not (data / "test.csv").is_file():
        raise ValueError(f"{data}: needs train.csv and test.csv; pass --data DIR "
                         f"(default: Banking77 at {BANKING77})")
    train_x, train_y = read_labelled_csv(data / "train.csv")
    test_x, test_y = read_labelled_csv(data / "test.csv")
    model_cfg = ClassifierConfig(labels=tuple(sorted(set(train_y))), stream=cfg.stream)
    train_cfg = TrainConfig(epochs=1 + cfg.steps * cfg.batch_size // len(train_x), max_steps=cfg.steps,
                            batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed)
    result = {"data": str(data), "steps": cfg.steps, "batch_size": cfg.batch_size, "lr": cfg.lr,
              "train_rows": len(train_x), "test_rows": len(test_x),
              "stream": {k: v for k, v in asdict(cfg.stream).items()
                         if k in ("num_layers", "dim", "moe_layers", "num_experts", "top_k")}}
    for name, upcycle in (("upcycled", True), ("scratch", False)):
        model = new_classifier(model_cfg, upcycle=upcycle, seed=cfg.seed)
        trained = train_classifier(model, train_x, train_y, train_cfg)
        result[f"{name}_accuracy"] = round(accuracy(model, test_x, test_y), 4)
        result[f"{name}_train_loss"] = round(trained.train_loss, 4)
        result[f"{name}_seconds"] = round(trained.seconds, 1)
    result["machine"] = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    return result
