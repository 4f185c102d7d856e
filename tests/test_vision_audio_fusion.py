"""The vision and audio streams (core/vision, core/audio) and cross-modal fusion (core/fusion)."""
from __future__ import annotations

import pytest
import torch
from monai.networks.blocks import MLPBlock

from core.audio import AudioStream, AudioStreamConfig
from core.fusion import STRATEGIES, CrossModalAttention, DynamicFusion, FusionConfig
from core.vision import SwinMoEMLP, VisionStream, VisionStreamConfig

TINY_SWIN = dict(embed_dim=12, depths=(1, 1, 1, 1), num_heads=(3, 3, 3, 3), out_dim=24)
TINY_AUDIO = dict(conv_dim=16, dim=24, num_heads=2, expert_hidden_dim=16)
D = 24


def tiny_fusion(strategy: str, **kw) -> DynamicFusion:
    torch.manual_seed(0)
    return DynamicFusion(FusionConfig(strategy=strategy, dim=D, num_heads=2, num_layers=2, num_separate=1, **kw))


# Vision stream.

@pytest.mark.parametrize("spatial_dims, size", [(2, (32, 32)), (3, (32, 32, 32))], ids=["2d", "3d"])
def test_vision_forward_backward_reaches_routers(spatial_dims, size):
    torch.manual_seed(0)
    stream = VisionStream(VisionStreamConfig(spatial_dims=spatial_dims, in_channels=2,
                                             moe_stages=(2, 3), **TINY_SWIN))
    images = torch.randn(2, 2, *size, requires_grad=True)
    out = stream(images, task_id=torch.tensor([3, 4]))

    assert out.tokens.shape == (2, 1, 24) and out.pooled.shape == (2, 24)
    assert len(out.stats) == 2 and out.aux_loss.requires_grad
    # The task loss alone (no aux loss) must reach every router, through the gate weights.
    out.pooled.square().sum().backward()
    for mlp in stream.moe_mlps():
        assert mlp.moe.router.weight_ED.grad.abs().sum() > 0
    assert images.grad.abs().sum() > 0


def test_vision_tokens_grow_with_the_input():
    stream = VisionStream(VisionStreamConfig(spatial_dims=2, in_channels=3, **TINY_SWIN))
    out = stream(torch.randn(1, 3, 64, 96), task_id=7)
    assert out.tokens.shape == (1, 2 * 3, 24)  # one token per 32x32 pixels


def test_moe_adapters_replace_monai_mlp_blocks():
    cfg = VisionStreamConfig(spatial_dims=2, in_channels=1, embed_dim=12, depths=(1, 2, 2, 1),
                             num_heads=(3, 3, 3, 3), moe_stages=(2, 3))
    stream = VisionStream(cfg)
    stages = (stream.swin.layers1, stream.swin.layers2, stream.swin.layers3, stream.swin.layers4)
    for i, stage in enumerate(stages):
        kinds = {type(block.mlp) for block in stage[0].blocks}
        assert kinds == ({SwinMoEMLP} if i in cfg.moe_stages else {MLPBlock})
    assert len(stream.moe_mlps()) == 3
    assert sum(isinstance(m, MLPBlock) for m in stream.modules()) == 3
    assert len(stream(torch.randn(1, 1, 32, 32)).stats) == 3


def test_vision_rejects_sizes_monai_cannot_merge():
    stream = VisionStream(VisionStreamConfig(spatial_dims=3, **TINY_SWIN))
    with pytest.raises(ValueError, match="multiple of"):
        stream(torch.randn(1, 1, 32, 48, 32))
    with pytest.raises(ValueError, match="expected"):
        stream(torch.randn(1, 1, 32, 32))


# Audio stream.

@pytest.mark.parametrize("in_channels, shape, kernels, strides", [
    (1, (2, 800), (10, 8), (5, 4)),        # waveform [B, samples]
    (8, (2, 8, 40), (3, 3), (2, 2)),       # spectrogram [B, n_mels, frames]
], ids=["waveform", "spectrogram"])
def test_audio_stream(in_channels, shape, kernels, strides):
    torch.manual_seed(0)
    cfg = AudioStreamConfig(in_channels=in_channels, kernel_sizes=kernels, strides=strides, **TINY_AUDIO)
    stream = AudioStream(cfg)
    audio = torch.randn(*shape, requires_grad=True)
    out = stream(audio, task_id=1)

    T = cfg.num_tokens(shape[-1])
    assert T > 1 and out.tokens.shape == (2, T, D) and out.pooled.shape == (2, D)
    (out.pooled.square().sum() + out.aux_loss).backward()
    assert stream.block.moe.router.weight_ED.grad.abs().sum() > 0
    assert audio.grad.abs().sum() > 0


def test_audio_without_block_and_bad_input():
    stream = AudioStream(AudioStreamConfig(use_block=False, kernel_sizes=(4,), strides=(2,), **TINY_AUDIO))
    out = stream(torch.randn(3, 20))
    assert out.tokens.shape == (3, 9, D) and out.stats == [] and float(out.aux_loss) == 0.0
    with pytest.raises(ValueError, match="expected"):
        stream(torch.randn(3, 4, 20))
    with pytest.raises(ValueError, match="shorter"):
        stream(torch.randn(3, 3))


