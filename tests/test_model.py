"""The shared multimodal core (core/model.py): every fusion strategy and input subset, task routing, heads."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from core.audio import AudioStreamConfig
from core.fusion import STRATEGIES, FusionConfig
from core.model import MultimodalCore, MultimodalCoreConfig
from core.moe import DynamicRouter, MoELayer
from core.tasks import task_id
from core.text import TextStreamConfig
from core.text.tokenizer import TokenBatch
from core.vision import VisionStreamConfig

D, VOCAB, B = 24, 30, 3
INPUTS = {"text+image": ("text", "vision"), "text": ("text",), "image": ("vision",)}


def tiny_config(strategy: str = "task_gate", audio: bool = False) -> MultimodalCoreConfig:
    """Text at the shared width, vision narrower (so it is projected), 4 experts everywhere."""
    return MultimodalCoreConfig(
        dim=D,
        text=TextStreamConfig(vocab_size=VOCAB, dim=D, num_layers=2, num_heads=2, ffn_dim=32,
                              max_positions=16, num_experts=4, top_k=2, dropout=0.0),
        vision=VisionStreamConfig(spatial_dims=2, in_channels=3, embed_dim=12, depths=(1, 1, 1, 1),
                                  num_heads=(3, 3, 3, 3), out_dim=16, moe_stages=(2, 3)),
        audio=AudioStreamConfig(conv_dim=16, dim=D, num_heads=2, expert_hidden_dim=16, kernel_sizes=(10, 8),
                                strides=(5, 4)) if audio else None,
        fusion=FusionConfig(strategy=strategy, dim=D, num_heads=2, num_layers=2, num_separate=1),
        cross_heads=2)


def tiny_core(strategy: str = "task_gate", audio: bool = False) -> MultimodalCore:
    torch.manual_seed(0)
    return MultimodalCore(tiny_config(strategy, audio))


def tiny_inputs(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask_BT = (torch.arange(7) < torch.tensor([7, 4, 2])[:, None]).long()
    ids_BT = torch.randint(1, VOCAB, (B, 7), generator=g) * mask_BT
    return {"text": TokenBatch(ids_BT, mask_BT), "images": torch.rand(B, 3, 64, 32, generator=g),
            "audio": torch.randn(B, 400, generator=g)}


def routers(module: nn.Module) -> list[DynamicRouter]:
    return [m for m in module.modules() if isinstance(m, DynamicRouter)]


@pytest.mark.parametrize("given", INPUTS.values(), ids=INPUTS.keys())
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_forward_backward(strategy, given):
    core = tiny_core(strategy)
    inputs = tiny_inputs()
    out = core(text=inputs["text"] if "text" in given else None,
               images=inputs["images"] if "vision" in given else None, task="captioning")

    assert out.fused.shape == (B, D) and torch.isfinite(out.fused).all()
    assert set(out.pooled) == set(out.tokens) == set(out.masks) == set(given)
    if "vision" in given:
        assert out.tokens["vision"].shape == (B, 2, D)  # a 64x32 image is 2 tokens, projected 16 -> D
    if "text" in given:
        assert out.tokens["text"].shape == (B, 7, D) and out.masks["text"].sum() == 13
    moe_names = [n for n, m in core.named_modules() if isinstance(m, MoELayer)]
    assert list(out.stats) == [n for n in moe_names if any(n.startswith(f"streams.{m}.") for m in given)]
    torch.testing.assert_close(out.aux_loss, sum(s.aux_loss for s in out.stats.values()))
    if out.modality_weights is not None:  # (text, vision); a modality not given weighs 0
        assert out.modality_weights.shape == (B, 2)
        torch.testing.assert_close(out.modality_weights.sum(-1), torch.ones(B))
        present = torch.tensor([m in given for m in ("text", "vision")])
        assert (out.modality_weights[:, ~present] == 0).all() and (out.modality_weights[:, present] > 0).all()

    (out.fused.square().mean() + out.aux_loss).backward()
    for m, stream in core.streams.items():
        grads = [r.weight_ED.grad for r in routers(stream)]
        if m in given:  # the loss reaches every gate of every stream given
            assert all(g is not None and g.abs().sum() > 0 for g in grads)
        else:
            assert all(p.grad is None for p in stream.parameters())


def test_all_three_streams():
    core = tiny_core("progressive", audio=True)
    out = core(**tiny_inputs(), task=torch.tensor([0, 4, 8]))
    assert set(out.tokens) == {"text", "vision", "audio"} and out.fused.shape == (B, D)
    assert any(name.startswith("streams.audio.") for name in out.stats)
    out.fused.sum().backward()
    assert all(r.weight_ED.grad is not None for r in routers(core.streams["audio"]))


@pytest.mark.parametrize("task", ["malignancy", 5, torch.tensor([2, 5, 7])], ids=["name", "id", "per-sample"])
def test_every_gate_receives_the_task(task):
    core = tiny_core()
    received: dict[str, torch.Tensor] = {}
    for name, router in core.named_modules():
        if isinstance(router, DynamicRouter):  # the router is called as router(x_ND, task_N)
            router.register_forward_hook(lambda mod, args, out, name=name: received.update({name: args[1]}))
    inputs = tiny_inputs()
    core(text=inputs["text"], images=inputs["images"], task=task)

    assert len(received) == 4  # 2 text layers, 2 vision stages
    task_B = torch.as_tensor(task_id(task) if isinstance(task, str) else task).expand(B)
    for name, task_N in received.items():
        if name.startswith("streams.text."):  # the text stream routes its real tokens only
            expected_N = task_B.repeat_interleave(inputs["text"].attention_mask.sum(1))
        else:
            expected_N = task_B.repeat_interleave(task_N.numel() // B)
        assert torch.equal(task_N, expected_N), name


def test_changing_the_task_changes_routing_in_every_layer():
    core = tiny_core()
    inputs = {k: v for k, v in tiny_inputs().items() if k != "audio"}
    with torch.no_grad():
        for router in routers(core):  # task 1 pushes every token to experts 0 and 1
            router.task_offset_TE[1, :2] = 10.0
        loads = {t: {name: s.expert_load for name, s in core(**inputs, task=t).stats.items()} for t in (0, 1)}

    assert len(loads[0]) == 4
    for name, load_E in loads[1].items():
        assert load_E[2:].sum() == 0, name
        assert not torch.equal(load_E, loads[0][name]), name


def test_heads_are_a_registry():
    core = tiny_core()
    head = core.add_head("answer", nn.Linear(D, 5))
    assert core.heads["answer"] is head and "heads.answer.weight" in core.state_dict()
    with pytest.raises(ValueError, match="already has a head"):
        core.add_head("answer", nn.Linear(D, 5))
    logits = core.heads["answer"](core(images=tiny_inputs()["images"], task="captioning").fused)
    assert logits.shape == (B, 5)


def test_config_checks_and_round_trip():
    cfg = tiny_config("concat", audio=True)
    assert MultimodalCoreConfig.from_dict(cfg.to_dict()) == cfg
    assert MultimodalCoreConfig.from_dict({"text": None, "audio": None, "dim": 384}).modalities == ("vision",)
    with pytest.raises(ValueError, match="at least one"):
        MultimodalCoreConfig(text=None, vision=None, audio=None)
    with pytest.raises(ValueError, match="fusion.dim"):
        MultimodalCoreConfig(dim=64)
    with pytest.raises(ValueError, match="unknown TextStreamConfig fields"):
        MultimodalCoreConfig.from_dict({"text": {"width": 3}})


def test_a_stream_the_core_lacks_is_an_error():
    core = tiny_core()
    with pytest.raises(ValueError, match="no \\['audio'\\] stream"):
        core(audio=torch.randn(B, 400))
    with pytest.raises(ValueError, match="at least one"):
        core(task="captioning")
