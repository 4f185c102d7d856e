"""core.text.trunk: streams with equal lower layers share them and their states, with known answers."""
from __future__ import annotations

import copy

import torch

from core.tasks import task_id
from core.text import TextStreamConfig, from_scratch, share_trunk

CFG = TextStreamConfig(vocab_size=50, dim=32, num_layers=4, num_heads=4, ffn_dim=64, max_positions=16,
                       moe_layers=(2, 3), num_experts=4, top_k=2)


def _pair() -> tuple:
    torch.manual_seed(0)
    a = from_scratch(CFG).eval()
    b = copy.deepcopy(a)
    with torch.no_grad():  # b fine-tuned above layer 0: layer 1 and the MoE layers differ
        for p in list(b.layers[1].parameters()) + list(b.layers[3].parameters()):
            p.add_(0.1 * torch.randn_like(p))
    return a, b


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    ids_BT = torch.tensor([[1, 7, 9, 4, 0, 0], [3, 3, 8, 2, 5, 6]])
    return ids_BT, (ids_BT > 0).long()


def test_shares_the_equal_dense_prefix_only_and_outputs_do_not_change():
    a, b = _pair()
    ids, mask = _inputs()
    with torch.no_grad():
        before_a = a(ids, mask, task_id("intent")).pooled
        before_b = b(ids, mask, task_id("retrieval")).pooled
        assert share_trunk(a, b) == 1
        assert b.embed is a.embed and b.layers[0] is a.layers[0] and b.layers[1] is not a.layers[1]
        after_a = a(ids, mask, task_id("intent")).pooled      # fills the cache
        after_b = b(ids, mask, task_id("retrieval")).pooled   # starts from it
    assert a.prefix_cache is b.prefix_cache and a.prefix_cache.hits == 1 and a.prefix_cache.misses == 1
    torch.testing.assert_close(after_a, before_a, rtol=0, atol=0)
    torch.testing.assert_close(after_b, before_b, rtol=0, atol=0)


def test_moe_layers_and_different_embeddings_are_never_shared():
    a, b = _pair()
    assert share_trunk(a, copy.deepcopy(a)) == 2  # identical streams: up to the first MoE layer
    with torch.no_grad():
        b.embed.word.weight[0, 0] += 1
    assert share_trunk(a, b) == 0 and b.prefix_cache is None


def test_training_and_new_inputs_bypass_the_cache():
    a, b = _pair()
    share_trunk(a, b)
    ids, mask = _inputs()
    a(ids, mask)  # grad enabled: no cache
    assert a.prefix_cache.hits == a.prefix_cache.misses == 0
    with torch.no_grad():
        a(ids, mask)
        b(ids[:1], mask[:1])  # a different input: a miss
    assert a.prefix_cache.hits == 0 and a.prefix_cache.misses == 2
