"""`moe-suite`: help, registration, bench moe, lab train, serve defaults and errors."""
import json
import subprocess
import sys
import types

import pytest

from apps import cli

TINY_BENCH = ["bench", "moe", "--tokens", "64", "--dim", "16", "--hidden-dim", "32",
              "--num-experts", "4", "--rounds", "1", "--warmup", "0"]


@pytest.fixture
def small_bench(monkeypatch):
    """Bench only the suite's own candidates (importing transformers alone takes seconds), on one
    thread (tiny ops on a busy machine crawl with spinning OpenMP threads)."""
    import torch

    monkeypatch.setitem(sys.modules, "transformers", None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main(["--help"])
    assert exit.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("serve", "bench", "lab"))
    with pytest.raises(SystemExit):
        cli.main(["bench", "--help"])
    assert "moe" in capsys.readouterr().out


def test_help_imports_neither_torch_nor_gradio():
    code = ("import sys, apps.cli; apps.cli.build_parser(); "
            "print(sorted({'torch', 'gradio'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_bench_moe_json_is_the_last_line(capsys, small_bench):
    assert cli.main([*TINY_BENCH, "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result["median_ms"]) == set(result["ratio_to_dense"]) >= {"dense", "moe_dropless"}
    assert result["ratio_to_dense"]["dense"] == 1.0 and result["tokens"] == 64


def test_bench_moe_prints_a_table(capsys, small_bench):
    assert cli.main(TINY_BENCH) == 0
    out = capsys.readouterr().out
    assert "x dense" in out and "moe_capacity_1.25" in out


def test_lab_train_json(capsys):
    assert cli.main(["lab", "train", "--steps", "5", "--dim", "16", "--hidden-dim", "32",
                     "--batch-size", "2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 5 and {"balance", "dropped_fraction", "loss"} <= set(summary)


def test_serve_defaults_to_loopback(monkeypatch):
    calls = []
    monkeypatch.setattr("uvicorn.run", lambda *args, **kwargs: calls.append(kwargs))
    assert cli.main(["serve"]) == 0
    assert calls[0]["host"] == "127.0.0.1" and calls[0]["port"] == 7860


def test_bad_arguments_exit_nonzero_with_a_message(capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main(["bench", "moe", "--tokens", "0"])
    assert exit.value.code == 2 and "--tokens: must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit:
        cli.main(["nonsense"])
    assert exit.value.code == 2
    assert cli.main(["lab", "train", "--steps", "1", "--top-k", "9"]) == 2
    assert "top_k (9) exceeds num_experts (8)" in capsys.readouterr().err
    assert cli.main(["lab", "train", "--steps", "1", "--top-k", "9", "--json"]) == 2   # scripts read stdout
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == {
        "error": "top_k (9) exceeds num_experts (8)", "exit_code": 2}


def test_usage_errors_end_stdout_with_json_when_asked(capsys):
    """A bad flag value or a missing argument is argparse's error: with --json it is on stdout too."""
    with pytest.raises(SystemExit) as exit:
        cli.main([*TINY_BENCH[:2], "--tokens", "0", "--json"])
    assert exit.value.code == 2
    captured = capsys.readouterr()
    error = json.loads(captured.out.strip().splitlines()[-1])
    assert error["exit_code"] == 2 and "--tokens: must be >= 1" in error["error"]
    assert "usage:" in captured.err
    with pytest.raises(SystemExit):
        cli.main(["video", "caption", "--json"])                  # the clip argument is missing
    assert "required" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["error"]
    with pytest.raises(SystemExit):
        cli.main([*TINY_BENCH[:2], "--tokens", "0"])              # without --json stdout stays empty
    assert capsys.readouterr().out == ""


def test_apps_register_their_own_commands(monkeypatch, capsys):
    def register(table: cli.CommandTable) -> None:
        p = table.group("bench", "ignored: the group exists").command("demo", "a demo", lambda a: print(a.n))
        p.add_argument("--n", type=int, default=3)

    monkeypatch.setitem(sys.modules, "demo_app", types.SimpleNamespace(register=register))
    monkeypatch.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, "demo_app"))
    assert cli.main(["bench", "demo", "--n", "5"]) == 0
    assert capsys.readouterr().out == "5\n"
    with pytest.raises(SystemExit):
        cli.main(["bench", "--help"])
    out = capsys.readouterr().out
    assert "moe" in out and "demo" in out
