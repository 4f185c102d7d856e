"""A sentence classifier on the text stream: TextStream -> pooled sentence vector -> cosine head.

    cfg = ClassifierConfig(labels=("balance", "lost_card"))
    model = new_classifier(cfg, upcycle=True)                # stream starts from MiniLM (core.text.upcycle)
    result = train_classifier(model, texts, labels, TrainConfig(epochs=3), val=(val_texts, val_labels))
    out = predict(model, ["what's my balance?"])             # probs [B, C], expert gate weights [B, L, E]
    save_classifier(model, "runs/intent", metadata={...}); model, metadata = load_classifier("runs/intent")

The head scores classes by cosine similarity between the L2-normalised pooled embedding and one
learned direction per class (logits = scale * cos), which suits MiniLM's cosine-trained sentence space.
Shape legend: B batch, T tokens, N real tokens in the batch, D width, C classes, L MoE layers, E experts.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from core.moe import MoEStats, moe_train_step
from core.tasks import task_id
from data_connectors.text_files import read_labelled_texts

from .config import TextStreamConfig
from .model import TextOutput, TextStream
from .tokenizer import tokenize
from .upcycle import from_scratch, upcycle_minilm

KIND = "text_classifier"  # registry kind of the checkpoints written here


def default_stream() -> TextStreamConfig:
    """MiniLM's shape with MoE FFNs in the top two layers only: 4 copies each, top-2 (cheap on a CPU)."""
    return TextStreamConfig(moe_layers=(4, 5), num_experts=4, top_k=2)


@dataclass
class ClassifierConfig:
    labels: tuple[str, ...] = ()     # class names; a class id is its index
    stream: TextStreamConfig = field(default_factory=default_stream)
    task: str = "intent"             # core.tasks name whose gate rows route the MoE layers
    scale: float = 20.0              # cosine-head temperature: logits = scale * cos(pooled, class direction)
    max_length: int = 64             # tokens per sentence, [CLS] and [SEP] included

    def __post_init__(self) -> None:
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise ValueError(f"a classifier needs at least 2 distinct labels, got {list(self.labels)}")
        task_id(self.task)  # unknown task names fail here


class SentenceClassifier(nn.Module):
    """forward(input_ids [B, T], attention_mask [B, T]) -> (logits [B, C], the stream's TextOutput)."""

    def __init__(self, cfg: ClassifierConfig, stream: TextStream | None = None):
        super().__init__()
        self.cfg = cfg
        self.stream = stream if stream is not None else from_scratch(cfg.stream)
        self.head = nn.Linear(cfg.stream.dim, len(cfg.labels), bias=False)  # one direction per class

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, TextOutput]:
        out = self.stream(input_ids, attention_mask, task_id(self.cfg.task))
        cos_BC = F.normalize(out.pooled.float(), dim=-1) @ F.normalize(self.head.weight.float(), dim=-1).T
        return self.cfg.scale * cos_BC, out


def new_classifier(cfg: ClassifierConfig, upcycle: bool = True, seed: int = 0) -> SentenceClassifier:
    """A fresh classifier whose stream is upcycled from MiniLM (upcycle=True) or random (the control)."""
    torch.manual_seed(seed)  # router rows, head and from-scratch weights
    return SentenceClassifier(cfg, upcycle_minilm(cfg.stream) if upcycle else None)


def upcycled_base(cfg: ClassifierConfig) -> SentenceClassifier:
    """The classifier as training starts it (seed 0): what its delta checkpoints are stored against."""
    return new_classifier(cfg, upcycle=True, seed=0)


