"""The customer-service assistant: cleans each message, runs one dialogue turn under the session's
lock and stores the state and both turns.

    assistant = Assistant.default()              # the default bank (trains/builds into the cache once)
    reply = assistant.reply("web-42", "block my card")
    reply.text, reply.intent, reply.confidence, reply.sources, reply.experts, reply.handoff
    assistant.history("web-42"); assistant.handoff("web-42", "customer is upset"); assistant.handoffs()

Bad input: an empty or whitespace-only message raises EmptyMessage and one over `max_message_chars`
raises MessageTooLong (both ValueErrors: the API answers 422 and 413); control, format (zero-width,
bidi override) and unpaired surrogate characters become spaces, while text in any script is kept.
Turns of one session are serialised by a per-session lock, so concurrent messages lose nothing
(within one process: run the server with a single worker).
"""
from __future__ import annotations

import threading
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from apps.settings import cache_dir

from .actions import ActionRegistry, default_actions
from .dialogue import DialogueConfig, DialogueManager, IntentClassifier, Searcher, Source
from .store import HandoffTicket, SessionStore, Turn, check_session_id

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

SESSION_LOCK_STRIPES = 256  # turns of sessions sharing a stripe are serialised too (harmless, rare)
MAX_MESSAGE_CHARS = 2_000  # longer messages are refused, not cut: a cut message could change meaning


class EmptyMessage(ValueError):
    """The message has no visible characters."""


class MessageTooLong(ValueError):
    """The message is over the assistant's length limit."""


def clean_message(text: str, max_chars: int = MAX_MESSAGE_CHARS) -> str:
    """`text` NFC-normalised, with control, format, private-use, unassigned and unpaired surrogate
    characters replaced by spaces and runs of whitespace collapsed to one space."""
    if len(text) > max_chars:
        raise MessageTooLong(f"message is {len(text)} characters; the limit is {max_chars}")
    visible = "".join(" " if unicodedata.category(c).startswith("C") else c
                      for c in unicodedata.normalize("NFC", text))
    if not (cleaned := " ".join(visible.split())):
        raise EmptyMessage("message is empty")
    return cleaned


@dataclass(frozen=True)
class Reply:
    text: str
    session_id: str
    intent: str | None                    # the intent the reply acted on; None when nothing was understood
    confidence: float                     # the intent model's confidence in its best label for the message
    sources: tuple[Source, ...]           # knowledge passages quoted (id, title, score)
    experts: dict[int, dict[int, float]]  # MoE layer -> {expert that fired: mean gate weight}
    handoff: bool                         # the session is with a human agent
    latency_ms: float                     # wall time of the whole turn


def _share_text_trunk(intent_model: IntentClassifier, index: Searcher) -> int:
    """Let the knowledge search reuse the intent model's pass through the MiniLM layers they share
    (core.text.trunk): a knowledge turn reads its message through those layers once. Returns the
    number of layers shared; 0 for models that are not text streams or share nothing."""
    stream = getattr(getattr(intent_model, "classifier", None), "stream", None)
    embedder_model = getattr(getattr(index, "embedder", None), "model", None)
    if stream is None or embedder_model is None:
        return 0
    from core.text import TextStream, share_trunk

    if isinstance(stream, TextStream) and isinstance(embedder_model, TextStream):
        return share_trunk(stream, embedder_model)
    return 0


class Assistant:
    """The dialogue over a session store; safe to share between threads."""

    def __init__(self, intent_model: IntentClassifier, index: Searcher, store: SessionStore,
                 actions: ActionRegistry, dialogue_config: DialogueConfig,
                 chat_model: BaseChatModel | None = None, max_message_chars: int = MAX_MESSAGE_CHARS):
        self.store = store
        _share_text_trunk(intent_model, index)
        self.dialogue = DialogueManager(intent_model, index, actions, dialogue_config, chat_model)
        self.max_message_chars = max_message_chars
        # Turn locks striped by session id: bounded memory however many session ids arrive (a dict
        # of one lock per id grew by one entry per distinct id, refused ones included).
        self._locks = [threading.Lock() for _ in range(SESSION_LOCK_STRIPES)]

    @classmethod
    def default(cls, chat_model: BaseChatModel | None = None, intent_model: str | Path | None = None,
                index: str | Path | None = None) -> Assistant:
        """The default bank: its intent model and knowledge index (built into the cache on first
        use), mock actions, assets/customer_service/dialogue.yaml, sessions in the cache folder.
        `intent_model` (a train-intents checkpoint folder) and `index` (a `chat index` folder)
        replace the bank's."""
        # Imported here: they bring torch and faiss, and train or index on first use.
        from .intents import IntentModel, load_default_intent_model
        from .retrieval import KnowledgeIndex, load_default_index

        return cls(IntentModel.load(intent_model) if intent_model else load_default_intent_model(),
                   KnowledgeIndex.load(index) if index else load_default_index(),
                   SessionStore(cache_dir() / "chat" / "sessions.sqlite3"), default_actions(),
                   DialogueConfig.load(), chat_model)

    def use(self, intent_model: IntentClassifier | None = None, index: Searcher | None = None) -> None:
        """Swap in a new intent model and/or knowledge index (e.g. retrained on uploads); turns
        already running finish with the old ones."""
        d = self.dialogue
        _share_text_trunk(intent_model or d.intent_model, index or d.index)
        self.dialogue = DialogueManager(intent_model or d.intent_model, index or d.index, d.actions, d.config,
                                        d.chat_model)

    def _session_lock(self, session_id: str) -> threading.Lock:
        return self._locks[hash(session_id) % len(self._locks)]

    def reply(self, session_id: str, message: str) -> Reply:
        """Answer `message` in session `session_id` (created on its first message)."""
        start = time.perf_counter()
        check_session_id(session_id)
        text = clean_message(message, self.max_message_chars)
        with self._session_lock(session_id):
            state = self.store.load(session_id)
            answer, prediction = self.dialogue.turn(state, text)
            self.store.save(state, Turn("user", text, prediction.label, prediction.confidence),
                            Turn("assistant", answer.text, answer.intent))
        return Reply(answer.text, session_id, answer.intent, prediction.confidence, answer.sources,
                     prediction.experts, answer.handoff, round((time.perf_counter() - start) * 1000, 2))

    def history(self, session_id: str) -> list[Turn]:
        """The session's turns, oldest first; UnknownSession if it has none."""
        return self.store.history(session_id)

    def handoff(self, session_id: str, reason: str) -> HandoffTicket:
        """Hand an existing session to a human agent (a session already handed off keeps its reason)."""
        with self._session_lock(check_session_id(session_id)):
            transcript = self.store.history(session_id)  # UnknownSession for a session never seen
            state = self.store.load(session_id)
            self.dialogue.hand_off(state, reason)
            self.store.save(state)
        return HandoffTicket(session_id, state.handoff.reason, state.handoff.at, transcript)

    def handoffs(self) -> list[HandoffTicket]:
        """Every session handed to a human agent, with its transcript."""
        return self.store.handoffs()


_shared: Assistant | None = None
_shared_guard = threading.Lock()


def shared_assistant() -> Assistant:
    """The process's assistant, `Assistant.default()` built on first use; the API and the page share it."""
    global _shared
    with _shared_guard:
        if _shared is None:
            _shared = Assistant.default()
        return _shared

