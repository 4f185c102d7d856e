"""The customer-service assistant: cleans each message, runs one dialogue turn under the session's
lock and stores the state and both turns.

    assistant = Assistant.default()              # the default bank (trains/builds into the cache once)
    reply = assistant.reply("web-42", "block my card")
    reply.text, reply.intent, reply.confidence, reply.sources, reply.experts, reply.handoff
    assistant.history("web-42"); assistant.handoff("web-42", "customer is upset"); assistant.handoffs()
    assistant.release("web-42"); assistant.delete("web-42")   # the agent's side
    Assistant.default(intent_model="models/intents", index="models/kb")  # yours, with a generic dialogue

Bad input: an empty or whitespace-only message raises EmptyMessage and one over `max_message_chars`
raises MessageTooLong (both ValueErrors: the API answers 422 and 413); control, format (zero-width,
bidi override) and unpaired surrogate characters become spaces, while text in any script is kept.
Turns of one session are serialised by a per-session lock, so concurrent messages lose nothing
(within one process: run the server with a single worker).
"""
from __future__ import annotations

import logging
import threading
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from pydantic import Field

from apps.settings import Settings, SettingsError

from .actions import ActionRegistry, default_actions
from .dialogue import (
    DialogueConfig, DialogueManager, IntentClassifier, Searcher, Source, dialogue_for, dialogue_mismatch,
    missing_actions,
)
from .store import (HandoffTicket, SessionStore, StoreLimits, Turn, check_session_id, configured_idle_hours,
                    default_store_path)

log = logging.getLogger(__name__)

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
    text: Annotated[str, Field(description="the assistant's answer")]
    session_id: Annotated[str, Field(description="the conversation (the one sent, or the new random id)")]
    intent: Annotated[str | None, Field(
        description="the intent the reply acted on; null when nothing was understood")]
    confidence: Annotated[float, Field(
        description="the intent model's probability (0-1) for its best label for the message")]
    sources: Annotated[tuple[Source, ...], Field(description="knowledge passages the text quotes, best first")]
    experts: Annotated[dict[int, dict[int, float]], Field(
        description="MoE layer -> {expert that fired: its mean gate weight}; in JSON both keys are strings "
                    "of integers, e.g. {\"4\": {\"0\": 0.61}}")]
    handoff: Annotated[bool, Field(description="the session is with a human agent")]
    latency_ms: Annotated[float, Field(description="wall time of the whole turn, in milliseconds")]


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
                 chat_model: BaseChatModel | None = None, max_message_chars: int = MAX_MESSAGE_CHARS,
                 warnings: list[str] | None = None):
        self.store = store
        _share_text_trunk(intent_model, index)
        self.dialogue = DialogueManager(intent_model, index, actions, dialogue_config, chat_model)
        self.max_message_chars = max_message_chars
        self.warnings = list(warnings or [])  # how the parts fit badly (a dialogue for other intents, ...)
        # Turn locks striped by session id: bounded memory however many session ids arrive (a dict
        # of one lock per id grew by one entry per distinct id, refused ones included).
        self._locks = [threading.Lock() for _ in range(SESSION_LOCK_STRIPES)]

    @classmethod
    def default(cls, chat_model: BaseChatModel | None = None, intent_model: str | Path | None = None,
                index: str | Path | None = None, dialogue: str | Path | None = None,
                store: str | Path | None = None, limits: StoreLimits | None = None) -> Assistant:
        """The default bank: its intent model and knowledge index (built into the cache on first
        use), mock actions, assets/customer_service/dialogue.yaml, sessions in the cache folder.
        `intent_model` (a train-intents checkpoint folder) and `index` (a `chat index` folder)
        replace the bank's. The bank's dialogue goes with the bank's intent model and any model that
        has all the intents it configures (the bank's retrained); another model without a `dialogue`
        file gets `generic_dialogue` over its own labels (logged, with why). A dialogue that does
        not fit the model's intents is used, with `warnings` (also logged). `limits` default: the
        store's, with the server's chat_session_idle_hours (`configured_idle_hours`), so that a CLI or
        LangChain assistant on the server's store never expires sessions the server keeps."""
        # Imported here: they bring torch and faiss, and train or index on first use.
        from .intents import IntentModel, load_default_intent_model
        from .retrieval import KnowledgeIndex, load_default_index

        model = IntentModel.load(intent_model) if intent_model else load_default_intent_model()
        warnings = []
        if dialogue is not None:
            config = DialogueConfig.load(dialogue)
            # (the bank's dialogue leaves the bank model's knowledge intents out on purpose)
            mismatch = dialogue_mismatch(config, model.labels, unconfigured=intent_model is not None)
            warnings = [f"dialogue {dialogue}: {w}" for w in mismatch]
        elif intent_model:
            config, why = dialogue_for(model.labels)
            if why:
                log.info(f"intent model {intent_model}: {why}", extra={"event": "chat_config"})
        else:
            config = DialogueConfig.load()
        if warning := model.calibration_warning:
            warnings.append(f"intent model {intent_model}: {warning}")
        for warning in warnings:
            log.warning(warning, extra={"event": "chat_config"})
        return cls(model, KnowledgeIndex.load(index) if index else load_default_index(),
                   SessionStore(store or default_store_path(), limits or StoreLimits(idle_hours=configured_idle_hours())),
                   default_actions(), config, chat_model,
                   warnings=warnings)

    @classmethod
    def from_settings(cls, settings: Settings) -> Assistant:
        """`default` with the settings' chat_intent_model, chat_index, chat_dialogue and
        chat_session_idle_hours."""
        return cls.default(intent_model=settings.chat_intent_model, index=settings.chat_index,
                           dialogue=settings.chat_dialogue,
                           limits=StoreLimits(idle_hours=settings.chat_session_idle_hours))

    def use(self, intent_model: IntentClassifier | None = None, index: Searcher | None = None,
            dialogue_config: DialogueConfig | None = None) -> None:
        """Swap in a new intent model, knowledge index and/or dialogue (e.g. retrained on uploads);
        turns already running finish with the old ones."""
        d = self.dialogue
        _share_text_trunk(intent_model or d.intent_model, index or d.index)
        self.dialogue = DialogueManager(intent_model or d.intent_model, index or d.index, d.actions,
                                        dialogue_config or d.config, d.chat_model)

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
            state = self.store.load(session_id)  # first: an expired session is gone after this
            transcript = self.store.history(session_id)  # UnknownSession for a session never seen (or expired)
            self.dialogue.hand_off(state, reason)
            self.store.save(state)
        return HandoffTicket(session_id, state.handoff.reason, state.handoff.at, transcript)

    def handoffs(self, include_released: bool = False) -> list[HandoffTicket]:
        """Sessions with an open hand-off (and released ones with `include_released`), with transcripts."""
        return self.store.handoffs(include_released)

    def release(self, session_id: str) -> HandoffTicket:
        """An agent hands the session back: the assistant answers its next message again."""
        with self._session_lock(check_session_id(session_id)):
            return self.store.release(session_id)

    def delete(self, session_id: str) -> None:
        """Delete the session and its turns (UnknownSession if there is none)."""
        with self._session_lock(check_session_id(session_id)):
            self.store.delete(session_id)


