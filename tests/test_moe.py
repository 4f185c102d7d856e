"""Known-answer tests of the routing layer (core/moe)."""
from __future__ import annotations

import itertools

import pytest
import torch

from core.moe import DenseFFN, MoEConfig, MoELayer, update_expert_biases
from core.moe import losses
from core.moe.bench import train_skewed_stream

TINY = dict(dim=16, hidden_dim=24, num_experts=8, top_k=2)


def naive_reference(layer: MoELayer, x: torch.Tensor, task_id=None) -> torch.Tensor:
    """Token by token: sum over the chosen experts of gate weight * expert(x), plus shared experts."""
    B, T, D = x.shape
    x_ND = x.reshape(-1, D)
    task_N = None if task_id is None else torch.as_tensor(task_id).reshape(-1).expand(B).repeat_interleave(T)
    route = layer.router(x_ND, task_N)
    out = torch.zeros_like(x_ND)
    for n in range(x_ND.shape[0]):
        for k in range(layer.cfg.top_k):
            e = int(route.expert_idx_NK[n, k])
            out[n] += route.weight_NK[n, k] * layer.experts.expert_forward(e, x_ND[n:n + 1])[0]
    if layer.shared is not None:
        out = out + layer.shared(x_ND)
    return out.view(B, T, D)


VARIANTS = [
    dict(gate="topk_softmax"),
    dict(gate="softmax_topk", renormalize=False),
    dict(gate="softmax_topk", renormalize=True, num_shared_experts=1),
    dict(gate="sigmoid", num_groups=4, top_groups=2),
    dict(gate="topk_softmax", num_tasks=3),
    dict(gate="softmax_topk", activation="gelu", expert_bias=True, num_shared_experts=2),
]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(f"{k}={v[k]}" for k in v))
def test_dropless_matches_naive_reference(variant):
    torch.manual_seed(0)
    layer = MoELayer(MoEConfig(**TINY, capacity_factor=0, **variant))
    if layer.experts.b_in_EF is not None:  # make the biases matter
        torch.nn.init.normal_(layer.experts.b_in_EF)
        torch.nn.init.normal_(layer.experts.b_out_ED)
    x = torch.randn(3, 5, TINY["dim"])
    task = torch.tensor([0, 2, 1]) if layer.cfg.num_tasks else None
    y, stats = layer(x, task)
    torch.testing.assert_close(y, naive_reference(layer, x, task), atol=1e-5, rtol=1e-5)
    assert stats.dropped_fraction == 0.0
    assert int(stats.expert_load.sum()) == 3 * 5 * TINY["top_k"]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(f"{k}={v[k]}" for k in v))
def test_forward_backward_every_variant(variant):
    """Gradients reach the router, every routed expert that got tokens, and the input."""
    torch.manual_seed(0)
    layer = MoELayer(MoEConfig(**TINY, capacity_factor=1.25, balance_coef=0.01, z_loss_coef=1e-3, **variant))
    x = torch.randn(4, 16, TINY["dim"], requires_grad=True)
    task = 1 if layer.cfg.num_tasks else None
    y, stats = layer(x, task)
    (y.square().mean() + stats.aux_loss).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert layer.router.weight_ED.grad.abs().sum() > 0
    used = stats.expert_load > 0
    grad_per_expert = layer.experts.w_in_EFD.grad.abs().sum(dim=(1, 2))
    assert (grad_per_expert[used] > 0).all()
    assert (layer.experts.w_out_EHD.grad.abs().sum(dim=(1, 2))[used] > 0).all()
    if layer.cfg.num_tasks:
        assert layer.router.task_offset_TE.grad.abs().sum() > 0


@pytest.mark.parametrize("activation, hidden", [("gelu", 6), ("swiglu", 5)])
def test_expert_widths_off_the_kernel_alignment_train(activation, hidden):
    """Hidden rows of 24 or 40 bytes: grouped_mm's kernel takes them forward but not backward, so the
    per-expert path runs; gradients match the token-by-token reference."""
    torch.manual_seed(0)
    layer = MoELayer(MoEConfig(dim=8, hidden_dim=hidden, num_experts=4, top_k=2, capacity_factor=0,
                               activation=activation))
    x = torch.randn(2, 3, 8)
    layer(x)[0].square().sum().backward()
    grads = [p.grad.clone() for p in layer.experts.parameters()]
    layer.zero_grad()
    naive_reference(layer, x).square().sum().backward()
    for got, want in zip(grads, [p.grad for p in layer.experts.parameters()]):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_group_limited_routing_takes_a_batch_without_tokens():
    layer = MoELayer(MoEConfig(**TINY, gate="sigmoid", num_groups=4, top_groups=2))
    y, stats = layer(torch.randn(2, 0, TINY["dim"]))
    assert y.shape == (2, 0, TINY["dim"]) and int(stats.expert_load.sum()) == 0


