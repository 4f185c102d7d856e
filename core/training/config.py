"""Configuration of progressive training: the model, the data, the schedule and each stage's losses."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from core.data import ANSWERS, TOKENIZERS, ShapeWorld, ShapeWorldConfig, WordTokenizer
from core.fusion import FusionConfig
from core.model import MultimodalCoreConfig, config_from_dict
from core.tasks import task_id
from core.text import TextStreamConfig
from core.vision import VisionStreamConfig

STAGES = ("pretrain", "align", "finetune")


def shape_world_core(dim: int = 64) -> MultimodalCoreConfig:
    """A core sized for shape world on a CPU: 2 text layers over the word vocabulary, a narrow 2D Swin,
    no audio stream (shape world is silent), fusion heads over the VQA answers."""
    return MultimodalCoreConfig(
        dim=dim,
        text=TextStreamConfig(vocab_size=WordTokenizer.shape_world().vocab_size, dim=dim, num_layers=2,
                              num_heads=4, ffn_dim=2 * dim, max_positions=64, num_experts=4, top_k=2,
                              dropout=0.0),
        vision=VisionStreamConfig(spatial_dims=2, in_channels=3, embed_dim=12, depths=(1, 1, 1, 1),
                                  num_heads=(3, 3, 3, 3), out_dim=dim),
        audio=None,
        fusion=FusionConfig(dim=dim, num_heads=4, num_layers=2, num_separate=1, num_classes=len(ANSWERS)),
        cross_heads=4,
    )


def minilm_core() -> MultimodalCoreConfig:
    """The full-width core: all-MiniLM-L6-v2 upcycled into the text stream, the default 2D Swin,
    no audio stream, fusion heads over the VQA answers."""
    return MultimodalCoreConfig(text=TextStreamConfig(), text_init="minilm",
                                vision=VisionStreamConfig(spatial_dims=2, in_channels=3), audio=None,
                                fusion=FusionConfig(num_classes=len(ANSWERS)))


def default_core(tokenizer: str) -> MultimodalCoreConfig:
    """The core a tokenizer goes with: MiniLM's WordPiece -> minilm_core(), words -> shape_world_core()."""
    return minilm_core() if tokenizer == "minilm" else shape_world_core()


