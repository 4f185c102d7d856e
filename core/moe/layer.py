"""The Mixture-of-Experts feed-forward layer: route, dispatch, run experts, combine.

Shape legend: B batch, T tokens per sequence, N = B*T tokens, D model width, E experts,
K experts per token, A kept token-expert assignments (sorted by expert).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch
import torch.nn as nn

from core.tasks import task_ids

from . import losses
from .config import MoEConfig
from .experts import FeedForward, GroupedExperts
from .router import DynamicRouter


@dataclass
class MoEStats:
    aux_loss: torch.Tensor          # differentiable scalar: balance_coef * balance + z_loss_coef * z
    expert_load: torch.Tensor       # [E] assignments the gate sent to each expert (before capacity)
    dropped_fraction: float         # assignments over capacity / all assignments
    balance: float                  # normalised entropy of expert_load, 1.0 = uniform
    max_violation: float            # max load / mean load - 1
    router_entropy: float           # mean per-token entropy of the routing distribution (nats)
    expert_idx: torch.Tensor | None = None   # [N, K] experts each token chose (for display)
    gate_weight: torch.Tensor | None = None  # [N, K] their gate weights (detached)


def _task_per_token(task_id, B: int, T: int, device, num_tasks: int) -> torch.Tensor | None:
    """Task ids as an int, a LongTensor [B] (per sequence) or [B, T] (per token), as [N] ids; with
    task-aware gates (num_tasks > 0) each must lie in [0, num_tasks) (core.tasks.task_ids checks it)."""
    if task_id is None:
        return None
    task = torch.as_tensor(task_id, device=device)
    if num_tasks > 0:
        task_ids(task, num_tasks)   # integer ids in [0, num_tasks), or a ValueError
    task = task.to(torch.long)
    if task.numel() == 1:
        return task.reshape(1).expand(B * T)
    if task.shape == (B,):
        return task.repeat_interleave(T)
    if task.shape == (B, T):
        return task.reshape(-1)
    raise ValueError(f"task_id must be an int, [batch] or [batch, seq] = [{B}, {T}]; got shape {tuple(task.shape)}")


class MoELayer(nn.Module):
    """Routed experts (plus optional shared experts) replacing a transformer's feed-forward block.

    forward(x [B, T, D], task_id=None, sequence_N=None) -> (y [B, T, D], MoEStats).

    `experts` replaces the routed experts (expert parallelism passes its sharded ones): any module
    called as experts(x_AD, counts_E) on assignment rows sorted by expert, with counts_E rows for
    each of the E experts, returning one output row per input row in the same order.
    """

    def __init__(self, cfg: MoEConfig, experts: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        self.router = DynamicRouter(cfg)
        if experts is None:
            experts = GroupedExperts(cfg.num_experts, cfg.dim, cfg.hidden_dim, cfg.activation, cfg.expert_bias)
        self.experts = experts
        self.shared = None
        if cfg.num_shared_experts:
            self.shared = FeedForward(cfg.dim, cfg.num_shared_experts * cfg.hidden_dim,
                                      cfg.activation, cfg.expert_bias)

    @property
    def drops(self) -> bool:
        """Whether this forward applies the capacity: in training (unless dropless), and in eval mode only
        with drop_at_inference, so that by default a token's inference output never depends on its batch."""
        return not self.cfg.dropless and (self.training or self.cfg.drop_at_inference)

    def capacity(self, num_tokens: int) -> int:
        """Most assignments one expert takes: ceil(capacity_factor * N * K / E); N*K when dropless."""
        cfg = self.cfg
        if cfg.dropless:
            return num_tokens * cfg.top_k
        # Exact arithmetic on the factor as written: in floats, ceil(1.1 * 25 * 2 / 11) is 6, not 5.
        cf = Fraction(str(float(cfg.capacity_factor)))  # str: the shortest decimal, i.e. 1.1
        return math.ceil(cf * num_tokens * cfg.top_k / cfg.num_experts)

    def forward(self, x: torch.Tensor, task_id=None, sequence_N: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, MoEStats]:
        """sequence_N: the sequence of each of the B*T tokens, for the "sequence" balance loss (default:
        its row b; ffn_on_real_tokens passes the padded batch's rows)."""
        cfg = self.cfg
        B, T, D = x.shape
        N, E, K = B * T, cfg.num_experts, cfg.top_k
        x_ND = x.reshape(N, D)
        route = self.router(x_ND, _task_per_token(task_id, B, T, x.device, cfg.num_tasks))

        # Sort assignments by expert; under a capacity, by gate weight within each expert first,
        # so the lowest-weight assignments beyond capacity are the ones dropped.
        expert_A = route.expert_idx_NK.flatten()
        load_E = torch.bincount(expert_A, minlength=E)
        if not self.drops:
            order_A = torch.argsort(expert_A, stable=True)
            kept_E = load_E
        else:
            by_weight = torch.argsort(route.weight_NK.detach().flatten(), descending=True, stable=True)
            order_A = by_weight[torch.argsort(expert_A[by_weight], stable=True)]
            start_E = torch.cumsum(load_E, 0) - load_E
            rank_A = torch.arange(order_A.numel(), device=x.device) - start_E[expert_A[order_A]]
            capacity = self.capacity(N)
            order_A = order_A[rank_A < capacity]
            kept_E = load_E.clamp(max=capacity)
        token_A = order_A // K

        x_AD = x_ND[token_A]
        if torch.is_autocast_enabled(x.device.type):
            x_AD = x_AD.to(torch.get_autocast_dtype(x.device.type))
        y_AD = self.experts(x_AD, kept_E.tolist())
        y_AD = y_AD * route.weight_NK.flatten()[order_A].to(y_AD.dtype).unsqueeze(-1)
        y_ND = y_AD.new_zeros(N, D).index_add_(0, token_A, y_AD)

        if self.shared is not None:
            y_ND = y_ND + self.shared(x_ND)
        if sequence_N is None and cfg.balance_loss == "sequence":
            sequence_N = torch.arange(B, device=x.device).repeat_interleave(T)
        return y_ND.view(B, T, D), self._stats(route, load_E, N * K - order_A.numel(), N * K, sequence_N)

    def _stats(self, route, load_E: torch.Tensor, dropped: int, assigned: int,
               sequence_N: torch.Tensor | None) -> MoEStats:
        cfg = self.cfg
        aux = route.logits_NE.new_zeros(())
        if cfg.balance_loss == "kl":
            aux = aux + cfg.balance_coef * losses.kl_balance_loss(route.probs_NE)
        elif cfg.balance_loss == "switch":
            aux = aux + cfg.balance_coef * losses.switch_balance_loss(route.probs_NE, route.expert_idx_NK)
        elif cfg.balance_loss == "sequence":
            aux = aux + cfg.balance_coef * losses.sequence_balance_loss(route.probs_NE, route.expert_idx_NK,
                                                                        sequence_N)
        if cfg.z_loss_coef > 0:
            aux = aux + cfg.z_loss_coef * losses.z_loss(route.logits_NE)
        with torch.no_grad():
            return MoEStats(
                aux_loss=aux,
                expert_load=load_E.detach(),
                dropped_fraction=dropped / max(assigned, 1),
                balance=losses.load_balance(load_E),
                max_violation=losses.max_violation(load_E),
                router_entropy=losses.router_entropy(route.probs_NE.detach()),
                expert_idx=route.expert_idx_NK,
                gate_weight=route.weight_NK.detach(),
            )

    def update_bias(self) -> None:
        """Apply one auxiliary-loss-free balancing step (call after each optimiser step)."""
        self.router.update_bias()


