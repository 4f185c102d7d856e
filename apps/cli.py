"""`moe-suite`: the suite's one command line.

Commands are registered, not hard-wired: each module in `COMMAND_MODULES` has a
`register(cli: CommandTable)` that adds its commands, e.g.

    def register(cli):
        p = cli.group("bench", "benchmarks").command("chat", "time the chat app", _bench_chat)
        p.add_argument("--turns", type=positive_int, default=8)

A handler gets the parsed `argparse.Namespace` and returns an exit status (None = 0); it does its
heavy imports (torch, gradio) itself, so that `moe-suite --help` stays quick. A ValueError from a
handler is reported as a usage error, without a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from core.cli import CommandTable, given_flags, positive_int  # noqa: F401 - command modules import them from here

# Modules with a `register(cli)`; an app adds its own line here.
COMMAND_MODULES: tuple[str, ...] = (
    "apps.lab", "core.cli_commands", "core.training.cli", "core.bench.cli", "apps.customer_service",
    "apps.medical_imaging", "apps.video_generation", "apps.suite_cli",
)


def _serve(args: argparse.Namespace) -> None:
    from apps.server import serve

    serve(config=args.config, **given_flags(args, ("host", "port")))


def _bench_moe(args: argparse.Namespace) -> None:
    from core.moe.bench import BenchConfig, run

    result = run(BenchConfig(tokens=args.tokens, dim=args.dim, hidden_dim=args.hidden_dim,
                             num_experts=args.num_experts, top_k=args.top_k, rounds=args.rounds,
                             warmup=args.warmup, bf16=args.bf16, seed=args.seed))
    if args.json:
        print(json.dumps(result))
        return
    print(f"MoE forward+backward: {result['tokens']} tokens, dim {result['dim']}, hidden "
          f"{result['hidden_dim']}, {result['num_experts']} experts, top-{result['top_k']}"
          f"{', bf16' if result['bf16'] else ''}; median of {result['rounds']} rounds")
    print(f"{'candidate':<34}{'median ms':>10}{'x dense':>9}")
    for name, ms in result["median_ms"].items():
        print(f"{name:<34}{ms:>10.1f}{result['ratio_to_dense'][name]:>9.3f}")
    for name, error in result["failed"].items():
        print(f"{name:<34} failed: {error}")
    print(result["machine"])


def _register_suite(cli: CommandTable) -> None:
    p = cli.command("serve", "serve the hub, health probes and every app's page and API", _serve)
    p.add_argument("--config", type=Path, default=None,
                   help="TOML settings file (default: $MOE_SUITE_CONFIG; see moe-suite.example.toml)")
    # SUPPRESS: an absent flag leaves the settings file's / MOE_SUITE_HOST's value (default 127.0.0.1:7860)
    p.add_argument("--host", default=argparse.SUPPRESS, help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=argparse.SUPPRESS, help="port (default: 7860)")

    p = cli.group("bench", "benchmarks").command(
        "moe", "time MoELayer against a dense block and transformers' Mixtral MoE block", _bench_moe)
    p.add_argument("--tokens", type=positive_int, default=8192)
    p.add_argument("--dim", type=positive_int, default=512)
    p.add_argument("--hidden-dim", type=positive_int, default=1024)
    p.add_argument("--num-experts", type=positive_int, default=64)
    p.add_argument("--top-k", type=positive_int, default=2)
    p.add_argument("--rounds", type=positive_int, default=7, help="timed rounds (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    p.add_argument("--bf16", action="store_true", help="run under bf16 autocast")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")


class _Parser(argparse.ArgumentParser):
    """argparse's parser, except that with --json on the command line a usage error (a missing file
    argument, a bad number) also ends stdout with the JSON error object, as a handler's error does.
    Subcommand parsers are of the same class (argparse creates them with type(parent))."""
    json_errors = False   # set by main for the duration of one parse

    def error(self, message: str):
        if _Parser.json_errors:
            print(json.dumps({"error": f"{self.prog}: {message}", "exit_code": 2}))
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="moe-suite", description="MoE Suite: a Mixture-of-Experts core and the apps built on it.")
    cli = CommandTable(parser.add_subparsers(title="commands", metavar="COMMAND", required=True))
    _register_suite(cli)
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(cli)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _Parser.json_errors = "--json" in argv
    try:
        args = build_parser().parse_args(argv)
    finally:
        _Parser.json_errors = False
    try:
        return args.handler(args) or 0
    except ValueError as exc:
        print(f"moe-suite: error: {exc}", file=sys.stderr)
        if getattr(args, "json", False):   # scripts read the last line of stdout: say it there too
            print(json.dumps({"error": str(exc), "exit_code": 2}))
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
