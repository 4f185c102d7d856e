"""Hand-set routers with answers worked out by hand: gates, groups, bias, capacity, losses, edge cases.

Most tests give the router an identity weight (dim = E) so that the logits equal the input.
"""
from __future__ import annotations

import math

import pytest
import torch

from core.moe import MoEConfig, MoELayer, ffn_on_real_tokens, update_expert_biases
from core.moe import losses


def identity_layer(E: int = 4, K: int = 2, **overrides) -> MoELayer:
    """A layer whose router logits equal its input (dim = E)."""
    cfg = MoEConfig(**{**dict(dim=E, hidden_dim=8, num_experts=E, top_k=K, capacity_factor=0), **overrides})
    layer = MoELayer(cfg)
    with torch.no_grad():
        layer.router.weight_ED.copy_(torch.eye(E))
    return layer


X = torch.tensor([2.0, 1.0, 0.0, -1.0])  # experts 0 and 1 win with top-2


@pytest.mark.parametrize("gate, renormalize, want", [
    ("topk_softmax", True, torch.softmax(torch.tensor([2.0, 1.0]), 0)),
    ("softmax_topk", False, torch.softmax(X, 0)[:2]),
    ("softmax_topk", True, torch.softmax(torch.tensor([2.0, 1.0]), 0)),
    ("sigmoid", False, torch.sigmoid(torch.tensor([2.0, 1.0]))),
    ("sigmoid", True, torch.sigmoid(torch.tensor([2.0, 1.0])) / torch.sigmoid(torch.tensor([2.0, 1.0])).sum()),
])
def test_gate_weights(gate, renormalize, want):
    torch.manual_seed(0)
    layer = identity_layer(gate=gate, renormalize=renormalize)
    route = layer.router(X.view(1, 4))
    assert route.expert_idx_NK.tolist() == [[0, 1]]
    torch.testing.assert_close(route.weight_NK[0], want)
    probs = torch.sigmoid(X) / torch.sigmoid(X).sum() if gate == "sigmoid" else torch.softmax(X, 0)
    torch.testing.assert_close(route.probs_NE[0], probs)
    y, _ = layer(X.view(1, 1, 4))
    expected = sum(w * layer.experts.expert_forward(e, X.view(1, 4))[0] for e, w in zip((0, 1), want))
    torch.testing.assert_close(y[0, 0], expected)


def test_group_limited_routing_scores_groups_by_their_best_two():
    """Groups {0, 1} and {2, 3}. Expert 0 is the best single expert, but group {2, 3} has the larger
    sum of its best two sigmoid scores (0.881 + 0.870 > 0.953 + 0.047): both choices come from it."""
    x = torch.tensor([[3.0, -3.0, 2.0, 1.9]])
    grouped = identity_layer(gate="sigmoid", num_groups=2, top_groups=1)
    route = grouped.router(x)
    assert sorted(route.expert_idx_NK[0].tolist()) == [2, 3]
    s = torch.sigmoid(x[0, 2:])
    torch.testing.assert_close(route.weight_NK[0].sort(descending=True).values, s / s.sum())
    assert sorted(identity_layer(gate="sigmoid").router(x).expert_idx_NK[0].tolist()) == [0, 2]
    # The group score includes the aux-free bias (DeepSeek-V3): a bias on group {0, 1} flips it.
    grouped.router.expert_bias_E.copy_(torch.tensor([1.0, 1.0, 0.0, 0.0]))
    route = grouped.router(x)
    assert sorted(route.expert_idx_NK[0].tolist()) == [0, 1]
    s = torch.sigmoid(x[0, :2])  # the weights still come from the unbiased scores
    torch.testing.assert_close(route.weight_NK[0], s / s.sum())


