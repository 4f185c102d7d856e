"""Sparse upcycling: start the text stream from all-MiniLM-L6-v2's weights, or from scratch.

Embeddings, attention and norms are copied. Each dense FFN, whose hidden width F splits into
S = cfg.slices slices of width H = F / S, is a sum over its slices:

    FFN(x) = gelu(x W_in + b_in) W_out + b_out = sum_s f_s(x) + b_out,
    f_s(x) = gelu(x W_in[s] + b_in[s]) W_out[s]

The shared experts take slices 0 .. S_sh-1. The G = S - S_sh other slices are laid out R = E / G
times over the routed experts: expert e = r * G + g (replica r) holds slice S_sh + g, with its output
projection scaled by G and the whole b_out as its output bias. Copy mode is the case S = G = 1.

Virtual-group router init: the G experts of a replica share one fresh random router row, so their
logits tie exactly and top-K (K a multiple of G) picks whole replicas, each of its experts with the
same weight a_r, and renormalisation makes sum_r G * a_r = 1. The routed output is then

    sum_r a_r * sum_g (G * f_g(x) + b_out) = (sum_r G * a_r) * (sum_g f_g(x) + b_out)
                                           = sum_g f_g(x) + b_out,

which with the shared slices added is FFN(x), exactly (up to float rounding) whatever the token,
task or routing. The scaling by G undoes the 1/G share of the gate weight each co-chosen slice gets.
Training then breaks the ties and the experts specialise.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from core.moe import FeedForward, MoELayer

from .config import TextStreamConfig
from .model import TextStream
from .tokenizer import minilm_path

# TextStreamConfig field -> the BERT config.json key that must agree with it.
_BERT_SHAPE = {
    "vocab_size": "vocab_size", "dim": "hidden_size", "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads", "ffn_dim": "intermediate_size",
    "max_positions": "max_position_embeddings", "type_vocab_size": "type_vocab_size",
    "norm_eps": "layer_norm_eps",
}


def from_scratch(cfg: TextStreamConfig) -> TextStream:
    """The control: the same model, randomly initialised."""
    return TextStream(cfg)


def upcycle_minilm(cfg: TextStreamConfig, path: str | Path | None = None) -> TextStream:
    """A TextStream holding a BERT checkpoint's weights (MiniLM's by default), its FFNs upcycled to MoE."""
    path = Path(path) if path is not None else minilm_path()
    bert_cfg = json.loads((path / "config.json").read_text())
    mismatched = {f: (getattr(cfg, f), bert_cfg[k])
                  for f, k in _BERT_SHAPE.items() if getattr(cfg, f) != bert_cfg[k]}
    if mismatched or bert_cfg.get("hidden_act") != "gelu":
        raise ValueError(f"config does not match the checkpoint at {path} (ours, theirs): {mismatched}, "
                         f"hidden_act {bert_cfg.get('hidden_act')!r}")

    model = TextStream(cfg)
    state = _bert_to_stream(load_file(path / "model.safetensors"), model)
    missing, unexpected = model.load_state_dict(state, strict=False)
    fresh = [k for k in missing if ".router." not in k]
    if fresh or unexpected:
        raise RuntimeError(f"weight mapping incomplete: unset {fresh}, unknown {unexpected}")
    for layer in model.layers:
        if isinstance(layer.ffn, MoELayer):
            _init_virtual_group_router(layer.ffn, cfg)
    return model


@torch.no_grad()
def _init_virtual_group_router(moe: MoELayer, cfg: TextStreamConfig) -> None:
    """One random router row per replica, repeated over its G experts (see the module docstring)."""
    G = cfg.routed_slices
    row_RD = torch.randn(cfg.num_experts // G, cfg.dim) * cfg.router_init_std
    moe.router.weight_ED.copy_(row_RD.repeat_interleave(G, dim=0))


def _bert_to_stream(bert: dict[str, torch.Tensor], model: TextStream) -> dict[str, torch.Tensor]:
    """Rename (and, for the FFNs, slice) a BERT state dict into TextStream's parameter names."""
    state = {
        "embed.word.weight": bert["embeddings.word_embeddings.weight"],
        "embed.position.weight": bert["embeddings.position_embeddings.weight"],
        "embed.token_type.weight": bert["embeddings.token_type_embeddings.weight"],
        "embed.norm.weight": bert["embeddings.LayerNorm.weight"],
        "embed.norm.bias": bert["embeddings.LayerNorm.bias"],
    }
    for i, layer in enumerate(model.layers):
        src, dst = f"encoder.layer.{i}.", f"layers.{i}."
        for p in ("weight", "bias"):
            state[dst + f"attn.qkv.{p}"] = torch.cat(
                [bert[src + f"attention.self.{name}.{p}"] for name in ("query", "key", "value")])
            state[dst + f"attn.out.{p}"] = bert[src + f"attention.output.dense.{p}"]
            state[dst + f"attn_norm.{p}"] = bert[src + f"attention.output.LayerNorm.{p}"]
            state[dst + f"ffn_norm.{p}"] = bert[src + f"output.LayerNorm.{p}"]
        w_in_FD, b_in_F = bert[src + "intermediate.dense.weight"], bert[src + "intermediate.dense.bias"]
        w_out_DF, b_out_D = bert[src + "output.dense.weight"], bert[src + "output.dense.bias"]
        if isinstance(layer.ffn, FeedForward):
            state.update({dst + "ffn.w_in.weight": w_in_FD, dst + "ffn.w_in.bias": b_in_F,
                          dst + "ffn.w_out.weight": w_out_DF, dst + "ffn.w_out.bias": b_out_D})
        else:
            state.update(_slice_ffn(w_in_FD, b_in_F, w_out_DF, b_out_D, model.cfg, dst + "ffn."))
    return state


def _slice_ffn(w_in_FD: torch.Tensor, b_in_F: torch.Tensor, w_out_DF: torch.Tensor,
               b_out_D: torch.Tensor, cfg: TextStreamConfig, prefix: str) -> dict[str, torch.Tensor]:
    """One dense FFN -> an MoELayer's experts: shared experts take the first slices, routed ones the rest.

    Extra legend: S slices, G routed slices, R replicas, H slice width, F = S * H.
    """
    S, G = cfg.slices, cfg.routed_slices
    R, F = cfg.num_experts // G, w_in_FD.shape[0]
    shared_F = (S - G) * (F // S)
    w_in_SHD, b_in_SH = w_in_FD.view(S, -1, w_in_FD.shape[1]), b_in_F.view(S, -1)
    w_out_SHD = w_out_DF.t().reshape(S, -1, w_out_DF.shape[0])
    state = {
        prefix + "experts.w_in_EFD": w_in_SHD[S - G:].repeat(R, 1, 1),
        prefix + "experts.b_in_EF": b_in_SH[S - G:].repeat(R, 1),
        prefix + "experts.w_out_EHD": G * w_out_SHD[S - G:].repeat(R, 1, 1),
        prefix + "experts.b_out_ED": b_out_D.expand(cfg.num_experts, -1),
    }
    if shared_F:
        state.update({
            prefix + "shared.w_in.weight": w_in_FD[:shared_F], prefix + "shared.w_in.bias": b_in_F[:shared_F],
            prefix + "shared.w_out.weight": w_out_DF[:, :shared_F],
            prefix + "shared.w_out.bias": torch.zeros_like(b_out_D),  # b_out sits in the routed experts
        })
    return state
