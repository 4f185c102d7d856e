"""The dialogue manager: what the assistant says next, given a session's state and a new message.

    config = DialogueConfig.load()                      # assets/customer_service/dialogue.yaml
    manager = DialogueManager(intent_model, index, default_actions(), config)
    answer, prediction = manager.turn(state, "block my card")   # state (store.SessionState) is updated

Per intent, `dialogue.yaml` gives a fixed response, an action with slots to fill and a confirmation
question, or nothing: the intent is then answered from the knowledge base. One turn, in order:
1. a session already handed to a human agent only gets a "please wait";
2. asking for a human (a hand-off word) hands off;
3. an answer to the last question (a slot, a yes/no confirmation, "A or B?") is resolved;
4. a short or "and ..."/"what about ..." follow-up, when the intent model is unsure, refines the
   active knowledge topic: the new entity replaces the old one in the topic's query;
5. a message that would be "not understood" (out of scope, or under the low-confidence threshold
   of 7) and does not look English (`core.text.language.looks_english`), with an intent model trained on
   English: "I only understand English" (a low-confidence turn, see 7);
6. top two intents within `clarify_margin`: "Did you mean A or B?";
7. low confidence (under `low_confidence`, or the intent model's own calibrated oos threshold when
   that is lower): "please rephrase" (or the out-of-scope fallback); `handoff_after` such turns in
   a row hand off (an unusable answer to a slot or yes/no question counts too);
8. otherwise the predicted intent starts: response, slot filling, or a knowledge answer.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Protocol

import yaml
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage, SystemMessage
from pydantic import Field

from .actions import ActionRegistry
from core.text.language import looks_english
from data_connectors.text_files import CJK_CHARS, WORD
from .store import Handoff, SessionState

DEFAULT_DIALOGUE = Path(__file__).resolve().parents[2] / "assets" / "customer_service" / "dialogue.yaml"
OOS = "oos"  # the intent model's out-of-scope label
RESPONSES = ("out_of_scope", "not_understood", "clarify", "retry_slot", "retry_confirm", "cancelled",
             "knowledge", "no_knowledge", "handoff", "handoff_waiting", "llm_instructions")
WORD_LISTS = ("affirm", "deny", "handoff", "follow_up")
# responses a dialogue file may leave out (older files), with their defaults
OPTIONAL_RESPONSES = {"not_english": "Sorry, I only understand English. Could you write your message in English?"}
_CJK_CHAR = re.compile(f"[{CJK_CHARS}]")
_ORDINALS = {"first": 0, "1": 0, "former": 0, "second": 1, "2": 1, "latter": 1}



def word_count(message: str) -> int:
    """Words of a message; text written without spaces (Chinese, Japanese) counts two characters a word."""
    units = WORD.findall(message)
    cjk = sum(bool(_CJK_CHAR.fullmatch(u)) for u in units)
    return len(units) - cjk + math.ceil(cjk / 2)

# ---- what the dialogue needs from the other parts (intents.IntentModel, retrieval.KnowledgeIndex) ----

class Prediction(Protocol):
    label: str
    confidence: float
    top: list[tuple[str, float]]
    experts: dict[int, dict[int, float]]
    is_oos: bool


class IntentClassifier(Protocol):
    def predict(self, texts: list[str]) -> list[Prediction]: ...


class Passage(Protocol):
    id: str
    title: str
    text: str
    score: float


class Searcher(Protocol):
    def search(self, query: str, k: int = 5) -> list[Passage]: ...


# ---- configuration ----

@dataclass(frozen=True)
class SlotMatch:
    value: str  # the slot value, e.g. "debit card"
    text: str   # the words of the message it came from, e.g. "debit"


@dataclass(frozen=True)
class SlotSpec:
    name: str
    prompt: str                                                      # the question asking for it
    choices: dict[str, tuple[str, ...]] = field(default_factory=dict)  # value -> words that mean it
    pattern: str | None = None    # regex; group 1 (or the whole match) fills `value`
    value: str = "{}"             # how a pattern match becomes the value, e.g. "card ending {}"
    free_text: bool = False       # when asked for it, an answer that matches nothing is taken whole

    @cached_property
    def _choice_patterns(self) -> list[tuple[str, re.Pattern]]:
        return [(value, _phrases(words)) for value, words in self.choices.items()]

    @cached_property
    def _pattern(self) -> re.Pattern | None:
        return re.compile(self.pattern) if self.pattern else None

    def find(self, text: str) -> SlotMatch | None:
        """The slot's value in `text`: a choice's word first, then the pattern; None if neither."""
        for value, words in self._choice_patterns:
            if m := words.search(text):
                return SlotMatch(value, m.group())
        if self._pattern and (m := self._pattern.search(text)):
            found = m.group(1) if m.groups() else m.group()
            return SlotMatch(self.value.format(found.strip()), found)
        return None


@dataclass(frozen=True)
class IntentSpec:
    title: str                     # how "Did you mean A or B?" names it
    response: str | None = None    # a fixed answer
    slots: tuple[str, ...] = ()    # slots the action needs, asked for in this order
    action: str | None = None      # ActionRegistry name run once the slots are filled and confirmed
    confirm: str | None = None     # the question before the action, formatted with the slots

    @property
    def uses_knowledge(self) -> bool:
        return self.response is None and self.action is None


@dataclass(frozen=True)
class DialogueSettings:
    low_confidence: float = 0.5        # below this the message counts as not understood
    clarify_margin: float = 0.15       # top two intents closer than this: "Did you mean A or B?"
    follow_up_confidence: float = 0.8  # an elliptical message below this continues the knowledge topic
    follow_up_max_words: int = 4       # messages this short count as elliptical
    handoff_after: int = 2             # consecutive low-confidence turns before a human takes over
    handoff_intent: str = "speak_to_human"  # the intent that asks for a human
    passages: int = 2                  # knowledge passages quoted per answer
    quote_chars: int = 320             # each quote is cut to about this many characters


@dataclass(frozen=True)
class DialogueConfig:
    settings: DialogueSettings
    slots: dict[str, SlotSpec]
    intents: dict[str, IntentSpec]
    responses: dict[str, str]               # texts of `RESPONSES`
    words: dict[str, tuple[str, ...]]       # word lists of `WORD_LISTS`

    @classmethod
    def load(cls, path: str | Path = DEFAULT_DIALOGUE) -> DialogueConfig:
        """Read a dialogue YAML file (format: assets/customer_service/dialogue.yaml)."""
        try:
            doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as err:
            raise ValueError(f"{path}: cannot read the dialogue file ({err})") from None
        try:
            return cls.from_dict(doc)
        except (ValueError, TypeError) as err:  # TypeError: an unknown key in an intent or slot
            raise ValueError(f"{path}: {err}") from None

    @classmethod
    def from_dict(cls, doc: Any) -> DialogueConfig:
        """Build and check a config from the parsed YAML; raises ValueError naming what is wrong."""
        if not isinstance(doc, dict):
            raise ValueError("a dialogue config is a mapping with settings, words, slots, intents, responses")
        known = {f.name for f in fields(DialogueSettings)}
        if unknown := set(doc.get("settings") or {}) - known:
            raise ValueError(f"unknown dialogue settings: {', '.join(sorted(unknown))}")
        for section, required in (("responses", RESPONSES), ("words", WORD_LISTS)):
            if missing := set(required) - set(doc.get(section) or {}):
                raise ValueError(f"dialogue {section} missing: {', '.join(sorted(missing))}")
        slots = {name: SlotSpec(name, **{**spec, "choices": {value: tuple(words) for value, words
                                                             in spec.get("choices", {}).items()}})
                 for name, spec in (doc.get("slots") or {}).items()}
        intents = {name: IntentSpec(**{**spec, "slots": tuple(spec.get("slots", ()))})
                   for name, spec in (doc.get("intents") or {}).items()}
        for name, spec in intents.items():
            if unknown := set(spec.slots) - set(slots):
                raise ValueError(f"intent {name!r} uses undefined slots: {', '.join(sorted(unknown))}")
            if spec.action and not spec.confirm:
                raise ValueError(f"intent {name!r} runs an action, so it needs a `confirm` question")
        return cls(DialogueSettings(**(doc.get("settings") or {})), slots, intents,
                   {**OPTIONAL_RESPONSES, **doc["responses"]},
                   {name: tuple(doc["words"][name]) for name in WORD_LISTS})

    def spec(self, intent: str) -> IntentSpec:
        """The intent's spec; an intent not configured is answered from the knowledge base."""
        return self.intents.get(intent) or IntentSpec(title=intent.replace("_", " "))


