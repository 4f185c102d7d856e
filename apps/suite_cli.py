"""The suite's own commands: `moe-suite bench load` (handlers import their heavy parts when run)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from apps.cli import positive_int

if TYPE_CHECKING:
    from apps.cli import CommandTable


def _bench_load(args: argparse.Namespace) -> int:
    from apps.bench_load import LoadBenchConfig, run

    result = run(LoadBenchConfig(clients=args.clients, seconds=args.seconds, warm=args.warm,
                                 warmup_seconds=args.warmup_seconds,
                                 max_rss_growth_mb=args.max_rss_growth_mb, start_timeout=args.start_timeout,
                                 app_factory=args.app_factory, log=args.server_log))
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['clients']} clients for {result['seconds']} s on the chat API: {result['turns']} turns, "
              f"{result['errors']} errors, {result['turns_per_second']} turns/s; p50 {result['p50_ms']} ms, "
              f"p95 {result['p95_ms']} ms, p99 {result['p99_ms']} ms")
        print(f"server RSS {result['rss_before_mb']} -> {result['rss_after_mb']} MB "
              f"(growth {result['rss_growth_mb']} MB, bound {result['rss_growth_bound_mb']} MB); {result['machine']}")
    ok = result["errors"] == 0 and result["warmup_errors"] == 0 and result["rss_within_bound"]
    return 0 if ok and result["healthy_after"] else 1


def register(cli: CommandTable) -> None:
    """Add `bench load` (see apps.cli)."""
    p = cli.group("bench", "benchmarks").command(
        "load", "concurrent HTTP clients on the chat API of the real server (a child process on a free "
                "loopback port): errors, p50/p95/p99, throughput, server memory before and after; "
                "exit status 1 on any error or memory growth past the bound", _bench_load)
    p.add_argument("--clients", type=positive_int, default=64, help="concurrent clients (default %(default)s)")
    p.add_argument("--seconds", type=float, default=60.0, help="how long they send (default %(default)s)")
    p.add_argument("--warmup-seconds", type=float, default=20.0,
                   help="untimed full load before the 'before' memory reading (default %(default)s)")
    p.add_argument("--warm", action="store_true",
                   help="first build the default chat models into the cache (3 min on first use)")
    p.add_argument("--max-rss-growth-mb", type=float, default=200.0,
                   help="the bound on the server's memory growth (default %(default)s)")
    p.add_argument("--start-timeout", type=float, default=900.0, help="seconds to wait for /readyz")
    p.add_argument("--app-factory", default="apps.server:create_app",
                   help="module:function building the served app (default: the suite's)")
    p.add_argument("--server-log", type=Path, default=None, help="keep the server's log in this file")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
