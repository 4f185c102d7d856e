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

Sessions idle longer than `idle_hours` have expired: `load` hands back a fresh state for one (and
deletes it). They are also deleted with their turns (`prune`, in short batches): lazily when a new
session arrives (always when the store is nearly full, otherwise at most every `prune_every_s`),
or by `moe-suite chat prune-sessions`. A session with an open hand-off is kept until an agent
releases it (`release`); `delete` removes a session at once.
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
from typing import Annotated

from pydantic import Field

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
    released_at REAL,            -- set when an agent hands the session back to the assistant
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
CREATE INDEX IF NOT EXISTS sessions_by_update ON sessions(updated_at);
"""
_OPEN_HANDOFF = "handoff_reason IS NOT NULL AND released_at IS NULL"
_EXPIRED = f"updated_at < ? AND NOT ({_OPEN_HANDOFF})"  # idle past the cut-off, no open hand-off
PRUNE_BATCH = 100  # idle sessions deleted per transaction: a short write lock even at 200 turns each
TOUCH_MARGIN_S = 600.0  # a session loaded this close to expiring is touched, so no prune takes it mid-turn


def default_store_path() -> Path:
    """The assistant's session store: <cache_dir()>/chat/sessions.sqlite3."""
    from apps.settings import cache_dir

    return cache_dir() / "chat" / "sessions.sqlite3"


def configured_idle_hours(strict: bool = False) -> float:
    """chat_session_idle_hours of the server's settings ($MOE_SUITE_CONFIG, MOE_SUITE_* variables); when
    they cannot be read (e.g. a chat_index that is not an index), the default, or with `strict` a
    ValueError saying so."""
    from apps.settings import Settings, SettingsError

    try:
        return Settings.load().chat_session_idle_hours
    except SettingsError as exc:
        if strict:
            raise ValueError(f"cannot read chat_session_idle_hours from the server's settings ({exc}); "
                             "fix them or pass --idle-hours") from None
        return StoreLimits.idle_hours


class InvalidSessionId(ValueError):
    """A session id that is not 1-64 letters, digits and `_.:-`, starting with a letter or digit."""


class UnknownSession(KeyError):
    """No session with this id has been stored."""


class NotHandedOff(ValueError):
    """A release of a session that has no open hand-off."""


