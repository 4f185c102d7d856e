"""Conversation state per chat session, in one SQLite file that survives restarts.

    store = SessionStore("chat.sqlite3")
    state = store.load("web-42")                 # a fresh state when the session is new
    state.intent, state.slots = "block_card", {"card": "debit"}
    store.save(state, Turn("user", "block my debit card"), Turn("assistant", "Block it?"))
    store.history("web-42")                      # [Turn(...), Turn(...)]

One connection, shared by all threads behind a lock; every save is one transaction (state and
turns together). WAL mode lets other processes read while a turn is written. Bounded: ids are
checked, turn texts are capped, each session keeps its last `max_history` turns and the store
refuses new sessions beyond `max_sessions`.
"""
from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")  # e.g. a UUID, "web-42", "cli:alice"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    intent TEXT,                 -- the active intent
    slots TEXT NOT NULL,         -- JSON object: slot name -> value
    pending TEXT,                -- JSON object: what the last reply asked for, or NULL
    query TEXT,                  -- the knowledge query of the active topic
    low_turns INTEGER NOT NULL,  -- consecutive low-confidence turns
    handoff_reason TEXT,         -- set once the session is handed to a human agent
    handoff_at REAL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS turns (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    text TEXT NOT NULL,
    intent TEXT,
    confidence REAL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS turns_by_session ON turns(session_id, id);
"""


class InvalidSessionId(ValueError):
    """A session id that is not 1-64 letters, digits and `_.:-`, starting with a letter or digit."""


class UnknownSession(KeyError):
    """No session with this id has been stored."""


class SessionLimitError(RuntimeError):
    """The store already holds its maximum number of sessions."""


def check_session_id(session_id: str) -> str:
    """`session_id` itself; raises InvalidSessionId unless it matches `SESSION_ID`."""
    if not isinstance(session_id, str) or not SESSION_ID.fullmatch(session_id):
        raise InvalidSessionId(f"invalid session id {str(session_id)[:80]!r}: use 1-64 letters, "
                               "digits and _.:- starting with a letter or digit")
    return session_id


@dataclass(frozen=True)
class StoreLimits:
    max_sessions: int = 10_000    # new sessions beyond this are refused with SessionLimitError
    max_history: int = 200        # turns kept per session; older ones are dropped
    max_text_chars: int = 8_000   # longer turn texts are cut to this length


@dataclass(frozen=True)
class Turn:
    role: str                        # "user" or "assistant"
    text: str
    intent: str | None = None        # the intent the turn was understood as / answered for
    confidence: float | None = None  # the intent model's confidence for a user turn
    at: float = field(default_factory=time.time)  # Unix time


@dataclass(frozen=True)
class Handoff:
    reason: str
    at: float = field(default_factory=time.time)  # Unix time


@dataclass
class SessionState:
    session_id: str
    intent: str | None = None                            # the topic that follow-ups and answers refer to
    slots: dict[str, str] = field(default_factory=dict)  # slot values filled so far for `intent`
    pending: dict | None = None      # what the last reply asked for: {"kind": "slot" | "confirm" | "clarify", ...}
    query: str | None = None         # the knowledge query of the active topic, refined by follow-ups
    low_turns: int = 0               # consecutive low-confidence turns
    handoff: Handoff | None = None   # set once a human agent takes over


@dataclass(frozen=True)
class HandoffTicket:
    """A session handed to a human agent, with its transcript."""
    session_id: str
    reason: str
    at: float
    transcript: list[Turn]


class SessionStore:
    """Sessions and their turns in the SQLite file `path` (created with its folder if missing)."""

    def __init__(self, path: str | Path, limits: StoreLimits = StoreLimits()):
        self.path, self.limits = Path(path), limits
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # isolation_level=None: no implicit transactions; `_transaction` opens them explicitly.
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.execute("PRAGMA busy_timeout=5000")
        self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """The connection inside BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error), holding the lock."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def load(self, session_id: str) -> SessionState:
        """The stored state of `session_id`, or a fresh one (not stored until `save`)."""
        check_session_id(session_id)
        with self._lock:
            row = self._conn.execute(
                "SELECT intent, slots, pending, query, low_turns, handoff_reason, handoff_at "
                "FROM sessions WHERE id = ?", (session_id,)).fetchone()
        if row is None:
            return SessionState(session_id)
        intent, slots, pending, query, low_turns, reason, at = row
        return SessionState(session_id, intent, json.loads(slots), json.loads(pending) if pending else None,
                            query, low_turns, Handoff(reason, at) if reason is not None else None)

    def save(self, state: SessionState, *turns: Turn) -> None:
        """Store `state` and append `turns` in one transaction; the history is then trimmed to
        `max_history`. Raises SessionLimitError for a new session when the store is full."""
        check_session_id(state.session_id)
        now = time.time()
        reason, at = (state.handoff.reason, state.handoff.at) if state.handoff else (None, None)
        values = (state.intent, json.dumps(state.slots), json.dumps(state.pending) if state.pending else None,
                  state.query, state.low_turns, reason, at, now, state.session_id)
        with self._transaction() as db:
            updated = db.execute(
                "UPDATE sessions SET intent=?, slots=?, pending=?, query=?, low_turns=?, handoff_reason=?, "
                "handoff_at=?, updated_at=? WHERE id=?", values).rowcount
            if not updated:
                (count,) = db.execute("SELECT COUNT(*) FROM sessions").fetchone()
                if count >= self.limits.max_sessions:
                    raise SessionLimitError(f"the chat store is full ({count} sessions); "
                                            "try again later or ask the operator to prune it")
                db.execute("INSERT INTO sessions (intent, slots, pending, query, low_turns, handoff_reason, "
                           "handoff_at, updated_at, id, created_at) VALUES (?,?,?,?,?,?,?,?,?,?)", (*values, now))
            db.executemany(
                "INSERT INTO turns (session_id, role, text, intent, confidence, at) VALUES (?,?,?,?,?,?)",
                [(state.session_id, t.role, t.text[: self.limits.max_text_chars], t.intent, t.confidence, t.at)
                 for t in turns])
            db.execute("DELETE FROM turns WHERE session_id = ? AND id NOT IN "
                       "(SELECT id FROM turns WHERE session_id = ? ORDER BY id DESC LIMIT ?)",
                       (state.session_id, state.session_id, self.limits.max_history))

    def history(self, session_id: str) -> list[Turn]:
        """The stored turns of `session_id`, oldest first; raises UnknownSession if it was never saved."""
        check_session_id(session_id)
        with self._lock:
            if not self._conn.execute("SELECT 1 FROM sessions WHERE id = ?", (session_id,)).fetchone():
                raise UnknownSession(session_id)
            return self._turns(session_id)

    def _turns(self, session_id: str) -> list[Turn]:
        rows = self._conn.execute("SELECT role, text, intent, confidence, at FROM turns "
                                  "WHERE session_id = ? ORDER BY id", (session_id,))
        return [Turn(*row) for row in rows]

    def handoffs(self) -> list[HandoffTicket]:
        """Every session handed to a human agent, oldest hand-off first, with its transcript."""
        with self._lock:
            rows = self._conn.execute("SELECT id, handoff_reason, handoff_at FROM sessions "
                                      "WHERE handoff_reason IS NOT NULL ORDER BY handoff_at").fetchall()
            return [HandoffTicket(sid, reason, at, self._turns(sid)) for sid, reason, at in rows]
