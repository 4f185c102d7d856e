"""Checkpoints (core/checkpoint.py): exact round trips, clear errors, atomic writes, training state."""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from core import checkpoint, registry
from core.audio import AudioStreamConfig
from core.checkpoint import (CheckpointError, load_checkpoint, load_train_state, save_checkpoint,
                             save_train_state)
from core.moe import MoEConfig, MoELayer

TINY = dict(dim=16, hidden_dim=24, num_experts=8, top_k=2)


@dataclass
class TinyLMConfig:
    vocab_size: int = 32
    num_layers: int = 2
    moe: MoEConfig = field(default_factory=lambda: MoEConfig(**TINY, num_tasks=2, bias_update_rate=0.1))


class TinyLM(nn.Module):
    """Embedding -> residual MoE layers -> a head tied to the embedding, plus a non-contiguous buffer."""

    def __init__(self, cfg: TinyLMConfig):
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.moe.dim)
        self.moes = nn.ModuleList(MoELayer(cfg.moe) for _ in range(cfg.num_layers))
        self.head = nn.Linear(cfg.moe.dim, cfg.vocab_size, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("mix_DD", torch.randn(cfg.moe.dim, cfg.moe.dim).t())  # a transposed view

    def forward(self, tokens_BT: torch.Tensor, task_id=None) -> torch.Tensor:
        x_BTD = self.embed(tokens_BT) @ self.mix_DD
        for moe in self.moes:
            x_BTD = x_BTD + moe(x_BTD, task_id)[0]
        return self.head(x_BTD)


def _tiny_lm_inputs(cfg: TinyLMConfig, B: int, g: torch.Generator) -> tuple:
    return torch.randint(cfg.vocab_size, (B, 6), generator=g), 1


@pytest.fixture
def tiny_lm(monkeypatch) -> TinyLM:
    """A TinyLM with trained-looking aux-free biases, registered as kind "tiny_lm" for the test."""
    monkeypatch.setitem(registry.MODELS, "tiny_lm", registry.ModelSpec(TinyLMConfig, TinyLM, _tiny_lm_inputs))
    torch.manual_seed(0)
    model = TinyLM(TinyLMConfig())
    for moe in model.moes:
        moe.router.expert_bias_E.normal_()
    return model


def _layer() -> tuple[MoELayer, MoEConfig]:
    cfg = MoEConfig(**TINY, num_tasks=3, num_shared_experts=1, bias_update_rate=0.1)
    torch.manual_seed(0)
    layer = MoELayer(cfg)
    layer.router.expert_bias_E.copy_(torch.linspace(-0.5, 0.5, cfg.num_experts))
    layer.router.task_offset_TE.data.normal_()
    return layer, cfg


def test_moe_layer_round_trip_is_exact(tmp_path):
    layer, cfg = _layer()
    save_checkpoint(layer, tmp_path / "ckpt", kind="moe_layer", config=cfg, metadata={"step": 7})
    loaded, info = load_checkpoint(tmp_path / "ckpt")
    assert (info.kind, info.config, info.metadata) == ("moe_layer", cfg, {"step": 7})
    assert torch.equal(loaded.router.expert_bias_E, layer.router.expert_bias_E)
    x = torch.randn(2, 5, cfg.dim)
    assert torch.equal(loaded(x, task_id=1)[0], layer(x, task_id=1)[0])
    header = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert header["format"] == "moe-suite-checkpoint" and header["format_version"] == 1


def test_model_with_tied_and_non_contiguous_tensors_round_trip(tmp_path, tiny_lm):
    save_checkpoint(tiny_lm, tmp_path / "ckpt", kind="tiny_lm", config=TinyLMConfig())
    loaded, info = load_checkpoint(tmp_path / "ckpt")
    assert info.config == TinyLMConfig() and isinstance(info.config.moe, MoEConfig)
    assert loaded.head.weight is loaded.embed.weight
    stored = load_file(tmp_path / "ckpt" / "model.safetensors")
    assert "embed.weight" in stored and "head.weight" not in stored  # the tied weight, once
    for name, t in tiny_lm.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], t), name
    tokens = torch.randint(32, (2, 6))
    assert torch.equal(loaded(tokens, 1), tiny_lm(tokens, 1))


def _corrupt_weights(ckpt):
    (ckpt / "model.safetensors").write_bytes(b"not a safetensors file")


def _drop_a_tensor(ckpt):
    state = load_file(ckpt / "model.safetensors")
    del state["router.expert_bias_E"]
    save_file(state, ckpt / "model.safetensors", metadata={"tied": "{}"})