_GENERIC_RESPONSES = {  # no domain wording: the out-of-scope reply names the model's own topics
    "out_of_scope": "Sorry, that's outside what I can help with here. {offer}",
    "not_understood": "Sorry, I'm not sure I understood. Could you rephrase that?",
    "clarify": "Did you mean {first} or {second}?",
    "retry_slot": "Sorry, I didn't catch that. {prompt}",
    "retry_confirm": "Please answer yes or no. {question}",
    "cancelled": "OK, I've cancelled that. Anything else?",
    "knowledge": "Here is what I found:",
    "no_knowledge": "Sorry, I couldn't find that in the help articles. A colleague can help if you ask for one.",
    "handoff": "I'm passing you to a colleague, who will see our conversation so far. Please stay on this chat.",
    "handoff_waiting": "A colleague has been asked to take over and will reply here shortly.",
    **OPTIONAL_RESPONSES,
    "llm_instructions": "You are a customer-service assistant. Answer the customer's question in two or three "
                        "sentences using only the passages given. If they do not contain the answer, say so.",
}
_GENERIC_SMALL_TALK = {  # label (any case, - or _) -> fixed answer, when a model has such an intent
    ("goodbye", "bye", "farewell"): "Goodbye, and thanks for getting in touch.",
    ("greeting", "greetings", "hello", "hi"): "Hello! How can I help you today?",
    ("thanks", "thank_you", "thankyou"): "You're welcome. Is there anything else?",
}
# a label that, as a whole, asks for a person ("talk_to_agent", "speak_to_a_human", "live_agent", "human",
# "escalate"); labels that merely hold such a word ("human_resources", "agent_fees") are topics
_HANDOFF_LABEL = re.compile(
    r"^(?:(?:speak|talk|chat|connect|transfer|contact|ask|request|want|need|get|reach|call)(?:_(?:to|with|for))?"
    r"(?:_(?:a|an|the))?_)?(?:(?:live|real|human)_)?(?:human|agent|person|operator|representative|someone)"
    r"(?:_agent)?$|^escalat(?:e|ion)$")