# Cross-modal attention.

def test_cross_modal_attention_mixes_modalities_and_respects_padding():
    torch.manual_seed(0)
    attn = CrossModalAttention(D, num_heads=2)
    text, vision = torch.randn(2, 5, D), torch.randn(2, 3, D, requires_grad=True)
    vision_mask = torch.tensor([[True, True, False], [True, True, True]])
    out = attn({"text": text, "vision": vision}, {"vision": vision_mask})
    assert out["text"].shape == (2, 5, D) and out["vision"].shape == (2, 3, D) and "audio" not in out

    out["text"].sum().backward()
    grad = vision.grad.abs().sum(-1)
    assert (grad[vision_mask] > 0).all()       # text depends on every real visual token
    assert grad[0, 2] == 0                     # and on no padding token

    other = attn({"text": text, "vision": torch.randn(2, 3, D)}, {"vision": vision_mask})
    assert not torch.allclose(other["text"], out["text"])


# Dynamic fusion.

@pytest.mark.parametrize("strategy", STRATEGIES)
def test_fusion_forward_backward(strategy):
    fusion = tiny_fusion(strategy)
    text = torch.randn(2, 5, D, requires_grad=True)
    vision = torch.randn(2, 3, D, requires_grad=True)
    audio = torch.randn(2, D, requires_grad=True)      # a pooled vector is one token
    text_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    out = fusion({"text": text, "vision": vision, "audio": audio}, {"text": text_mask},
                 task_id=torch.tensor([0, 5]))

    assert out.fused.shape == (2, D)
    if out.modality_weights is not None:
        assert out.modality_weights.shape == (2, 3)
        torch.testing.assert_close(out.modality_weights.sum(-1), torch.ones(2))
    grads = torch.autograd.grad(out.fused.square().sum(), (text, vision, audio), retain_graph=True)
    assert all(g.abs().sum() > 0 for g in grads)
    assert grads[0][0, 3:].abs().sum() == 0    # padding does not count
    (out.fused.square().sum() + sum(x.square().sum() for x in out.extra.values())).backward()
    assert all(p.grad is not None for n, p in fusion.named_parameters() if "missing" not in n)


def test_task_gate_learns_different_weights_per_task():
    fusion = tiny_fusion("task_gate", modalities=("text", "vision"), num_tasks=2)
    opt = torch.optim.Adam(fusion.parameters(), lr=0.05)
    task_B = torch.arange(16) % 2
    for _ in range(60):  # task 0 must reproduce the text vector, task 1 the visual one
        text, vision = torch.randn(16, D), torch.randn(16, D)
        target = torch.where(task_B.unsqueeze(1) == 0, text, vision)
        out = fusion({"text": text, "vision": vision}, task_id=task_B)
        loss = (out.fused - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    weights = fusion({"text": text[:2], "vision": vision[:2]}, task_id=torch.tensor([0, 1])).modality_weights
    assert weights[0, 0] > 0.7 and weights[1, 1] > 0.7, weights


def test_confidence_weighting_favours_the_confident_modality():
    fusion = tiny_fusion("confidence", modalities=("text", "vision"))
    for head in fusion.fusion.heads.values():
        torch.nn.init.zeros_(head.bias)
    # Sample 0: a strong text signal and a null visual one (uniform prediction, maximal entropy);
    # sample 1 the other way round.
    strong = 20 * fusion.fusion.heads["text"].weight[0].detach()
    text = torch.stack([strong, torch.zeros(D)])
    vision = torch.stack([torch.zeros(D), 20 * fusion.fusion.heads["vision"].weight[0].detach()])
    out = fusion({"text": text, "vision": vision})
    entropy = out.extra["entropy"]
    assert entropy[0, 0] < entropy[0, 1] and entropy[1, 1] < entropy[1, 0]
    assert out.modality_weights[0, 0] > 0.6 and out.modality_weights[1, 1] > 0.6, out.modality_weights


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_missing_modality(strategy):
    """Image alone works; a sample whose report is fully masked fuses as if it had no report."""
    fusion = tiny_fusion(strategy).eval()
    text, vision = torch.randn(2, 4, D), torch.randn(2, 3, D)

    alone = fusion({"vision": vision, "text": None}, task_id=4)
    assert alone.fused.shape == (2, D) and torch.isfinite(alone.fused).all()
    if alone.modality_weights is not None:
        torch.testing.assert_close(alone.modality_weights, torch.tensor([[0.0, 1.0, 0.0]] * 2))

    text_mask = torch.tensor([[True] * 4, [False] * 4])  # sample 1 has no report
    mixed = fusion({"text": text, "vision": vision}, {"text": text_mask}, task_id=4)
    assert torch.isfinite(mixed.fused).all()
    torch.testing.assert_close(mixed.fused[1], alone.fused[1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(mixed.fused[0], alone.fused[0])

    with pytest.raises(ValueError, match="at least one modality"):
        fusion({"text": text, "vision": vision}, {"text": text_mask, "vision": torch.zeros(2, 3)})
    with pytest.raises(ValueError, match="unknown modalities"):
        fusion({"depth": vision})
