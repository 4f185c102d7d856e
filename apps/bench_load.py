"""`moe-suite bench load`: concurrent HTTP clients on the chat API of the real server.

    result = run(LoadBenchConfig(clients=64, seconds=60))     # the JSON of `bench load --json`

1. The server runs as it is served: `python -m uvicorn --factory apps.server:create_app` (every
   app, its pages, the middleware) in a child process on a free 127.0.0.1 port, with the chat
   models preloaded (`MOE_SUITE_PRELOAD=chat`; /readyz waits for them) and rate limiting off
   (the clients share one address). Its cache is a temporary folder whose entries link to the
   real cache's models and indexes, so sessions go to a temporary store, never the app's.
2. `warmup` turns one by one, then `warmup_seconds` of the full concurrent load (the server's
   thread pool, per-thread allocator arenas and caches fill up once: not growth), then the server's
   RSS ("before"); `clients` concurrent clients replay the scripted conversations of `bench chat`
   for `seconds` while the RSS is sampled every `sample_seconds`; then the RSS again ("after").
   The growth from "before" to "after" is held against `max_rss_growth_mb`.

The chat's default intent model is trained into the cache on first use (about 3 minutes on two
cores): `--warm` builds it (and the knowledge index) first, in this process, so that the server
only loads them; without it a missing model is trained by the server inside `start_timeout`.
"""
from __future__ import annotations

import asyncio
import os
import platform
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import httpx

from apps.customer_service.bench import CHAT_PATH, conversation_turns, percentile, send_turns
from apps.settings import cache_dir
from apps.web.runner import ServerProcess


@dataclass
class LoadBenchConfig:
    clients: int = 64                 # concurrent HTTP clients
    seconds: float = 60.0             # how long they send turns
    warmup: int = 8                   # turns sent one by one first
    warmup_seconds: float = 20.0      # then the full load, untimed, before the "before" memory reading
    sample_seconds: float = 10.0      # RSS sampling period during the timed run
    max_turns: int = 1_000_000        # stop early after this many turns in all
    warm: bool = False                # build the default chat models into the cache first
    max_rss_growth_mb: float = 200.0  # the stated bound on the server's memory growth over the run
    start_timeout: float = 900.0      # seconds for the server to become ready (model loading)
    app_factory: str = "apps.server:create_app"  # tests pass a factory serving a stand-in assistant
    extra_path: tuple[str, ...] = ()  # import paths the factory needs (e.g. the tests folder)
    env: dict[str, str] = field(default_factory=dict)  # more MOE_SUITE_* settings for the server
    log: Path | None = None           # the server's stderr (default: a temporary file, reported on failure)


def warm_cache() -> None:
    """Build the default chat models (intent model, knowledge index) into the cache if missing."""
    from apps.customer_service.intents import load_default_intent_model
    from apps.customer_service.retrieval import load_default_index

    load_default_intent_model()
    load_default_index()


def linked_cache(folder: Path) -> Path:
    """A cache at `folder` whose entries link to the real cache's, except the chat sessions."""
    folder.mkdir(parents=True, exist_ok=True)
    real = cache_dir()
    if real.is_dir():
        for entry in real.iterdir():
            if entry.name != "chat":
                (folder / entry.name).symlink_to(entry.resolve(), target_is_directory=entry.is_dir())
    return folder


def _warmup(url: str, turns: int) -> None:
    with httpx.Client(base_url=url, timeout=120) as http:
        for n, (session_id, message) in zip(range(turns), conversation_turns("warmup")):
            r = http.post(CHAT_PATH, json={"session_id": session_id, "message": message})
            if not r.is_success:
                raise RuntimeError(f"warm-up turn {n} failed: HTTP {r.status_code} {r.text[:200]}")


def _send(url: str, clients: int, seconds: float, max_turns: int) -> dict:
    """bench chat's client loop on its own event loop in a worker thread (the caller may already run
    one, e.g. under Playwright's sync API)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, send_turns(url, clients, seconds, max_turns)).result()


def _sample_rss(server: ServerProcess, period: float, stop: threading.Event, out: list[float]) -> None:
    while not stop.wait(period):
        out.append(round(server.rss_bytes() / 2**20, 1))


def run(cfg: LoadBenchConfig) -> dict:
    """The benchmark's JSON object."""
    if cfg.warm:
        warm_cache()
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        tmp = Path(tmp)
        env = {"MOE_SUITE_CACHE": str(linked_cache(tmp / "cache")), "MOE_SUITE_PRELOAD": "chat",
               "MOE_SUITE_RATE_LIMIT_PER_MINUTE": "0", "MOE_SUITE_UPLOAD_DIR": str(tmp / "uploads"),
               "MOE_SUITE_LOG_LEVEL": "warning", "MOE_SUITE_HOST": "127.0.0.1", **cfg.env}
        log = cfg.log or tmp / "server.log"
        server = ServerProcess(cfg.app_factory, env, log=log, wait_path="/readyz",
                               start_timeout=cfg.start_timeout, extra_path=list(cfg.extra_path))
        start = time.perf_counter()
        try:
            with server:
                ready_seconds = time.perf_counter() - start
                rss_ready = server.rss_bytes()
                _warmup(server.url, cfg.warmup)
                warm = _send(server.url, cfg.clients, cfg.warmup_seconds, cfg.max_turns)
                rss_before = server.rss_bytes()
                load_before = os.getloadavg()[0]
                samples: list[float] = []
                stop = threading.Event()
                sampler = threading.Thread(target=_sample_rss, args=(server, cfg.sample_seconds, stop, samples))
                sampler.start()
                try:
                    sent = _send(server.url, cfg.clients, cfg.seconds, cfg.max_turns)
                finally:
                    stop.set()
                    sampler.join()
                rss_after = server.rss_bytes()
                healthy = httpx.get(server.url + "/healthz", timeout=10).status_code == 200
        except RuntimeError as exc:
            tail = log.read_text(errors="replace")[-2000:] if log.is_file() else ""
            raise RuntimeError(f"{exc}\n--- server log (last lines) ---\n{tail}") from None
    ms = sent["latencies_ms"]
    growth_mb = (rss_after - rss_before) / 2**20
    return {
        "clients": cfg.clients, "seconds": round(sent["seconds"], 2), "turns": len(ms), "errors": sent["errors"],
        "turns_per_second": round(len(ms) / sent["seconds"], 2),
        "p50_ms": percentile(ms, 50), "p95_ms": percentile(ms, 95), "p99_ms": percentile(ms, 99),
        "server_ready_seconds": round(ready_seconds, 1), "rss_ready_mb": round(rss_ready / 2**20, 1),
        "warmup_turns": len(warm["latencies_ms"]), "warmup_errors": warm["errors"],
        "rss_before_mb": round(rss_before / 2**20, 1), "rss_after_mb": round(rss_after / 2**20, 1),
        "rss_samples_mb": samples,
        "rss_growth_mb": round(growth_mb, 1), "rss_growth_bound_mb": cfg.max_rss_growth_mb,
        "rss_within_bound": growth_mb <= cfg.max_rss_growth_mb, "healthy_after": healthy,
        "app_factory": cfg.app_factory, "rate_limit": "off (one client address)",
        "load_average_1min_at_start": round(load_before, 2),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