MAX_TOPICS_NAMED = 12  # the generic out-of-scope reply names at most this many intents


def humanise(label: str) -> str:
    """ "roaming_activate" -> "roaming activate", "BillDispute" -> "bill dispute": an intent label as
    words (a CamelCase label split and lower-cased, acronyms such as "SIM" kept)."""
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ",
                   label.replace("_", " ").replace("-", " ")).split()
    if any(w[0].isupper() for w in words[1:]) or re.search(r"[a-z][A-Z]", label):  # CamelCase or Title_Case
        words = [w if w.isupper() and len(w) > 1 else w.lower() for w in words]
    return " ".join(words)


def generic_dialogue(labels: list[str] | tuple[str, ...], words_from: str | Path = DEFAULT_DIALOGUE) -> DialogueConfig:
    """A dialogue for an intent model that comes without one: every intent is answered from the
    knowledge base, greetings/thanks/goodbyes (when the model has them) get a plain answer, a label
    asking for a person ("speak_to_human", "talk_to_agent", "live_agent", ...) hands off, and the
    out-of-scope reply lists the other topics. No actions, slots or domain wording; the
    yes/no/hand-off/follow-up word lists (plain English) come from `words_from`."""
    words = DialogueConfig.load(words_from).words
    intents, topics, handoff = {}, [], None
    for label in labels:
        if label == OOS:
            continue
        title = humanise(label)
        key = title.lower().replace(" ", "_")
        if handoff is None and _HANDOFF_LABEL.match(key):
            handoff, response = label, None
        else:
            response = next((text for names, text in _GENERIC_SMALL_TALK.items() if key in names), None)
            if response is None:
                topics.append(title)
        intents[label] = IntentSpec(title=title, response=response)
    named = topics[:MAX_TOPICS_NAMED]
    listed = ", ".join(named[:-1]) + " and " + named[-1] if len(named) > 1 else "".join(named)
    if len(topics) > len(named):
        listed = ", ".join(named) + f" and {len(topics) - len(named)} more topics"
    offer = f"I can help with {listed}, or put you through to a colleague." if listed else \
        "I can put you through to a colleague."
    responses = {**_GENERIC_RESPONSES, "out_of_scope": _GENERIC_RESPONSES["out_of_scope"].format(offer=offer)}
    settings = DialogueSettings(handoff_intent=handoff) if handoff else DialogueSettings()
    return DialogueConfig(settings, {}, intents, responses, words)