def _edit_header(**changes):
    def edit(ckpt):
        header = json.loads((ckpt / "config.json").read_text())
        (ckpt / "config.json").write_text(json.dumps({**header, **changes}))
    return edit


@pytest.mark.parametrize("damage, message", [
    (lambda ckpt: (ckpt / "config.json").unlink(), "no config.json"),
    (lambda ckpt: (ckpt / "model.safetensors").unlink(), "missing"),
    (lambda ckpt: (ckpt / "config.json").write_text("{not json"), "corrupt JSON"),
    (_corrupt_weights, "corrupt or unreadable"),
    (_drop_a_tensor, "missing: router.expert_bias_E"),
    (_edit_header(format_version=3), "newer"),
    (_edit_header(format="something-else"), "not a moe-suite-checkpoint file"),
    (_edit_header(kind="no_such_model"), "unknown model kind"),
    (_edit_header(config={**MoEConfig(**TINY).to_dict(), "future_field": 1}), "future_field"),
])
def test_bad_checkpoints_give_a_clear_error_naming_the_path(tmp_path, damage, message):
    layer, cfg = _layer()
    ckpt = save_checkpoint(layer, tmp_path / "ckpt", kind="moe_layer", config=cfg)
    damage(ckpt)
    with pytest.raises(CheckpointError, match=message) as error:
        load_checkpoint(ckpt)
    assert str(ckpt) in str(error.value)


def test_a_missing_checkpoint_is_a_missing_checkpoint_error(tmp_path):
    from core.checkpoint import MissingCheckpointError, read_checkpoint_info
    for path in (tmp_path / "none", tmp_path):                       # no folder; a folder without config.json
        with pytest.raises(MissingCheckpointError, match="no config.json") as error:
            read_checkpoint_info(path)
        assert isinstance(error.value, FileNotFoundError) and str(path) in str(error.value)


def test_config_must_be_the_kinds_dataclass(tmp_path):
    layer, _ = _layer()
    with pytest.raises(ValueError, match="takes a MoEConfig"):
        save_checkpoint(layer, tmp_path / "ckpt", kind="moe_layer", config=AudioStreamConfig())


def _failing_save_file(tensors, filename, metadata=None):
    """Half a file, then a crash."""
    with open(filename, "wb") as f:
        f.write(b"\0" * 16)
    raise OSError("disk full")


def test_failed_first_save_leaves_no_checkpoint(tmp_path, monkeypatch):
    layer, cfg = _layer()
    monkeypatch.setattr(checkpoint, "save_file", _failing_save_file)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(layer, tmp_path / "ckpt", kind="moe_layer", config=cfg)
    assert list(tmp_path.iterdir()) == []


def test_failed_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    layer, cfg = _layer()
    ckpt = save_checkpoint(layer, tmp_path / "ckpt", kind="moe_layer", config=cfg)
    monkeypatch.setattr(checkpoint, "save_file", _failing_save_file)
    with pytest.raises(OSError):
        save_checkpoint(MoELayer(cfg), ckpt, kind="moe_layer", config=cfg)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    loaded, _ = load_checkpoint(ckpt)
    assert torch.equal(loaded.experts.w_in_EFD, layer.experts.w_in_EFD)


def test_save_replaces_a_checkpoint_but_no_other_folder(tmp_path):
    layer, cfg = _layer()
    ckpt = save_checkpoint(MoELayer(cfg), tmp_path / "ckpt", kind="moe_layer", config=cfg)
    save_checkpoint(layer, ckpt, kind="moe_layer", config=cfg)
    assert torch.equal(load_checkpoint(ckpt)[0].experts.w_in_EFD, layer.experts.w_in_EFD)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        save_checkpoint(layer, tmp_path / "notes", kind="moe_layer", config=cfg)
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