def synthetic_inputs(cfg: ClassifierConfig, B: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random forward arguments for the registry (calibration, timing)."""
    input_ids_BT = torch.randint(cfg.stream.vocab_size, (B, min(16, cfg.max_length)), generator=g)
    return input_ids_BT, torch.ones_like(input_ids_BT)


# ---- data ----

def read_labelled_csv(path: str | Path) -> tuple[list[str], list[str]]:
    """(texts, labels) of a labelled table, e.g. Banking77's `text,category` CSV; any layout
    data_connectors.text_files.read_labelled_texts reads, every error naming the file and line."""
    data = read_labelled_texts(path)
    return data.texts, data.labels


def split_holdout(texts: list[str], labels: list[str], fraction: float, seed: int
                  ) -> tuple[tuple[list[str], list[str]], tuple[list[str], list[str]]]:
    """Stratified split: about `fraction` of each label's rows (at least one, when it has two or more)
    held out, the rest kept for training. Returns ((train texts, labels), (held-out texts, labels))."""
    g = torch.Generator().manual_seed(seed)
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    held: list[int] = []
    for rows in by_label.values():
        n_held = min(len(rows) - 1, max(1, round(fraction * len(rows)))) if fraction > 0 else 0
        held += [rows[j] for j in torch.randperm(len(rows), generator=g)[:n_held].tolist()]
    held_set = set(held)
    kept = [i for i in range(len(texts)) if i not in held_set]
    held.sort()
    return ([texts[i] for i in kept], [labels[i] for i in kept]), ([texts[i] for i in held], [labels[i] for i in held])


# ---- training ----

@dataclass
class TrainConfig:
    epochs: int = 3                  # passes over the training rows
    max_steps: int | None = None     # optimizer steps at most (None = epochs decide)
    min_steps: int = 0               # optimizer steps at least: more epochs on a small set (max_steps still caps)
    batch_size: int = 32
    lr: float = 1e-4                 # AdamW peak lr of the stream: linear warmup, then linear decay to 0
    head_lr: float = 3e-3            # AdamW peak lr of the cosine head (unit-norm directions move slowly)
    weight_decay: float = 0.01
    warmup_fraction: float = 0.06    # of all steps
    train_top_layers: int | None = None  # train only the top N encoder layers and the head (None = all)
    bf16: bool = False               # bf16 autocast for forward and backward
    seed: int = 0                    # batch order and dropout

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or (self.max_steps is not None and self.max_steps < 1):
            raise ValueError("epochs, batch_size and max_steps must be >= 1")
        if self.min_steps < 0:
            raise ValueError(f"min_steps must be >= 0, got {self.min_steps}")


@dataclass
class TrainResult:
    steps: int                       # optimizer steps taken
    seconds: float                   # wall time of the training loop (validation included)
    train_loss: float                # mean loss of the last epoch (or partial epoch)
    val_accuracy: float | None       # of the kept (best) weights; None without a validation set
    history: list[dict] = field(default_factory=list)  # {"step", "train_loss", "val_accuracy"} per epoch


def _freeze_below(model: SentenceClassifier, top_layers: int | None) -> list[nn.Parameter]:
    """Leave trainable only the top `top_layers` encoder layers (all of the stream when None)."""
    model.stream.requires_grad_(top_layers is None)
    if top_layers is not None:
        for layer in model.stream.layers[len(model.stream.layers) - top_layers:]:
            layer.requires_grad_(True)
    return [p for p in model.stream.parameters() if p.requires_grad]


def train_classifier(model: SentenceClassifier, texts: list[str], labels: list[str], cfg: TrainConfig,
                     val: tuple[list[str], list[str]] | None = None) -> TrainResult:
    """AdamW on cross-entropy + the MoE auxiliary loss. With `val`, the model is scored after each
    epoch and the best epoch's weights are kept, the later of two that tie (early stopping by model selection:
    on a small held-out slice most epochs tie)."""
    label_ids = _label_ids(model, labels)
    batch = tokenize(texts, model.cfg.max_length)
    steps_per_epoch = math.ceil(len(texts) / cfg.batch_size)
    total_steps = min(max(cfg.epochs * steps_per_epoch, cfg.min_steps), cfg.max_steps or math.inf)
    warmup = max(1, round(cfg.warmup_fraction * total_steps))
    optimizer = torch.optim.AdamW(
        [{"params": _freeze_below(model, cfg.train_top_layers), "lr": cfg.lr},
         {"params": model.head.parameters(), "lr": cfg.head_lr}], weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total_steps - s) / max(1, total_steps - warmup))))
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # dropout

    start, step, history = time.perf_counter(), 0, []
    best_acc, best_state = -1.0, None
    while step < total_steps:
        model.train()
        losses = []
        for rows in torch.randperm(len(texts), generator=g).split(cfg.batch_size):
            input_ids_BT, mask_BT = _trim(batch.input_ids[rows], batch.attention_mask[rows])
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
                logits_BC, out = model(input_ids_BT, mask_BT)
            loss = F.cross_entropy(logits_BC.float(), label_ids[rows]) + out.aux_loss.float()
            losses.append(moe_train_step(model, loss, optimizer, schedule))
            step += 1
            if step == total_steps:
                break
        record = {"step": step, "train_loss": sum(losses) / len(losses), "val_accuracy": None}
        if val is not None:
            record["val_accuracy"] = accuracy(model, *val)
            if record["val_accuracy"] >= best_acc:   # a tie keeps the later, longer-trained epoch
                best_acc = record["val_accuracy"]
                best_state = {k: v.clone() for k, v in model.state_dict().items()}
        history.append(record)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainResult(steps=step, seconds=time.perf_counter() - start, train_loss=history[-1]["train_loss"],
                       val_accuracy=best_acc if val is not None else None, history=history)


def _label_ids(model: SentenceClassifier, labels: list[str]) -> torch.Tensor:
    index = {label: i for i, label in enumerate(model.cfg.labels)}
    unknown = sorted(set(labels) - index.keys())
    if unknown:
        raise ValueError(f"labels the classifier does not know: {unknown}")
    return torch.tensor([index[label] for label in labels])


def _trim(input_ids_BT: torch.Tensor, mask_BT: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the padding columns that no row of this batch needs (padding is on the right)."""
    T = int(mask_BT.sum(1).max())
    return input_ids_BT[:, :T], mask_BT[:, :T]


