"""Fixed stand-ins for the intent model and the knowledge index, with the same interfaces:
dialogue tests know exactly what each message is understood as."""
from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from apps.customer_service.actions import default_actions
from apps.customer_service.assistant import Assistant
from apps.customer_service.bench import serve_in_thread
from apps.customer_service.dialogue import DialogueConfig
from apps.customer_service.store import SessionStore, StoreLimits

EXPERTS = {4: {0: 0.61, 2: 0.39}, 5: {1: 1.0}}
RULES = [  # (pattern, top labels with probabilities); the first match wins
    (r"block", [("block_card", 0.95), ("card_lost_stolen", 0.03)]),
    (r"card problem", [("block_card", 0.45), ("card_lost_stolen", 0.40)]),
    (r"\bfees?\b", [("fees_charges", 0.92), ("business_account", 0.04)]),
    (r"send|transfer", [("transfer_money", 0.9), ("check_balance", 0.05)]),
    (r"weather", [("oos", 0.97), ("greeting", 0.01)]),
    (r"speak to someone", [("speak_to_human", 0.9), ("greeting", 0.05)]),
    (r"^hello", [("greeting", 0.99), ("thanks", 0.01)]),
    (r"", [("check_balance", 0.3), ("greeting", 0.1)]),  # anything else: not understood
]


@dataclass
class Prediction:
    label: str
    confidence: float
    top: list
    experts: dict
    is_oos: bool


class KeywordIntents:
    """IntentModel's interface: the first rule of `RULES` whose pattern the text matches."""

    def predict(self, texts: list[str]) -> list[Prediction]:
        out = []
        for text in texts:
            top = next(top for pattern, top in RULES if re.search(pattern, text, re.IGNORECASE))
            out.append(Prediction(top[0][0], top[0][1], top, EXPERTS, top[0][0] == "oos"))
        return out


@dataclass
class Passage:
    id: str
    title: str
    text: str
    score: float
    source: str = "test"


class OverlapIndex:
    """KnowledgeIndex's interface: passages ranked by shared words; records the queries."""

    DOCS = [("fees-current", "Current account fees", "A current account has no monthly fee."),
            ("fees-business", "Business account fees", "A business account costs 5 pounds a month."),
            ("cards", "Cards", "Freeze your card in the app.")]

    def __init__(self):
        self.queries: list[str] = []

    def search(self, query: str, k: int = 5) -> list[Passage]:
        self.queries.append(query)
        words = set(re.findall(r"\w+", query.lower()))
        scored = [Passage(i, t, x, len(words & set(re.findall(r"\w+", f"{t} {x}".lower()))))
                  for i, t, x in self.DOCS]
        return sorted((p for p in scored if p.score), key=lambda p: -p.score)[:k]


def write(path, content: str | bytes, encoding="utf-8"):
    """Write a test input file (text in `encoding`, or bytes as given), making its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode(encoding))
    return path


def make_assistant(path, index=None, actions=None, limits=StoreLimits(), chat_model=None) -> Assistant:
    return Assistant(KeywordIntents(), index or OverlapIndex(), SessionStore(path, limits),
                     actions or default_actions(), DialogueConfig.load(), chat_model)


@pytest.fixture(scope="module")
def base_url(tmp_path_factory) -> Iterator[str]:
    """The fake assistant served over HTTP on a free loopback port, for one test module."""
    url, stop = serve_in_thread(make_assistant(tmp_path_factory.mktemp("chat") / "chat.sqlite3"))
    yield url
    stop()


@pytest.fixture
def http(base_url) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=10) as client:
        yield client