def dialogue_for(labels: list[str] | tuple[str, ...]) -> tuple[DialogueConfig, str | None]:
    """The dialogue for an intent model that comes without one: the bank's (assets/customer_service/
    dialogue.yaml) when every intent it configures is one of `labels` (e.g. the bank's model
    retrained), else `generic_dialogue(labels)` with the reason why the bank's does not fit."""
    bank = DialogueConfig.load()
    if not (mismatch := dialogue_mismatch(bank, labels, unconfigured=False)):
        return bank, None
    return generic_dialogue(labels), (f"the bank's dialogue does not fit the intent model ({mismatch[0]}): "
                                      "using a generic dialogue over the model's labels")


def dialogue_mismatch(config: DialogueConfig, labels: list[str] | tuple[str, ...],
                      unconfigured: bool = True) -> list[str]:
    """Warnings when a dialogue and an intent model do not fit: intents the dialogue configures that
    the model never predicts, and (with `unconfigured`) model intents the dialogue does not configure
    (answered from the knowledge base under their label's name)."""
    model, configured = set(labels) - {OOS}, set(config.intents)
    out = []
    if missing := sorted(configured - model):
        out.append(f"the dialogue configures {len(missing)} intent(s) the intent model does not have "
                   f"(never used): {', '.join(missing[:20])}")
    if unconfigured and (extra := sorted(model - configured)):
        out.append(f"the intent model has {len(extra)} intent(s) the dialogue does not configure (answered "
                   f"from the knowledge base): {', '.join(extra[:20])}")
    return out


# ---- one turn ----

@dataclass(frozen=True)
class Source:
    id: Annotated[str, Field(description="the quoted document's id in the knowledge base")]
    title: Annotated[str, Field(description="the document's title")]
    score: Annotated[float, Field(description="retrieval score of its best passage (higher is better; "
                                              "comparable only within one reply)")]


@dataclass(frozen=True)
class Answer:
    """What the assistant says back in one turn."""
    text: str
    intent: str | None                 # the intent acted on; None when nothing was understood
    sources: tuple[Source, ...] = ()   # knowledge passages the text quotes
    handoff: bool = False              # the session is (now) with a human agent


def _phrases(words: tuple[str, ...] | list[str]) -> re.Pattern:
    """A case-insensitive pattern matching any of `words` as whole words (longest first); a phrase's end in
    Chinese or Japanese needs no word boundary ("转人工" inside "我要转人工")."""
    def bounded(w: str) -> str:
        return "".join(("" if _CJK_CHAR.match(w[:1]) else r"\b", re.escape(w),
                        "" if _CJK_CHAR.match(w[-1:]) else r"\b"))
    return re.compile("(?:" + "|".join(bounded(w) for w in sorted(words, key=len, reverse=True)) + ")", re.IGNORECASE)


