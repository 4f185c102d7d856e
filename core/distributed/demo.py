"""A tiny expert-parallel + data-parallel training run on synthetic data.

    python -m core.distributed.demo --steps 20                      # one process
    torchrun --nproc_per_node=2 -m core.distributed.demo --steps 20 --json

Two nodes of 8 GPUs (run the same command on each node; HOST is node 0's address):

    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 \\
        --rdzv_id=moe-demo -m core.distributed.demo --experts 16 --batch 64 --steps 200 --json

Each rank holds experts/world_size experts of every MoE layer and trains on its share of the
global batch. The model learns a fixed random token-to-token map. With the default dropless
routing and no balance loss (the aux-free bias balances the load, from global counts), the
loss curve is the same for any world size, up to float rounding.

Shape legend: B sequences per rank, T tokens per sequence, V vocabulary, D model width.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from core.moe import MoEConfig, MoELayer, update_expert_biases

from .expert_parallel import average_gradients, clip_grad_norm_, expert_parallelize
from .runtime import Runtime, distributed


class TinyMoEModel(nn.Module):
    """Embedding -> `num_layers` x (x + MoE(RMSNorm(x))) -> RMSNorm -> vocabulary head."""

    def __init__(self, vocab_size: int, cfg: MoEConfig, num_layers: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, cfg.dim)
        self.norms = nn.ModuleList(nn.RMSNorm(cfg.dim) for _ in range(num_layers))
        self.moes = nn.ModuleList(MoELayer(cfg) for _ in range(num_layers))
        self.out_norm = nn.RMSNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, vocab_size, bias=False)

    def forward(self, tokens_BT: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [B, T, V] and the summed MoE aux loss."""
        x_BTD = self.embed(tokens_BT)
        aux_loss = x_BTD.new_zeros(())
        for norm, moe in zip(self.norms, self.moes):
            y_BTD, stats = moe(norm(x_BTD))
            x_BTD = x_BTD + y_BTD
            aux_loss = aux_loss + stats.aux_loss
        return self.head(self.out_norm(x_BTD)), aux_loss


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=8, help="global batch (sequences), split over ranks")
    p.add_argument("--seq-len", type=int, default=16)
    p.add_argument("--vocab", type=int, default=64)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--hidden-dim", type=int, default=64)
    p.add_argument("--experts", type=int, default=8,
                   help="routed experts per layer, a multiple of the world size")
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--shared-experts", type=int, default=1)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--capacity-factor", type=float, default=0.0, help="0 = dropless")
    p.add_argument("--bias-update-rate", type=float, default=1e-3)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--clip", type=float, default=1.0, help="max global gradient norm")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the final loss as JSON on the last line")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds a collective waits for the other ranks before failing (a rank that "
                        "fails exits at once; under torchrun the others are then stopped)")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error("--steps must be at least 1")
    if args.timeout <= 0:
        p.error("--timeout must be positive")
    return args


def train(args: argparse.Namespace, rt: Runtime) -> float:
    """Train on synthetic data; returns the last step's loss, averaged over ranks."""
    if args.batch % rt.world_size:
        raise ValueError(f"--batch ({args.batch}) must divide over {rt.world_size} ranks")
    cfg = MoEConfig(dim=args.dim, hidden_dim=args.hidden_dim, num_experts=args.experts,
                    top_k=args.top_k, num_shared_experts=args.shared_experts,
                    capacity_factor=args.capacity_factor, balance_loss="none",
                    bias_update_rate=args.bias_update_rate)
    # Every rank builds the same full model and keeps its slice of the experts.
    torch.manual_seed(args.seed)
    model = expert_parallelize(TinyMoEModel(args.vocab, cfg, args.layers)).to(rt.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)

    # Every rank draws the same global batch and trains on its rows of it.
    data_gen = torch.Generator().manual_seed(args.seed)
    token_map_V = torch.randperm(args.vocab, generator=data_gen)
    B = args.batch // rt.world_size
    rows = slice(rt.rank * B, (rt.rank + 1) * B)
    if rt.is_main:
        print(f"world size {rt.world_size} ({rt.backend}), {cfg.num_experts // rt.world_size} "
              f"of {cfg.num_experts} experts per rank and layer", flush=True)

    for step in range(1, args.steps + 1):
        tokens_BT = torch.randint(args.vocab, (args.batch, args.seq_len), generator=data_gen)[rows]
        targets_BT = token_map_V[tokens_BT]
        logits_BTV, aux_loss = model(tokens_BT.to(rt.device))
        loss = F.cross_entropy(logits_BTV.flatten(0, 1), targets_BT.to(rt.device).flatten())
        (loss + aux_loss).backward()
        average_gradients(model)
        clip_grad_norm_(model, args.clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        update_expert_biases(model)

        loss_sum = loss.detach().clone()
        dist.all_reduce(loss_sum)
        mean_loss = loss_sum.item() / rt.world_size
        if rt.is_main:
            print(f"step {step:4d}  loss {mean_loss:.4f}", flush=True)
    return mean_loss


def main(argv: list[str] | None = None) -> float:
    """Parse `argv`, join the job (or form a world of one), train; returns the final loss."""
    args = parse_args(argv)
    with distributed(timedelta(seconds=args.timeout)) as rt:
        final_loss = train(args, rt)
        if args.json and rt.is_main:
            print(json.dumps({"final_loss": final_loss, "steps": args.steps, "world_size": rt.world_size}))
    return final_loss


if __name__ == "__main__":
    main()
    # The group is gone and the result printed. Skip the interpreter's teardown: now and then a gloo
    # worker thread still being destroyed there aborts the process (std::terminate, SIGABRT), and
    # torchrun then reports a finished run as failed (seen in about 1 of 4 two-rank runs here).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
