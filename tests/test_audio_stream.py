"""Padding masks in the audio stream (core/audio) and the core's audio path (core/model.py): a clip padded
into a batch gets the tokens, pooled vector, expert loads and fused output it gets alone."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from core.audio import AudioBatch, AudioStream, AudioStreamConfig
from core.fusion import STRATEGIES, FusionConfig
from core.model import MultimodalCore, MultimodalCoreConfig
from core.text import TextStreamConfig
from core.text.tokenizer import TokenBatch

D = 24
TINY = dict(conv_dim=16, dim=D, num_heads=2, expert_hidden_dim=16)
WAVEFORM = AudioStreamConfig(kernel_sizes=(10, 8), strides=(5, 4), **TINY)       # 20 samples per token
SPECTROGRAM = AudioStreamConfig(in_channels=8, kernel_sizes=(3, 3), strides=(2, 2), **TINY)
CONFIGS = {"waveform": WAVEFORM, "spectrogram": SPECTROGRAM}


def tiny_stream(cfg: AudioStreamConfig = WAVEFORM) -> AudioStream:
    torch.manual_seed(0)
    return AudioStream(cfg).eval()


def clip(cfg: AudioStreamConfig, length: int, seed: int) -> torch.Tensor:
    """A clip [samples] or [n_mels, frames]."""
    g = torch.Generator().manual_seed(seed)
    shape = (length,) if cfg.in_channels == 1 else (cfg.in_channels, length)
    return torch.randn(*shape, generator=g)


def todays_forward(stream: AudioStream, audio_BL: torch.Tensor, task) -> tuple[torch.Tensor, torch.Tensor]:
    """The stream before padding masks, written out from its modules: (tokens [B, T, D], pooled [B, D])."""
    x_BTD = stream.proj(stream.convs(stream._as_channels(audio_BL)).transpose(1, 2))
    block = stream.block
    x_BTD = x_BTD + F.gelu(block.pos(x_BTD.transpose(1, 2))).transpose(1, 2)
    h_BTD = block.norm1(x_BTD)
    x_BTD = x_BTD + block.attn(h_BTD, h_BTD, h_BTD, need_weights=False)[0]
    x_BTD = x_BTD + block.moe(block.norm2(x_BTD), task)[0]
    tokens_BTD = stream.norm(x_BTD)
    return tokens_BTD, tokens_BTD.mean(dim=1)


# The stream.

@pytest.mark.parametrize("cfg", CONFIGS.values(), ids=CONFIGS.keys())
def test_padded_clip_gets_the_tokens_and_pooled_vector_it_gets_alone(cfg):
    stream = tiny_stream(cfg)
    # A "1 s" clip beside a "4 s" one (and a middle one), each under its own task.
    lengths = [cfg.min_length() + 15, 4 * (cfg.min_length() + 15), 2 * cfg.min_length() + 3]
    clips = [clip(cfg, n, seed) for seed, n in enumerate(lengths)]
    batch = AudioBatch.from_clips(clips)
    tasks_B = torch.tensor([3, 5, 1])
    with torch.no_grad():
        out = stream(batch.audio, tasks_B, lengths=batch.lengths)
        for b, one in enumerate(clips):
            alone = stream(one.unsqueeze(0), int(tasks_B[b]))
            T = cfg.num_tokens(lengths[b])
            assert out.mask[b].tolist() == [t < T for t in range(out.tokens.shape[1])]
            torch.testing.assert_close(out.tokens[b, :T], alone.tokens[0], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(out.pooled[b], alone.pooled[0], rtol=1e-5, atol=1e-5)
            assert alone.mask.all() and alone.mask.shape == (1, T)
    assert torch.equal(out.tokens[~out.mask], torch.zeros_like(out.tokens[~out.mask]))  # padding: zeros


def test_moe_stats_count_only_real_tokens():
    stream = tiny_stream()
    lengths = [60, 400]
    clips = [clip(WAVEFORM, n, seed) for seed, n in enumerate(lengths)]
    batch = AudioBatch.from_clips(clips)
    with torch.no_grad():
        stats = stream(batch.audio, 2, lengths=batch.lengths).stats[0]
        alone = [stream(c.unsqueeze(0), 2).stats[0] for c in clips]
    real = sum(WAVEFORM.num_tokens(n) for n in lengths)
    assert real < 2 * WAVEFORM.num_tokens(400)  # the batch does hold padding tokens
    assert int(stats.expert_load.sum()) == real * WAVEFORM.top_k
    assert stats.expert_idx.shape == (real, WAVEFORM.top_k)
    assert torch.equal(stats.expert_load, alone[0].expert_load + alone[1].expert_load)


def test_per_token_task_ids_with_padding():
    """Task ids per token [B, T] reach the MoE of a padded batch as they do without padding (they were refused)."""
    stream = tiny_stream()
    with torch.no_grad():   # task-aware gates start neutral (zeros): give each task its own expert preference
        stream.block.moe.router.task_offset_TE.copy_(3 * torch.randn(stream.block.moe.router.task_offset_TE.shape))
    batch = AudioBatch.from_clips([clip(WAVEFORM, n, seed) for seed, n in enumerate([60, 400])])
    T = WAVEFORM.num_tokens(400)
    per_row = torch.tensor([2, 5])
    with torch.no_grad():
        by_row = stream(batch.audio, per_row, lengths=batch.lengths)
        by_token = stream(batch.audio, per_row[:, None].expand(2, T), lengths=batch.lengths)
        mixed = stream(batch.audio, torch.tensor([[2] * T, [5, 1] * (T // 2) + [5] * (T % 2)]), lengths=batch.lengths)
    assert torch.equal(by_row.tokens, by_token.tokens)
    assert torch.allclose(by_row.tokens[0], mixed.tokens[0], atol=1e-5)   # only the grouping of rows differs
    assert not torch.allclose(by_row.tokens[1], mixed.tokens[1], atol=1e-3)   # each token's own task counts


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_without_lengths_the_numerics_are_unchanged(training):
    stream = tiny_stream().train(training)
    audio_BL = torch.randn(2, 300, generator=torch.Generator().manual_seed(1))
    tasks_B = torch.tensor([0, 4])
    with torch.no_grad():
        tokens_BTD, pooled_BD = todays_forward(stream, audio_BL, tasks_B)
        out = stream(audio_BL, tasks_B)
        full = stream(audio_BL, tasks_B, lengths=torch.tensor([300, 300]))
        # A clip shorter than the batch by less than a token's stride loses no token: still no padding.
        almost = stream(audio_BL, tasks_B, lengths=torch.tensor([300, 299]))
    assert out.mask.all() and out.mask.shape == tokens_BTD.shape[:2]
    for o in (out, full, almost):
        assert torch.equal(o.tokens, tokens_BTD) and torch.equal(o.pooled, pooled_BD)


@pytest.mark.parametrize("lengths, message", [
    (torch.tensor([300.0, 200.0]), "must be integers"),
    (torch.tensor([300]), r"must be \[batch\] = \[2\]"),
    (torch.tensor([[300, 200]]), r"must be \[batch\] = \[2\]"),
    (torch.tensor([300, 0]), r"lengths\[1\] = 0 is outside 1\.\.300"),
    (torch.tensor([301, 200]), r"lengths\[0\] = 301 is outside 1\.\.300"),
    (torch.tensor([300, 44]), r"lengths\[1\] = 44 makes no token.*AudioStreamConfig\.min_length\(\) = 45"),
], ids=["float", "too-few", "2d", "zero", "too-long", "too-short-for-a-token"])
def test_bad_lengths_are_clear_errors(lengths, message):
    assert WAVEFORM.min_length() == 45
    with pytest.raises(ValueError, match=message):
        tiny_stream()(torch.randn(2, 300), lengths=lengths)


def test_from_clips_pads_at_the_end_and_rejects_mismatched_clips():
    a, b = torch.randn(3, 5), torch.randn(3, 9)
    batch = AudioBatch.from_clips([a, b])
    assert batch.audio.shape == (2, 3, 9) and batch.lengths.tolist() == [5, 9]
    assert batch.lengths.dtype == torch.long
    assert torch.equal(batch.audio[0, :, :5], a) and not batch.audio[0, :, 5:].any()
    with pytest.raises(ValueError, match="clip 1 has shape"):
        AudioBatch.from_clips([a, torch.randn(4, 9)])
    with pytest.raises(ValueError, match="clip 0 must be a tensor"):
        AudioBatch.from_clips([torch.randn(1, 2, 3)])
    with pytest.raises(ValueError, match="at least one clip"):
        AudioBatch.from_clips([])


def test_backward_with_padding_never_reads_the_padding():
    stream = tiny_stream().train()
    batch = AudioBatch.from_clips([clip(WAVEFORM, 150, 0), clip(WAVEFORM, 500, 1)])
    audio = batch.audio.clone().requires_grad_(True)
    out = stream(audio, torch.tensor([1, 2]), lengths=batch.lengths)
    (out.pooled.square().sum() + out.tokens.square().sum() + out.aux_loss).backward()
    assert audio.grad[0, 150:].abs().max() == 0          # padding reaches nothing
    assert audio.grad[0, :150].abs().sum() > 0 and audio.grad[1].abs().sum() > 0
    assert stream.block.moe.router.weight_ED.grad.abs().sum() > 0


def test_without_block_padding_is_masked_too():
    cfg = AudioStreamConfig(use_block=False, kernel_sizes=(4,), strides=(2,), **TINY)
    stream = tiny_stream(cfg)
    audio_BL = torch.randn(2, 40, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = stream(audio_BL, lengths=torch.tensor([10, 40]))
        alone = stream(audio_BL[:1, :10])
    assert out.mask.sum(1).tolist() == [4, 19] and out.stats == []
    assert not out.tokens[0, 4:].any()
    torch.testing.assert_close(out.tokens[0, :4], alone.tokens[0])
    torch.testing.assert_close(out.pooled[0], alone.pooled[0])


# The core's audio path.

def tiny_core(strategy: str) -> MultimodalCore:
    torch.manual_seed(0)
    cfg = MultimodalCoreConfig(
        dim=D, vision=None,
        text=TextStreamConfig(vocab_size=30, dim=D, num_layers=1, num_heads=2, ffn_dim=32, max_positions=16,
                              num_experts=4, top_k=2, dropout=0.0),
        audio=WAVEFORM,
        fusion=FusionConfig(strategy=strategy, dim=D, num_heads=2, num_layers=2, num_separate=1),
        cross_heads=2)
    return MultimodalCore(cfg).eval()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_core_fuses_a_padded_clip_as_it_fuses_the_clip_alone(strategy):
    core = tiny_core(strategy)
    g = torch.Generator().manual_seed(0)
    text = TokenBatch(torch.randint(1, 30, (2, 5), generator=g), torch.ones(2, 5, dtype=torch.long))
    clips = [clip(WAVEFORM, 100, 0), clip(WAVEFORM, 400, 1)]
    batch = AudioBatch.from_clips(clips)
    with torch.no_grad():
        out = core(text=text, audio=batch, task="captioning")
        alone = core(text=TokenBatch(text.input_ids[:1], text.attention_mask[:1]), audio=clips[0][None],
                     task="captioning")
        plain = core(text=text, audio=batch.audio, task="captioning")
        full = core(text=text, audio=AudioBatch(batch.audio, torch.tensor([400, 400])), task="captioning")
    assert out.masks["audio"].sum(1).tolist() == [WAVEFORM.num_tokens(100), WAVEFORM.num_tokens(400)]
    torch.testing.assert_close(out.fused[0], alone.fused[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.pooled["audio"][0], alone.pooled["audio"][0], rtol=1e-5, atol=1e-5)
    load = out.stats["streams.audio.block.moe"].expert_load
    assert int(load.sum()) == int(out.masks["audio"].sum()) * WAVEFORM.top_k
    # A plain tensor is all valid, and so is a batch whose lengths are the padded length.
    assert plain.masks["audio"].all() and torch.equal(full.fused, plain.fused)
    assert not torch.allclose(plain.fused[0], alone.fused[0], atol=1e-3)  # padding does change a clip


def test_core_backward_through_a_padded_batch_and_batch_size_check():
    core = tiny_core("task_gate").train()
    batch = AudioBatch.from_clips([clip(WAVEFORM, 100, 0), clip(WAVEFORM, 400, 1)])
    out = core(audio=batch, task="captioning")
    (out.fused.square().sum() + out.aux_loss).backward()
    assert core.streams["audio"].block.moe.router.weight_ED.grad.abs().sum() > 0
    text = TokenBatch(torch.ones(3, 4, dtype=torch.long), torch.ones(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="disagree on the batch size"):
        core(text=text, audio=batch)