def test_bias_selects_but_never_weighs_and_steps_by_sign():
    layer = identity_layer(gate="softmax_topk", renormalize=False, bias_update_rate=0.1).train()
    layer.router.expert_bias_E.copy_(torch.tensor([0.0, 0.0, 0.0, 5.0]))  # drags expert 3 in
    x = X.view(1, 1, 4).requires_grad_()
    y, stats = layer(x)
    assert stats.expert_idx.tolist() == [[3, 0]]
    p = torch.softmax(X, 0)
    torch.testing.assert_close(stats.gate_weight[0], torch.stack([p[3], p[0]]))
    assert not layer.router.expert_bias_E.requires_grad
    assert "router.expert_bias_E" not in dict(layer.named_parameters())
    (y.sum() + stats.aux_loss).backward()  # the bias is no leaf of the graph: nothing to update
    # Load [1, 0, 0, 1], mean 0.5: bias += 0.1 * sign(0.5 - load).
    assert layer.router.pending_load_E.tolist() == [1.0, 0.0, 0.0, 1.0]
    update_expert_biases(layer)
    want = torch.tensor([-0.1, 0.1, 0.1, 4.9])
    torch.testing.assert_close(layer.router.expert_bias_E, want)
    assert layer.router.pending_load_E.tolist() == [0.0] * 4
    layer.eval()  # no counting, so no step, at evaluation
    layer(torch.randn(1, 8, 4))
    update_expert_biases(layer)
    torch.testing.assert_close(layer.router.expert_bias_E, want)


def test_capacity_keeps_the_highest_weights_across_first_and_second_choices():
    """2 experts, top-2, 3 tokens, capacity ceil(0.5 * 3 * 2 / 2) = 2 per expert; weights:

        token 0 [2, 0]: (0.88, 0.12)  token 1 [0, 1]: (0.27, 0.73)  token 2 [0, 0]: (0.5, 0.5)

    Expert 0 keeps tokens 0 and 2 (token 1 at 0.27 is dropped); expert 1 keeps 1 and 2. The
    dropped assignments leave their token the shared expert and its other expert."""
    torch.manual_seed(0)
    layer = identity_layer(E=2, K=2, capacity_factor=0.5, num_shared_experts=1)
    x_ND = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    assert layer.capacity(3) == 2
    y, stats = layer(x_ND.view(1, 3, 2))
    assert stats.expert_load.tolist() == [3, 3]
    assert stats.dropped_fraction == pytest.approx(2 / 6)
    w_N2 = torch.softmax(x_ND, dim=-1)
    kept = {0: [0], 1: [1], 2: [0, 1]}
    for n, experts in kept.items():
        want = layer.shared(x_ND[n])
        for e in experts:
            want = want + w_N2[n, e] * layer.experts.expert_forward(e, x_ND[n:n + 1])[0]
        torch.testing.assert_close(y[0, n], want)


@pytest.mark.parametrize("cf, N, K, E, want", [
    (1.25, 8, 2, 8, 3),     # 2.5 -> 3
    (1.0, 16, 2, 8, 4),     # exact
    (1.1, 25, 2, 11, 5),    # exactly 5, but 1.1 * 25 * 2 / 11 = 5.000000000000001 in floats
    (1.1, 45, 2, 3, 33),
    (0.01, 10, 1, 8, 1),    # never 0 while there are tokens
    (1.25, 0, 2, 8, 0),
])
def test_capacity_formula(cf, N, K, E, want):
    layer = MoELayer(MoEConfig(dim=4, hidden_dim=4, num_experts=E, top_k=K, capacity_factor=cf))
    assert layer.capacity(N) == want


def test_balance_and_z_losses_by_hand():
    probs_NE = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])  # mean [0.75, 0.25]
    kl = 0.75 * math.log(0.75 * 2) + 0.25 * math.log(0.25 * 2)
    assert float(losses.kl_balance_loss(probs_NE)) == pytest.approx(kl)
    idx_NK = torch.tensor([[0], [1], [0], [0]])  # f = [0.75, 0.25]
    assert float(losses.switch_balance_loss(probs_NE, idx_NK)) == pytest.approx(2 * (0.75 ** 2 + 0.25 ** 2))
    # Top-2 (DeepSeek's scaling, f_i = load_i / (N K)): 4 experts, loads [4, 2, 1, 1] of 8.
    probs_NE = torch.full((4, 4), 0.25)
    idx_NK = torch.tensor([[0, 1], [0, 1], [0, 2], [0, 3]])
    assert float(losses.switch_balance_loss(probs_NE, idx_NK)) == pytest.approx(1.0)
    assert float(losses.z_loss(torch.zeros(3, 4))) == pytest.approx(math.log(4) ** 2)
    # The layer's aux_loss combines them with its coefficients.
    layer = identity_layer(balance_loss="switch", balance_coef=0.5, z_loss_coef=0.25)
    x = torch.tensor([[[2.0, 1.0, 0.0, -1.0], [0.0, 0.5, 3.0, 0.0]]])
    _, stats = layer(x)
    assert stats.expert_idx.tolist() == [[0, 1], [2, 1]]
    probs = torch.softmax(x[0], -1)
    f = torch.tensor([1.0, 2.0, 1.0, 0.0]) / 4
    want = 0.5 * 4 * (f * probs.mean(0)).sum() + 0.25 * x[0].logsumexp(-1).square().mean()
    torch.testing.assert_close(stats.aux_loss, want)


