"""The shared multimodal core: text, vision and audio streams in one token space, fused per task.

    from core.model import MultimodalCore, MultimodalCoreConfig
    core = MultimodalCore(MultimodalCoreConfig())
    core.add_head("answer", nn.Linear(core.cfg.dim, 13))          # apps own their heads
    out = core(text=tokens, images=images, task="captioning")     # tokens: a core.text.TokenBatch
    out = core(audio=AudioBatch.from_clips(clips), task="captioning")  # clips of any lengths
    loss = F.cross_entropy(core.heads["answer"](out.fused), labels) + out.aux_loss

Each stream runs under the task id, so it reaches every MoE gate; the streams' tokens are projected
to the shared width, attend across modalities (CrossModalAttention) and are fused into one vector
(DynamicFusion). Padding (text's attention_mask, audio given as a core.audio.AudioBatch with its
lengths) is masked out all the way: a sample's output does not depend on how its batch was padded.

Shape legend: B batch, T_m tokens of modality m, D shared width, M modalities fused.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import TypeVar

import torch
import torch.nn as nn

from core.audio import AudioBatch, AudioStream, AudioStreamConfig
from core.fusion import MODALITIES, CrossModalAttention, DynamicFusion, FusionConfig, FusionOutput
from core.fusion.dynamic import masked_mean
from core.moe import MoELayer, MoEStats
from core.tasks import NUM_TASKS, task_id, task_ids
from core.text import TextStream, TextStreamConfig, upcycle_minilm
from core.text.tokenizer import TokenBatch
from core.vision import VisionStream, VisionStreamConfig

TEXT_INITS = ("scratch", "minilm")
Task = str | int | torch.Tensor | None  # a name in core.tasks.TASKS, its id, or ids [B]
Config = TypeVar("Config")


@dataclass
class MultimodalCoreConfig:
    dim: int = 384                   # shared token width D (MiniLM's); streams of another width are projected
    # A stream set to None is left out of the core.
    text: TextStreamConfig | None = field(default_factory=TextStreamConfig)
    vision: VisionStreamConfig | None = field(
        default_factory=lambda: VisionStreamConfig(spatial_dims=2, in_channels=3))
    audio: AudioStreamConfig | None = field(default_factory=AudioStreamConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)  # its modalities are the streams present
    cross_heads: int = 6             # heads of the cross-modal attention before fusion
    text_init: str = "scratch"       # "minilm": upcycle all-MiniLM-L6-v2 into the text stream

    def __post_init__(self) -> None:
        if not self.modalities:
            raise ValueError("the core needs at least one of the text, vision and audio streams")
        if self.vision is not None and self.vision.spatial_dims != 2:
            raise ValueError(f"the core's vision stream takes 2D images, got spatial_dims "
                             f"{self.vision.spatial_dims}")
        if self.fusion.dim != self.dim:
            raise ValueError(f"fusion.dim ({self.fusion.dim}) must be the shared dim ({self.dim})")
        if self.dim % self.cross_heads:
            raise ValueError(f"dim ({self.dim}) must divide into cross_heads ({self.cross_heads})")
        if self.text_init not in TEXT_INITS:
            raise ValueError(f"text_init must be one of {TEXT_INITS}, got {self.text_init!r}")
        if self.text_init == "minilm" and self.text is None:
            raise ValueError("text_init='minilm' needs a text stream")

    @property
    def modalities(self) -> tuple[str, ...]:
        """The streams present, in MODALITIES order."""
        return tuple(m for m in MODALITIES if getattr(self, m) is not None)

    def stream_dim(self, modality: str) -> int:
        """Width of a stream's tokens, before the projection into the shared space."""
        cfg = getattr(self, modality)
        return cfg.out_dim if modality == "vision" else cfg.dim

    def fusion_config(self) -> FusionConfig:
        return replace(self.fusion, modalities=self.modalities)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> MultimodalCoreConfig:
        """Inverse of `to_dict`; keys left out keep their defaults, and a stream given as None is off."""
        nested = {"text": TextStreamConfig, "vision": VisionStreamConfig, "audio": AudioStreamConfig,
                  "fusion": FusionConfig}
        kwargs = {k: (config_from_dict(nested[k], v) if k in nested and v is not None else v)
                  for k, v in values.items()}
        return config_from_dict(cls, kwargs)


