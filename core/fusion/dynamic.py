"""Dynamic modality fusion: one vector per sample from any subset of the text, vision and audio streams.

Strategies (`FusionConfig.strategy`):
  task_gate    a learned table maps the task id to a weight per modality:
               fused = sum_m softmax_m(table[task])_m * W_m pooled_m
  confidence   each modality predicts on its own; the less uncertain its prediction, the more it
               weighs: w = softmax_m(-entropy_m / tau), per sample
  progressive  L fusion layers over the tokens: the first k attend within each modality only,
               the rest across modalities (CrossModalAttention); then the modalities are averaged
  concat       the baseline: concatenate the pooled vectors and project

A missing modality (the report of a medical case, the audio of a silent clip) is either left out
of the dict (or None), when no sample in the batch has it, or has all of a sample's tokens masked,
when only some samples lack it. It then weighs 0 and the weights of the others renormalise; concat
puts a learned stand-in in its slot; progressive fusion attends and averages over the modalities
present. Every sample needs at least one modality.

Shape legend: B batch, T_m tokens of modality m, D shared width, M modalities (config order),
C classes of the confidence heads. Masks are bool [B, T_m], True where a token is real.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from core.tasks import NUM_TASKS, task_ids

from .cross_modal import MODALITIES, CrossModalAttention, check_modalities, check_tokens, key_padding, valid_mask

STRATEGIES = ("task_gate", "confidence", "progressive", "concat")


@dataclass
class FusionConfig:
    strategy: str = "task_gate"      # one of STRATEGIES
    modalities: tuple[str, ...] = MODALITIES  # what can be fused, in the order of modality_weights
    dim: int = 384                   # shared width D of every stream
    num_tasks: int = NUM_TASKS       # task_gate: rows of the task -> modality-weight table
    num_classes: int = 2             # confidence: classes of each modality's own prediction head
    temperature: float = 1.0         # confidence: tau in softmax(-entropy / tau)
    num_layers: int = 4              # progressive: fusion layers L
    num_separate: int = 2            # progressive: the first k layers attend within each modality only
    num_heads: int = 6               # progressive: attention heads
    dropout: float = 0.0             # progressive: attention and feed-forward dropout

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if not self.modalities or len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"modalities must be distinct and not empty, got {self.modalities}")
        if self.strategy == "task_gate" and self.num_tasks < 1:
            raise ValueError("task_gate needs num_tasks >= 1")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 <= self.num_separate <= self.num_layers:
            raise ValueError(f"num_separate ({self.num_separate}) must lie in [0, num_layers={self.num_layers}]")
        if self.dim % self.num_heads:
            raise ValueError(f"dim ({self.dim}) must divide into num_heads ({self.num_heads})")


@dataclass
class FusionOutput:
    fused: torch.Tensor                     # [B, D]
    modality_weights: torch.Tensor | None   # [B, M], 0 where missing (task_gate, confidence; else None)
    extra: dict[str, torch.Tensor]          # confidence: "logits" [B, M, C] (train the heads on them),
                                            # "entropy" [B, M]; progressive: "<m>_tokens" [B, T_m, D]


@dataclass
class Streams:
    """The modalities given, normalised for every strategy."""
    tokens: dict[str, torch.Tensor]  # [B, T_m, D] of the modalities given (a pooled [B, D] is one token)
    masks: dict[str, torch.Tensor]   # [B, T_m] bool, True = real token
    pooled_BMD: torch.Tensor         # masked token mean of each modality, 0 where missing
    present_BM: torch.Tensor         # bool: sample b has modality m


def masked_mean(tokens_BTD: torch.Tensor, valid_BT: torch.Tensor) -> torch.Tensor:
    """[B, D]: the mean of the real tokens, 0 for a row without any."""
    w_BT = valid_BT.to(tokens_BTD.dtype)
    return (tokens_BTD * w_BT.unsqueeze(-1)).sum(1) / w_BT.sum(1, keepdim=True).clamp_min(1)


def masked_softmax(logits_BM: torch.Tensor, present_BM: torch.Tensor) -> torch.Tensor:
    return logits_BM.masked_fill(~present_BM, float("-inf")).softmax(dim=-1)


def weighted_sum(weights_BM: torch.Tensor, proj: nn.ModuleDict, s: Streams) -> torch.Tensor:
    """[B, D]: sum_m w_m * W_m pooled_m."""
    projected_BMD = torch.stack([proj[m](s.pooled_BMD[:, i]) for i, m in enumerate(proj)], dim=1)
    return (weights_BM.unsqueeze(-1) * projected_BMD).sum(dim=1)


class TaskGateFusion(nn.Module):
    def __init__(self, cfg: FusionConfig):
        super().__init__()
        self.logits_TM = nn.Parameter(torch.zeros(cfg.num_tasks, len(cfg.modalities)))  # uniform at init
        self.proj = nn.ModuleDict({m: nn.Linear(cfg.dim, cfg.dim) for m in cfg.modalities})

    def forward(self, s: Streams, task_id: int | torch.Tensor | None) -> FusionOutput:
        B, M = s.present_BM.shape
        if task_id is None:  # no task: every modality present weighs the same
            logits_BM = self.logits_TM.new_zeros(B, M)
        else:
            task_B = task_ids(task_id, self.logits_TM.shape[0], B, self.logits_TM.device)
            logits_BM = self.logits_TM[task_B].expand(B, M)
        weights_BM = masked_softmax(logits_BM, s.present_BM)
        return FusionOutput(weighted_sum(weights_BM, self.proj, s), weights_BM, {})


class ConfidenceFusion(nn.Module):
    def __init__(self, cfg: FusionConfig):
        super().__init__()
        self.temperature = cfg.temperature
        self.heads = nn.ModuleDict({m: nn.Linear(cfg.dim, cfg.num_classes) for m in cfg.modalities})
        self.proj = nn.ModuleDict({m: nn.Linear(cfg.dim, cfg.dim) for m in cfg.modalities})

    def forward(self, s: Streams, task_id: int | torch.Tensor | None) -> FusionOutput:
        logits_BMC = torch.stack([self.heads[m](s.pooled_BMD[:, i]) for i, m in enumerate(self.heads)], dim=1)
        logp_BMC = logits_BMC.log_softmax(dim=-1)
        entropy_BM = -(logp_BMC.exp() * logp_BMC).sum(dim=-1)
        # Detached: the weights read each head's confidence but must not teach a head to look
        # confident; the heads learn only from the caller's loss on extra["logits"].
        weights_BM = masked_softmax(-entropy_BM.detach() / self.temperature, s.present_BM)
        return FusionOutput(weighted_sum(weights_BM, self.proj, s), weights_BM,
                            {"logits": logits_BMC, "entropy": entropy_BM})


class ProgressiveFusion(nn.Module):
    def __init__(self, cfg: FusionConfig):
        super().__init__()
        self.modalities = cfg.modalities

        def within() -> nn.Module:
            return nn.TransformerEncoderLayer(cfg.dim, cfg.num_heads, 4 * cfg.dim, cfg.dropout,
                                              activation="gelu", batch_first=True, norm_first=True)

        self.separate = nn.ModuleList(nn.ModuleDict({m: within() for m in cfg.modalities})
                                      for _ in range(cfg.num_separate))
        self.joint = nn.ModuleList(CrossModalAttention(cfg.dim, cfg.num_heads, cfg.modalities, cfg.dropout)
                                   for _ in range(cfg.num_layers - cfg.num_separate))

    def forward(self, s: Streams, task_id: int | torch.Tensor | None) -> FusionOutput:
        tokens = s.tokens
        # A sample lacking a modality has no key in it: it attends its padding (see key_padding),
        # which is never read (it pools to nothing and is masked in the joint layers).
        key_pad = {m: key_padding(valid_BT) for m, valid_BT in s.masks.items()}
        for layer in self.separate:
            tokens = {m: layer[m](x_BTD, src_key_padding_mask=key_pad[m]) for m, x_BTD in tokens.items()}
        for layer in self.joint:
            tokens = layer(tokens, s.masks)
        pooled_BMD = torch.stack([masked_mean(tokens[m], s.masks[m]) if m in tokens
                                  else s.pooled_BMD[:, i] for i, m in enumerate(self.modalities)], dim=1)
        share_BM = s.present_BM.to(pooled_BMD.dtype)
        share_BM = share_BM / share_BM.sum(1, keepdim=True)
        fused_BD = (share_BM.unsqueeze(-1) * pooled_BMD).sum(dim=1)
        return FusionOutput(fused_BD, None, {f"{m}_tokens": x_BTD for m, x_BTD in tokens.items()})


class ConcatFusion(nn.Module):
    def __init__(self, cfg: FusionConfig):
        super().__init__()
        self.missing_MD = nn.Parameter(torch.zeros(len(cfg.modalities), cfg.dim))  # stand-in, learned
        self.proj = nn.Linear(len(cfg.modalities) * cfg.dim, cfg.dim)

    def forward(self, s: Streams, task_id: int | torch.Tensor | None) -> FusionOutput:
        pooled_BMD = torch.where(s.present_BM.unsqueeze(-1), s.pooled_BMD, self.missing_MD)
        return FusionOutput(self.proj(pooled_BMD.flatten(1)), None, {})


FUSIONS = {"task_gate": TaskGateFusion, "confidence": ConfidenceFusion,
           "progressive": ProgressiveFusion, "concat": ConcatFusion}


class DynamicFusion(nn.Module):
    """forward({m: tokens [B, T_m, D] or pooled [B, D]}, masks={m: [B, T_m]}, task_id) -> FusionOutput.

    task_id: an int or a LongTensor [B] (task_gate reads it; None weighs the modalities equally).
    """

    def __init__(self, cfg: FusionConfig):
        super().__init__()
        self.cfg = cfg
        self.fusion = FUSIONS[cfg.strategy](cfg)

    def forward(self, modalities: dict[str, torch.Tensor | None],
                masks: dict[str, torch.Tensor] | None = None,
                task_id: int | torch.Tensor | None = None) -> FusionOutput:
        return self.fusion(self.streams(modalities, masks or {}), task_id)

    def streams(self, modalities: dict[str, torch.Tensor | None], masks: dict[str, torch.Tensor]) -> Streams:
        cfg = self.cfg
        check_modalities(modalities, cfg.modalities)
        tokens = {m: x.unsqueeze(1) if x.ndim == 2 else x
                  for m in cfg.modalities if (x := modalities.get(m)) is not None}
        if not tokens:
            raise ValueError(f"no modality given; expected some of {cfg.modalities}")
        check_tokens(tokens, cfg.dim)
        valid = {m: valid_mask(x_BTD, masks.get(m), m) for m, x_BTD in tokens.items()}
        any_BTD = next(iter(tokens.values()))
        B = any_BTD.shape[0]
        pooled_BMD = torch.stack([masked_mean(tokens[m], valid[m]) if m in tokens
                                  else any_BTD.new_zeros(B, cfg.dim) for m in cfg.modalities], dim=1)
        present_BM = torch.stack([valid[m].any(1) if m in tokens
                                  else torch.zeros(B, dtype=torch.bool, device=any_BTD.device)
                                  for m in cfg.modalities], dim=1)
        if not present_BM.any(1).all():
            raise ValueError("every sample needs at least one modality with a real token")
        return Streams(tokens, valid, pooled_BMD, present_BM)
