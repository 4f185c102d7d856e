"""Every registered model kind, core's and (through the `moe_suite.models` entry points) the apps': built from a
tiny config by the registry, run forward on the registry's synthetic inputs, and backward into its weights.
A new kind must be given a tiny config here, or be listed with the reason it has no synthetic inputs."""
from dataclasses import fields, is_dataclass

import pytest
import torch

from core import registry
from core.audio import AudioStreamConfig
from core.fusion import FusionConfig
from core.model import MultimodalCoreConfig
from core.moe import MoEConfig
from core.text import TextStreamConfig
from core.vision import VisionStreamConfig

D = 24
TEXT = dict(vocab_size=50, dim=D, num_layers=1, num_heads=2, ffn_dim=32, max_positions=16, num_experts=4, top_k=2,
            dropout=0.0)
SWIN = dict(embed_dim=12, depths=(1, 1, 1, 1), num_heads=(3, 3, 3, 3), out_dim=D, moe_stages=(3,))


def _tiny_configs() -> dict:
    from apps.medical_imaging.detection import DetectorConfig
    from apps.medical_imaging.malignancy import MalignancyConfig
    from core.text.classifier import ClassifierConfig
    from core.training.config import TrainConfig

    return {
        "moe_layer": MoEConfig(dim=D, hidden_dim=16, num_experts=4, top_k=2, num_tasks=3),
        "text_stream": TextStreamConfig(**TEXT),
        "vision_stream": VisionStreamConfig(spatial_dims=2, in_channels=3, **SWIN),
        "audio_stream": AudioStreamConfig(conv_dim=16, dim=D, num_heads=2, expert_hidden_dim=16,
                                          kernel_sizes=(10, 8), strides=(5, 4)),
        "fusion": FusionConfig(dim=D, num_heads=2),
        "shape_world_core": TrainConfig(model=MultimodalCoreConfig(
            dim=D, text=TextStreamConfig(**{**TEXT, "vocab_size": 200, "max_positions": 64}),
            vision=VisionStreamConfig(spatial_dims=2, in_channels=3, **SWIN),
            fusion=FusionConfig(dim=D, num_heads=2), cross_heads=2)),
        "text_classifier": ClassifierConfig(labels=("yes", "no"), stream=TextStreamConfig(**TEXT)),
        "nodule_detector": DetectorConfig(),          # its Swin is already the small one
        "malignancy_classifier": MalignancyConfig(),
    }


# Kinds whose model has no single forward to feed (parts run in steps): their own tests train and run them.
NO_SYNTHETIC_INPUTS = {
    "video_planner": "a reader and a time axis run in turn on MiniLM states (tests/test_video_planner.py)",
    "video_generator": "a layout network and a sprite decoder queried per frame (tests/test_video_generate.py)",
    "video_captioner": "an encoder and a decoder run in turn (tests/test_video_caption.py)",
}


def test_every_known_kind_is_covered_here():
    assert set(registry.known_kinds()) == set(_tiny_configs()) | set(NO_SYNTHETIC_INPUTS)


def _float_outputs(out) -> list[torch.Tensor]:
    """The floating-point tensors that carry gradient anywhere in a forward's output."""
    if isinstance(out, torch.Tensor):
        return [out] if out.is_floating_point() and out.requires_grad else []
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _float_outputs(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _float_outputs(o)]
    if is_dataclass(out):
        return [t for f in fields(out) for t in _float_outputs(getattr(out, f.name))]
    return []


@pytest.mark.parametrize("kind", sorted(_tiny_configs()))
def test_forward_and_backward_of_every_kind_at_tiny_size(kind):
    cfg = _tiny_configs()[kind]
    torch.manual_seed(0)
    model = registry.build(kind, cfg).train()
    inputs = registry.synthetic_inputs(kind, cfg, 2, torch.Generator().manual_seed(0))
    outputs = _float_outputs(model(*inputs))
    assert outputs, f"{kind}: no output carries gradient"
    sum(o.float().square().mean() for o in outputs).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads), kind
    assert sum(float(g.abs().sum()) for g in grads) > 0, f"{kind}: no weight received gradient"


def _app_kinds() -> dict[str, str]:
    """KIND constant -> module, for every app module that registers a checkpoint kind."""
    import ast
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    kinds = {}
    for file in sorted((root / "apps").rglob("*.py")):
        for node in ast.parse(file.read_text()).body:
            if (isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["KIND"]
                    and isinstance(node.value, ast.Constant)):
                kinds[node.value.value] = ".".join(file.relative_to(root).with_suffix("").parts)
    return kinds


def test_every_app_kind_is_declared_as_an_entry_point():
    import importlib.metadata
    declared = {e.name: e.value for e in importlib.metadata.entry_points(group=registry.ENTRY_POINT_GROUP)}
    kinds = _app_kinds()
    assert len(kinds) >= 5
    assert {k: declared.get(k) for k in kinds} == kinds


def test_app_kinds_load_without_importing_the_app_first():
    """A fresh interpreter that imported only core finds every app kind (e.g. `moe-suite compress` on an
    app's checkpoint); before the entry points it said 'unknown model kind'."""
    import subprocess
    import sys
    kinds = sorted(_app_kinds())
    code = ("import sys\nfrom core import registry\n"
            "assert not [m for m in sys.modules if m.startswith('apps')]\n"
            f"for kind in {kinds!r}:\n    print(kind, registry.spec(kind).config_class.__name__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert [line.split()[0] for line in out.stdout.split("\n") if line] == kinds
    assert "known:" in str(pytest.raises(ValueError, registry.spec, "no_such_kind").value)


def test_a_kind_whose_module_fails_to_import_is_a_clear_error(monkeypatch):
    class Broken:
        name, value = "broken_kind", "apps.nowhere"

        def load(self):
            raise ModuleNotFoundError("No module named 'apps.nowhere'")

    monkeypatch.setattr(registry.importlib.metadata, "entry_points", lambda **kw: [Broken()])
    with pytest.raises(ValueError, match="'broken_kind': its module apps.nowhere cannot be imported"):
        registry.spec("broken_kind")
