"""Compression (core/compress.py): known-answer pruning, int8 error and size, reload, the CLI."""
from __future__ import annotations

import json

import pytest
import torch

from apps import cli
from core import registry
from core.audio import AudioStreamConfig
from core.checkpoint import load_checkpoint, save_checkpoint
from core.compress import (Int8GroupedExperts, Int8Linear, calibrate, compress_model, main_output,
                           prune_layer, state_nbytes)
from core.moe import GroupedExperts, MoEConfig, MoELayer

E, D = 8, 16
# Each token is steered to two experts: (first, second). Loads: 1:4, 4:3, 6:3, 7:2, others 0.
PAIRS = [(1, 4), (1, 4), (4, 6), (1, 6), (6, 7), (7, 1)]
KEPT = [1, 4, 6]


def steered_layer(top_k: int = 2, **overrides) -> MoELayer:
    """Dropless layer whose router sends a token with x[a] = 2, x[b] = 1 to experts a and b."""
    cfg = MoEConfig(dim=D, hidden_dim=24, num_experts=E, top_k=top_k, capacity_factor=0, num_tasks=2,
                    **overrides)
    torch.manual_seed(0)
    layer = MoELayer(cfg).eval()
    with torch.no_grad():
        layer.router.weight_ED.copy_(10 * torch.eye(E, D))
        layer.router.expert_bias_E.copy_(torch.linspace(0, 0.1, E))   # too small to change choices
        layer.router.task_offset_TE.normal_(std=0.1)
    return layer


def steered_tokens(pairs: list[tuple[int, int]]) -> torch.Tensor:
    """[1, N, D]: token n points at experts pairs[n], plus a little noise in the other features."""
    x_ND = 0.01 * torch.randn(len(pairs), D)
    for n, (a, b) in enumerate(pairs):
        x_ND[n, a], x_ND[n, b] = 2.0, 1.0
    return x_ND.unsqueeze(0)


def test_calibration_sums_the_expert_load():
    layer = steered_layer()
    load, outputs = calibrate(layer, [(steered_tokens(PAIRS), 0), (steered_tokens(PAIRS[:2]), 1)])
    assert load[""].tolist() == [0, 6, 0, 0, 5, 0, 3, 2]
    assert [y.shape for y in outputs] == [(1, 6, D), (1, 2, D)]


def test_pruning_keeps_the_most_loaded_experts_and_their_outputs():
    layer = steered_layer()
    pruned, report = compress_model(layer, [(steered_tokens(PAIRS), 0)], keep_experts=3, quantize=False)
    assert report.kept_experts == {"": KEPT} and (report.experts_before, report.experts_after) == (8, 3)
    assert pruned.cfg.num_experts == 3 and report.notes == []
    router = pruned.router
    assert torch.equal(router.weight_ED, layer.router.weight_ED[KEPT])
    assert torch.equal(router.expert_bias_E, layer.router.expert_bias_E[KEPT])
    assert torch.equal(router.task_offset_TE, layer.router.task_offset_TE[:, KEPT])
    assert torch.equal(pruned.experts.w_out_EHD, layer.experts.w_out_EHD[KEPT])

    kept_only = [(1, 4), (6, 1), (4, 6), (6, 4)]
    x = steered_tokens(kept_only + [(6, 7), (0, 2)])
    y, y_pruned = layer(x, 1)[0], pruned(x, 1)[0]
    torch.testing.assert_close(y_pruned[:, :len(kept_only)], y[:, :len(kept_only)])
    assert not torch.allclose(y_pruned[:, len(kept_only):], y[:, len(kept_only):])
    assert layer.cfg.num_experts == E  # the original is left as it was


@pytest.mark.parametrize("keep, groups, top_k, note", [
    ([0, 1, 4, 5], 2, 2, "other groups"),  # two per group: groups stay (their scores change: noted)
    ([0, 1, 2, 4], 1, 2, "uneven"),        # three and one: one group
    ([2, 6], 2, 1, "top_k clipped"),       # one per group, top_groups 1: one reachable expert
])
def test_pruning_with_group_limited_routing(keep, groups, top_k, note):
    layer = steered_layer(gate="sigmoid", num_groups=2, top_groups=1)
    pruned, notes = prune_layer(layer, torch.tensor(keep))
    assert (pruned.cfg.num_groups, pruned.cfg.top_k) == (groups, top_k)
    assert (note is None and notes == []) or any(note in n for n in notes)
    pruned(torch.randn(2, 3, D))  # still routes


