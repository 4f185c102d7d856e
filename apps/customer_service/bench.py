"""`moe-suite bench chat`: the assistant's turn latency in process and its throughput over HTTP.

    result = run(ChatBenchConfig(passages=10_000, clients=32, seconds=20))  # the JSON of `bench chat`
    result = run(cfg, BenchSetup(lambda path: make_assistant(path), passages=3))  # any assistant

1. Turn latency: `cfg.turns` turns of scripted conversations (knowledge questions, slot filling with
   confirmation, follow-ups, greetings), one session per conversation, through `Assistant.reply`; the
   intent model's and the index's share of each turn are timed by wrapping them.
2. Throughput: the real server (create_app with the chat API, uvicorn on a free loopback port, in a
   thread) with the same assistant injected, and `cfg.clients` concurrent HTTP clients in a separate
   process (so that they do not compete with the server for the GIL) for `cfg.seconds`.

The default setup indexes the bank knowledge base plus `synthetic_passages` up to `cfg.passages`
documents, once: the index is kept under `cfg.index_cache` and rebuilt only when its documents,
config or model change. Sessions go to a temporary store, never the app's.
"""
from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import multiprocessing
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np

from apps.settings import cache_dir

if TYPE_CHECKING:
    from data_connectors.knowledge import KnowledgeDoc

    from .assistant import Assistant
    from .dialogue import IntentClassifier, Prediction, Searcher
    from .retrieval import KnowledgeIndex

# Conversations the sessions play, in turn; none asks for a human (a handed-off session only waits).
CONVERSATIONS: tuple[tuple[str, ...], ...] = (
    ("Hello there", "What are the monthly fees on a business account?", "and for a student account?",
     "thanks, bye"),
    ("I need to block my card", "the debit one", "yes please"),
    ("How do I change my online banking PIN?", "what about my password?", "Great, thank you"),
    ("Can I send 50 pounds to my sister?", "from my everyday account", "yes"),
    ("I lost my credit card yesterday", "yes", "How long does a replacement card take to arrive?"),
    ("Why was my card declined at the supermarket?", "and abroad?", "thanks"),
    ("Hi", "How do I set up a standing order from my Easy Saver?", "what about a direct debit?", "goodbye"),
    ("What do I need to open a joint account?", "Can I close my Fixed Saver early?",
     "I moved house, please update my address", "12 Harbour Street, Leeds", "yes"),
)
CHAT_PATH = "/api/v1/chat"

AssistantFactory = Callable[[Path], "Assistant"]  # session-store path -> a fresh assistant


@dataclass
class ChatBenchConfig:
    passages: int = 10_000        # knowledge-base documents: the bank KB plus synthetic passages
    turns: int = 200              # timed in-process turns
    warmup: int = 5               # untimed turns first (lazy loading, first-call allocations)
    clients: int = 32             # concurrent HTTP clients
    seconds: float = 20.0         # how long the HTTP clients send turns
    http_max_turns: int = 20_000  # the HTTP clients stop after this many turns in all, even early
    index_cache: Path = field(default_factory=lambda: cache_dir() / "bench" / "chat-index")
    intent_model: Path | None = None  # an intent checkpoint folder; None: load_default_intent_model()
    seed: int = 0                 # of the synthetic passages


@dataclass(frozen=True)
class BenchSetup:
    make_assistant: AssistantFactory
    passages: int                               # documents in the assistant's knowledge base
    index_build_seconds: float | None = None    # None when the index came from the cache


# ---- the default setup: the real intent model and a large index ----

def bench_knowledge(passages: int, seed: int = 0) -> list[KnowledgeDoc]:
    """The bank KB plus synthetic passages: `passages` documents in all."""
    from data_connectors.knowledge import load_knowledge, synthetic_passages

    from .retrieval import DEFAULT_KB

    bank = load_knowledge(DEFAULT_KB)
    if passages < len(bank):
        raise ValueError(f"--passages must be at least {len(bank)}, the bank knowledge base's size")
    return bank + synthetic_passages(passages - len(bank), seed)


def cached_index(docs: list[KnowledgeDoc], folder: Path) -> tuple[KnowledgeIndex, float | None]:
    """The index of `docs` in `folder`, built there unless it holds one of the same documents, config
    and model; with the build's seconds (None when loaded)."""
    from .retrieval import DEFAULT_MODEL, MANIFEST, IndexConfig, KnowledgeIndex, fingerprint

    manifest, config = folder / MANIFEST, IndexConfig()
    if manifest.is_file() and json.loads(manifest.read_text()).get("fingerprint") == fingerprint(
            docs, config, DEFAULT_MODEL):
        return KnowledgeIndex.load(folder), None
    start = time.perf_counter()
    index = KnowledgeIndex.build(docs, folder, config)
    return index, round(time.perf_counter() - start, 1)


def default_setup(cfg: ChatBenchConfig) -> BenchSetup:
    """The default dialogue and mock actions over the cached index of `bench_knowledge` and the intent
    model of `cfg.intent_model` (default: the bank's, trained into the cache on first use)."""
    from .actions import default_actions
    from .assistant import Assistant
    from .dialogue import DialogueConfig
    from .intents import IntentModel, load_default_intent_model
    from .store import SessionStore

    index, build_seconds = cached_index(bench_knowledge(cfg.passages, cfg.seed),
                                        cfg.index_cache / f"passages-{cfg.passages}-seed-{cfg.seed}")
    intents = IntentModel.load(cfg.intent_model) if cfg.intent_model else load_default_intent_model()

    def make(store_path: Path) -> Assistant:
        return Assistant(intents, index, SessionStore(store_path), default_actions(), DialogueConfig.load())

    return BenchSetup(make, cfg.passages, build_seconds)