def test_save_keeps_the_folders_model_card_but_not_a_stale_train_state(tmp_path):
    layer, cfg = _layer()
    ckpt = save_checkpoint(MoELayer(cfg), tmp_path / "ckpt", kind="moe_layer", config=cfg)
    save_train_state(ckpt, torch.optim.SGD(layer.parameters(), lr=0.1), step=7)
    (ckpt / "MODEL_CARD.md").write_text("# card")
    (ckpt / ".gitattributes").write_text("* -diff")
    (ckpt / "eval").mkdir()
    (ckpt / "eval" / "figures.json").write_text("{}")
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "big.bin").write_bytes(b"0" * 64)
    (ckpt / "data").symlink_to(tmp_path / "dataset")
    (ckpt / ".config.json.tmp-1234abcd").write_text("a writer's temporary")
    save_checkpoint(layer, ckpt, kind="moe_layer", config=cfg)
    assert (ckpt / "MODEL_CARD.md").read_text() == "# card"
    assert (ckpt / ".gitattributes").read_text() == "* -diff"
    assert (ckpt / "eval" / "figures.json").read_text() == "{}"
    assert (ckpt / "data").is_symlink() and (ckpt / "data").resolve() == (tmp_path / "dataset").resolve()
    assert not (ckpt / checkpoint.TRAIN_STATE).exists()          # it belonged to the old weights
    assert not (ckpt / ".config.json.tmp-1234abcd").exists()
    assert torch.equal(load_checkpoint(ckpt)[0].experts.w_in_EFD, layer.experts.w_in_EFD)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "dataset"]


def _rng_draws() -> tuple:
    return torch.rand(3), random.random(), np.random.rand()


def test_train_state_resumes_optimizer_step_and_rngs(tmp_path):
    layer, cfg = _layer()
    optimizer = torch.optim.AdamW(layer.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    layer(torch.randn(2, 5, cfg.dim))[0].square().mean().backward()
    optimizer.step()
    scheduler.step()
    ckpt = save_checkpoint(layer, tmp_path / "ckpt", kind="moe_layer", config=cfg)
    save_train_state(ckpt, optimizer, step=1, scheduler=scheduler, extra={"tokens_seen": 10})
    expected = _rng_draws()

    torch.manual_seed(123), random.seed(123), np.random.seed(123)
    loaded, _ = load_checkpoint(ckpt)
    new_optimizer = torch.optim.AdamW(loaded.parameters(), lr=1e-2)
    new_scheduler = torch.optim.lr_scheduler.StepLR(new_optimizer, step_size=1, gamma=0.5)
    state = load_train_state(ckpt, new_optimizer, new_scheduler)
    draws = _rng_draws()
    assert torch.equal(draws[0], expected[0]) and draws[1:] == expected[1:]
    assert (state.step, state.extra) == (1, {"tokens_seen": 10})
    assert new_scheduler.get_last_lr() == scheduler.get_last_lr()
    assert new_optimizer.state_dict()["state"]
    torch.testing.assert_close(new_optimizer.state_dict()["state"], optimizer.state_dict()["state"],
                               rtol=0, atol=0)


def test_train_state_errors_name_the_path(tmp_path):
    layer, cfg = _layer()
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    with pytest.raises(CheckpointError, match="save_checkpoint there first"):
        save_train_state(tmp_path / "nowhere", optimizer, step=0)
    ckpt = save_checkpoint(layer, tmp_path / "ckpt", kind="moe_layer", config=cfg)
    with pytest.raises(CheckpointError, match="train_state.pt: missing"):
        load_train_state(ckpt)
    (ckpt / "train_state.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt") as error:
        load_train_state(ckpt)
    assert str(ckpt) in str(error.value)


def _seeded_tiny_lm(cfg: TinyLMConfig) -> TinyLM:
    torch.manual_seed(123)
    return TinyLM(cfg)


def test_delta_checkpoint_stores_only_changes_and_restores_the_model(tmp_path, monkeypatch):
    monkeypatch.setitem(registry.MODELS, "tiny_lm", registry.ModelSpec(
        TinyLMConfig, TinyLM, _tiny_lm_inputs, base=_seeded_tiny_lm))
    cfg = TinyLMConfig()
    model = _seeded_tiny_lm(cfg)
    with torch.no_grad():  # "fine-tune" the last MoE layer only
        for p in model.moes[1].parameters():
            p.add_(0.01 * torch.randn_like(p))
    torch.manual_seed(7)
    before = torch.rand(3)
    torch.manual_seed(7)
    ckpt = save_checkpoint(model, tmp_path / "delta", kind="tiny_lm", config=cfg, delta=True)
    assert torch.equal(torch.rand(3), before), "building the base must not move the caller's RNG"

    stored = load_file(ckpt / "model.safetensors")
    assert stored and all(name.startswith("moes.1.") for name in stored)
    assert all(t.dtype == torch.float16 for t in stored.values() if t.is_floating_point())
    assert json.loads((ckpt / "config.json").read_text())["format_version"] == 2

    loaded, info = load_checkpoint(ckpt)
    assert info.delta
    for name, t in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], t, atol=1e-4, rtol=0)  # float16 differences