def test_pruning_a_group_can_move_a_token_to_another_group():
    """The note is true: a group's score is its best two experts, so a token whose chosen expert is kept
    can still be routed elsewhere once its group lost an expert."""
    layer = steered_layer(gate="sigmoid", num_groups=2, top_groups=1, top_k=1)
    with torch.no_grad():
        layer.router.expert_bias_E.zero_(), layer.router.task_offset_TE.zero_()
    x = torch.zeros(1, 1, D)
    x[0, 0, [0, 2, 4, 5]] = torch.tensor([0.2, 0.18, 0.19, 0.185])   # group 0: experts 0 + 2 beat 4 + 5
    assert layer.router(x[0], torch.tensor([0])).expert_idx_NK.tolist() == [[0]]
    pruned, notes = prune_layer(layer, torch.tensor([0, 1, 4, 5]))   # expert 0 kept, its partner 2 not
    assert pruned.router(x[0], torch.tensor([0])).expert_idx_NK.tolist() == [[2]]   # original expert 4
    assert any("other groups" in n for n in notes)


def test_a_pruned_layer_lives_where_its_weights_live():
    """Buffers outside the state dict (the pending load of aux-free balancing) follow the weights too."""
    with torch.device("meta"):
        layer = MoELayer(MoEConfig(dim=D, hidden_dim=32, num_experts=4, top_k=2, bias_update_rate=0.01))
    pruned, _ = prune_layer(layer, torch.tensor([0, 2]))
    assert {t.device.type for t in [*pruned.parameters(), *pruned.buffers()]} == {"meta"}


def test_bfloat16_layers_prune_and_quantize_in_bfloat16():
    torch.manual_seed(0)
    layer = MoELayer(MoEConfig(dim=D, hidden_dim=32, num_experts=4, top_k=2, num_shared_experts=1)).bfloat16()
    x = torch.randn(2, 3, D, dtype=torch.bfloat16)
    pruned, _ = prune_layer(layer, torch.tensor([0, 2]))
    assert pruned.experts.w_in_EFD.dtype == pruned.shared.w_in.weight.dtype == torch.bfloat16
    assert pruned.router.expert_bias_E.dtype == layer.router.expert_bias_E.dtype
    assert pruned(x)[0].dtype == torch.bfloat16
    y = layer(x)[0]
    y_int8 = compress_model(layer, [(x,)], keep_experts=1.0, quantize=True)[0](x)[0]
    assert y_int8.dtype == torch.bfloat16
    assert ((y_int8 - y).float().norm() / y.float().norm()).item() < 0.05


@pytest.mark.parametrize("activation, bias", [("swiglu", False), ("gelu", True)])
def test_int8_experts_match_float_and_are_four_times_smaller(activation, bias):
    torch.manual_seed(0)
    experts = GroupedExperts(4, 128, 64, activation, bias)
    if bias:
        torch.nn.init.normal_(experts.b_in_EF), torch.nn.init.normal_(experts.b_out_ED)
    int8 = Int8GroupedExperts(experts)
    counts = [5, 0, 7, 4]
    x_AD = torch.randn(sum(counts), 128)
    y, y_int8 = experts(x_AD, counts), int8(x_AD, counts)
    assert ((y_int8 - y).norm() / y.norm()).item() < 0.02  # ~1% from two int8 matmuls
    assert int8.qw_in_EFD.dtype == torch.int8
    weights = experts.w_in_EFD.nbytes + experts.w_out_EHD.nbytes
    int8_weights = state_nbytes(int8) - (state_nbytes(experts) - weights)  # biases stay float
    assert 3.5 < weights / int8_weights <= 4


def test_int8_linear_matches_float():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32)
    int8 = Int8Linear(linear)
    assert (int8.in_features, int8.out_features) == (64, 32)   # read like nn.Linear's (CropEncoder does)
    x = torch.randn(10, 64)
    assert ((int8(x) - linear(x)).norm() / linear(x).norm()).item() < 0.01
    step = linear.weight.abs().max().item() / 127
    torch.testing.assert_close(int8.weight, linear.weight, atol=step / 2, rtol=0)
    assert 3.5 < state_nbytes(linear) / state_nbytes(int8) < 4


TINY_AUDIO = AudioStreamConfig(conv_dim=8, kernel_sizes=(4, 4), strides=(2, 2), dim=16, num_heads=2,
                               expert_hidden_dim=16, num_tasks=2)