_shared: Assistant | None = None
_shared_settings: Settings | None = None
_shared_guard = threading.Lock()


def configure(settings: Settings) -> None:
    """The settings `shared_assistant` builds from (the server calls this with its own settings, at
    start; without it, `Settings.load()`: $MOE_SUITE_CONFIG and MOE_SUITE_* variables). A chat_dialogue
    file is read and checked here (its format, and that its actions exist): SettingsError if unusable."""
    global _shared_settings
    if settings.chat_dialogue is not None:
        check_dialogue(settings.chat_dialogue)
    _shared_settings = settings


def check_dialogue(path: str | Path) -> DialogueConfig:
    """The dialogue file `path`, read; SettingsError naming chat_dialogue and the problem if it is
    malformed or runs actions the assistant does not have."""
    try:
        config = DialogueConfig.load(path)
    except ValueError as exc:
        raise SettingsError(f"chat_dialogue: {exc}") from None
    actions = default_actions()
    if missing := missing_actions(config, actions):
        raise SettingsError(f"chat_dialogue: {path}: actions not registered: {', '.join(sorted(missing))} "
                            f"(known: {', '.join(actions.names())})")
    return config


def shared_assistant() -> Assistant:
    """The process's assistant, `Assistant.from_settings` built on first use (the bank's models unless
    the settings name chat_intent_model / chat_index / chat_dialogue); the API and the page share it.
    Settings are read once: restart the server after changing them."""
    global _shared
    with _shared_guard:
        if _shared is None:
            _shared = Assistant.from_settings(_shared_settings or Settings.load())
        return _shared