def real_token_tasks(task_id, B: int, T: int, real_N: torch.Tensor, num_tasks: int) -> torch.Tensor | None:
    """Task ids (an int, a LongTensor [B] per sequence or [B, T] per token) as the task of each real token
    [N] (real_N: the real tokens' flat indices into B*T), for `ffn_on_real_tokens`."""
    task_BT = _task_per_token(task_id, B, T, real_N.device, num_tasks)
    return None if task_BT is None else task_BT[real_N]


def ffn_on_real_tokens(ffn: nn.Module, x_BTD: torch.Tensor, real_N: torch.Tensor,
                       task_N: torch.Tensor | None = None) -> tuple[torch.Tensor, MoEStats | None]:
    """A feed-forward (an MoELayer or a dense one) over the real tokens of a padded batch only: [B, T, D] ->
    ([B, T, D] with zeros at padding, the MoE's stats or None). The MoE gets one row per real token with its
    task (task_N [N], `real_token_tasks`), so padding takes no expert slot and enters no balance statistic."""
    B, T, D = x_BTD.shape
    x_ND = x_BTD.reshape(B * T, D)[real_N]
    stats = None
    if isinstance(ffn, MoELayer):
        y_N1D, stats = ffn(x_ND.unsqueeze(1), task_N, sequence_N=real_N // T)
        y_ND = y_N1D.squeeze(1)
    else:
        y_ND = ffn(x_ND)
    return x_ND.new_zeros(B * T, D).index_copy(0, real_N, y_ND).view(B, T, D), stats


class DenseFFN(nn.Module):
    """Dense block with the active parameters of `MoELayer(cfg)`: width (top_k + shared) * H.

    Same interface as `MoELayer`, for like-for-like comparisons; its stats describe one expert.
    """

    def __init__(self, cfg: MoEConfig):
        super().__init__()
        self.cfg = cfg
        self.ffn = FeedForward(cfg.dim, (cfg.top_k + cfg.num_shared_experts) * cfg.hidden_dim,
                               cfg.activation, cfg.expert_bias)

    def forward(self, x: torch.Tensor, task_id=None) -> tuple[torch.Tensor, MoEStats]:
        N = x.shape[0] * x.shape[1]
        stats = MoEStats(aux_loss=x.new_zeros((), dtype=torch.float32),
                         expert_load=torch.tensor([N], device=x.device), dropped_fraction=0.0,
                         balance=1.0, max_violation=0.0, router_entropy=0.0)
        return self.ffn(x), stats


def update_expert_biases(model: nn.Module) -> None:
    """Aux-free balancing step for every `MoELayer` inside `model` (call after optimizer.step())."""
    for module in model.modules():
        if isinstance(module, MoELayer):
            module.update_bias()


def moe_train_step(model: nn.Module, loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                   scheduler: torch.optim.lr_scheduler.LRScheduler | None = None) -> float:
    """One optimisation step of a model holding MoE layers: backward, optimizer (and scheduler) step, then
    the aux-free bias update, which must come after the weights moved. Returns the loss as a float."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    update_expert_biases(model)
    return loss.item()
