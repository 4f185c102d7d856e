"""`moe-suite bench load` in its tiny mode: 2 clients for 2 s against the real server process
(tests/fake_server.py: the suite's app with chat_fakes' assistant), through the command line."""
import argparse
import json
from pathlib import Path

from apps import suite_cli
from apps.cli import CommandTable

TESTS = Path(__file__).resolve().parent


def test_bench_load_tiny(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("PYTHONPATH", str(TESTS))  # the server process imports fake_server from here
    monkeypatch.setenv("MOE_SUITE_CACHE", str(tmp_path / "cache"))
    parser = argparse.ArgumentParser()
    suite_cli.register(CommandTable(parser.add_subparsers(required=True)))
    args = parser.parse_args(["bench", "load", "--clients", "2", "--seconds", "2", "--app-factory",
                              "fake_server:app", "--start-timeout", "120", "--warmup-seconds", "1", "--json"])
    assert args.handler(args) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert result["errors"] == 0 and result["turns"] > 0 and result["clients"] == 2
    assert result["warmup_errors"] == 0 and result["warmup_turns"] > 0
    assert result["p50_ms"] <= result["p95_ms"] <= result["p99_ms"]
    assert result["turns_per_second"] > 0 and result["rss_before_mb"] > 10 and result["rss_within_bound"]
    assert result["healthy_after"] and 1.5 < result["seconds"] < 30