def test_balance_losses_grow_with_skew():
    E, N = 8, 64
    uniform = torch.full((N, E), 1.0 / E)
    skewed = torch.softmax(torch.tensor([4.0] + [0.0] * (E - 1)).expand(N, E), dim=-1)
    assert losses.kl_balance_loss(uniform) == pytest.approx(0.0, abs=1e-6)
    assert losses.kl_balance_loss(skewed) > 0.5
    spread_idx = torch.arange(N * 2).remainder(E).view(N, 2)
    piled_idx = torch.tensor([[0, 1]]).expand(N, 2)
    assert losses.switch_balance_loss(uniform, spread_idx) == pytest.approx(1.0, abs=1e-6)
    assert losses.switch_balance_loss(skewed, piled_idx) > 2.0


def test_capacity_drops_the_lowest_weight_tokens():
    """2 experts, top-1, 4 tokens, capacity ceil(1.0 * 4 * 1 / 2) = 2.

    Router logits equal the input, so tokens 0-2 choose expert 0 with probabilities
    sigmoid(3) > sigmoid(2) > sigmoid(1) and token 3 chooses expert 1: token 2 is dropped.
    """
    cfg = MoEConfig(dim=2, hidden_dim=4, num_experts=2, top_k=1, capacity_factor=1.0,
                    gate="softmax_topk", renormalize=False)
    layer = MoELayer(cfg)
    with torch.no_grad():
        layer.router.weight_ED.copy_(torch.eye(2))
    x = torch.tensor([[[3.0, 0.0], [2.0, 0.0], [1.0, 0.0], [0.0, 5.0]]])
    assert layer.capacity(4) == 2
    y, stats = layer(x)
    assert stats.expert_load.tolist() == [3, 1]
    assert stats.dropped_fraction == pytest.approx(0.25)
    assert torch.equal(y[0, 2], torch.zeros(2))
    for n, e in ((0, 0), (1, 0), (3, 1)):
        p = torch.softmax(x[0, n], dim=-1)[e]
        torch.testing.assert_close(y[0, n], p * layer.experts.expert_forward(e, x[0, n:n + 1])[0])


def test_aux_free_bias_pulls_a_skewed_stream_to_balance():
    torch.manual_seed(0)
    cfg = MoEConfig(**TINY, gate="sigmoid", capacity_factor=0, balance_loss="none", bias_update_rate=0.002)
    layer = MoELayer(cfg).train()
    skew_D = torch.zeros(TINY["dim"])
    skew_D[:4] = 3.0
    with torch.no_grad():  # make experts 0 and 1 attract almost every token
        layer.router.weight_ED[:2, :4] += 1.0
    x = torch.randn(4, 32, TINY["dim"]) + skew_D
    with torch.no_grad():
        start = layer(x)[1].balance
        for _ in range(300):
            layer(torch.randn(4, 32, TINY["dim"]) + skew_D)
            update_expert_biases(layer)
        end = layer(x)[1].balance
    assert start < 0.75
    assert end > 0.95
    # The bias changes which experts are chosen, never the weights' source: unbiased scores.
    route = layer.router(x.view(-1, TINY["dim"]))
    scores = torch.sigmoid(route.logits_NE).gather(-1, route.expert_idx_NK)
    torch.testing.assert_close(route.weight_NK, scores / scores.sum(-1, keepdim=True))


