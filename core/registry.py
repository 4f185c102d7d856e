"""Model registry: a model kind name -> its config dataclass, its builder and a synthetic batch.

Checkpoints name their kind, and `load_checkpoint` rebuilds the model from here. The suite's own
entries name their classes as "module:attribute" strings, imported on first use: importing the
registry does not import every model (MONAI, transformers), and a model whose module fails to
import breaks only its own kind. Adding a model is one line:

    register("vision_stream", "core.vision:VisionStreamConfig", "core.vision:VisionStream", _vision_inputs)

Kinds defined outside core (the apps', a plugin package's) register when their module is imported. So
that loading such a checkpoint does not depend on what the caller imported first, and without core
importing apps, a package names the module that registers each of its kinds as an entry point:

    [project.entry-points."moe_suite.models"]
    video_planner = "apps.video_generation.planner"

and `spec` imports it the first time the kind is asked for.
"""
from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

# A synthetic batch for a config: (config, batch size, generator) -> positional forward arguments.
InputFn = Callable[[Any, int, torch.Generator], tuple]


def _resolve(ref: str | Callable) -> Any:
    """A "package.module:attribute" reference, imported; anything else is returned as it is."""
    if not isinstance(ref, str):
        return ref
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class ModelSpec:
    config: str | type               # config dataclass, or "module:Class"
    build: str | Callable            # config -> nn.Module, or "module:function"
    inputs: str | InputFn | None = None  # synthetic forward arguments (calibration, timing); None = none known
    evaluate: str | Callable | None = None  # (model, config) -> task metrics on held-out data; None = none known
    base: str | Callable | None = None  # config -> the starting point that delta checkpoints are stored
                                        # against (e.g. upcycled from packaged weights); None = full only

    @property
    def config_class(self) -> type:
        return _resolve(self.config)

    def build_model(self, config: Any) -> nn.Module:
        return _resolve(self.build)(config)


MODELS: dict[str, ModelSpec] = {}
ENTRY_POINT_GROUP = "moe_suite.models"   # kind name -> the module whose import registers it


def register(kind: str, config: str | type, build: str | Callable, inputs: str | InputFn | None = None,
             evaluate: str | Callable | None = None, base: str | Callable | None = None) -> None:
    """Make `kind` loadable: `build(config)` must rebuild the model whose weights a checkpoint holds;
    `base(config)`, if given, must rebuild the same deterministic starting point on every machine."""
    if kind in MODELS:
        raise ValueError(f"model kind {kind!r} is already registered")
    MODELS[kind] = ModelSpec(config, build, inputs, evaluate, base)


def spec(kind: str) -> ModelSpec:
    if kind not in MODELS:
        for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP, name=kind):
            try:
                entry.load()   # importing the module registers the kind
            except ImportError as exc:
                raise ValueError(f"model kind {kind!r}: its module {entry.value} cannot be imported "
                                 f"({type(exc).__name__}: {exc})") from exc
    try:
        return MODELS[kind]
    except KeyError:
        raise ValueError(f"unknown model kind {kind!r}; known: {', '.join(known_kinds())}") from None


def known_kinds() -> list[str]:
    """Every kind that can be loaded: those registered so far and those installed packages declare."""
    declared = {entry.name for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    return sorted(set(MODELS) | declared)


def check_config(kind: str, config: Any) -> None:
    """Raise unless `config` is an instance of `kind`'s config dataclass."""
    config_class = spec(kind).config_class
    if not isinstance(config, config_class):
        raise ValueError(f"kind {kind!r} takes a {config_class.__name__}, got a {type(config).__name__}")


def build(kind: str, config: Any) -> nn.Module:
    """A freshly initialised model of `kind`."""
    check_config(kind, config)
    return spec(kind).build_model(config)


def build_base(kind: str, config: Any) -> nn.Module:
    """The starting point that `kind`'s delta checkpoints are stored against."""
    check_config(kind, config)
    base = spec(kind).base
    if base is None:
        raise ValueError(f"model kind {kind!r} registers no base; it has full checkpoints only")
    with torch.random.fork_rng(devices=[]):  # a base may seed torch; the caller's stream stays as it was
        return _resolve(base)(config)


def synthetic_inputs(kind: str, config: Any, batch_size: int, generator: torch.Generator) -> tuple:
    """Random forward arguments for a model of `kind`, shaped by its config."""
    inputs = spec(kind).inputs
    if inputs is None:
        raise ValueError(f"model kind {kind!r} has no synthetic inputs; supply calibration data")
    return _resolve(inputs)(config, batch_size, generator)


def task_metrics(kind: str, model: nn.Module, config: Any) -> dict[str, float]:
    """Task metrics of a model of `kind` on its held-out data ({} when the kind has no evaluation)."""
    evaluate = spec(kind).evaluate
    return _resolve(evaluate)(model, config) if evaluate is not None else {}


def _task_ids(num_tasks: int, batch_size: int, g: torch.Generator) -> torch.Tensor | None:
    """One random task per sample for task-aware gates, None for task-free ones."""
    return torch.randint(num_tasks, (batch_size,), generator=g) if num_tasks else None


def _moe_inputs(cfg, B: int, g: torch.Generator) -> tuple:
    return torch.randn(B, 16, cfg.dim, generator=g), _task_ids(cfg.num_tasks, B, g)


def _text_inputs(cfg, B: int, g: torch.Generator) -> tuple:
    T = min(16, cfg.max_positions)
    input_ids_BT = torch.randint(cfg.vocab_size, (B, T), generator=g)
    return input_ids_BT, torch.ones_like(input_ids_BT), _task_ids(cfg.num_tasks, B, g)


def _vision_inputs(cfg, B: int, g: torch.Generator) -> tuple:
    # Two tokens along every axis: the smallest input with more than one token.
    images = torch.randn(B, cfg.in_channels, *(2 * cfg.stride,) * cfg.spatial_dims, generator=g)
    return images, _task_ids(cfg.num_tasks, B, g)


def _audio_inputs(cfg, B: int, g: torch.Generator) -> tuple:
    length = cfg.min_length(16)  # the samples that make 16 tokens
    shape = (B, length) if cfg.in_channels == 1 else (B, cfg.in_channels, length)
    return torch.randn(*shape, generator=g), _task_ids(cfg.num_tasks, B, g)


def _fusion_inputs(cfg, B: int, g: torch.Generator) -> tuple:
    tokens = {m: torch.randn(B, 8, cfg.dim, generator=g) for m in cfg.modalities}
    return tokens, None, _task_ids(cfg.num_tasks, B, g)


register("moe_layer", "core.moe:MoEConfig", "core.moe:MoELayer", _moe_inputs)
register("text_stream", "core.text:TextStreamConfig", "core.text:from_scratch", _text_inputs)
register("vision_stream", "core.vision:VisionStreamConfig", "core.vision:VisionStream", _vision_inputs)
register("audio_stream", "core.audio:AudioStreamConfig", "core.audio:AudioStream", _audio_inputs)
register("fusion", "core.fusion:FusionConfig", "core.fusion:DynamicFusion", _fusion_inputs)
register("shape_world_core", "core.training.config:TrainConfig", "core.training.loop:build_model",
         "core.training.loop:calibration_inputs", "core.training.loop:held_out_metrics")
register("text_classifier", "core.text.classifier:ClassifierConfig", "core.text.classifier:SentenceClassifier",
         "core.text.classifier:synthetic_inputs", base="core.text.classifier:upcycled_base")
