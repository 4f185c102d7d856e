"""The backbone's evidence benchmarks (core/bench): `bench lm` and `bench fusion` print their JSON, the
LM split holds whole topics out, and the MoE and dense LMs match in active parameters."""
from __future__ import annotations

import functools
import json
import math

import pytest

from apps import cli
from core.bench import fusion, lm
from core.moe import MoELayer

TINY_LM = dict(batch_size=4, seq_len=32, dim=16, num_layers=1, num_heads=2, expert_hidden=8,
               num_experts=4, eval_mask_draws=1)
TINY_FUSION = dict(dim=32, batch_size=8, eval_questions=16)


def last_json_line(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def numbers(tree) -> list[float]:
    """Every number in a JSON tree."""
    if isinstance(tree, dict):
        return [x for value in tree.values() for x in numbers(value)]
    if isinstance(tree, list):
        return [x for value in tree for x in numbers(value)]
    return [tree] if isinstance(tree, int | float) and not isinstance(tree, bool) else []


def test_bench_lm_json(capsys, monkeypatch):
    monkeypatch.setattr(lm, "LMBenchConfig", functools.partial(lm.LMBenchConfig, **TINY_LM))
    assert cli.main(["bench", "lm", "--steps", "2", "--json"]) == 0
    result = last_json_line(capsys)

    assert {"corpus", "corpus_chars", "train_tokens", "heldout_tokens", "heldout_topics", "moe", "dense",
            "moe_vs_dense_perplexity_reduction", "machine", "date"} <= set(result)
    for name in ("moe", "dense"):
        assert {"heldout_loss", "perplexity", "params_total", "params_active_per_token",
                "train_seconds"} <= set(result[name])
        assert result[name]["perplexity"] == pytest.approx(math.exp(result[name]["heldout_loss"]))
    assert result["config"]["steps"] == 2 and result["corpus_chars"] > 100_000
    assert all(math.isfinite(x) for x in numbers(result))


def test_bench_fusion_json(capsys, monkeypatch):
    tiny = functools.partial(fusion.FusionBenchConfig, **TINY_FUSION)
    monkeypatch.setattr(fusion, "FusionBenchConfig", tiny)
    assert cli.main(["bench", "fusion", "--steps", "1", "--seeds", "2", "--json"]) == 0
    result = last_json_line(capsys)

    assert set(result["accuracy_percent"]) == {"task_gate", "confidence", "progressive", "concat"}
    assert set(result["gain_points_vs_concat"]) == {"task_gate", "confidence", "progressive"}
    for acc in result["accuracy_percent"].values():
        assert len(acc["per_seed"]) == 2 and 0 <= acc["mean"] <= 100 and acc["std"] >= 0
    best = result["best_dynamic_strategy"]
    assert result["fusion_gain_points"] == result["gain_points_vs_concat"][best] == max(
        result["gain_points_vs_concat"].values())
    assert all(math.isfinite(x) for x in numbers(result))


def test_lm_split_holds_whole_topics_out():
    cfg = lm.LMBenchConfig(seq_len=32)
    data = lm.load_data(cfg)
    assert data.heldout_topics and not set(data.heldout_topics) & set(data.train_topics)
    assert set(data.heldout_topics) | set(data.train_topics) == set(lm.load_corpus())

    # The training rows are exactly the training topics' tokens, in order: no held-out text among them.
    ids = {name: data.vocab.encode(w) for name, w in lm.tokenize_topics(lm.load_corpus()).items()}
    for topics, rows_ST in ((data.train_topics, data.train_ids_ST),
                            (data.heldout_topics, data.heldout_ids_ST)):
        assert (rows_ST[:, 0] == data.vocab.cls_id).all() and (rows_ST[:, -1] == data.vocab.sep_id).all()
        stream = rows_ST[:, 1:-1].flatten().tolist()
        assert stream == [i for name in topics for i in ids[name]][:len(stream)]
    held = sum(len(ids[name]) for name in data.heldout_topics) / sum(map(len, ids.values()))
    assert cfg.heldout_fraction <= held < 0.5


def test_moe_and_dense_lms_have_equal_active_parameters():
    cfg = lm.LMBenchConfig()
    models = {name: lm.MaskedLM(stream_cfg) for name, stream_cfg in lm.stream_configs(cfg, 3000).items()}
    moe_total, moe_active = lm.param_counts(models["moe"])
    dense_total, dense_active = lm.param_counts(models["dense"])

    routers = [m.router for m in models["moe"].modules() if isinstance(m, MoELayer)]
    assert len(routers) == cfg.num_layers and moe_total > dense_total
    router_params = sum(p.numel() for r in routers for p in r.parameters())
    # The only extras: the routers, and the output biases of the top_k - 1 further experts a token mixes.
    assert moe_active - dense_active == router_params + cfg.num_layers * (cfg.top_k - 1) * cfg.dim
    assert moe_active - dense_active < 0.01 * dense_active