def test_sequence_balance_loss_by_hand():
    """Two sequences that each keep to one expert: balanced over the batch (Switch 1.0), not per sequence."""
    probs_NE = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    idx_NK = torch.tensor([[0], [0], [1], [1]])
    assert float(losses.switch_balance_loss(probs_NE, idx_NK)) == pytest.approx(1.0)
    # per sequence f = E / (K T) * chosen = [2, 0] and P = [1, 0]: 2.0 each
    assert float(losses.sequence_balance_loss(probs_NE, idx_NK, torch.tensor([0, 0, 1, 1]))) == pytest.approx(2.0)
    # interleaved, each sequence uses both experts: f = [1, 1], P = [0.5, 0.5]
    assert float(losses.sequence_balance_loss(probs_NE, idx_NK, torch.tensor([0, 1, 0, 1]))) == pytest.approx(1.0)
    # top-2 of 4 with uniform probabilities: 1.0 whatever the loads (sum_i f_i = E)
    idx_NK = torch.tensor([[0, 1], [0, 2], [0, 1], [2, 3]])
    assert float(losses.sequence_balance_loss(torch.full((4, 4), 0.25), idx_NK, torch.tensor([7, 7, 3, 3]))
                 ) == pytest.approx(1.0)


def test_sequence_balance_loss_follows_the_padded_batchs_rows():
    """ffn_on_real_tokens runs the real tokens as rows of one token: it still hands the layer their
    sequences, so the loss equals that of the unpadded batch."""
    torch.manual_seed(0)
    layer = MoELayer(MoEConfig(dim=8, hidden_dim=8, num_experts=4, top_k=2, capacity_factor=0,
                               balance_loss="sequence", balance_coef=1.0))
    x_BTD = torch.randn(2, 3, 8)
    padded_BTD = torch.cat([x_BTD, torch.randn(2, 2, 8)], dim=1)   # two padding tokens a row
    real_N = torch.tensor([0, 1, 2, 5, 6, 7])
    _, stats = ffn_on_real_tokens(layer, padded_BTD, real_N)
    _, want = layer(x_BTD)
    torch.testing.assert_close(stats.aux_loss, want.aux_loss)
    _, per_token = layer(x_BTD.reshape(6, 1, 8))   # every token its own sequence: another value
    assert not torch.allclose(per_token.aux_loss, want.aux_loss)


def test_aux_loss_reaches_only_the_router():
    torch.manual_seed(0)
    layer = MoELayer(MoEConfig(dim=8, hidden_dim=8, num_experts=4, top_k=2, num_tasks=2, num_shared_experts=1,
                               balance_loss="kl", balance_coef=1.0, z_loss_coef=1.0))
    x = torch.randn(2, 6, 8, requires_grad=True)
    _, stats = layer(x, 1)
    stats.aux_loss.backward()
    router = {f"router.{n}" for n, _ in layer.router.named_parameters()}
    for name, p in layer.named_parameters():
        if name in router:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    assert stats.gate_weight.grad_fn is None and not stats.expert_idx.is_floating_point()


@pytest.mark.parametrize("capacity_factor", [0, 1.25])
@pytest.mark.parametrize("balance_loss", ["kl", "switch", "sequence"])
def test_no_tokens_gives_zeros_not_nan(capacity_factor, balance_loss):
    layer = MoELayer(MoEConfig(dim=8, hidden_dim=8, num_experts=4, top_k=2, num_shared_experts=1,
                               capacity_factor=capacity_factor, balance_loss=balance_loss, z_loss_coef=1e-3))
    x = torch.randn(2, 0, 8, requires_grad=True)
    y, stats = layer(x)
    assert y.shape == (2, 0, 8)
    assert stats.aux_loss.item() == 0.0 and stats.router_entropy == 0.0
    assert stats.expert_load.tolist() == [0, 0, 0, 0] and stats.dropped_fraction == 0.0
    (y.sum() + stats.aux_loss).backward()
    assert not layer.router.weight_ED.grad.isnan().any()