def test_delta_needs_a_registered_base(tmp_path, tiny_lm):
    with pytest.raises(ValueError, match="registers no base"):
        save_checkpoint(tiny_lm, tmp_path / "d", kind="tiny_lm", config=TinyLMConfig(), delta=True)


def test_float16_storage_loads_exactly_into_the_builders_fp32(tmp_path):
    """Shipped checkpoints store float16 to halve their size; they load, exactly, as the fp32 model
    the kind's builder makes (the apps compute in fp32). int8 weights stay int8."""
    from core.compress import quantize_model

    layer, cfg = _layer()
    half = quantize_model(layer).half()
    loaded, _ = load_checkpoint(save_checkpoint(half, tmp_path / "fp16", kind="moe_layer", config=cfg))
    for name, t in half.state_dict().items():
        back = loaded.state_dict()[name]
        assert back.dtype == (torch.int8 if t.dtype == torch.int8 else torch.float32), name
        assert torch.equal(back, t.to(back.dtype)), name


def test_non_float_tensor_in_another_dtype_is_an_error(tmp_path):
    """int8 weights stored as floats are a damaged file, not something to cast silently."""
    from core.compress import quantize_model

    layer, cfg = _layer()
    ckpt = save_checkpoint(quantize_model(layer), tmp_path / "int8", kind="moe_layer", config=cfg)
    tensors = load_file(ckpt / "model.safetensors")
    tensors["experts.qw_in_EFD"] = tensors["experts.qw_in_EFD"].float()
    save_file(tensors, ckpt / "model.safetensors")
    with pytest.raises(CheckpointError, match="experts.qw_in_EFD is stored as torch.float32") as error:
        load_checkpoint(ckpt)
    assert str(ckpt) in str(error.value)


def test_broken_tied_metadata_names_the_file(tmp_path, tiny_lm):
    ckpt = save_checkpoint(tiny_lm, tmp_path / "tied", kind="tiny_lm", config=TinyLMConfig())
    file = ckpt / "model.safetensors"
    save_file(load_file(file), file, metadata={"tied": json.dumps({"head.weight": "gone.weight"})})
    with pytest.raises(CheckpointError, match="tied tensor head.weight points to gone.weight") as error:
        load_checkpoint(ckpt)
    assert str(file) in str(error.value)


def test_delta_is_the_base_plus_the_float16_difference(tmp_path, monkeypatch):
    """Known answer: each changed float tensor loads as base + fp16(trained - base), nothing else."""
    monkeypatch.setitem(registry.MODELS, "tiny_lm", registry.ModelSpec(
        TinyLMConfig, TinyLM, _tiny_lm_inputs, base=_seeded_tiny_lm))
    cfg = TinyLMConfig()
    base, model = _seeded_tiny_lm(cfg), _seeded_tiny_lm(cfg)
    with torch.no_grad():
        model.moes[0].router.weight_ED.add_(torch.linspace(-1, 1, model.moes[0].router.weight_ED.numel())
                                            .view_as(model.moes[0].router.weight_ED) / 3)
    ckpt = save_checkpoint(model, tmp_path / "d", kind="tiny_lm", config=cfg, delta=True)
    loaded, _ = load_checkpoint(ckpt)
    for name, t in model.state_dict().items():
        ref = base.state_dict()[name]
        expected = ref + (t - ref).to(torch.float16).float()
        assert torch.equal(loaded.state_dict()[name], expected), name


def test_train_state_of_another_model_names_the_file(tmp_path):
    """Same parameter count, other shapes: torch would load it and fail at the next step."""
    layer, cfg = _layer()
    optimizer = torch.optim.AdamW(layer.parameters(), lr=1e-2)
    layer(torch.randn(2, 5, cfg.dim))[0].square().mean().backward()
    optimizer.step()
    ckpt = save_checkpoint(layer, tmp_path / "ckpt", kind="moe_layer", config=cfg)
    save_train_state(ckpt, optimizer, step=1)

    other = MoELayer(MoEConfig(**{**TINY, "dim": 8}, num_tasks=3, num_shared_experts=1, bias_update_rate=0.1))
    with pytest.raises(CheckpointError, match=r"does not fit this optimizer.*\(8,") as error:
        load_train_state(ckpt, torch.optim.AdamW(other.parameters(), lr=1e-2))
    assert str(ckpt / "train_state.pt") in str(error.value)
    with pytest.raises(CheckpointError, match="does not fit this optimizer"):
        load_train_state(ckpt, torch.optim.AdamW(list(other.parameters())[:2], lr=1e-2))

