"""The gate: which experts each token goes to, and with what weight.

Shape legend: N tokens (batch x sequence, flattened), D model width, E experts,
K experts per token, G expert groups, T tasks.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import MoEConfig


@dataclass
class RouterOutput:
    expert_idx_NK: torch.Tensor     # long, the K experts chosen per token
    weight_NK: torch.Tensor         # gate weight of each choice (differentiable, fp32)
    logits_NE: torch.Tensor         # raw router logits (fp32), for the z-loss
    probs_NE: torch.Tensor          # routing probability over all experts (rows sum to 1), for balance


class DynamicRouter(nn.Module):
    """Top-k gate with group-limited routing, task conditioning and aux-free bias.

    - "topk_softmax": top-k over logits, softmax over the k chosen logits.
    - "softmax_topk": softmax over all experts, top-k, optionally renormalised.
    - "sigmoid":      per-expert sigmoid affinities, top-k, optionally renormalised (DeepSeek-V3).

    Task-aware gating: a task id t scales the router input per feature and adds a per-expert
    logit offset, logits = (x * (1 + scale_t)) W + offset_t, both learned and zero at init.

    Auxiliary-loss-free balancing: `expert_bias_E` is added to the scores for choosing experts
    only; the weights come from the unbiased scores. `update_bias()` moves it after a step.
    """

    def __init__(self, cfg: MoEConfig):
        super().__init__()
        self.cfg = cfg
        self.weight_ED = nn.Parameter(torch.empty(cfg.num_experts, cfg.dim))
        nn.init.normal_(self.weight_ED, std=cfg.dim ** -0.5)
        if cfg.num_tasks > 0:
            self.task_scale_TD = nn.Parameter(torch.zeros(cfg.num_tasks, cfg.dim))
            self.task_offset_TE = nn.Parameter(torch.zeros(cfg.num_tasks, cfg.num_experts))
        self.register_buffer("expert_bias_E", torch.zeros(cfg.num_experts))
        # Assignments per expert since the last bias update (training only).
        self.register_buffer("pending_load_E", torch.zeros(cfg.num_experts), persistent=False)

    def forward(self, x_ND: torch.Tensor, task_N: torch.Tensor | None = None) -> RouterOutput:
        cfg = self.cfg
        # The router runs in fp32 whatever autocast says: small logit errors flip top-k choices.
        with torch.autocast(device_type=x_ND.device.type, enabled=False):
            x_ND, weight_ED = x_ND.float(), self.weight_ED.float()  # also in a .bfloat16() model
            if cfg.num_tasks > 0 and task_N is not None:
                logits_NE = F.linear(x_ND * (1 + self.task_scale_TD[task_N].float()), weight_ED)
                logits_NE = logits_NE + self.task_offset_TE[task_N].float()
            else:
                logits_NE = F.linear(x_ND, weight_ED)

            if cfg.gate == "topk_softmax":
                scores_NE = logits_NE
                probs_NE = logits_NE.softmax(dim=-1)
            elif cfg.gate == "softmax_topk":
                scores_NE = probs_NE = logits_NE.softmax(dim=-1)
            else:  # sigmoid
                scores_NE = logits_NE.sigmoid()
                probs_NE = scores_NE / scores_NE.sum(dim=-1, keepdim=True)

            select_NE = scores_NE.detach() + self.expert_bias_E
            if cfg.num_groups > 1:
                select_NE = self._mask_to_top_groups(select_NE)
            expert_idx_NK = select_NE.topk(cfg.top_k, dim=-1).indices

            chosen_NK = scores_NE.gather(-1, expert_idx_NK)
            if cfg.gate == "topk_softmax":
                weight_NK = chosen_NK.softmax(dim=-1)
            elif cfg.renormalize:
                weight_NK = chosen_NK / chosen_NK.sum(dim=-1, keepdim=True).clamp_min(1e-9)
            else:
                weight_NK = chosen_NK

        if self.training and cfg.bias_update_rate > 0:
            self.pending_load_E += torch.bincount(expert_idx_NK.flatten(), minlength=cfg.num_experts)
        return RouterOutput(expert_idx_NK, weight_NK, logits_NE, probs_NE)

    def _apply(self, fn, recurse=True):
        """Module casts (.bfloat16(), .half()) leave the balancing state in fp32: a bf16 bias loses
        a 1e-3 step once |bias| >= 0.5, and bf16 counts are inexact above 256."""
        super()._apply(fn, recurse)
        for name in ("expert_bias_E", "pending_load_E"):
            buf = getattr(self, name)
            if buf.dtype in (torch.bfloat16, torch.float16):
                setattr(self, name, buf.float())  # a registered buffer stays registered
        return self

    def _mask_to_top_groups(self, select_NE: torch.Tensor) -> torch.Tensor:
        """Keep only experts inside each token's `top_groups` best groups (the rest get -inf).

        A group's score is the sum of its best two experts' scores (DeepSeek-V3), or its
        single best where a group holds one expert.
        """
        cfg = self.cfg
        N = select_NE.shape[0]
        select_NGe = select_NE.view(N, cfg.num_groups, cfg.experts_per_group)
        best = min(2, cfg.experts_per_group)
        group_score_NG = select_NGe.topk(best, dim=-1).values.sum(dim=-1)
        group_idx_NG = group_score_NG.topk(cfg.top_groups, dim=-1).indices
        keep_NG = torch.zeros_like(group_score_NG, dtype=torch.bool).scatter_(1, group_idx_NG, True)
        return select_NGe.masked_fill(~keep_NG.unsqueeze(-1), float("-inf")).view(N, cfg.num_experts)

    @torch.no_grad()
    def update_bias(self) -> None:
        """One aux-free balancing step: bias += rate * sign(mean load - load), then reset the count."""
        load_E = self.pending_load_E
        if self.cfg.bias_update_rate > 0 and load_E.sum() > 0:
            self.expert_bias_E += self.cfg.bias_update_rate * torch.sign(load_E.mean() - load_E)
        load_E.zero_()
