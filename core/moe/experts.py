"""Expert feed-forward blocks: routed experts as stacked weights, and the dense block.

Each expert is a SwiGLU, silu(x W_gate) * (x W_up) then W_out (the default), or a GELU MLP,
gelu(x W_in + b_in) W_out + b_out (for sparse upcycling of BERT-family models).

Shape legend: A token-expert assignments sorted by expert, N tokens, D model width,
H expert hidden width, F input-projection rows (2H for SwiGLU: gate rows then up rows; H for GELU),
E experts.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ACTIVATIONS


def _blocks(counts: list[int]) -> list[tuple[int, int, int]]:
    """(expert, first row, end row) for every expert that received rows; empty experts skipped."""
    blocks, lo = [], 0
    for e, c in enumerate(counts):
        if c:
            blocks.append((e, lo, lo + c))
        lo += c
    return blocks


def _empty_grad(w: torch.Tensor, blocks) -> torch.Tensor:
    """A gradient buffer for stacked weights `w`: experts without rows zeroed, the rest left to write."""
    grad = torch.empty_like(w)
    used = torch.zeros(w.shape[0], dtype=torch.bool)
    used[[e for e, _, _ in blocks]] = True
    if not used.all():
        grad[~used.to(w.device)] = 0
    return grad


def _mm_into(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> None:
    """out = a @ b, where out (a weight-gradient slice) may be fp32 while a and b are bf16."""
    if out.dtype == a.dtype:
        torch.mm(a, b, out=out)
    else:
        out.copy_(a @ b)


class _GroupedFFN(torch.autograd.Function):
    """Expert e's feed-forward block on its contiguous row block, for every expert.

    One autograd Function because autograd over `w[e]` indexing materialises a full
    [E, ...] zero gradient per expert (about 10x slower): here each expert's weight gradient
    is written straight into its slice of one gradient tensor. The hidden activations are kept
    feature-major ([F, A], each expert a column block): on CPU the per-expert GEMMs then run
    with the large hidden width as their row count, and the elementwise work runs once over all
    rows with fused kernels. Under bf16 autocast the fp32 weights are cast one expert at a time.
    """

    @staticmethod
    def forward(ctx, x_AD, w_in_EFD, w_out_EHD, b_in_EF, b_out_ED, counts: list[int]):
        A, H, D = x_AD.shape[0], w_out_EHD.shape[1], w_out_EHD.shape[2]
        gated, dt = w_in_EFD.shape[1] == 2 * H, x_AD.dtype
        blocks = _blocks(counts)
        with torch.autocast(device_type=x_AD.device.type, enabled=False):
            h_FA = x_AD.new_empty(w_in_EFD.shape[1], A)
            for e, lo, hi in blocks:
                torch.mm(w_in_EFD[e].to(dt), x_AD[lo:hi].t(), out=h_FA[:, lo:hi])
                if b_in_EF is not None:
                    h_FA[:, lo:hi] += b_in_EF[e].to(dt).unsqueeze(1)
            if gated:
                silu_HA = F.silu(h_FA[:H])
                act_HA = silu_HA * h_FA[H:]
            else:
                silu_HA, act_HA = None, F.gelu(h_FA)
            y_AD = x_AD.new_empty(A, D)
            for e, lo, hi in blocks:
                torch.mm(act_HA[:, lo:hi].t(), w_out_EHD[e].to(dt), out=y_AD[lo:hi])
                if b_out_ED is not None:
                    y_AD[lo:hi] += b_out_ED[e].to(dt)
        ctx.save_for_backward(x_AD, w_in_EFD, w_out_EHD, h_FA, silu_HA, act_HA)
        ctx.blocks, ctx.gated = blocks, gated
        ctx.has_bias = (b_in_EF is not None, b_out_ED is not None)
        return y_AD

    @staticmethod
    def backward(ctx, grad_y_AD):
        x_AD, w_in_EFD, w_out_EHD, h_FA, silu_HA, act_HA = ctx.saved_tensors
        blocks, dt, H = ctx.blocks, x_AD.dtype, w_out_EHD.shape[1]
        grad_y_AD = grad_y_AD.to(dt).contiguous()

        grad_act_HA = torch.empty_like(act_HA)
        grad_w_out = _empty_grad(w_out_EHD, blocks)
        for e, lo, hi in blocks:
            torch.mm(w_out_EHD[e].to(dt), grad_y_AD[lo:hi].t(), out=grad_act_HA[:, lo:hi])
            _mm_into(act_HA[:, lo:hi], grad_y_AD[lo:hi], grad_w_out[e])

        grad_h_FA = torch.empty_like(h_FA)
        if ctx.gated:
            grad_gate_HA, grad_up_HA = grad_h_FA[:H], grad_h_FA[H:]
            torch.mul(grad_act_HA, h_FA[H:], out=grad_gate_HA)
            torch.ops.aten.silu_backward.grad_input(grad_gate_HA, h_FA[:H], grad_input=grad_gate_HA)
            torch.mul(grad_act_HA, silu_HA, out=grad_up_HA)
        else:
            torch.ops.aten.gelu_backward.grad_input(grad_act_HA, h_FA, grad_input=grad_h_FA)
        del grad_act_HA

        grad_x_AD = torch.empty_like(x_AD)
        grad_w_in = _empty_grad(w_in_EFD, blocks)
        for e, lo, hi in blocks:
            _mm_into(grad_h_FA[:, lo:hi], x_AD[lo:hi], grad_w_in[e])
            torch.mm(grad_h_FA[:, lo:hi].t(), w_in_EFD[e].to(dt), out=grad_x_AD[lo:hi])

        grad_b_in = grad_b_out = None
        if ctx.has_bias[0]:
            grad_b_in = _block_sums(grad_h_FA.t(), blocks, w_in_EFD.shape[:2], w_in_EFD.dtype)
        if ctx.has_bias[1]:
            grad_b_out = _block_sums(grad_y_AD, blocks, w_out_EHD.shape[::2], w_out_EHD.dtype)
        return grad_x_AD, grad_w_in, grad_w_out, grad_b_in, grad_b_out, None


def _block_sums(rows_AX: torch.Tensor, blocks, shape, dtype) -> torch.Tensor:
    """[E, X]: the sum of each expert's rows (the gradient of a per-expert bias)."""
    out = torch.zeros(shape, dtype=dtype, device=rows_AX.device)
    for e, lo, hi in blocks:
        out[e] = rows_AX[lo:hi].sum(dim=0, dtype=dtype)
    return out


