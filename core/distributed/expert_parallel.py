"""Expert parallelism: each rank holds a slice of every MoE layer's routed experts.

Rank r of an R-rank group holds experts [r*L, (r+1)*L), L = E/R. Routing, the capacity cut and
the gate-weighted combine run unchanged on each rank's own tokens (`MoELayer.forward`); only the
expert call is replaced: assignment rows travel to the rank owning their expert by all_to_all,
run through that rank's experts (`GroupedExperts.forward`), and travel back.

The router and shared experts are replicated (their gradients are averaged over ranks, as DDP
does); the routed experts are sharded (each rank's gradients are its own, but cover the tokens
of every rank). The aux-free expert bias is updated from the load summed over all ranks, so all
ranks keep the same bias and route alike.

Matches a single-process `MoELayer` on the concatenated batch only when dropless
(capacity_factor=0): the capacity is computed from each rank's local tokens, and the balance
loss (`stats.aux_loss`) and `MoEStats` describe each rank's local tokens.

Shape legend: R ranks in the group, E experts, L = E/R experts per rank, D model width,
A assignment rows this rank sends (sorted by expert, hence by owning rank), M rows this rank
receives for its experts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from core.moe import GroupedExperts, MoEConfig, MoELayer


def _exchange(x: torch.Tensor, recv_splits_R: list[int], send_splits_R: list[int],
              group: dist.ProcessGroup | None) -> torch.Tensor:
    out = x.new_empty((sum(recv_splits_R), *x.shape[1:]))
    dist.all_to_all_single(out, x.contiguous(), recv_splits_R, send_splits_R, group=group)
    return out


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, recv_splits_R: list[int], send_splits_R: list[int],
                group: dist.ProcessGroup | None) -> torch.Tensor:
        ctx.recv_splits_R, ctx.send_splits_R, ctx.group = recv_splits_R, send_splits_R, group
        return _exchange(x, recv_splits_R, send_splits_R, group)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        # Gradients retrace the rows' path: what came from rank r goes back to rank r.
        return _exchange(grad_out, ctx.send_splits_R, ctx.recv_splits_R, ctx.group), None, None, None


def all_to_all(x: torch.Tensor, recv_splits_R: list[int], send_splits_R: list[int],
               group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Differentiable `all_to_all_single` over dim 0 with uneven splits (gloo and NCCL).

    Sends rows x[sum(send_splits_R[:r]) : sum(send_splits_R[:r+1])] to rank r and returns the
    rows received, grouped by source rank, recv_splits_R[r] of them from rank r.
    """
    return _AllToAll.apply(x, recv_splits_R, send_splits_R, group)