@dataclass
class TrainConfig:
    model: MultimodalCoreConfig | None = None  # None: default_core(tokenizer)
    data: ShapeWorldConfig = field(default_factory=ShapeWorldConfig)
    tokenizer: str = "word"          # "word": shape world's vocabulary; "minilm": MiniLM's WordPiece
    # Schedule, shared by the stages; each stage starts a fresh optimizer.
    pretrain_steps: int = 300        # optimizer steps of stage 1
    align_steps: int = 300           # optimizer steps of stage 2
    finetune_steps: int = 300        # optimizer steps of stage 3
    batch_size: int = 32             # samples per step (also the number of negatives in InfoNCE)
    lr: float = 1e-3                 # AdamW peak learning rate
    min_lr_ratio: float = 0.1        # cosine decay ends at lr * min_lr_ratio
    warmup_steps: int = 20           # linear warm-up from 0 to lr
    weight_decay: float = 0.01       # AdamW decay, on matrices and embeddings only
    grad_clip: float = 1.0           # max global gradient norm (0 = off)
    bf16: bool = True                # bf16 autocast, on CPU and GPU (MoE routers stay in fp32)
    device: str = "auto"             # "auto" (cuda if available), "cpu", "cuda", ...
    seed: int = 0                    # seeds the weights, every batch and every mask
    # Output.
    out_dir: str = "runs/train"      # metrics.jsonl, summary.json and one folder per stage
    log_every: int = 10              # steps between metrics.jsonl records (the last step and every
                                     # checkpoint step are logged too)
    ckpt_every: int = 100            # steps between train-state checkpoints (the last step always saves)
    progress: bool = True            # tqdm progress bars
    # The task id every MoE gate routes under, per stage (core.tasks.TASKS).
    pretrain_task: str = "captioning"  # shape world is captioned images
    align_task: str = "retrieval"    # CLIP-style alignment is image-text retrieval
    finetune_task: str = "captioning"  # of the suite's tasks, the nearest to answering about an image
    # Stage 1: masked-token prediction (text) and masked-patch reconstruction (vision, SimMIM).
    mask_prob: float = 0.15          # share of real text tokens replaced by [MASK]
    patch_mask_ratio: float = 0.5    # share of image squares blanked out
    mask_patch: int = 8              # side of a blanked square, pixels
    # Stage 2: L = l1 * contrastive + l2 * captioning + l3 * image-text matching.
    l1: float = 1.0
    l2: float = 1.0
    l3: float = 1.0
    init_temperature: float = 0.07   # InfoNCE temperature at init (CLIP's); learned
    # Held-out evaluation after each stage.
    eval_pairs: int = 32             # image-caption pairs for recall@1 (distinct captions; chance 1/n)
    eval_questions: int = 256        # VQA questions for answer accuracy

    def __post_init__(self) -> None:
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(f"tokenizer must be one of {TOKENIZERS}, got {self.tokenizer!r}")
        if self.model is None:
            self.model = default_core(self.tokenizer)
        for stage in STAGES:
            if self.steps(stage) < 1:
                raise ValueError(f"{stage}_steps must be >= 1, got {self.steps(stage)}")
            task_id(self.task(stage))  # raises on an unknown task
        for name in ("log_every", "ckpt_every", "eval_pairs", "eval_questions"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"lr must be > 0 and min_lr_ratio in [0, 1], got {self.lr} and "
                             f"{self.min_lr_ratio}")
        for name in ("warmup_steps", "weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise ValueError("batch_size must be >= 2: contrastive and matching losses need negatives")
        if not (0 < self.mask_prob < 1 and 0 < self.patch_mask_ratio < 1):
            raise ValueError("mask_prob and patch_mask_ratio must lie in (0, 1)")
        if self.data.image_size % self.mask_patch:
            raise ValueError(f"image_size ({self.data.image_size}) must be a multiple of mask_patch "
                             f"({self.mask_patch})")
        if self.model.text is None or self.model.vision is None:
            raise ValueError("shape world training needs the text and vision streams")
        if self.data.image_size % self.model.vision.stride:
            raise ValueError(f"image_size ({self.data.image_size}) must be a multiple of the vision "
                             f"stride ({self.model.vision.stride})")
        num_captions = ShapeWorld(self.data).num_captions
        if self.eval_pairs > num_captions:
            raise ValueError(f"eval_pairs ({self.eval_pairs}) exceeds the {num_captions} distinct "
                             "captions of this shape world")
        fusion = self.model.fusion
        if fusion.strategy == "confidence" and fusion.num_classes != len(ANSWERS):
            raise ValueError(f"confidence fusion heads learn the VQA answers: set fusion.num_classes "
                             f"to {len(ANSWERS)}, got {fusion.num_classes}")

    def steps(self, stage: str) -> int:
        return getattr(self, f"{stage}_steps")

    def task(self, stage: str) -> str:
        return getattr(self, f"{stage}_task")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """Keys left out keep their defaults, at any depth: {"model": {"fusion": {"strategy": "concat"}}}
        changes the fusion strategy of the tokenizer's default core and nothing else."""
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {', '.join(sorted(unknown))}")
        base = default_core(values.get("tokenizer", cls.tokenizer)).to_dict()
        model = MultimodalCoreConfig.from_dict(_overlay(base, values.get("model") or {}))
        data = _overlay(asdict(ShapeWorldConfig()), values.get("data") or {})
        return cls(**{**values, "model": model, "data": config_from_dict(ShapeWorldConfig, data)})

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        """From a .json or .yaml/.yml file holding a dict of TrainConfig fields."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"config file {path} does not exist")
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(text) or {}
        elif path.suffix == ".json":
            values = json.loads(text)
        else:
            raise ValueError(f"config file must be .json, .yaml or .yml, got {path.name}")
        if not isinstance(values, dict):
            raise ValueError(f"{path} must hold a mapping of TrainConfig fields")
        return cls.from_dict(values)


def _overlay(base: dict, over: dict) -> dict:
    """`base` with the entries of `over`, merged into nested dicts where both have one."""
    merged = dict(base)
    for key, value in over.items():
        both_dicts = isinstance(value, dict) and isinstance(base.get(key), dict)
        merged[key] = _overlay(base[key], value) if both_dicts else value
    return merged