def config_from_dict(cls: type[Config], values: dict) -> Config:
    """A config dataclass from a dict of its fields (as JSON or YAML give them: lists for tuples)."""
    unknown = set(values) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {', '.join(sorted(unknown))}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


@dataclass
class Encoding:
    """What the streams give, in the shared space, before any modality sees another."""
    tokens: dict[str, torch.Tensor]  # modality -> [B, T_m, D]
    masks: dict[str, torch.Tensor]   # modality -> [B, T_m] bool, True = real token
    pooled: dict[str, torch.Tensor]  # modality -> [B, D], mean of the real tokens
    aux_loss: torch.Tensor           # scalar: the aux losses of every MoE layer that ran, summed
    stats: dict[str, MoEStats]       # MoE layer name (as in named_modules) -> its stats


@dataclass
class CoreOutput:
    fused: torch.Tensor                       # [B, D], one vector per sample
    pooled: dict[str, torch.Tensor]           # modality -> [B, D], each stream's own summary
    tokens: dict[str, torch.Tensor]           # modality -> [B, T_m, D], the streams' tokens
    masks: dict[str, torch.Tensor]            # modality -> [B, T_m] bool, True = real token
    aux_loss: torch.Tensor                    # scalar: the aux losses of every MoE layer that ran, summed
    stats: dict[str, MoEStats]                # MoE layer name -> its stats
    modality_weights: torch.Tensor | None     # [B, M] (task_gate, confidence; else None)
    fusion_extra: dict[str, torch.Tensor]     # FusionOutput.extra (the confidence heads' logits, ...)


def _batch_size(x: TokenBatch | AudioBatch | torch.Tensor) -> int:
    if isinstance(x, TokenBatch):
        return x.input_ids.shape[0]
    return (x.audio if isinstance(x, AudioBatch) else x).shape[0]


def resolve_task(task: Task) -> int | torch.Tensor | None:
    """A task name -> its id; ids pass through, checked to be integers in [0, NUM_TASKS)."""
    if isinstance(task, str):
        return task_id(task)
    if task is not None:
        task_ids(task, NUM_TASKS)
    return task