class ShardedExperts(GroupedExperts):
    """This rank's L = E/R routed experts, fed with every rank's tokens by all_to_all.

    Every parameter is per expert (leading dim L): experts `expert_slice` of the full layer.
    `forward(x_AD, counts)` keeps the contract of `GroupedExperts.forward` over all E experts
    (this rank's assignment rows sorted by expert, `counts` rows per expert, outputs in the same
    order), so `MoELayer.forward` drives it unchanged. Every rank of `group` must call it.
    """

    def __init__(self, cfg: MoEConfig, group: dist.ProcessGroup | None = None):
        R = dist.get_world_size(group)
        if cfg.num_experts % R:
            raise ValueError(f"num_experts ({cfg.num_experts}) must divide over {R} ranks")
        super().__init__(cfg.num_experts // R, cfg.dim, cfg.hidden_dim, cfg.activation, cfg.expert_bias)
        self.group = group
        self.world_size = R
        self.first_expert = dist.get_rank(group) * self.num_experts

    @property
    def expert_slice(self) -> slice:
        """This rank's experts, as a slice of the E experts."""
        return slice(self.first_expert, self.first_expert + self.num_experts)

    def forward(self, x_AD: torch.Tensor, counts: list[int]) -> torch.Tensor:
        R, L = self.world_size, self.num_experts
        if len(counts) != R * L:
            raise ValueError(f"expected counts for {R * L} experts, got {len(counts)}")
        send_splits_R = [sum(counts[r * L:(r + 1) * L]) for r in range(R)]
        recv_counts_RL = torch.empty(R, L, dtype=torch.long, device=x_AD.device)
        dist.all_to_all_single(recv_counts_RL, torch.tensor(counts, device=x_AD.device).view(R, L),
                               group=self.group)
        recv_counts = recv_counts_RL.tolist()  # the one host sync: split sizes live on the host
        recv_splits_R = [sum(row) for row in recv_counts]
        M = sum(recv_splits_R)

        x_MD = all_to_all(x_AD, recv_splits_R, send_splits_R, self.group)
        # Received rows are grouped by source rank, then expert; the experts want them by expert.
        expert_M = torch.arange(L, device=x_AD.device).repeat(R).repeat_interleave(
            recv_counts_RL.flatten(), output_size=M)
        order_M = torch.argsort(expert_M, stable=True)
        # Even with no rows, the grouped kernel keeps this rank on the autograd graph, so it joins
        # the backward all_to_alls that the other ranks wait in.
        y_MD = super().forward(x_MD[order_M], [sum(col) for col in zip(*recv_counts)])
        y_MD = y_MD[torch.argsort(order_M)]  # the inverse permutation: back to source-rank order
        return all_to_all(y_MD, send_splits_R, recv_splits_R, self.group)

    def gather(self, shard_L: torch.Tensor) -> torch.Tensor:
        """Every rank's shard of a per-expert tensor, stacked: [L, ...] -> [E, ...] (all ranks must call)."""
        shards = [torch.empty_like(shard_L) for _ in range(self.world_size)]
        dist.all_gather(shards, shard_L.detach().contiguous(), group=self.group)
        return torch.cat(shards)


class ExpertParallelMoE(MoELayer):
    """`MoELayer` with its routed experts sharded over `group`; router and shared experts replicated.

    A fresh one draws its replicated weights and its expert shard from each rank's RNG: seed
    the ranks differently, then call `broadcast_replicated_state`. Or build every rank's from
    the same full layer with `from_layer` / `expert_parallelize`.
    """

    def __init__(self, cfg: MoEConfig, group: dist.ProcessGroup | None = None):
        super().__init__(cfg, experts=ShardedExperts(cfg, group))

    @classmethod
    def from_layer(cls, layer: MoELayer, group: dist.ProcessGroup | None = None) -> ExpertParallelMoE:
        """This rank's part of a full single-process layer (same replicated weights, its experts' slice)."""
        ep = cls(layer.cfg, group).to(layer.router.weight_ED.device)
        load_full_state_dict(ep, layer.state_dict())
        return ep

    def update_bias(self) -> None:
        """Aux-free balancing step on the load summed over all ranks (all ranks must call)."""
        if self.cfg.bias_update_rate > 0:
            dist.all_reduce(self.router.pending_load_E, group=self.experts.group)
        super().update_bias()


def expert_parallelize(model: nn.Module, group: dist.ProcessGroup | None = None) -> nn.Module:
    """Replace, in place, every `MoELayer` inside `model` by its `ExpertParallelMoE.from_layer`.

    Returns `model`, or the new layer when `model` is itself a `MoELayer`.
    """
    if isinstance(model, MoELayer) and not isinstance(model, ExpertParallelMoE):
        return ExpertParallelMoE.from_layer(model, group)
    for name, child in model.named_children():
        setattr(model, name, expert_parallelize(child, group))
    return model


def _sharded_experts(model: nn.Module) -> list[tuple[str, ShardedExperts]]:
    """(state-dict key prefix, module) of every expert shard in `model`."""
    return [(f"{name}." if name else "", m) for name, m in model.named_modules()
            if isinstance(m, ShardedExperts)]


def _split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(replicated, sharded) trainable parameters of `model`."""
    sharded = [p for _, m in _sharded_experts(model) for p in m.parameters()]
    sharded_ids = {id(p) for p in sharded}
    replicated = [p for p in model.parameters() if id(p) not in sharded_ids]
    return [p for p in replicated if p.requires_grad], [p for p in sharded if p.requires_grad]


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """`model.state_dict()` with the expert shards gathered: the state of the same model built with
    plain `MoELayer`s, loadable in one process (all ranks must call)."""
    state = model.state_dict()
    for prefix, shard in _sharded_experts(model):
        for name, w in shard.named_parameters():
            state[prefix + name] = shard.gather(w)
    return state


def save_full_checkpoint(model: nn.Module, path: str | Path, *, kind: str, config: Any,
                         metadata: dict | None = None, group: dist.ProcessGroup | None = None) -> Path:
    """`core.checkpoint.save_checkpoint` for an expert-parallel model (all ranks must call): every
    rank gathers the expert shards, the group's first rank alone writes the folder (ranks writing
    one path at once would race on its renames), and every rank returns once it is written, so any
    may read it. A failed write raises on every rank, not only on the writer."""
    from core.checkpoint import save_checkpoint

    state = full_state_dict(model)
    failed = torch.zeros((), dtype=torch.int32, device=next(iter(state.values())).device)
    error: BaseException | None = None
    if dist.get_rank(group) == 0:
        try:
            save_checkpoint(model, path, kind=kind, config=config, metadata=metadata, state_dict=state)
        except Exception as exc:  # told to every rank below, then re-raised here
            error = exc
            failed.fill_(1)
    dist.broadcast(failed, group=group, group_src=0)
    if error is not None:
        raise error
    if failed.item():
        raise RuntimeError(f"the first rank failed to write the checkpoint {path}")
    return Path(path)


def load_full_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a full (single-process) state: replicated tensors whole, each expert shard its slice."""
    local = dict(state)
    for prefix, shard in _sharded_experts(model):
        for name, _ in shard.named_parameters():
            local[prefix + name] = state[prefix + name][shard.expert_slice]
    model.load_state_dict(local)


