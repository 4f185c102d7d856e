"""Compress a trained model: prune its least-used experts, hold its weights in int8, report the cost.

    compressed, report = compress_model(model, calib_batches, keep_experts=0.5)
    save_checkpoint(compressed, "ckpt-small", kind=kind, config=cfg)  # load_checkpoint rebuilds it

Pruning runs calibration batches through the model, sums every MoE layer's expert load, and keeps
each layer's most-loaded experts: router rows, task offsets, aux-free biases and expert weights are
sliced, so a token whose chosen experts were all kept is routed and combined as before (exactly for
"topk_softmax", "sigmoid" and renormalised "softmax_topk" gates; an unrenormalised "softmax_topk"
weight is a share of all experts and changes). Group-limited routing scores a group by its best two
experts, so pruning a group's expert can send a token to other groups: pruned_config notes it.

Quantisation is weight-only int8, symmetric, one scale per output channel (in the weight's float
dtype), for every nn.Linear
and the stacked routed experts (torch.ao's quantize_dynamic is deprecated in torch 2.13 and never
touched stacked expert weights). Weights rest in int8, 4x smaller; forward dequantises them and
computes in float. Routers, norms, embeddings and convolutions stay float.

Shape legend: E experts, K kept experts, F expert input-projection rows (2H SwiGLU, H GELU),
H expert hidden width, D model width, O and I a linear layer's output and input features.
"""
from __future__ import annotations

import copy
import dataclasses
import statistics
import time
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.moe import GroupedExperts, MoEConfig, MoELayer, grouped_ffn

Evaluate = Callable[[nn.Module], dict[str, float]]


# ---- int8 modules ----

def quantize_int8(w: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8, w ~= q * scale.unsqueeze(dim): one scale per output channel, from the largest
    |w| along the input axis `dim`, held in w's dtype (a bfloat16 layer dequantises to bfloat16)."""
    w32 = w.detach().float()
    scale = (w32.abs().amax(dim=dim).clamp_min(1e-12) / 127).to(w.dtype)
    q = torch.round(w32 / scale.float().unsqueeze(dim)).clamp(-127, 127).to(torch.int8)
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, dim: int) -> torch.Tensor:
    """The float weight, in the scale's dtype (which follows the module's, e.g. after .bfloat16())."""
    return q.to(scale.dtype) * scale.unsqueeze(dim)