# ---- 1. turn latency in process ----

@dataclass
class TimedIntents:
    """An intent model that records the milliseconds of each `predict`."""
    inner: IntentClassifier
    ms: list[float] = field(default_factory=list)

    def predict(self, texts: list[str]) -> list[Prediction]:
        start = time.perf_counter()
        out = self.inner.predict(texts)
        self.ms.append(1000 * (time.perf_counter() - start))
        return out


@dataclass
class TimedSearch:
    """A knowledge index that records the milliseconds of each `search`."""
    inner: Searcher
    ms: list[float] = field(default_factory=list)

    def search(self, query: str, k: int = 5) -> list:
        start = time.perf_counter()
        out = self.inner.search(query, k)
        self.ms.append(1000 * (time.perf_counter() - start))
        return out


def conversation_turns(prefix: str) -> Iterator[tuple[str, str]]:
    """(session id, message) without end: each conversation of `CONVERSATIONS` in turn, in a new session."""
    for n in itertools.count():
        for message in CONVERSATIONS[n % len(CONVERSATIONS)]:
            yield f"{prefix}-{n}", message


def time_turns(assistant: Assistant, turns: int, warmup: int) -> dict[str, float | int]:
    """Median and p95 ms of `turns` turns through `assistant.reply`, and of their intent and search parts."""
    for session_id, message in itertools.islice(conversation_turns("warmup"), warmup):
        assistant.reply(session_id, message)
    d = assistant.dialogue
    intents, search = TimedIntents(d.intent_model), TimedSearch(d.index)
    assistant.use(intents, search)
    try:
        ms = [assistant.reply(session_id, message).latency_ms
              for session_id, message in itertools.islice(conversation_turns("turn"), turns)]
    finally:
        assistant.use(intents.inner, search.inner)
    return {"turns": len(ms), "turn_median_ms": percentile(ms, 50), "turn_p95_ms": percentile(ms, 95),
            "intent_median_ms": percentile(intents.ms, 50), "search_median_ms": percentile(search.ms, 50)}


# ---- 2. throughput over HTTP ----

def serve_in_thread(assistant: Assistant) -> tuple[str, Callable[[], None]]:
    """The server's chat API (no page) serving `assistant` on a free loopback port: (base URL, stop)."""
    from apps import server
    from apps.settings import Settings
    from apps.web.runner import serve_in_thread as serve_app

    from .assistant import shared_assistant

    apps = [dataclasses.replace(a, page=None) for a in server.APPS if a.name == "chat"]
    app = server.create_app(apps, Settings(rate_limit_per_minute=0))  # one client address: no rate limit
    app.dependency_overrides[shared_assistant] = lambda: assistant
    return serve_app(app)


async def send_turns(url: str, clients: int, seconds: float, max_turns: int) -> dict:
    """`clients` concurrent clients posting conversation turns until `seconds` pass or `max_turns` are sent."""
    sent = itertools.count()
    latencies_ms: list[float] = []
    errors = 0

    async def client(http: httpx.AsyncClient, c: int, deadline: float) -> None:
        nonlocal errors
        for session_id, message in conversation_turns(f"http-{c}"):
            if time.perf_counter() >= deadline or next(sent) >= max_turns:
                return
            start = time.perf_counter()
            try:
                ok = (await http.post(CHAT_PATH, json={"session_id": session_id, "message": message})).is_success
            except httpx.HTTPError:
                ok = False
            if ok:
                latencies_ms.append(1000 * (time.perf_counter() - start))
            else:
                errors += 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http, c, start + seconds) for c in range(clients)))
        elapsed = time.perf_counter() - start
    return {"seconds": elapsed, "errors": errors, "latencies_ms": latencies_ms}


def _clients_process(url: str, clients: int, seconds: float, max_turns: int) -> dict:
    return asyncio.run(send_turns(url, clients, seconds, max_turns))


def time_http(assistant: Assistant, clients: int, seconds: float, max_turns: int) -> dict[str, float | int]:
    """Turns per second, errors and client-side p50/p95/p99 ms of `clients` clients over the real API."""
    url, stop = serve_in_thread(assistant)
    try:
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            sent = pool.apply(_clients_process, (url, clients, seconds, max_turns))
    finally:
        stop()
    ms = sent["latencies_ms"]
    return {"http_clients": clients, "http_seconds": round(sent["seconds"], 2), "http_turns": len(ms),
            "http_turns_per_second": round(len(ms) / sent["seconds"], 2), "http_errors": sent["errors"],
            "http_p50_ms": percentile(ms, 50), "http_p95_ms": percentile(ms, 95),
            "http_p99_ms": percentile(ms, 99)}


# ---- the benchmark ----

def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


def _machine() -> str:
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"torch {torch.__version__} with {torch.get_num_threads()} threads, {device}")


def run(cfg: ChatBenchConfig, setup: BenchSetup | None = None) -> dict:
    """The benchmark's JSON object; `setup` defaults to `default_setup(cfg)`."""
    setup = setup or default_setup(cfg)
    with tempfile.TemporaryDirectory(prefix="bench-chat-") as tmp:
        assistant = setup.make_assistant(Path(tmp) / "sessions.sqlite3")
        turns = time_turns(assistant, cfg.turns, cfg.warmup)
        http = time_http(assistant, cfg.clients, cfg.seconds, cfg.http_max_turns)
    return {**turns, "passages": setup.passages, "index_build_seconds": setup.index_build_seconds, **http,
            "machine": _machine(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