def _clip(text: str, chars: int) -> str:
    """`text` cut at a word boundary to about `chars` characters, with an ellipsis if cut (at `chars` itself
    when the last space lies in its first half: text written without spaces)."""
    text = " ".join(text.split())
    if len(text) <= chars:
        return text
    head = text[:chars]
    cut = head.rsplit(" ", 1)[0]
    return (cut if len(cut) >= chars // 2 else head) + " …"


def missing_actions(config: DialogueConfig, actions: ActionRegistry) -> set[str]:
    """The actions `config`'s intents run that `actions` does not have."""
    return {s.action for s in config.intents.values() if s.action} - set(actions.names())


class DialogueManager:
    """Decides each turn's answer and updates the session state; stateless itself, so one manager
    serves every session (the caller serialises turns of the same session)."""

    def __init__(self, intent_model: IntentClassifier, index: Searcher, actions: ActionRegistry,
                 config: DialogueConfig, chat_model: BaseChatModel | None = None):
        if missing := missing_actions(config, actions):
            raise ValueError(f"dialogue actions not registered: {', '.join(sorted(missing))}")
        self.intent_model, self.index, self.actions, self.config = intent_model, index, actions, config
        self.chat_model = chat_model  # when given, phrases knowledge answers from the passages
        # "I only understand English" only from a model trained on English (not a German or Chinese one)
        self.english = getattr(intent_model, "english", True)
        self._words = {name: _phrases(words) for name, words in config.words.items()}
        # A model with an oos threshold calibrated on its own data (e.g. one trained on uploaded
        # intents, where confidences over many intents run lower) is trusted down to that threshold.
        threshold = getattr(intent_model, "oos_threshold", None)
        self.low_confidence = config.settings.low_confidence if threshold is None else min(
            config.settings.low_confidence, threshold)

    def turn(self, state: SessionState, message: str) -> tuple[Answer, Prediction]:
        """Answer `message` (already cleaned) in the session `state`, which is updated in place."""
        prediction = self.intent_model.predict([message])[0]
        return self._answer(state, message, prediction), prediction

    def hand_off(self, state: SessionState, reason: str) -> Answer:
        """Hand the session to a human agent (kept if already handed off)."""
        state.handoff = state.handoff or Handoff(reason)
        state.pending = None
        return Answer(self.config.responses["handoff"], self.config.settings.handoff_intent, handoff=True)

    def _not_understood(self, state: SessionState, low_turns: int, why: str, answer: Answer) -> Answer:
        """One more turn in a row not understood: `answer`, or a hand-off once there are handoff_after."""
        state.low_turns = low_turns + 1
        if state.low_turns >= self.config.settings.handoff_after:
            return self.hand_off(state, f"{why} for {state.low_turns} turns in a row")
        return answer

    def _answer(self, state: SessionState, message: str, p: Prediction) -> Answer:
        if state.handoff:
            return Answer(self.config.responses["handoff_waiting"], None, handoff=True)
        if self._words["handoff"].search(message):
            return self.hand_off(state, "the customer asked for a human agent")
        low_turns, state.low_turns = state.low_turns, 0  # a turn handled below ends a low-confidence run
        if state.pending:
            pending, state.pending = state.pending, None
            if answer := self._resolve(state, pending, message, p):
                if state.pending is pending:
                    # the same question asked again: a turn not understood, towards a hand-off
                    return self._not_understood(state, low_turns, "no usable answer to the question", answer)
                return answer
        if self._is_follow_up(state, message, p):
            return self._knowledge(state.intent, self._refine(state.query, message))
        if (p.is_oos or p.confidence < self.low_confidence) and self.english and not looks_english(message):
            # a reply that would be "not understood" anyway: say we only understand English (a prediction
            # the model is sure enough of is acted on, whatever names or foreign words the message holds)
            return self._not_understood(state, low_turns, "message not in English",
                                        Answer(self.config.responses["not_english"], None))
        if options := self._close_call(p):
            state.pending = {"kind": "clarify", "options": options, "message": message}
            first, second = (self.config.spec(o).title for o in options)
            return Answer(self.config.responses["clarify"].format(first=first, second=second), None)
        if p.confidence < self.low_confidence:
            return self._not_understood(state, low_turns, "low confidence",
                                        Answer(self.config.responses["out_of_scope" if p.is_oos else "not_understood"],
                                               None))
        if p.is_oos:
            return Answer(self.config.responses["out_of_scope"], OOS)
        return self._start(state, p.label, message)

    def _start(self, state: SessionState, intent: str, message: str) -> Answer:
        """Make `intent` the active topic and answer `message` for it."""
        if intent == self.config.settings.handoff_intent:
            return self.hand_off(state, "the customer asked for a human agent")
        spec = self.config.spec(intent)
        state.intent, state.slots, state.query = intent, {}, None
        if spec.response is not None:
            return Answer(spec.response, intent)
        if spec.action:
            return self._fill(state, message)
        state.query = message
        return self._knowledge(intent, message)

    def _fill(self, state: SessionState, message: str) -> Answer:
        """Take the active intent's missing slots from `message`, then ask for the next one or confirm."""
        spec = self.config.spec(state.intent)
        for name in spec.slots:
            if name not in state.slots and (match := self.config.slots[name].find(message)):
                state.slots[name] = match.value
        if missing := [name for name in spec.slots if name not in state.slots]:
            state.pending = {"kind": "slot", "slot": missing[0]}
            return Answer(self.config.slots[missing[0]].prompt, state.intent)
        state.pending = {"kind": "confirm"}
        return Answer(spec.confirm.format(**state.slots), state.intent)

    def _resolve(self, state: SessionState, pending: dict, message: str, p: Prediction) -> Answer | None:
        """The answer to the question the last turn asked; None when the message is about
        something else (it is then handled as a new request)."""
        if pending["kind"] == "clarify":
            if choice := self._choose(pending["options"], message, p):
                return self._start(state, choice, pending["message"])
            return self._cancel(state) if self._words["deny"].search(message) else None
        affirm, deny = (bool(self._words[w].search(message)) for w in ("affirm", "deny"))
        switches = p.label not in (state.intent, OOS) and p.confidence >= self.low_confidence
        if pending["kind"] == "slot":
            slot = self.config.slots[pending["slot"]]
            match = slot.find(message)
            if match is None and deny:
                return self._cancel(state)
            if match is None and slot.free_text:
                match = SlotMatch(message, message)
            if match is not None:
                state.slots[slot.name] = match.value
                return self._fill(state, message)
            retry = self.config.responses["retry_slot"].format(prompt=slot.prompt)
        else:  # "confirm"
            spec = self.config.spec(state.intent)
            if affirm != deny:
                if deny:
                    return self._cancel(state)
                text, state.slots = self.actions.run(spec.action, state.slots), {}
                return Answer(text, state.intent)
            retry = self.config.responses["retry_confirm"].format(question=spec.confirm.format(**state.slots))
        if switches:
            return None
        state.pending = pending
        return Answer(retry, state.intent)

    def _cancel(self, state: SessionState) -> Answer:
        intent, state.intent, state.slots = state.intent, None, {}
        return Answer(self.config.responses["cancelled"], intent)

    def _choose(self, options: list[str], message: str, p: Prediction) -> str | None:
        """Which of the two `options` the answer to "Did you mean A or B?" picks: an ordinal
        ("the first"), words only one option's name has, or the intent model's best label."""
        tokens = re.findall(r"\w+", message.lower())
        if ordinals := [_ORDINALS[t] for t in tokens if t in _ORDINALS]:
            return options[ordinals[0]]
        words = set(tokens)
        names = [set(re.findall(r"\w+", f"{o} {self.config.spec(o).title}".replace("_", " ").lower()))
                 for o in options]
        hits = [len(words & (names[i] - names[1 - i])) for i in (0, 1)]
        if hits[0] != hits[1]:
            return options[hits.index(max(hits))]
        return p.label if p.label in options else None

    def _close_call(self, p: Prediction) -> list[str] | None:
        """The top two in-scope intents when their probabilities are within `clarify_margin`."""
        if p.is_oos or len(p.top) < 2:
            return None
        (first, p1), (second, p2) = p.top[:2]
        close = OOS not in (first, second) and p1 - p2 < self.config.settings.clarify_margin
        return [first, second] if close else None

    def _is_follow_up(self, state: SessionState, message: str, p: Prediction) -> bool:
        """An elliptical message ("and for business accounts?") while a knowledge topic is active,
        unless the intent model is confident about another intent."""
        s = self.config.settings
        if state.query is None or (p.confidence >= s.follow_up_confidence and p.label != state.intent):
            return False
        return bool(self._words["follow_up"].match(message)) or word_count(message) <= s.follow_up_max_words

    def _refine(self, query: str, follow_up: str) -> str:
        """The topic's `query` with the follow-up's entity in place of the old one ("current
        account" -> "business account"); without a shared slot, the two are joined."""
        rest = self._words["follow_up"].sub("", follow_up, count=1).strip()
        for slot in self.config.slots.values():
            if (new := slot.find(rest)) and (old := slot.find(query)):
                return query.replace(old.text, new.text, 1)
        return f"{query} {rest}"

    def _knowledge(self, intent: str, query: str) -> Answer:
        """Quote the best passages for `query`, or have the chat model phrase an answer from them."""
        s, responses = self.config.settings, self.config.responses
        passages = self.index.search(query, k=s.passages)
        if not passages:
            return Answer(responses["no_knowledge"], intent)
        if self.chat_model is None:
            quotes = "\n\n".join(f"> {_clip(p.text, s.quote_chars)}\n\n— {p.title} [{p.id}]" for p in passages)
            text = f"{responses['knowledge']}\n\n{quotes}"
        else:
            context = "\n\n".join(f"[{p.id}] {p.title}\n{p.text}" for p in passages)
            reply = self.chat_model.invoke([SystemMessage(responses["llm_instructions"]),
                                            HumanMessage(f"Passages:\n{context}\n\nQuestion: {query}")])
            cited = "\n".join(f"- {p.title} [{p.id}]" for p in passages)
            text = f"{reply.content}\n\nSources:\n{cited}"
        return Answer(text, intent, tuple(Source(p.id, p.title, round(float(p.score), 4)) for p in passages))