class SessionLimitError(RuntimeError):
    """The store already holds its maximum number of sessions, even after pruning idle ones."""

    def __init__(self, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.retry_after_s = retry_after_s  # when the next idle session expires; None: only a release frees one


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
    idle_hours: float = 24.0      # sessions idle longer are deleted (open hand-offs excepted)
    prune_every_s: float = 300.0  # lazy pruning runs at most this often, unless the store is nearly full
    prune_when_full: float = 0.9  # ...a new session finding the store this full prunes at once

    def __post_init__(self):
        if not self.idle_hours > 0:
            raise ValueError(f"idle_hours must be positive, got {self.idle_hours}")


@dataclass(frozen=True)
class Turn:
    role: Annotated[str, Field(description='"user" (the customer) or "assistant"')]
    text: Annotated[str, Field(description="what was said (cut to the store's max_text_chars)")]
    intent: Annotated[str | None, Field(
        description="the intent a user turn was understood as / an assistant turn answered for; "
                    "null when none")] = None
    confidence: Annotated[float | None, Field(
        description="the intent model's confidence (0-1) for a user turn; null for assistant turns")] = None
    at: Annotated[float, Field(description="when, in Unix seconds (UTC)")] = field(default_factory=time.time)


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
    session_id: Annotated[str, Field(description="the conversation handed off")]
    reason: Annotated[str, Field(description="why a human agent was asked to take over")]
    at: Annotated[float, Field(description="when it was handed off, in Unix seconds (UTC)")]
    transcript: Annotated[list[Turn], Field(description="the session's turns, oldest first")]
    released_at: Annotated[float | None, Field(
        description="when an agent handed it back to the assistant, in Unix seconds; null while open")] = None


@dataclass(frozen=True)
class PruneResult:
    sessions_removed: int
    sessions_left: int


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
        if self._conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'sessions'").fetchone() and not any(
                col[1] == "released_at" for col in self._conn.execute("PRAGMA table_info(sessions)")):
            self._conn.execute("ALTER TABLE sessions ADD COLUMN released_at REAL")  # a store from before
        self._conn.executescript(_SCHEMA)
        self._last_prune = 0.0  # time.time() of the last lazy prune

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
        """The stored state of `session_id`, or a fresh one (not stored until `save`). A session idle
        longer than `idle_hours` without an open hand-off has expired: it is deleted with its turns
        here, so that a stale pending question ("block your debit card?") is never acted on."""
        check_session_id(session_id)
        with self._lock:
            row = self._conn.execute(
                "SELECT intent, slots, pending, query, low_turns, handoff_reason, handoff_at, released_at, "
                "updated_at FROM sessions WHERE id = ?", (session_id,)).fetchone()
        if row is None:
            return SessionState(session_id)
        intent, slots, pending, query, low_turns, reason, at, released, updated_at = row
        handoff = Handoff(reason, at) if reason is not None and released is None else None
        cutoff = self._idle_cutoff(time.time())
        if handoff is None and updated_at < cutoff:
            with self._transaction() as db:  # re-checked: another turn may have just saved it
                db.execute(f"DELETE FROM sessions WHERE id = ? AND {_EXPIRED}", (session_id, cutoff))
            return SessionState(session_id)
        if updated_at < cutoff + TOUCH_MARGIN_S:  # close to expiring: a prune during this turn must not take it
            with self._transaction() as db:
                db.execute("UPDATE sessions SET updated_at = ? WHERE id = ?", (time.time(), session_id))
        return SessionState(session_id, intent, json.loads(slots), json.loads(pending) if pending else None,
                            query, low_turns, handoff)

    def save(self, state: SessionState, *turns: Turn) -> None:
        """Store `state` and append `turns` in one transaction; the history is then trimmed to
        `max_history`. A new session may first prune idle ones; raises SessionLimitError for a new
        session when the store is still full. A released hand-off stays on record (until the next one)."""
        check_session_id(state.session_id)
        now = time.time()
        values = (state.intent, json.dumps(state.slots), json.dumps(state.pending) if state.pending else None,
                  state.query, state.low_turns, now)
        handoff = (state.handoff.reason, state.handoff.at) if state.handoff else None
        with self._lock:
            exists = self._conn.execute("SELECT 1 FROM sessions WHERE id = ?", (state.session_id,)).fetchone()
        if not exists and self._prune_due(now):
            self.prune()  # in short batches of its own, not inside this session's transaction
        with self._transaction() as db:
            updated = db.execute("UPDATE sessions SET intent=?, slots=?, pending=?, query=?, low_turns=?, "
                                 "updated_at=? WHERE id=?", (*values, state.session_id)).rowcount
            if not updated:
                self._check_room(db, now)
                db.execute("INSERT INTO sessions (intent, slots, pending, query, low_turns, updated_at, id, "
                           "created_at) VALUES (?,?,?,?,?,?,?,?)", (*values, state.session_id, now))
            if handoff:
                db.execute("UPDATE sessions SET handoff_reason=?, handoff_at=?, released_at=NULL WHERE id=?",
                           (*handoff, state.session_id))
            db.executemany(
                "INSERT INTO turns (session_id, role, text, intent, confidence, at) VALUES (?,?,?,?,?,?)",
                [(state.session_id, t.role, t.text[: self.limits.max_text_chars], t.intent, t.confidence, t.at)
                 for t in turns])
            db.execute("DELETE FROM turns WHERE session_id = ? AND id NOT IN "
                       "(SELECT id FROM turns WHERE session_id = ? ORDER BY id DESC LIMIT ?)",
                       (state.session_id, state.session_id, self.limits.max_history))

    def _prune_due(self, now: float) -> bool:
        """Lazy pruning before a new session: when the store is nearly full, else every `prune_every_s`."""
        lim = self.limits
        return now - self._last_prune >= lim.prune_every_s or self.count() >= lim.prune_when_full * lim.max_sessions

    def _check_room(self, db: sqlite3.Connection, now: float) -> None:
        """Before inserting a new session: SessionLimitError if the store is full."""
        (count,) = db.execute("SELECT COUNT(*) FROM sessions").fetchone()
        lim = self.limits
        if count < lim.max_sessions:
            return
        (oldest,) = db.execute(f"SELECT MIN(updated_at) FROM sessions WHERE NOT ({_OPEN_HANDOFF})").fetchone()
        if oldest is None:
            raise SessionLimitError(f"the chat store is full ({count} sessions, all with an agent); a place "
                                    "frees up when an agent releases or deletes one")
        wait_s = max(oldest + lim.idle_hours * 3600 - now, 1.0)
        raise SessionLimitError(f"the chat store is full ({count} sessions); the next idle session expires in "
                                f"about {_duration(wait_s)}: try again then", retry_after_s=wait_s)

    def _idle_cutoff(self, now: float) -> float:
        """The update time before which a session (without an open hand-off) has expired."""
        return now - self.limits.idle_hours * 3600

    def prune(self) -> PruneResult:
        """Delete the sessions idle longer than the limits' `idle_hours`, with their turns; sessions with
        an open hand-off stay. Deletes `PRUNE_BATCH` sessions per transaction, so that turns of other
        sessions (and other processes' writes) wait at most one short batch."""
        now = time.time()
        self._last_prune = now
        cutoff, removed = self._idle_cutoff(now), 0
        while True:
            with self._transaction() as db:  # their turns go with them (ON DELETE CASCADE)
                batch = db.execute(f"DELETE FROM sessions WHERE id IN (SELECT id FROM sessions WHERE {_EXPIRED} "
                                   f"LIMIT ?)", (cutoff, PRUNE_BATCH)).rowcount
            removed += batch
            if batch < PRUNE_BATCH:
                return PruneResult(removed, self.count())

    def release(self, session_id: str) -> HandoffTicket:
        """Hand a session with an open hand-off back to the assistant (its low-confidence count and
        pending question cleared); UnknownSession if it was never saved, ValueError if not handed off."""
        check_session_id(session_id)
        with self._transaction() as db:
            row = db.execute("SELECT handoff_reason, handoff_at, released_at FROM sessions WHERE id = ?",
                             (session_id,)).fetchone()
            if row is None:
                raise UnknownSession(session_id)
            if row[0] is None or row[2] is not None:
                raise NotHandedOff(f"session {session_id!r} has no open hand-off to release")
            now = time.time()
            db.execute("UPDATE sessions SET released_at=?, low_turns=0, pending=NULL, updated_at=? WHERE id=?",
                       (now, now, session_id))
            return HandoffTicket(session_id, row[0], row[1], self._turns(session_id), now)

    def delete(self, session_id: str) -> None:
        """Delete a session and its turns; UnknownSession if there is none."""
        check_session_id(session_id)
        with self._transaction() as db:
            if not db.execute("DELETE FROM sessions WHERE id = ?", (session_id,)).rowcount:
                raise UnknownSession(session_id)

    def count(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM sessions").fetchone()[0]

    def history(self, session_id: str) -> list[Turn]:
        """The stored turns of `session_id`, oldest first; raises UnknownSession if it was never saved
        or has expired (idle longer than `idle_hours` without an open hand-off, as `load` sees it)."""
        check_session_id(session_id)
        with self._lock:
            row = self._conn.execute(f"SELECT updated_at, {_OPEN_HANDOFF} FROM sessions WHERE id = ?",
                                     (session_id,)).fetchone()
            if row is None or (not row[1] and row[0] < self._idle_cutoff(time.time())):
                raise UnknownSession(session_id)
            return self._turns(session_id)

    def _turns(self, session_id: str) -> list[Turn]:
        rows = self._conn.execute("SELECT role, text, intent, confidence, at FROM turns "
                                  "WHERE session_id = ? ORDER BY id", (session_id,))
        return [Turn(*row) for row in rows]

    def handoffs(self, include_released: bool = False) -> list[HandoffTicket]:
        """Sessions with an open hand-off (also released ones with `include_released`), oldest
        hand-off first, with their transcripts."""
        where = "handoff_reason IS NOT NULL" if include_released else _OPEN_HANDOFF
        with self._lock:
            rows = self._conn.execute("SELECT id, handoff_reason, handoff_at, released_at FROM sessions "
                                      f"WHERE {where} ORDER BY handoff_at").fetchall()
            return [HandoffTicket(sid, reason, at, self._turns(sid), released) for sid, reason, at, released in rows]


def _duration(seconds: float) -> str:
    """"12 minutes", "3.5 hours": a wait in words."""
    return f"{seconds / 3600:.1f} hours" if seconds >= 5400 else f"{max(round(seconds / 60), 1)} minutes"
