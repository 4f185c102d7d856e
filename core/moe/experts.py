"""Expert feed-forward blocks: routed experts as stacked weights, and the dense block.

Each expert is a SwiGLU, silu(x W_gate) * (x W_up) then W_out (the default), or a GELU MLP,
gelu(x W_in + b_in) W_out + b_out (for sparse upcycling of BERT-family models).

Shape legend: A token-expert assignments sorted by expert, N tokens, D model width,
H expert hidden width, F input-projection rows (2H for SwiGLU: gate rows then up rows; H for GELU),
K and N the input and output widths of one product, n the rows of one expert,
E experts.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ACTIVATIONS


def _kernel_takes(x_AK: torch.Tensor, w_EKN: torch.Tensor) -> bool:
    """Whether F.grouped_mm's kernels take these operands: fp32 or bf16 on CPU, bf16 on CUDA,
    16-byte-aligned data and strides; when autograd records, output rows (N wide) 16-byte aligned too
    (the backward reads the output's gradient: an N of 6 in fp32 passes forward, then fails)."""
    records = torch.is_grad_enabled() and (x_AK.requires_grad or w_EKN.requires_grad)
    if records and w_EKN.shape[-1] * x_AK.element_size() % 16:
        return False
    for t in (x_AK, w_EKN):
        ok_dtypes = (torch.bfloat16,) if t.is_cuda else (torch.float32, torch.bfloat16)
        if t.dtype not in ok_dtypes or t.data_ptr() % 16:
            return False
        if any(stride * t.element_size() % 16 for stride in t.stride() if stride != 1):
            return False
    return True


def grouped_mm(x_AK: torch.Tensor, w_EKN: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """[A, N]: row block e of x (counts[e] rows, blocks in expert order) times w[e].

    F.grouped_mm where its kernels take the operands: one op forward and backward, each weight
    gradient written into its slice (autograd over `w[e]` indexing would instead materialise a
    full-size gradient per expert, about 10x slower), and on CPU the experts run in parallel,
    one thread each. Otherwise (other dtypes, unaligned widths) the same product expert by
    expert, over `split` and `unbind` views whose backward is one cat and one stack.
    """
    if x_AK.shape[0] and _kernel_takes(x_AK, w_EKN):  # its backward rejects zero rows
        offs_E = torch.tensor(counts, device=x_AK.device).cumsum(0).to(torch.int32)
        return F.grouped_mm(x_AK, w_EKN, offs=offs_E)
    return torch.cat([x_nK @ w_KN for x_nK, w_KN in zip(x_AK.split(counts), w_EKN.unbind(0))])


def grouped_ffn(x_AD: torch.Tensor, w_in_EFD: torch.Tensor, w_out_EHD: torch.Tensor,
                counts: list[int], b_in_EF: torch.Tensor | None = None,
                b_out_ED: torch.Tensor | None = None) -> torch.Tensor:
    """Expert e's feed-forward block on row block e of `x_AD` (rows sorted by expert, counts[e] each).

    SwiGLU when w_in has 2H rows per expert (gate rows, then up rows), GELU MLP when it has H.
    Under autocast the weights are cast to the rows' dtype (their gradients come back in fp32).
    """
    if len(counts) != w_in_EFD.shape[0] or sum(counts) != x_AD.shape[0]:
        raise ValueError(f"counts ({len(counts)} experts, {sum(counts)} rows) do not match "
                         f"{w_in_EFD.shape[0]} experts and {x_AD.shape[0]} rows")
    H, dt = w_out_EHD.shape[1], x_AD.dtype
    expert_A = None
    if b_in_EF is not None or b_out_ED is not None:
        expert_A = torch.repeat_interleave(torch.arange(len(counts), device=x_AD.device),
                                           torch.tensor(counts, device=x_AD.device), output_size=x_AD.shape[0])
    with torch.autocast(device_type=x_AD.device.type, enabled=False):
        h_AF = grouped_mm(x_AD, w_in_EFD.to(dt).transpose(1, 2), counts)
        if b_in_EF is not None:
            h_AF = h_AF + b_in_EF.to(dt)[expert_A]
        if w_in_EFD.shape[1] == 2 * H:
            act_AH = F.silu(h_AF[:, :H]) * h_AF[:, H:]
        else:
            act_AH = F.gelu(h_AF)
        y_AD = grouped_mm(act_AH, w_out_EHD.to(dt), counts)
        if b_out_ED is not None:
            y_AD = y_AD + b_out_ED.to(dt)[expert_A]
    return y_AD


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
