"""Progressive training of the multimodal core on shape world: pretrain, align, finetune.

    from core.training import TrainConfig, Trainer
    summary = Trainer(TrainConfig(out_dir="runs/demo", align_steps=200)).run(("align",))
    summary["align"]["image_to_text_r1"]

Or from the shell: `moe-suite train --stage all --out runs/demo`.

The names below load on first use, so that `moe-suite` can import the `train` command
(core.training.cli) without importing torch.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    ".config": ("STAGES", "TrainConfig", "default_core", "minilm_core", "shape_world_core"),
    ".loop": ("KIND", "MetricsLog", "Trainer", "build_model", "calibration_inputs", "lr_at", "make_optimizer"),
    ".stages": ("Batch", "Objectives", "StepOutput", "add_training_heads", "make_batch", "mask_patches",
                "mask_tokens"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = list(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULE_OF[name], __name__), name)
