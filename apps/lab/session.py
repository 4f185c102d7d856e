"""The MoE Lab's logic: train one MoE layer on a synthetic token stream and record its routing.

    from apps.lab.session import LabConfig, LabSession
    session = LabSession(LabConfig.from_flat({"num_experts": 8, "skew": 4.0}))
    history = session.train(100)
    history.summary()["balance"], session.route_text("refund my order")

Shape legend: B sequences, T tokens per sequence, D model width, C clusters, E experts.
"""
from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from core.moe import MoEConfig, MoELayer, MoEStats, update_expert_biases


@dataclass
class LabConfig:
    moe: MoEConfig = field(default_factory=lambda: MoEConfig(dim=32, hidden_dim=64))  # the layer studied
    num_clusters: int = 16   # clusters in the synthetic token mixture, each with its own target map
    skew: float = 2.0        # an offset shared by every token, in units of a cluster centre's length:
                             # large values make an untrained router send most tokens to the same experts
    batch_size: int = 8      # sequences per step
    seq_len: int = 32        # tokens per sequence
    steps: int = 200         # default steps for `train()`
    lr: float = 3e-3         # Adam learning rate
    seed: int = 0            # seeds the layer, the token stream and the word vectors

    def __post_init__(self) -> None:
        for name in ("num_clusters", "batch_size", "seq_len", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("skew", "lr"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @classmethod
    def from_flat(cls, values: dict) -> LabConfig:
        """Build from one flat dict of `MoEConfig` and `LabConfig` fields, as the page and CLI collect
        them; fields left out keep the Lab's defaults. Raises ValueError on a bad combination."""
        moe_names = {f.name for f in fields(MoEConfig)}
        lab_names = {f.name for f in fields(cls)} - {"moe"}
        unknown = set(values) - moe_names - lab_names
        if unknown:
            raise ValueError(f"unknown Lab settings: {', '.join(sorted(unknown))}")
        moe = {**asdict(cls().moe), **{k: v for k, v in values.items() if k in moe_names}}
        return cls(moe=MoEConfig(**moe), **{k: v for k, v in values.items() if k in lab_names})


class TokenStream:
    """Synthetic tokens from a mixture of clusters, with a regression target per cluster.

    x = skew * u + centre_c + noise, u a fixed direction as long as a typical centre;
    target y = M_m x with map m = (c + task) mod C, so with tasks the same token needs
    different experts per task. Words are tokens too: a word's hash picks its cluster and noise.
    """

    def __init__(self, dim: int, num_clusters: int, skew: float, num_tasks: int, seed: int):
        self.dim, self.num_clusters, self.num_tasks, self.seed = dim, num_clusters, num_tasks, seed
        self.gen = torch.Generator().manual_seed(seed)
        self.centre_CD = torch.randn(num_clusters, dim, generator=self.gen)
        self.map_CDD = torch.randn(num_clusters, dim, dim, generator=self.gen) / math.sqrt(dim)
        direction = F.normalize(torch.randn(dim, generator=self.gen), dim=0)
        self.offset_D = skew * math.sqrt(dim) * direction

    def _tokens(self, cluster: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        noise = 0.3 * torch.randn(*cluster.shape, self.dim, generator=gen)
        return self.offset_D + self.centre_CD[cluster] + noise

    def sample(self, batch: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(x [B, T, D], target y [B, T, D], task ids [B] or None when there are no tasks)."""
        cluster_BT = torch.randint(self.num_clusters, (batch, seq_len), generator=self.gen)
        x_BTD = self._tokens(cluster_BT, self.gen)
        task_B = torch.randint(self.num_tasks, (batch,), generator=self.gen) if self.num_tasks else None
        map_BT = cluster_BT if task_B is None else (cluster_BT + task_B[:, None]) % self.num_clusters
        y_BTD = torch.empty_like(x_BTD)
        for m in map_BT.unique().tolist():  # one map at a time: gathering a [D, D] map per token is big
            rows = map_BT == m
            y_BTD[rows] = x_BTD[rows] @ self.map_CDD[m].T
        return x_BTD, y_BTD, task_B

    def embed_word(self, word: str) -> tuple[int, torch.Tensor]:
        """(cluster, vector [D]) of a word, the same in every process for a given seed."""
        digest = hashlib.blake2b(f"{self.seed}:{word.lower()}".encode(), digest_size=8).digest()
        h = int.from_bytes(digest, "little") >> 1  # a non-negative int64 seed
        cluster = h % self.num_clusters
        return cluster, self._tokens(torch.tensor(cluster), torch.Generator().manual_seed(h))


@dataclass
class History:
    """One entry per training step."""
    loss: list[float] = field(default_factory=list)              # task loss, MSE / mean target^2
    aux_loss: list[float] = field(default_factory=list)
    balance: list[float] = field(default_factory=list)           # 1.0 = uniform load
    dropped_fraction: list[float] = field(default_factory=list)
    max_violation: list[float] = field(default_factory=list)
    router_entropy: list[float] = field(default_factory=list)
    expert_load: list[list[int]] = field(default_factory=list)   # assignments per expert

    def __len__(self) -> int:
        return len(self.loss)

    def append(self, loss: float, stats: MoEStats) -> None:
        self.loss.append(loss)
        self.aux_loss.append(stats.aux_loss.item())
        self.balance.append(stats.balance)
        self.dropped_fraction.append(stats.dropped_fraction)
        self.max_violation.append(stats.max_violation)
        self.router_entropy.append(stats.router_entropy)
        self.expert_load.append(stats.expert_load.tolist())

    def summary(self, window: int = 10) -> dict[str, float]:
        """Means of the scalar metrics over the last `window` steps (single batches are noisy)."""
        out: dict[str, float] = {"steps": len(self)}
        for name in ("loss", "aux_loss", "balance", "dropped_fraction", "max_violation", "router_entropy"):
            out[name] = float(np.mean(getattr(self, name)[-window:])) if len(self) else float("nan")
        return out


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch single-threaded inside the block. The Lab's tensors are tiny, so intra-op
    threads only add overhead, and on a busy machine spinning OpenMP threads made steps ~100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class LabSession:
    """One MoE layer, its optimiser and token stream; `step()` trains on one batch."""

    def __init__(self, cfg: LabConfig):
        self.cfg = cfg
        with torch.random.fork_rng(devices=[]):  # seed the layer without touching the global RNG
            torch.manual_seed(cfg.seed)
            self.layer = MoELayer(cfg.moe)
        self.optimizer = torch.optim.Adam(self.layer.parameters(), lr=cfg.lr)
        self.stream = TokenStream(cfg.moe.dim, cfg.num_clusters, cfg.skew, cfg.moe.num_tasks, cfg.seed)
        self.history = History()

    def step(self) -> None:
        """One optimiser step on a fresh batch, then one aux-free bias update; appends to history."""
        self.layer.train()
        with _one_thread():
            x, y, task = self.stream.sample(self.cfg.batch_size, self.cfg.seq_len)
            out, stats = self.layer(x, task_id=task)
            loss = F.mse_loss(out, y) / y.square().mean()
            self.optimizer.zero_grad(set_to_none=True)
            (loss + stats.aux_loss).backward()
            self.optimizer.step()
            update_expert_biases(self.layer)
        self.history.append(loss.item(), stats)

    def train(self, steps: int | None = None) -> History:
        """Train `steps` more steps (default `cfg.steps`) and return the whole history."""
        for _ in range(self.cfg.steps if steps is None else steps):
            self.step()
        return self.history

    @torch.no_grad()
    def route_text(self, text: str, task: int | None = None) -> list[dict]:
        """Where the layer sends each word of `text`: rows of word, cluster, experts, gate weights."""
        if task is not None and not 0 <= task < self.cfg.moe.num_tasks:
            raise ValueError(f"task must be in [0, {self.cfg.moe.num_tasks}), got {task}")
        words = re.findall(r"\w+(?:'\w+)?", text)
        if not words:
            return []
        clusters, vectors = zip(*(self.stream.embed_word(w) for w in words))
        task_N = None if task is None else torch.full((len(words),), task)
        self.layer.eval()  # no aux-free load counting for these lookups
        route = self.layer.router(torch.stack(vectors), task_N)
        return [
            {"word": w, "cluster": c, "experts": e.tolist(), "weights": [round(v, 3) for v in g.tolist()]}
            for w, c, e, g in zip(words, clusters, route.expert_idx_NK, route.weight_NK)
        ]


def load_heatmap(history: History, num_experts: int) -> Figure:
    """Each expert's share of the assignments at every step (uniform = 1/E)."""
    fig = Figure(figsize=(8, 3.2), layout="constrained")
    ax = fig.add_subplot()
    load_SE = np.asarray(history.expert_load, dtype=float).reshape(-1, num_experts)
    share_ES = (load_SE / np.maximum(load_SE.sum(axis=1, keepdims=True), 1)).T
    image = ax.imshow(share_ES, aspect="auto", interpolation="nearest", cmap="viridis", vmin=0,
                      extent=(0.5, len(history) + 0.5, num_experts - 0.5, -0.5))
    fig.colorbar(image, ax=ax, label="share of assignments")
    ax.set(xlabel="step", ylabel="expert", title=f"Expert load per step (uniform = 1/{num_experts})")
    if num_experts <= 16:
        ax.set_yticks(range(num_experts))
    return fig


def metrics_figure(history: History) -> Figure:
    """Line plots of task loss, balance, dropped fraction and max violation over the steps."""
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    axes = fig.subplots(2, 2, sharex=True)
    steps = np.arange(1, len(history) + 1)
    panels = (
        ("loss", "task loss (MSE / mean target²)"),
        ("balance", "balance (1 = uniform load)"),
        ("dropped_fraction", "dropped fraction"),
        ("max_violation", "max load / mean load - 1"),
    )
    for ax, (name, title) in zip(axes.flat, panels):
        ax.plot(steps, getattr(history, name), linewidth=1)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0, 0].set_yscale("log")
    axes[0, 1].set_ylim(0, 1.02)
    for ax in axes[1]:
        ax.set_xlabel("step")
    return fig