class Int8Linear(nn.Module):
    """A float nn.Linear, re-held as an int8 weight with one scale per output feature."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        qweight_OI, scale_O = quantize_int8(linear.weight, dim=1)
        self.in_features, self.out_features = linear.in_features, linear.out_features   # as nn.Linear has them
        self.register_buffer("qweight_OI", qweight_OI)
        self.register_buffer("scale_O", scale_O)
        self.bias = _copy_parameter(linear.bias)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantised [O, I] weight: modules that read `.weight` (nn.TransformerEncoderLayer's
        fast path) keep working."""
        return dequantize_int8(self.qweight_OI, self.scale_O, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class Int8GroupedExperts(nn.Module):
    """Float GroupedExperts, re-held as int8 stacked weights; same call: experts(x_AD, counts)."""

    def __init__(self, experts: GroupedExperts):
        super().__init__()
        qw_in_EFD, scale_in_EF = quantize_int8(experts.w_in_EFD, dim=2)     # output channels: F rows
        qw_out_EHD, scale_out_ED = quantize_int8(experts.w_out_EHD, dim=1)  # output channels: D columns
        self.register_buffer("qw_in_EFD", qw_in_EFD)
        self.register_buffer("scale_in_EF", scale_in_EF)
        self.register_buffer("qw_out_EHD", qw_out_EHD)
        self.register_buffer("scale_out_ED", scale_out_ED)
        self.b_in_EF = _copy_parameter(experts.b_in_EF)
        self.b_out_ED = _copy_parameter(experts.b_out_ED)

    def forward(self, x_AD: torch.Tensor, counts: list[int]) -> torch.Tensor:
        w_in_EFD = dequantize_int8(self.qw_in_EFD, self.scale_in_EF, dim=2)
        w_out_EHD = dequantize_int8(self.qw_out_EHD, self.scale_out_ED, dim=1)
        return grouped_ffn(x_AD, w_in_EFD, w_out_EHD, counts, self.b_in_EF, self.b_out_ED)


def _copy_parameter(p: torch.Tensor | None) -> nn.Parameter | None:
    return nn.Parameter(p.detach().clone()) if p is not None else None


# Float module type -> its int8 stand-in, built from it. Exact types only: subclasses
# (MultiheadAttention's out_proj, expert-parallel shards) stay float.
INT8_MODULES: dict[type, type] = {nn.Linear: Int8Linear, GroupedExperts: Int8GroupedExperts}


def quantize_model(model: nn.Module) -> nn.Module:
    """Swap every nn.Linear and GroupedExperts inside `model` for its int8 stand-in, in place.

    Returns `model`, or the stand-in when `model` itself is one of those modules.
    """
    targets = [name for name, m in model.named_modules() if type(m) in INT8_MODULES]
    for name in targets:
        module = model.get_submodule(name)
        model = _replace(model, name, INT8_MODULES[type(module)](module))
    return model


def _replace(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put `new` at `name` inside `model`, in the train/eval mode of the module it replaces (a fresh
    MoELayer in an eval model would otherwise apply its capacity and count load for a bias step);
    returns the model (`new` when `name` is "", the root)."""
    new.train(model.get_submodule(name).training)
    if not name:
        return new
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, new)
    return model


# ---- calibration ----

def moe_layers(model: nn.Module) -> list[tuple[str, MoELayer]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, MoELayer)]


def _as_args(batch) -> tuple:
    """A batch as forward arguments: a tuple or list of them, or a lone tensor."""
    return tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)


def main_output(out) -> torch.Tensor:
    """The main tensor of a forward's result: itself, the first element of a tuple (MoELayer's y),
    or the first field of an output dataclass (TextOutput.hidden, VisionOutput.tokens, ...)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return main_output(out[0])
    if dataclasses.is_dataclass(out):
        return main_output(getattr(out, dataclasses.fields(out)[0].name))
    raise TypeError(f"cannot find the output tensor in a {type(out).__name__}")


@torch.inference_mode()
def calibrate(model: nn.Module, batches: Sequence[tuple]
              ) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """Every MoE layer's expert load summed over `batches` (by module name), and the model's outputs."""
    load = {name: torch.zeros(m.cfg.num_experts, dtype=torch.long) for name, m in moe_layers(model)}

    def count(name: str):
        def hook(module: nn.Module, args: tuple, output: tuple) -> None:
            load[name] += output[1].expert_load.cpu()
        return hook

    hooks = [m.register_forward_hook(count(name)) for name, m in moe_layers(model)]
    try:
        outputs = [main_output(model(*batch)) for batch in batches]
    finally:
        for hook in hooks:
            hook.remove()
    return load, outputs


# ---- expert pruning ----

def experts_to_keep(load_E: torch.Tensor, keep: int | float) -> torch.Tensor:
    """keep_K: the `keep` (a count, or a fraction of E) most-loaded experts, ascending; ties go to
    the lower index."""
    E = load_E.numel()
    K = min(keep, E) if isinstance(keep, int) else max(1, round(keep * E))
    return torch.argsort(load_E, descending=True, stable=True)[:K].sort().values


def pruned_config(cfg: MoEConfig, keep_K: torch.Tensor) -> tuple[MoEConfig, list[str]]:
    """The config of a layer holding only experts keep_K, and what routing had to give up for it.

    Group-limited routing survives when every group keeps the same number of experts (the kept
    experts stay in their groups); otherwise it falls back to one group. top_k is clipped to the
    experts a token can still reach.
    """
    K, notes = keep_K.numel(), []
    groups, top_groups = cfg.num_groups, cfg.top_groups
    if groups > 1:
        kept_G = torch.bincount(keep_K // cfg.experts_per_group, minlength=groups)
        if (kept_G != K // groups).any():
            notes.append(f"kept experts per group {kept_G.tolist()} are uneven: "
                         f"group-limited routing ({groups} groups) turned off")
            groups = top_groups = 1
        elif K < cfg.num_experts:
            notes.append(f"group-limited routing ({groups} groups) kept, but a group's score (its best two "
                         "experts) changes with its pruned experts: tokens may reach other groups than before")
    top_k = min(cfg.top_k, top_groups * (K // groups))
    if top_k < cfg.top_k:
        notes.append(f"top_k clipped from {cfg.top_k} to {top_k}")
    cfg = dataclasses.replace(cfg, num_experts=K, top_k=top_k, num_groups=groups, top_groups=top_groups)
    return cfg, notes


# The MoEConfig fields pruning changes: a pruned layer's layout.
PRUNED_FIELDS = ("num_experts", "top_k", "num_groups", "top_groups")


# Axis of the expert index in each expert-indexed tensor of an MoELayer's state dict.
_EXPERT_AXIS = {
    "router.weight_ED": 0, "router.task_offset_TE": 1, "router.expert_bias_E": 0,
    "experts.w_in_EFD": 0, "experts.w_out_EHD": 0, "experts.b_in_EF": 0, "experts.b_out_ED": 0,
}


@torch.no_grad()
def prune_layer(layer: MoELayer, keep_K: torch.Tensor) -> tuple[MoELayer, list[str]]:
    """A new MoELayer with only experts keep_K (ascending) of `layer`, and the routing notes."""
    if type(layer.experts) is not GroupedExperts:
        raise ValueError(f"can only prune float single-process experts, not {type(layer.experts).__name__}"
                         " (prune before quantising; gather expert-parallel weights first)")
    cfg, notes = pruned_config(layer.cfg, keep_K)
    keep_K = keep_K.to(layer.router.weight_ED.device)
    state = {key: t.index_select(_EXPERT_AXIS[key], keep_K) if key in _EXPERT_AXIS else t.clone()
             for key, t in layer.state_dict().items()}
    pruned = MoELayer(cfg).to(layer.router.weight_ED.device)   # buffers outside the state dict follow too
    pruned.load_state_dict(state, assign=True)   # each tensor keeps its dtype and device (a bf16 layer stays bf16)
    return pruned, notes


def prune_experts(model: nn.Module, load: dict[str, torch.Tensor], keep: int | float
                  ) -> tuple[nn.Module, dict[str, list[int]], list[str]]:
    """Keep the `keep` most-loaded experts of every MoE layer, by its `load` (from `calibrate`).

    Returns the model (a new one when `model` is itself an MoELayer), the experts each layer
    kept (original numbering) and notes on routing changes, each naming its layer.
    """
    kept, notes = {}, []
    for name, layer in moe_layers(model):
        keep_K = experts_to_keep(load[name], keep)
        if keep_K.numel() == layer.cfg.num_experts:
            continue
        pruned, layer_notes = prune_layer(layer, keep_K)
        model = _replace(model, name, pruned)
        kept[name] = keep_K.tolist()
        notes += [f"{name or 'model'}: {note}" for note in layer_notes]
    return model, kept, notes


# ---- the structure a checkpoint records ----

def describe(model: nn.Module) -> dict:
    """What a checkpoint records beyond the model config: the expert layout of every MoE layer
    (pruning changes it) and the modules held in int8. `rebuild` replays it on a fresh model."""
    return {
        "moe_layers": {name: {f: getattr(m.cfg, f) for f in PRUNED_FIELDS}
                       for name, m in moe_layers(model)},
        "int8_modules": [name for name, m in model.named_modules() if type(m) in INT8_MODULES.values()],
    }


def rebuild(model: nn.Module, structure: dict) -> nn.Module:
    """Give a freshly built model the MoE layers and int8 modules `structure` (from `describe`)
    records, ready to load the weights saved with it. Returns the model (new when the root changes)."""
    for name, layout in structure["moe_layers"].items():
        layer = model.get_submodule(name)
        cfg = dataclasses.replace(layer.cfg, **layout)
        if cfg != layer.cfg:
            model = _replace(model, name, MoELayer(cfg))
    for name in structure["int8_modules"]:
        module = model.get_submodule(name)
        if type(module) not in INT8_MODULES:
            raise ValueError(f"module {name!r} is a {type(module).__name__}, which has no int8 form")
        model = _replace(model, name, INT8_MODULES[type(module)](module))
    return model


# ---- measuring ----

def state_nbytes(model: nn.Module) -> int:
    """Bytes of the parameters and persistent buffers (what a checkpoint stores), shared storage once."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for t in model.state_dict().values()}
    return sum(storages.values())


def num_experts(model: nn.Module) -> int:
    """Routed experts, summed over the MoE layers."""
    return sum(m.cfg.num_experts for _, m in moe_layers(model))


@torch.inference_mode()
def median_latency_ms(model: nn.Module, args: tuple, rounds: int = 5) -> float:
    """Median wall time of `model(*args)` over `rounds` runs, after one warm-up run."""
    model(*args)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        model(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def relative_error(outputs: Sequence[torch.Tensor], reference: Sequence[torch.Tensor]) -> float:
    """||outputs - reference|| / ||reference||, over all batches together."""
    err = sum((y.float() - r.float()).pow(2).sum() for y, r in zip(outputs, reference))
    norm = sum(r.float().pow(2).sum() for r in reference)
    return float((err / norm.clamp_min(1e-30)).sqrt())


@dataclasses.dataclass
class CompressionReport:
    experts_before: int              # routed experts, summed over the MoE layers
    experts_after: int
    bytes_before: int                # parameter and buffer bytes, what a checkpoint stores
    bytes_after: int
    latency_ms_before: float         # median forward time on the first calibration batch
    latency_ms_after: float
    output_rel_error: float          # ||y_after - y_before|| / ||y_before|| on the calibration batches
    quality_before: dict[str, float]  # the caller's evaluate(model) before and after; {} without one
    quality_after: dict[str, float]
    kept_experts: dict[str, list[int]]  # pruned MoE layer name -> the experts it kept (old numbering)
    notes: list[str]                 # routing changes pruning forced (groups off, top_k clipped)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_keep(keep: int | float | None) -> None:
    if keep is None:
        return
    if isinstance(keep, bool) or not isinstance(keep, (int, float)):
        raise ValueError(f"keep_experts must be an int, a float or None, got {keep!r}")
    if isinstance(keep, int) and keep < 1:
        raise ValueError(f"keep_experts as a count must be >= 1, got {keep}")
    if isinstance(keep, float) and not 0 < keep <= 1:
        raise ValueError(f"keep_experts as a fraction must lie in (0, 1], got {keep}")


def compress_model(model: nn.Module, calib_batches: Iterable, keep_experts: int | float | None = 0.5,
                   quantize: bool = True, evaluate: Evaluate | None = None,
                   timing_rounds: int = 5) -> tuple[nn.Module, CompressionReport]:
    """A compressed copy of `model` (which is left as it is) and the report of what it cost and saved.

    calib_batches: forward arguments, one tuple per batch (a lone tensor is a batch of one argument).
    keep_experts: per MoE layer, a count (int) or a fraction (float in (0, 1]) of its experts to
        keep, the most loaded on the calibration batches; None prunes nothing.
    quantize: int8 weights for every nn.Linear and the routed experts.
    evaluate: model -> {metric: value}, e.g. task accuracy on held-out data, run before and after.
    """
    _check_keep(keep_experts)
    batches = [_as_args(b) for b in calib_batches]
    if not batches:
        raise ValueError("compress_model needs at least one calibration batch")
    model = copy.deepcopy(model).eval()
    load, reference = calibrate(model, batches)
    experts_before, bytes_before = num_experts(model), state_nbytes(model)
    latency_before = median_latency_ms(model, batches[0], timing_rounds)
    quality_before = evaluate(model) if evaluate else {}

    kept, notes = {}, []
    if keep_experts is not None:
        model, kept, notes = prune_experts(model, load, keep_experts)
    if quantize:
        model = quantize_model(model)

    outputs = calibrate(model, batches)[1]
    return model, CompressionReport(
        experts_before=experts_before, experts_after=num_experts(model),
        bytes_before=bytes_before, bytes_after=state_nbytes(model),
        latency_ms_before=latency_before,
        latency_ms_after=median_latency_ms(model, batches[0], timing_rounds),
        output_rel_error=relative_error(outputs, reference),
        quality_before=quality_before, quality_after=evaluate(model) if evaluate else {},
        kept_experts=kept, notes=notes)