def grouped_ffn(x_AD: torch.Tensor, w_in_EFD: torch.Tensor, w_out_EHD: torch.Tensor,
                counts: list[int], b_in_EF: torch.Tensor | None = None,
                b_out_ED: torch.Tensor | None = None) -> torch.Tensor:
    """Run expert e on rows sum(counts[:e]) .. sum(counts[:e+1]) of `x_AD` (rows sorted by expert).

    SwiGLU when w_in has 2H rows per expert (gate rows, then up rows), GELU when it has H.
    """
    if len(counts) != w_in_EFD.shape[0] or sum(counts) != x_AD.shape[0]:
        raise ValueError(f"counts ({len(counts)} experts, {sum(counts)} rows) do not match "
                         f"{w_in_EFD.shape[0]} experts and {x_AD.shape[0]} rows")
    return _GroupedFFN.apply(x_AD, w_in_EFD, w_out_EHD, b_in_EF, b_out_ED, counts)


class GroupedExperts(nn.Module):
    """E experts as stacked weights: w_in [E, F, D], w_out [E, H, D], optional biases."""

    def __init__(self, num_experts: int, dim: int, hidden_dim: int,
                 activation: str = "swiglu", bias: bool = False):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.num_experts, self.dim, self.hidden_dim = num_experts, dim, hidden_dim
        self.activation = activation
        rows = 2 * hidden_dim if activation == "swiglu" else hidden_dim
        self.w_in_EFD = nn.Parameter(torch.randn(num_experts, rows, dim) * dim ** -0.5)
        self.w_out_EHD = nn.Parameter(torch.randn(num_experts, hidden_dim, dim) * hidden_dim ** -0.5)
        self.b_in_EF = nn.Parameter(torch.zeros(num_experts, rows)) if bias else None
        self.b_out_ED = nn.Parameter(torch.zeros(num_experts, dim)) if bias else None

    def forward(self, x_AD: torch.Tensor, counts: list[int]) -> torch.Tensor:
        return grouped_ffn(x_AD, self.w_in_EFD, self.w_out_EHD, counts, self.b_in_EF, self.b_out_ED)

    def expert_forward(self, e: int, x_ND: torch.Tensor) -> torch.Tensor:
        """Expert e alone on rows x: the plain reference path (tests, tools)."""
        h = x_ND @ self.w_in_EFD[e].t()
        if self.b_in_EF is not None:
            h = h + self.b_in_EF[e]
        if self.activation == "swiglu":
            gate, up = h.chunk(2, dim=-1)
            act = F.silu(gate) * up
        else:
            act = F.gelu(h)
        y = act @ self.w_out_EHD[e]
        return y + self.b_out_ED[e] if self.b_out_ED is not None else y


class FeedForward(nn.Module):
    """Dense feed-forward block, SwiGLU or GELU MLP (shared experts and the dense baseline)."""

    def __init__(self, dim: int, hidden_dim: int, activation: str = "swiglu", bias: bool = False):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.activation = activation
        rows = 2 * hidden_dim if activation == "swiglu" else hidden_dim
        self.w_in = nn.Linear(dim, rows, bias=bias)
        self.w_out = nn.Linear(hidden_dim, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.w_in(x)
        if self.activation == "swiglu":
            gate, up = h.chunk(2, dim=-1)
            return self.w_out(F.silu(gate) * up)
        return self.w_out(F.gelu(h))
