"""`moe-suite bench chat` at tiny settings, with the stand-in intent model and index of chat_fakes:
turns in process and over the real HTTP API, one JSON object as the last line, no HTTP errors."""
from __future__ import annotations

import json

from chat_fakes import OverlapIndex, make_assistant

from apps import cli
from apps.customer_service import bench

KEYS = {"turn_median_ms", "turn_p95_ms", "intent_median_ms", "search_median_ms", "passages",
        "index_build_seconds", "http_clients", "http_seconds", "http_turns", "http_turns_per_second",
        "http_errors", "http_p50_ms", "http_p95_ms", "http_p99_ms", "machine", "date"}


def test_bench_chat_json(capsys, monkeypatch):
    index = OverlapIndex()
    fake = bench.BenchSetup(lambda path: make_assistant(path, index=index), passages=len(OverlapIndex.DOCS))
    monkeypatch.setattr(bench, "default_setup", lambda cfg: fake)
    assert cli.main(["bench", "chat", "--turns", "12", "--clients", "3", "--seconds", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    assert KEYS <= set(result)
    assert result["turns"] == 12 and result["passages"] == 3 and result["index_build_seconds"] is None
    assert 0 <= result["intent_median_ms"] <= result["turn_median_ms"] <= result["turn_p95_ms"]
    assert result["search_median_ms"] >= 0 and index.queries  # knowledge questions reached the index
    assert result["http_errors"] == 0 and result["http_clients"] == 3 and result["http_turns"] > 0
    assert result["http_p50_ms"] <= result["http_p95_ms"] <= result["http_p99_ms"]
    assert result["http_turns_per_second"] > 0 and result["http_seconds"] >= 1


def test_bench_knowledge_is_the_bank_kb_plus_synthetic_passages():
    docs = bench.bench_knowledge(100)
    assert len(docs) == 100 and len({d.id for d in docs}) == 100
    assert docs[-1].id.startswith("synthetic-") and not docs[0].id.startswith("synthetic-")