# ---- inference ----

@dataclass
class ClassifierOutput:
    probs: torch.Tensor              # [B, C] softmax over the classes
    expert_weight: torch.Tensor      # [B, L, E] mean gate weight of each expert over the tokens that
                                     # chose it, per MoE layer (0 = the expert never fired for that text)


@torch.no_grad()
def predict(model: SentenceClassifier, texts: list[str], batch_size: int = 128) -> ClassifierOutput:
    """Class probabilities and per-text routing, in eval mode."""
    model.eval()
    probs, weights = [], []
    for i in range(0, len(texts), batch_size):
        batch = tokenize(texts[i:i + batch_size], model.cfg.max_length)
        logits_BC, out = model(batch.input_ids, batch.attention_mask)
        probs.append(logits_BC.softmax(-1))
        weights.append(_expert_weights(out.stats, batch.attention_mask, model.cfg.stream.num_experts))
    return ClassifierOutput(probs=torch.cat(probs), expert_weight=torch.cat(weights))


def _expert_weights(stats: list[MoEStats], mask_BT: torch.Tensor, E: int) -> torch.Tensor:
    """[B, L, E] mean gate weight per text and expert, from each layer's per-token choices [N, K]."""
    B, device = mask_BT.shape[0], mask_BT.device
    seq_N = torch.arange(B, device=device).repeat_interleave(mask_BT.sum(1))  # real tokens come row by row
    per_layer = []
    for s in stats:
        where = (seq_N[:, None].expand_as(s.expert_idx), s.expert_idx)
        total_BE = torch.zeros(B, E, device=device).index_put_(where, s.gate_weight.float(), accumulate=True)
        count_BE = torch.zeros(B, E, device=device).index_put_(
            where, torch.ones_like(s.gate_weight, dtype=torch.float), accumulate=True)
        per_layer.append(total_BE / count_BE.clamp_min(1))
    return torch.stack(per_layer, dim=1) if per_layer else torch.zeros(B, 0, E, device=device)


def accuracy(model: SentenceClassifier, texts: list[str], labels: list[str]) -> float:
    """Fraction of `texts` whose most probable class is their label."""
    pred_B = predict(model, texts).probs.argmax(-1)
    return (pred_B == _label_ids(model, labels)).float().mean().item()


# ---- checkpoints ----

def save_classifier(model: SentenceClassifier, path: str | Path, metadata: dict | None = None,
                    delta: bool = False) -> Path:
    """The classifier as a core.checkpoint folder (config.json + model.safetensors); with `delta`,
    only its changes from the upcycled MiniLM it started from (a fraction of the size)."""
    return save_checkpoint(model, path, kind=KIND, config=model.cfg, metadata=metadata, delta=delta)


def load_classifier(path: str | Path) -> tuple[SentenceClassifier, dict]:
    """(classifier in eval mode, the metadata it was saved with)."""
    model, info = load_checkpoint(path)
    if info.kind != KIND:
        raise CheckpointError(f"{path}: a {info.kind!r} checkpoint, not a {KIND!r}")
    return model.eval(), info.metadata
