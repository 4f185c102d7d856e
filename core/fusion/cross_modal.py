"""Cross-modal attention: every token attends over the tokens of all modalities together.

Shape legend: B batch, T_m tokens of modality m, T = sum of T_m, D shared width.
Masks are bool [B, T_m], True where a token is real (the text stream's attention-mask sense).
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn

MODALITIES = ("text", "vision", "audio")


def valid_mask(tokens_BTD: torch.Tensor, mask_BT: torch.Tensor | None, name: str = "tokens") -> torch.Tensor:
    """The bool mask [B, T] of real tokens: `mask_BT` as bool, or all True when there is none."""
    if mask_BT is None:
        return torch.ones(tokens_BTD.shape[:2], dtype=torch.bool, device=tokens_BTD.device)
    if tuple(mask_BT.shape) != tuple(tokens_BTD.shape[:2]):
        raise ValueError(f"the mask of {name} must be [batch, tokens] = {list(tokens_BTD.shape[:2])}, "
                         f"got {list(mask_BT.shape)}")
    return mask_BT.to(torch.bool)


def key_padding(valid_BT: torch.Tensor) -> torch.Tensor:
    """Attention's key_padding_mask (True = ignore) from a mask of real tokens. A row without any real
    token attends its padding instead: its output stays finite (attention over no key is NaN on
    PyTorch's inference fast path) and is never read, since every reader masks it out."""
    return ~(valid_BT | ~valid_BT.any(1, keepdim=True))


def check_tokens(tokens: dict[str, torch.Tensor], dim: int) -> None:
    """Every modality's tokens are [B, T_m, dim] with one batch size B."""
    for m, x in tokens.items():
        if x.ndim != 3 or x.shape[-1] != dim:
            raise ValueError(f"{m} tokens must be [batch, tokens, {dim}], got {list(x.shape)}")
    batch = {m: x.shape[0] for m, x in tokens.items()}
    if len(set(batch.values())) > 1:
        raise ValueError(f"the modalities disagree on the batch size: {batch}")


def check_modalities(names: Iterable[str], known: tuple[str, ...]) -> None:
    unknown = [m for m in names if m not in known]
    if unknown:
        raise ValueError(f"unknown modalities {unknown}; this module knows {known}")


class CrossModalAttention(nn.Module):
    """Joint attention over the concatenated tokens of the modalities given, then, per modality,
    a projection fusing its tokens with what they attended to: fused_m = W_m [x_m, attended_m].

    forward({m: [B, T_m, D]}, masks={m: [B, T_m]}) -> {m: [B, T_m, D]}, for any subset of
    `modalities` (text and vision is the seed's case). Padding tokens are masked out as keys; the
    outputs at padding positions (and of a sample with no real token) are meaningless but finite.
    """

    def __init__(self, dim: int, num_heads: int, modalities: tuple[str, ...] = MODALITIES,
                 dropout: float = 0.0):
        super().__init__()
        self.modalities = modalities
        # Both streams live in one token space: a learned type embedding per modality tells
        # attention which stream a key comes from.
        self.type_MD = nn.Parameter(torch.randn(len(modalities), dim) * 0.02)
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.fuse = nn.ModuleDict({m: nn.Linear(2 * dim, dim) for m in modalities})

    def forward(self, tokens: dict[str, torch.Tensor],
                masks: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        check_modalities(tokens, self.modalities)
        masks = masks or {}
        names = [m for m in self.modalities if m in tokens]
        if not names:
            raise ValueError(f"no modality given; expected some of {self.modalities}")
        check_tokens({m: tokens[m] for m in names}, self.type_MD.shape[1])
        x_BTD = torch.cat([tokens[m] + self.type_MD[self.modalities.index(m)] for m in names], dim=1)
        valid_BT = torch.cat([valid_mask(tokens[m], masks.get(m), m) for m in names], dim=1)
        h_BTD = self.norm(x_BTD)
        attended_BTD = self.attn(h_BTD, h_BTD, h_BTD, key_padding_mask=key_padding(valid_BT),
                                 need_weights=False)[0]
        attended = attended_BTD.split([tokens[m].shape[1] for m in names], dim=1)
        return {m: self.fuse[m](torch.cat([tokens[m], a_BTD], dim=-1)) for m, a_BTD in zip(names, attended)}
