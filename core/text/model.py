"""The text stream: a BERT encoder shaped like all-MiniLM-L6-v2, with MoE feed-forward blocks.

Shape legend: B batch, T tokens per sequence, N real (non-padding) tokens in the batch,
D model width, h attention heads, d head width (D / h).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.moe import (DynamicRouter, FeedForward, GroupedExperts, MoELayer, MoEStats, ffn_on_real_tokens,
                      real_token_tasks)

from .config import TextStreamConfig


@dataclass
class TextOutput:
    hidden: torch.Tensor        # [B, T, D] last-layer token states (padding positions are meaningless)
    pooled: torch.Tensor        # [B, D] mean of `hidden` over real tokens, not L2-normalised
    aux_loss: torch.Tensor      # scalar: sum of the MoE layers' auxiliary losses
    stats: list[MoEStats]       # one per MoE layer, in the order of cfg.moe_layer_ids


class Embeddings(nn.Module):
    """Word + learned position + token-type-0 embeddings, then LayerNorm and dropout."""

    def __init__(self, cfg: TextStreamConfig):
        super().__init__()
        self.word = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.position = nn.Embedding(cfg.max_positions, cfg.dim)
        self.token_type = nn.Embedding(cfg.type_vocab_size, cfg.dim)
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, input_ids_BT: torch.Tensor) -> torch.Tensor:
        pos_T = torch.arange(input_ids_BT.shape[1], device=input_ids_BT.device)
        x_BTD = self.word(input_ids_BT) + self.position(pos_T) + self.token_type.weight[0]
        return self.drop(self.norm(x_BTD))


class SelfAttention(nn.Module):
    """Bidirectional multi-head attention over the real tokens of each sequence."""

    def __init__(self, cfg: TextStreamConfig):
        super().__init__()
        self.num_heads, self.dropout = cfg.num_heads, cfg.dropout
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.out = nn.Linear(cfg.dim, cfg.dim)

    def forward(self, x_BTD: torch.Tensor, keep_B11T: torch.Tensor) -> torch.Tensor:
        B, T, D = x_BTD.shape
        q_BhTd, k_BhTd, v_BhTd = (
            t.view(B, T, self.num_heads, -1).transpose(1, 2) for t in self.qkv(x_BTD).split(D, dim=-1))
        o_BhTd = F.scaled_dot_product_attention(
            q_BhTd, k_BhTd, v_BhTd, attn_mask=keep_B11T, dropout_p=self.dropout if self.training else 0.0)
        return self.out(o_BhTd.transpose(1, 2).reshape(B, T, D))


class Block(nn.Module):
    """Post-LN BERT layer: x = norm(x + attn(x)), then x = norm(x + ffn(x)), the FFN an MoE or dense."""

    def __init__(self, cfg: TextStreamConfig, moe: bool):
        super().__init__()
        self.attn = SelfAttention(cfg)
        self.attn_norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.ffn = MoELayer(cfg.moe_config()) if moe else FeedForward(cfg.dim, cfg.ffn_dim, "gelu", bias=True)
        self.ffn_norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x_BTD: torch.Tensor, keep_B11T: torch.Tensor, real_N: torch.Tensor,
                task_N: torch.Tensor | None) -> tuple[torch.Tensor, MoEStats | None]:
        x_BTD = self.attn_norm(x_BTD + self.drop(self.attn(x_BTD, keep_B11T)))
        # The FFN runs on real tokens only: padding neither takes expert slots nor skews routing stats.
        y_BTD, stats = ffn_on_real_tokens(self.ffn, x_BTD, real_N, task_N)
        return self.ffn_norm(x_BTD + self.drop(y_BTD)), stats


class TextStream(nn.Module):
    """Token ids -> contextual token states and a mean-pooled sentence vector, with task-aware MoE FFNs.

    forward(input_ids [B, T], attention_mask [B, T], task_id=None | int | LongTensor [B] or [B, T]) -> TextOutput
    """

    def __init__(self, cfg: TextStreamConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = Embeddings(cfg)
        moe_ids = set(cfg.moe_layer_ids)
        self.layers = nn.ModuleList(Block(cfg, moe=i in moe_ids) for i in range(cfg.num_layers))
        self.prefix_cache = None  # a core.text.trunk.PrefixCache when this stream shares its lower layers
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        """BERT's init, N(0, init_std) weights and zero biases; routers get their own scale."""
        std = self.cfg.init_std
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, GroupedExperts):
            nn.init.normal_(module.w_in_EFD, std=std)
            nn.init.normal_(module.w_out_EHD, std=std)
            nn.init.zeros_(module.b_in_EF)
            nn.init.zeros_(module.b_out_ED)
        elif isinstance(module, DynamicRouter):
            nn.init.normal_(module.weight_ED, std=self.cfg.router_init_std)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                task_id: int | torch.Tensor | None = None) -> TextOutput:
        B, T = input_ids.shape
        if T > self.cfg.max_positions:
            raise ValueError(f"sequence length {T} exceeds max_positions ({self.cfg.max_positions})")
        keep_BT = attention_mask.bool()
        real_N = keep_BT.flatten().nonzero().squeeze(1)  # flat indices of the real tokens
        task_N = real_token_tasks(task_id, B, T, real_N, self.cfg.num_tasks)

        cache = self.prefix_cache if not (self.training or torch.is_grad_enabled()) else None
        key = cache.key(input_ids, attention_mask) if cache is not None else None
        cached_BTD = cache.get(key) if cache is not None else None
        start = 0 if cached_BTD is None else cache.layers
        x_BTD = self.embed(input_ids) if cached_BTD is None else cached_BTD
        stats = []
        for i, layer in enumerate(self.layers[start:], start):
            x_BTD, layer_stats = layer(x_BTD, keep_BT[:, None, None, :], real_N, task_N)
            if layer_stats is not None:
                stats.append(layer_stats)
            if cache is not None and cached_BTD is None and i == cache.layers - 1:
                cache.put(key, x_BTD)

        mask_BT1 = keep_BT.unsqueeze(-1).to(x_BTD.dtype)
        pooled_BD = (x_BTD * mask_BT1).sum(dim=1) / mask_BT1.sum(dim=1).clamp_min(1e-9)
        aux_loss = sum((s.aux_loss for s in stats), x_BTD.new_zeros(()))
        return TextOutput(hidden=x_BTD, pooled=pooled_BD, aux_loss=aux_loss, stats=stats)