def test_compressed_stream_saves_loads_and_runs(tmp_path):
    torch.manual_seed(0)
    model = registry.build("audio_stream", TINY_AUDIO).eval()
    g = torch.Generator().manual_seed(0)
    batches = [registry.synthetic_inputs("audio_stream", TINY_AUDIO, 2, g) for _ in range(3)]
    evaluate = lambda m: {"pooled_norm": main_output(m(*batches[0])).norm().item()}  # noqa: E731
    compressed, report = compress_model(model, batches, keep_experts=0.5, evaluate=evaluate)

    assert (report.experts_before, report.experts_after) == (4, 2)
    assert report.bytes_after < report.bytes_before / 2 and 0 < report.output_rel_error < 0.5
    assert report.quality_before == evaluate(model) and report.quality_after == evaluate(compressed)
    assert isinstance(compressed.block.moe.experts, Int8GroupedExperts)
    assert isinstance(compressed.proj, Int8Linear)
    assert isinstance(compressed.block.moe.shared.w_in, Int8Linear)
    assert type(compressed.block.attn.out_proj) is not Int8Linear  # read by MultiheadAttention itself

    save_checkpoint(compressed, tmp_path / "small", kind="audio_stream", config=TINY_AUDIO)
    loaded, _ = load_checkpoint(tmp_path / "small")
    loaded.eval()
    for args in batches:
        assert torch.equal(main_output(loaded(*args)), main_output(compressed(*args)))


def _run_cli(argv: list[str], capsys) -> dict:
    assert cli.main(argv) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_cli_compress_end_to_end(tmp_path, capsys):
    cfg = MoEConfig(dim=D, hidden_dim=24, num_experts=E, top_k=2, num_shared_experts=1, num_tasks=2)
    torch.manual_seed(0)
    save_checkpoint(MoELayer(cfg), tmp_path / "ckpt", kind="moe_layer", config=cfg)
    result = _run_cli(["compress", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "small"),
                       "--keep-fraction", "0.5", "--calib-batches", "2", "--json"], capsys)
    assert (result["experts_before"], result["experts_after"]) == (8, 4)
    assert result["size_mb_after"] < result["size_mb_before"] / 3
    assert {"latency_ms_before", "latency_ms_after", "output_rel_error"} <= result.keys()
    small, info = load_checkpoint(tmp_path / "small")
    assert isinstance(small.experts, Int8GroupedExperts) and info.metadata["compression"]["kept_experts"]
    assert small(torch.randn(2, 3, D), task_id=1)[0].shape == (2, 3, D)

    batches = [(torch.randn(2, 4, D), 0)]
    torch.save(batches, tmp_path / "calib.pt")
    result = _run_cli(["compress", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "pruned"),
                       "--keep-experts", "3", "--no-quantize", "--calib-data", str(tmp_path / "calib.pt"),
                       "--json"], capsys)
    assert result["experts_after"] == 3 and not result["quantized"]
    assert type(load_checkpoint(tmp_path / "pruned")[0].experts) is GroupedExperts


def test_cli_compress_errors_exit_2(tmp_path, capsys):
    assert cli.main(["compress", "--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path / "out")]) == 2
    assert str(tmp_path / "none") in capsys.readouterr().err


def test_int8_scales_are_per_output_channel():
    """Known answer: every output channel's largest |w| maps to +-127 and its error stays within half
    of its own step (a per-tensor scale would give small channels up to 100x the error)."""
    from core.compress import dequantize_int8, quantize_int8

    torch.manual_seed(0)
    w_EFD = torch.randn(2, 6, 16) * torch.logspace(-2, 0, 6)[None, :, None]  # channels 100x apart
    q_EFD, scale_EF = quantize_int8(w_EFD, dim=2)
    assert torch.equal(q_EFD.abs().amax(dim=2), torch.full((2, 6), 127, dtype=torch.int8))
    torch.testing.assert_close(scale_EF, w_EFD.abs().amax(dim=2) / 127)
    error_EFD = (dequantize_int8(q_EFD, scale_EF, dim=2) - w_EFD).abs()
    assert (error_EFD <= scale_EF[..., None] / 2 + 1e-9).all()
    w_EHD = torch.randn(2, 5, 4) * torch.logspace(-2, 0, 4)  # expert output weights: channels are D
    q_EHD, scale_ED = quantize_int8(w_EHD, dim=1)
    assert scale_ED.shape == (2, 4)
    assert (q_EHD.abs().amax(dim=1) == 127).all()


def test_compressed_model_stays_in_eval_mode():
    """A pruned layer is a fresh module: it must take the eval mode of the layer it replaces, else an
    eval model with a capacity would drop tokens (and its reported error would measure that)."""
    import dataclasses

    steered = steered_layer()
    layer = MoELayer(dataclasses.replace(steered.cfg, capacity_factor=1.0)).eval()  # drops in training only
    layer.load_state_dict(steered.state_dict())
    x = steered_tokens(PAIRS)  # loads 1:4, 4:3, 6:3, 7:2: keeping 4 experts keeps every used one
    pruned, report = compress_model(layer, [(x, 0)], keep_experts=4, quantize=False)
    assert report.experts_after == 4 and not any(m.training for m in pruned.modules())
    assert report.output_rel_error == 0.0  # in training mode: capacity 3 < the 4 tokens of expert 1