def test_a_tokens_output_does_not_depend_on_its_batch_when_dropless():
    torch.manual_seed(0)
    layer = MoELayer(MoEConfig(dim=16, hidden_dim=16, num_experts=8, top_k=2, capacity_factor=0, gate="sigmoid",
                               num_groups=4, top_groups=2, num_tasks=2, num_shared_experts=1))
    layer.router.expert_bias_E.normal_()
    x, task = torch.randn(6, 5, 16), torch.tensor([0, 1, 1, 0, 1, 0])
    y, stats = layer(x, task)
    for b in range(6):
        y_b, stats_b = layer(x[b:b + 1], task[b:b + 1])
        assert torch.equal(stats_b.expert_idx, stats.expert_idx.view(6, 5, 2)[b])
        torch.testing.assert_close(y_b[0], y[b], rtol=1e-5, atol=1e-6)
    y_one, _ = layer(x[2:3, 3:4], 1)
    torch.testing.assert_close(y_one[0, 0], y[2, 3], rtol=1e-5, atol=1e-6)
    assert torch.equal(layer(x, task)[0], y)  # and runs repeat bit for bit


def test_no_grad_and_eval_give_the_same_output():
    torch.manual_seed(0)   # (a capacity that also applies in eval mode: the same cut in all three)
    layer = MoELayer(MoEConfig(dim=8, hidden_dim=8, num_experts=4, top_k=2, capacity_factor=1.0,
                               drop_at_inference=True))
    x = torch.randn(3, 4, 8)
    y_train, _ = layer(x)
    with torch.no_grad():
        y_no_grad, _ = layer(x)
    with torch.inference_mode():
        y_eval, _ = layer.eval()(x)
    assert torch.equal(y_train.detach(), y_no_grad) and torch.equal(y_no_grad, y_eval)


def test_bfloat16_module_routes_in_fp32_and_keeps_its_balancing_state_fp32():
    torch.manual_seed(0)
    layer = MoELayer(MoEConfig(dim=16, hidden_dim=16, num_experts=8, top_k=2, capacity_factor=0, num_tasks=2,
                               num_shared_experts=1, bias_update_rate=1e-3))
    layer.router.expert_bias_E.fill_(0.5)
    x = torch.randn(2, 8, 16)
    reference, _ = layer(x, 1)
    layer = layer.bfloat16()
    assert layer.router.weight_ED.dtype == torch.bfloat16
    assert layer.router.expert_bias_E.dtype == layer.router.pending_load_E.dtype == torch.float32
    y, stats = layer.train()(x.bfloat16(), 1)
    assert y.dtype == torch.bfloat16 and stats.gate_weight.dtype == torch.float32
    torch.testing.assert_close(y.float(), reference, atol=0.1, rtol=0.1)
    y.float().sum().backward()
    assert layer.router.weight_ED.grad.dtype == torch.bfloat16
    update_expert_biases(layer)  # a 1e-3 step from 0.5: lost in bf16, kept in fp32
    assert (layer.router.expert_bias_E != 0.5).any()


def test_capacity_applies_in_training_only_so_inference_does_not_depend_on_the_batch():
    torch.manual_seed(0)
    layer = MoELayer(MoEConfig(dim=8, hidden_dim=16, num_experts=4, top_k=2, capacity_factor=0.5))
    x = torch.randn(1, 12, 8)
    with torch.no_grad():
        assert layer(x)[1].dropped_fraction > 0          # training: the capacity cuts
        layer.eval()
        alone, stats = layer(x[:, :1])
        batched, stats_b = layer(x)
        assert stats.dropped_fraction == 0 and stats_b.dropped_fraction == 0
        torch.testing.assert_close(alone[0, 0], batched[0, 0], rtol=1e-5, atol=1e-6)
        layer.cfg.drop_at_inference = True               # opt back in: bounded work per expert
        assert layer(x)[1].dropped_fraction > 0


@pytest.mark.parametrize("bad", [-1, 3, [0, 5]])
def test_task_ids_outside_the_gate_table_are_errors(bad):
    layer = MoELayer(MoEConfig(dim=8, hidden_dim=8, num_experts=4, top_k=2, num_tasks=3))
    x = torch.randn(2, 3, 8)
    layer(x, torch.tensor([0, 2]))   # in range: fine
    with pytest.raises(ValueError, match="out of range"):
        layer(x, torch.tensor(bad))
