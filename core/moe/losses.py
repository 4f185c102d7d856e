"""Router losses and load statistics. Shape legend: N tokens, E experts, K experts per token."""
from __future__ import annotations

import math

import torch


def _no_tokens(t_NE: torch.Tensor) -> torch.Tensor:
    """The loss of an empty batch: 0, not the NaN of a mean over no rows, and still on the graph."""
    return t_NE.sum()


def kl_balance_loss(probs_NE: torch.Tensor) -> torch.Tensor:
    """sum_i p_i log(p_i / p_mean), p_i the mean routing probability of expert i, p_mean = 1/E.

    The KL divergence of the mean routing distribution from uniform: 0 when balanced.
    """
    if probs_NE.shape[0] == 0:
        return _no_tokens(probs_NE)
    p_E = probs_NE.mean(dim=0)
    E = p_E.shape[0]
    return (p_E * (p_E.clamp_min(1e-12) * E).log()).sum()


def switch_balance_loss(probs_NE: torch.Tensor, expert_idx_NK: torch.Tensor) -> torch.Tensor:
    """Switch Transformer loss E * sum_i f_i * P_i: f_i the fraction of assignments to expert i
    (not differentiable), P_i the mean routing probability. 1.0 when balanced."""
    if probs_NE.shape[0] == 0:
        return _no_tokens(probs_NE)
    E = probs_NE.shape[1]
    f_E = torch.bincount(expert_idx_NK.flatten(), minlength=E).float() / expert_idx_NK.numel()
    return E * (f_E * probs_NE.mean(dim=0)).sum()


def sequence_balance_loss(probs_NE: torch.Tensor, expert_idx_NK: torch.Tensor,
                          sequence_N: torch.Tensor) -> torch.Tensor:
    """DeepSeek-V3's complementary sequence-wise balance loss, averaged over the sequences present:
    per sequence of T tokens, sum_i f_i * P_i with f_i = E / (K T) * (its tokens that chose expert i)
    (not differentiable) and P_i its tokens' mean routing probability of expert i (probs_NE: affinities
    normalised per token). 1.0 when every sequence spreads its tokens evenly; the batch-wide Switch loss
    can be 1.0 while each sequence sticks to a few experts of its own."""
    if probs_NE.shape[0] == 0:
        return _no_tokens(probs_NE)
    (N, E), K = probs_NE.shape, expert_idx_NK.shape[1]
    _, seq_N = torch.unique(sequence_N, return_inverse=True)
    S = int(seq_N.max()) + 1
    tokens_S = torch.bincount(seq_N, minlength=S).to(probs_NE.dtype)
    chosen_SE = probs_NE.new_zeros(S, E).index_put_(
        (seq_N.repeat_interleave(K), expert_idx_NK.flatten()), probs_NE.new_ones(N * K), accumulate=True)
    f_SE = E * chosen_SE / (K * tokens_S.unsqueeze(1))
    P_SE = probs_NE.new_zeros(S, E).index_add(0, seq_N, probs_NE) / tokens_S.unsqueeze(1)
    return (f_SE * P_SE).sum(dim=1).mean()


def z_loss(logits_NE: torch.Tensor) -> torch.Tensor:
    """ST-MoE router z-loss, mean(logsumexp(logits)^2): keeps logits small."""
    if logits_NE.shape[0] == 0:
        return _no_tokens(logits_NE)
    return logits_NE.logsumexp(dim=-1).square().mean()


def load_balance(load_E: torch.Tensor) -> float:
    """Normalised entropy of the load, 1.0 = uniform, 0.0 = every token on one expert."""
    E = load_E.numel()
    if E < 2 or load_E.sum() <= 0:
        return 1.0
    p = load_E.float() / load_E.sum()
    return float(-(p * p.clamp_min(1e-12).log()).sum() / math.log(E))


def max_violation(load_E: torch.Tensor) -> float:
    """max load / mean load - 1 (0 = perfectly balanced)."""
    mean = load_E.float().mean()
    return float(load_E.max() / mean - 1) if mean > 0 else 0.0


def router_entropy(probs_NE: torch.Tensor) -> float:
    """Mean per-token entropy of the routing distribution, in nats (0.0 without tokens)."""
    if probs_NE.shape[0] == 0:
        return 0.0
    return float(-(probs_NE * probs_NE.clamp_min(1e-12).log()).sum(dim=-1).mean())