class MultimodalCore(nn.Module):
    """forward(text=TokenBatch, images=[B, 3, H, W], audio=[B, samples] | AudioBatch, task=...) -> CoreOutput.

    Any subset of the present streams may be given. `heads` is a registry of task heads that the
    apps (and the trainer) add with `add_head`; they are saved and loaded with the core.
    """

    def __init__(self, cfg: MultimodalCoreConfig):
        super().__init__()
        self.cfg = cfg
        streams: dict[str, nn.Module] = {}
        if cfg.text is not None:
            streams["text"] = upcycle_minilm(cfg.text) if cfg.text_init == "minilm" else TextStream(cfg.text)
        if cfg.vision is not None:
            streams["vision"] = VisionStream(cfg.vision)
        if cfg.audio is not None:
            streams["audio"] = AudioStream(cfg.audio)
        self.streams = nn.ModuleDict(streams)
        self.proj = nn.ModuleDict({m: nn.Identity() if cfg.stream_dim(m) == cfg.dim
                                   else nn.Linear(cfg.stream_dim(m), cfg.dim) for m in cfg.modalities})
        self.cross = CrossModalAttention(cfg.dim, cfg.cross_heads, cfg.modalities)
        self.fusion = DynamicFusion(cfg.fusion_config())
        self.heads = nn.ModuleDict()
        # Stream -> names of its MoE layers in forward order, the order its stats come in.
        self._moe_names = {m: [f"streams.{m}.{name}" for name, module in stream.named_modules()
                               if isinstance(module, MoELayer)] for m, stream in self.streams.items()}

    def add_head(self, name: str, head: nn.Module) -> nn.Module:
        """Register a task head under `name` (once); returns it."""
        if name in self.heads:
            raise ValueError(f"the core already has a head named {name!r}")
        self.heads[name] = head
        return head

    def encode(self, text: TokenBatch | None = None, images: torch.Tensor | None = None,
               audio: torch.Tensor | AudioBatch | None = None, task: Task = None) -> Encoding:
        """Run the streams given, each under the task id, and project their tokens to the shared width.

        `audio` is a plain tensor (every sample valid) or an AudioBatch (padded clips with lengths)."""
        inputs = {m: x for m, x in zip(MODALITIES, (text, images, audio)) if x is not None}
        if not inputs:
            raise ValueError(f"give at least one of {self.cfg.modalities}")
        absent = [m for m in inputs if m not in self.streams]
        if absent:
            raise ValueError(f"this core has no {absent} stream; it has {self.cfg.modalities}")
        batch = {m: _batch_size(x) for m, x in inputs.items()}
        if len(set(batch.values())) > 1:
            raise ValueError(f"the inputs disagree on the batch size: {batch}")
        task = resolve_task(task)
        tokens, masks, pooled, stats, aux_losses = {}, {}, {}, {}, []
        for m, x in inputs.items():
            stream_tokens, valid_BT, out = self._run_stream(m, x, task)
            tokens[m], masks[m] = self.proj[m](stream_tokens), valid_BT
            pooled[m] = masked_mean(tokens[m], valid_BT)
            aux_losses.append(out.aux_loss.float())
            if len(out.stats) != len(self._moe_names[m]):
                raise RuntimeError(f"the {m} stream gave {len(out.stats)} MoE stats for its "
                                   f"{len(self._moe_names[m])} MoE layers")
            stats.update(zip(self._moe_names[m], out.stats))
        return Encoding(tokens, masks, pooled, torch.stack(aux_losses).sum(), stats)

    def _run_stream(self, modality: str, x: TokenBatch | AudioBatch | torch.Tensor,
                    task: int | torch.Tensor | None):
        """(stream tokens [B, T_m, d_m] in the stream's width, mask [B, T_m], the stream's output)."""
        stream = self.streams[modality]
        if modality == "text":
            out = stream(x.input_ids, x.attention_mask, task_id=task)
            return out.hidden, x.attention_mask.bool(), out
        if modality == "audio":
            audio, lengths = (x.audio, x.lengths) if isinstance(x, AudioBatch) else (x, None)
            out = stream(audio, task, lengths=lengths)
            return out.tokens, out.mask, out
        out = stream(x, task)
        valid_BT = torch.ones(out.tokens.shape[:2], dtype=torch.bool, device=out.tokens.device)
        return out.tokens, valid_BT, out

    def fuse(self, tokens: dict[str, torch.Tensor], masks: dict[str, torch.Tensor],
             task: Task = None) -> FusionOutput:
        """Cross-modal attention over the tokens given, then dynamic fusion into one vector per sample."""
        attended = self.cross(tokens, masks)
        return self.fusion(attended, masks, resolve_task(task))

    def forward(self, text: TokenBatch | None = None, images: torch.Tensor | None = None,
                audio: torch.Tensor | AudioBatch | None = None, task: Task = None) -> CoreOutput:
        enc = self.encode(text, images, audio, task)
        fusion = self.fuse(enc.tokens, enc.masks, task)
        return CoreOutput(fusion.fused, enc.pooled, enc.tokens, enc.masks, enc.aux_loss, enc.stats,
                          fusion.modality_weights, fusion.extra)

