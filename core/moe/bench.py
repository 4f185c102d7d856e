"""`moe-suite bench moe`: MoELayer against a dense block and transformers' Mixtral MoE block.

All candidates run in one process, interleaved round by round, so that machine noise hits
them alike; medians and ratios to the dense block are reported.
"""
from __future__ import annotations

import platform
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn as nn

from .config import MoEConfig
from .layer import DenseFFN, MoELayer, update_expert_biases


@dataclass
class BenchConfig:
    tokens: int = 8192
    dim: int = 512
    hidden_dim: int = 1024
    num_experts: int = 64
    top_k: int = 2
    rounds: int = 7          # timed rounds per candidate (median reported)
    warmup: int = 2
    bf16: bool = False       # run under bf16 autocast
    seed: int = 0


class _MixtralAdapter(nn.Module):
    """transformers' MixtralSparseMoeBlock with the same sizes, returning (y, None)."""

    def __init__(self, bc: BenchConfig, implementation: str):
        super().__init__()
        from transformers import MixtralConfig
        from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock
        config = MixtralConfig(hidden_size=bc.dim, intermediate_size=bc.hidden_dim,
                               num_local_experts=bc.num_experts, num_experts_per_tok=bc.top_k)
        config._experts_implementation = implementation
        self.block = MixtralSparseMoeBlock(config)
        for p in self.block.parameters():
            nn.init.normal_(p, std=0.02)

    def forward(self, x, task_id=None):
        out = self.block(x)
        return (out[0] if isinstance(out, tuple) else out), None


def _candidates(bc: BenchConfig) -> dict[str, nn.Module]:
    base = dict(dim=bc.dim, hidden_dim=bc.hidden_dim, num_experts=bc.num_experts, top_k=bc.top_k)
    cands: dict[str, nn.Module] = {
        "dense": DenseFFN(MoEConfig(**base)),
        "moe_dropless": MoELayer(MoEConfig(**base, capacity_factor=0)),
        "moe_capacity_1.25": MoELayer(MoEConfig(**base, capacity_factor=1.25)),
    }
    try:
        import transformers  # noqa: F401
    except ImportError:
        return cands
    for impl in ("eager", "grouped_mm"):
        try:
            cands[f"transformers_mixtral_{impl}"] = _MixtralAdapter(bc, impl)
        except Exception as exc:  # an implementation missing from this transformers version
            print(f"skipping transformers {impl}: {exc}")
    return cands


def _step(module: nn.Module, x: torch.Tensor, bf16: bool) -> None:
    module.zero_grad(set_to_none=True)
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=bf16):
        y, stats = module(x)
        loss = y.float().square().mean()
        if stats is not None:
            loss = loss + stats.aux_loss
    loss.backward()


def train_skewed_stream(balance_loss: str = "none", balance_coef: float = 0.1,
                        bias_update_rate: float = 0.0, steps: int = 150, seed: int = 0) -> float:
    """Balance of a small MoE after `steps` of regression on a skewed token stream.

    Every token shares one large feature, so an unbalanced router collapses onto a few experts.
    Returns the final balance (normalised entropy of the expert load, 1.0 = uniform).
    """
    torch.manual_seed(seed)
    D = 16
    cfg = MoEConfig(dim=D, hidden_dim=24, num_experts=8, top_k=2, capacity_factor=0,
                    balance_loss=balance_loss, balance_coef=balance_coef, bias_update_rate=bias_update_rate)
    layer = MoELayer(cfg)
    target = nn.Linear(D, D)
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    skew_D = torch.zeros(D)
    skew_D[0] = 4.0
    for _ in range(steps):
        x = torch.randn(8, 16, D) + skew_D
        y, stats = layer(x)
        loss = (y - target(x).detach()).square().mean() + stats.aux_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        update_expert_biases(layer)
    with torch.no_grad():
        return layer(torch.randn(16, 16, D) + skew_D)[1].balance


def balance_comparison(steps: int = 150) -> dict[str, float]:
    """Final balance of the same skewed training run without and with each balancing method."""
    return {
        "none": train_skewed_stream("none", steps=steps),
        "kl": train_skewed_stream("kl", steps=steps),
        "switch": train_skewed_stream("switch", steps=steps),
        "sequence": train_skewed_stream("sequence", steps=steps),
        "aux_free_bias": train_skewed_stream("none", bias_update_rate=0.01, steps=steps),
    }


def run(bc: BenchConfig) -> dict:
    torch.manual_seed(bc.seed)
    x = torch.randn(1, bc.tokens, bc.dim)
    cands = _candidates(bc)
    times: dict[str, list[float]] = {name: [] for name in cands}
    failed: dict[str, str] = {}
    for name, module in list(cands.items()):
        try:
            for _ in range(bc.warmup):
                _step(module, x, bc.bf16)
        except Exception as exc:  # e.g. out of memory in one implementation
            failed[name] = f"{type(exc).__name__}: {exc}"[:200]
            del cands[name], times[name]
    for _ in range(bc.rounds):
        for name, module in cands.items():
            t0 = time.perf_counter()
            _step(module, x, bc.bf16)
            times[name].append(time.perf_counter() - t0)
    median = {name: statistics.median(ts) for name, ts in times.items()}
    dense = median["dense"]
    moe = cands["moe_dropless"]
    total_params = sum(p.numel() for p in moe.parameters())
    active_params = total_params - sum(p.numel() for p in moe.experts.parameters()) * (
        1 - bc.top_k / bc.num_experts)
    return {
        "benchmark": "moe_forward_backward",
        "tokens": bc.tokens, "dim": bc.dim, "hidden_dim": bc.hidden_dim,
        "num_experts": bc.num_experts, "top_k": bc.top_k, "bf16": bc.bf16, "rounds": bc.rounds,
        "median_ms": {k: round(v * 1000, 1) for k, v in median.items()},
        "ratio_to_dense": {k: round(v / dense, 3) for k, v in median.items()},
        "failed": failed,
        "moe_total_params": total_params,
        "moe_active_params_per_token": int(active_params),
        "moe_active_param_fraction": round(active_params / total_params, 4),
        "balance_after_training": {k: round(v, 4) for k, v in balance_comparison().items()},
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"),
    }