def test_group_limited_routing_stays_inside_the_chosen_groups():
    torch.manual_seed(0)
    cfg = MoEConfig(dim=16, hidden_dim=8, num_experts=16, top_k=4, num_groups=4, top_groups=2, gate="sigmoid")
    layer = MoELayer(cfg)
    x_ND = torch.randn(256, 16)
    route = layer.router(x_ND)
    scores_NGe = torch.sigmoid(route.logits_NE).view(256, 4, 4)
    top_groups_NG = scores_NGe.topk(2, dim=-1).values.sum(-1).topk(2, dim=-1).indices
    chosen_groups_NK = route.expert_idx_NK // 4
    for n in range(256):
        assert set(chosen_groups_NK[n].tolist()) <= set(top_groups_NG[n].tolist())
    # Without the limit, some tokens would have used a third group: the test can tell.
    free = MoELayer(MoEConfig(dim=16, hidden_dim=8, num_experts=16, top_k=4, gate="sigmoid"))
    free.router.load_state_dict(layer.router.state_dict())
    spread = [len(set((free.router(x_ND).expert_idx_NK[n] // 4).tolist())) for n in range(256)]
    assert max(spread) > 2


def test_shared_experts_always_act():
    torch.manual_seed(0)
    layer = MoELayer(MoEConfig(**TINY, num_shared_experts=1, capacity_factor=0.01))
    x = torch.randn(2, 64, TINY["dim"])
    y, stats = layer(x)
    assert stats.dropped_fraction > 0.9  # capacity 1 per expert: almost every routed token is dropped
    routed = y - layer.shared(x)
    dropped_rows = (routed.abs().sum(-1) == 0)
    assert dropped_rows.sum() > 100
    torch.testing.assert_close(y[dropped_rows], layer.shared(x)[dropped_rows])


def test_router_stays_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    layer = MoELayer(MoEConfig(**TINY, capacity_factor=0))
    x = torch.randn(2, 8, TINY["dim"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        route = layer.router(x.view(-1, TINY["dim"]))
        y, stats = layer(x)
    assert route.logits_NE.dtype == torch.float32 and route.weight_NK.dtype == torch.float32
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), layer(x)[0], atol=0.05, rtol=0.05)
    y.float().sum().backward()
    assert layer.experts.w_in_EFD.grad.dtype == torch.float32


@pytest.mark.parametrize("balance_loss", ["kl", "switch", "sequence"])
def test_balance_loss_keeps_training_balanced(balance_loss):
    without, with_loss = train_skewed_stream("none"), train_skewed_stream(balance_loss)
    assert with_loss >= 0.92
    assert without < with_loss - 0.05


def test_aux_free_bias_keeps_training_balanced():
    without = train_skewed_stream("none")
    with_bias = train_skewed_stream("none", bias_update_rate=0.01)
    assert with_bias >= 0.92
    assert without < with_bias - 0.05


def test_task_aware_gating_separates_two_tasks():
    """Same inputs, two tasks with different targets: the gate learns task-specific experts."""
    torch.manual_seed(0)
    cfg = MoEConfig(dim=8, hidden_dim=16, num_experts=4, top_k=1, capacity_factor=0, num_tasks=2,
                    balance_loss="kl", balance_coef=0.01, gate="softmax_topk", renormalize=False)
    layer = MoELayer(cfg)
    targets = [torch.randn(8, 8), torch.randn(8, 8)]
    opt = torch.optim.Adam(layer.parameters(), lr=3e-2)
    for _ in range(250):
        task_B = torch.randint(0, 2, (16,))
        x = torch.randn(16, 4, 8)
        want = torch.stack([x[b] @ targets[int(task_B[b])] for b in range(16)])
        y, stats = layer(x, task_B)
        loss = (y - want).square().mean() + stats.aux_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = torch.randn(64, 4, 8)
    with torch.no_grad():
        load_0 = layer(x, 0)[1].expert_load.float()
        load_1 = layer(x, 1)[1].expert_load.float()
    p0, p1 = load_0 / load_0.sum(), load_1 / load_1.sum()
    total_variation = 0.5 * (p0 - p1).abs().sum()
    assert total_variation > 0.5


def test_dense_ffn_has_the_active_parameters_of_the_moe():
    cfg = MoEConfig(**TINY, num_shared_experts=1)
    moe, dense = MoELayer(cfg), DenseFFN(cfg)
    per_expert = sum(p[0].numel() for p in (moe.experts.w_in_EFD, moe.experts.w_out_EHD))
    active = cfg.top_k * per_expert + sum(p.numel() for p in moe.shared.parameters())
    assert sum(p.numel() for p in dense.parameters()) == active


@pytest.mark.parametrize("bad, message", [
    (dict(gate="nope"), "gate"),
    (dict(top_k=9), "top_k"),
    (dict(num_groups=3), "num_groups"),
    (dict(num_groups=4, top_groups=1, top_k=3), "top_k"),
    (dict(capacity_factor=-1), "capacity_factor"),
    (dict(activation="relu"), "activation"),
])
def test_config_rejects_bad_values(bad, message):
    with pytest.raises(ValueError, match=message):
        MoEConfig(**{**TINY, **bad})


def test_task_id_shape_is_checked():
    layer = MoELayer(MoEConfig(**TINY, num_tasks=2))
    with pytest.raises(ValueError, match="task_id"):
        layer(torch.randn(3, 4, TINY["dim"]), torch.tensor([0, 1]))