@torch.no_grad()
def broadcast_replicated_state(model: nn.Module, group: dist.ProcessGroup | None = None) -> None:
    """Copy the group's first rank's replicated parameters and persistent buffers to every rank."""
    sharded = {prefix + name for prefix, shard in _sharded_experts(model)
               for name, _ in shard.named_parameters()}
    for name, t in model.state_dict().items():  # state-dict tensors share the model's storage
        if name not in sharded:
            dist.broadcast(t, group=group, group_src=0)


@torch.no_grad()
def average_gradients(model: nn.Module, group: dist.ProcessGroup | None = None) -> None:
    """Turn each rank's gradients of its local loss into those of the mean loss over the ranks.

    Replicated parameters: all-reduce mean, as DDP does. Expert shards: divide by R only; the
    all_to_all backward already brought every rank's contribution to the owning rank.
    Call after `backward()`, before the optimizer step (all ranks must call).
    """
    R = dist.get_world_size(group)
    replicated, sharded = _split_parameters(model)
    for p in sharded:
        if p.grad is not None:
            p.grad.div_(R)
    # A parameter unused on this rank (grad None) still takes part, as zeros: the flat buffer
    # must have the same layout on every rank.
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                      for p in replicated])
    dist.all_reduce(flat, group=group)  # gloo has no ReduceOp.AVG
    flat.div_(R)
    for p, g in zip(replicated, flat.split([p.numel() for p in replicated])):
        p.grad = g.view_as(p).to(p.dtype)


@torch.no_grad()
def clip_grad_norm_(model: nn.Module, max_norm: float,
                    group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Clip all gradients by the norm of the full model's gradient; returns that norm.

    Replicated gradients (the same on every rank after `average_gradients`) count once, expert
    shards are summed over ranks, so every rank scales by the same factor (all ranks must call).
    """
    replicated, sharded = _split_parameters(model)
    device = replicated[0].device

    def sum_of_squares(params: list[nn.Parameter]) -> torch.Tensor:
        return sum((p.grad.float().square().sum() for p in params if p.grad is not None),
                   torch.zeros((), device=device))

    sharded_sq = sum_of_squares(sharded)
    dist.all_reduce(sharded_sq, group=group)
    norm = (sum_of_squares(replicated) + sharded_sq).sqrt()
    torch.nn.utils.clip_grads_with_norm_(replicated + sharded, max_norm, norm)
    return norm
