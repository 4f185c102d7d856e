"""The dialogue and the assistant on the shipped dialogue.yaml, with a keyword intent model and a
word-overlap index standing in for the trained ones: slot filling and confirmation, follow-ups,
clarification, hand-off, persistence, concurrency and bad input."""
import threading

import pytest
import torch
from langchain_core.language_models import FakeListChatModel

from apps.customer_service.actions import ActionRegistry, default_actions, reference
from apps.customer_service.assistant import Assistant, EmptyMessage, MessageTooLong, clean_message
from apps.customer_service.dialogue import DialogueConfig, DialogueManager
from apps.customer_service.intents import IntentModel, IntentTrainConfig
from apps.customer_service.lc import assistant_runnable
from apps.customer_service.retrieval import DEFAULT_KB, Embedder, KnowledgeIndex
from apps.customer_service.store import (
    InvalidSessionId, SessionLimitError, SessionStore, StoreLimits, UnknownSession,
)
from core.text import TextStreamConfig, from_scratch
from core.text.classifier import TrainConfig
from data_connectors.knowledge import load_knowledge

from chat_fakes import EXPERTS, KeywordIntents, OverlapIndex, make_assistant


@pytest.fixture
def index() -> OverlapIndex:
    return OverlapIndex()


@pytest.fixture
def bot(tmp_path, index) -> Assistant:
    return make_assistant(tmp_path / "chat.sqlite3", index)


def test_slot_filling_confirmation_and_mock_action(bot):
    r = bot.reply("s1", "block my card")
    assert r.intent == "block_card" and r.text.startswith("Which card") and r.experts == EXPERTS
    assert bot.reply("s1", "the debit one").text == "Shall I block your debit card now?"
    done = bot.reply("s1", "yes please")
    ref = reference("block_card", {"card": "debit card"})
    assert done.intent == "block_card" and ref in done.text and "no real change" in done.text
    assert bot.store.load("s1").pending is None


def test_no_cancels_and_a_registered_action_replaces_the_mock(tmp_path):
    calls = []
    actions = default_actions()

    @actions.action("block_card")
    def block(slots):
        calls.append(slots)
        return "blocked for real"

    bot = make_assistant(tmp_path / "chat.sqlite3", actions=actions)
    assert bot.reply("s", "block the card ending 1234").text == "Shall I block your card ending 1234 now?"
    assert bot.reply("s", "no").text.startswith("OK, I've cancelled")
    assert calls == [] and bot.store.load("s").slots == {}
    bot.reply("s", "block my credit card")
    assert bot.reply("s", "go ahead").text == "blocked for real" and calls == [{"card": "credit card"}]


def test_slots_come_from_the_first_message_and_each_answer(bot):
    assert bot.reply("t", "send 200 pounds to my sister").text.startswith("Which account")
    assert bot.reply("t", "hmm").text.startswith("Sorry, I didn't catch that. Which account")
    assert bot.reply("t", "from my current account").text == \
        "Shall I send 200 pounds to my sister from your Everyday account?"
    assert "200 pounds" in bot.reply("t", "yes").text


def test_follow_up_keeps_the_topic_and_swaps_the_entity(bot, index):
    first = bot.reply("f", "what are the fees for a current account?")
    assert first.intent == "fees_charges" and first.sources[0].id == "fees-current"
    assert "[fees-current]" in first.text
    follow = bot.reply("f", "and for business accounts?")
    assert follow.intent == "fees_charges"
    assert index.queries[-1] == "what are the fees for a business account?"
    assert follow.sources[0].id == "fees-business"


def test_clarification_when_the_top_two_are_close(bot):
    ask = bot.reply("c", "I have a card problem")
    assert ask.text == "Did you mean block a card or report a lost or stolen card?" and ask.intent is None
    chosen = bot.reply("c", "the lost one")
    assert chosen.intent == "card_lost_stolen" and chosen.text.startswith("Which card")
    bot.reply("d", "card problem")
    assert bot.reply("d", "the first").intent == "block_card"


def test_handoff_after_low_confidence_turns_with_transcript(bot):
    assert not bot.reply("h", "blorp").handoff
    second = bot.reply("h", "zzz qqq")
    assert second.handoff and "colleague" in second.text
    [ticket] = bot.handoffs()
    assert ticket.session_id == "h" and "low confidence" in ticket.reason
    assert [t.text for t in ticket.transcript if t.role == "user"] == ["blorp", "zzz qqq"]
    waiting = bot.reply("h", "hello?")
    assert waiting.handoff and waiting.intent is None


def test_an_understood_turn_ends_a_low_confidence_run(bot):
    assert not any(bot.reply("u", m).handoff for m in ("blorp", "hello", "blorp"))


def test_a_new_request_instead_of_a_slot_answer_switches_topic(bot):
    bot.reply("w", "block my card")
    switched = bot.reply("w", "what are the fees for a current account?")
    assert switched.intent == "fees_charges" and switched.sources
    assert bot.store.load("w").pending is None


@pytest.mark.parametrize("message", ["can I talk to a human", "I want to speak to someone"])
def test_handoff_on_request(bot, message):
    assert bot.reply("r", message).handoff
    assert bot.handoffs()[0].reason == "the customer asked for a human agent"


def test_handoff_through_the_assistant_keeps_the_transcript(bot):
    bot.reply("x", "hello")
    ticket = bot.handoff("x", "customer is upset")
    assert ticket.reason == "customer is upset" and len(ticket.transcript) == 2
    assert bot.reply("x", "hello").handoff
    with pytest.raises(UnknownSession):
        bot.handoff("never-seen", "why")


def test_out_of_scope_gets_the_fallback(bot):
    r = bot.reply("o", "what's the weather tomorrow?")
    assert r.intent == "oos" and r.text.startswith("Sorry, that's outside") and not r.handoff


def test_chat_model_phrases_knowledge_answers(tmp_path):
    model = FakeListChatModel(responses=["A business account costs 5 pounds a month."])
    r = make_assistant(tmp_path / "c.sqlite3", chat_model=model).reply("l", "business account fees")
    assert r.text.startswith("A business account costs") and "[fees-business]" in r.text


def test_state_survives_reopening_the_database(tmp_path):
    path = tmp_path / "chat.sqlite3"
    first = make_assistant(path)
    first.reply("p", "block my card")
    first.store.close()
    second = make_assistant(path)
    assert second.reply("p", "debit").text == "Shall I block your debit card now?"
    assert [t.role for t in second.history("p")] == ["user", "assistant"] * 2


def test_concurrent_turns_on_one_session_lose_nothing(bot):
    def talk(thread: int) -> None:
        for i in range(5):
            bot.reply("busy", f"message {thread}-{i}")

    threads = [threading.Thread(target=talk, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    history = bot.history("busy")
    assert len(history) == 60
    sent = {f"message {t}-{i}" for t in range(6) for i in range(5)}
    assert {t.text for t in history if t.role == "user"} == sent
    assert [t.role for t in history] == ["user", "assistant"] * 30  # turns never interleave


def test_bad_input(bot):
    for empty in ("", "   \n\t", "\x00\x07\u200b"):
        with pytest.raises(EmptyMessage):
            bot.reply("b", empty)
    with pytest.raises(MessageTooLong, match="limit is 2000"):
        bot.reply("b", "x" * 100_000)
    for bad_id in ("", "../etc/passwd", "a" * 65, "id with spaces", "-leading"):
        with pytest.raises(InvalidSessionId):
            bot.reply(bad_id, "hello")
    with pytest.raises(UnknownSession):
        bot.history("nobody")
    assert clean_message("hel\x00lo\u202e \ud800 Привет 你好\r\nok") == "hel lo Привет 你好 ok"
    assert bot.reply("b", "\x1bhello\u200b\x00").intent == "greeting"
    assert bot.history("b")[0].text == "hello"


def test_store_limits(tmp_path):
    bot = make_assistant(tmp_path / "chat.sqlite3", limits=StoreLimits(max_sessions=2, max_history=4))
    bot.reply("one", "hello")
    bot.reply("two", "hello")
    with pytest.raises(SessionLimitError, match="full"):
        bot.reply("three", "hello")
    for _ in range(3):
        bot.reply("one", "hello")
    assert len(bot.history("one")) == 4


def test_config_is_checked(index):
    config = DialogueConfig.load()
    with pytest.raises(ValueError, match="not registered: block_card"):
        DialogueManager(KeywordIntents(), index, ActionRegistry(), config)
    broken = {"settings": {}, "words": config.words, "responses": config.responses, "slots": {},
              "intents": {"pay": {"title": "pay", "action": "pay"}}}
    with pytest.raises(ValueError, match="needs a `confirm`"):
        DialogueConfig.from_dict(broken)


def test_runnable_answers_and_batches(bot):
    chain = assistant_runnable(bot)
    assert chain.invoke({"session_id": "lc", "message": "block my card"}).intent == "block_card"
    replies = chain.batch([{"session_id": "lc", "message": "debit"}, {"session_id": "lc2", "message": "hello"}])
    assert [r.intent for r in replies] == ["block_card", "greeting"]


def test_tiny_real_models_plug_in(tmp_path):
    """A from-scratch 2-layer intent model and a hybrid index over the bank's knowledge, both real."""
    phrases = {"block_card": ["block my card", "freeze my card", "lock my debit card", "stop my card"],
               "fees_charges": ["what are the fees", "account fees", "how much does it cost", "monthly charges"],
               "greeting": ["hello", "hi there", "good morning", "hey"]}
    texts, labels = zip(*[(f"{t} {p}".strip(), intent) for intent, ps in phrases.items() for p in ps
                          for t in ("", "please", "I want to know", "help:")])
    stream = TextStreamConfig(dim=32, num_layers=2, num_heads=2, ffn_dim=64, max_positions=64,
                              moe_layers=(1,), num_experts=4, top_k=2, dropout=0.0)
    train = TrainConfig(epochs=15, batch_size=16, lr=3e-3, head_lr=3e-3)
    model, _ = IntentModel.train(list(texts), list(labels), IntentTrainConfig(train, stream, upcycle=False))
    torch.manual_seed(0)
    embedder = Embedder(from_scratch(TextStreamConfig(dim=32, num_layers=1, num_heads=2, ffn_dim=64,
                                                      num_experts=2, top_k=1)), name="tiny")
    index = KnowledgeIndex.build(load_knowledge(DEFAULT_KB), tmp_path / "index", embedder=embedder)
    bot = Assistant(model, index, SessionStore(tmp_path / "chat.sqlite3"), default_actions(),
                    DialogueConfig.load())
    first = bot.reply("real", "block my card")
    assert first.intent == "block_card" and set(first.experts) == {1} and first.text.startswith("Which card")
    assert bot.reply("real", "the credit one").text == "Shall I block your credit card now?"
    fees = bot.reply("fees", "what are the fees")
    assert fees.intent == "fees_charges" and fees.sources
    assert {s.id for s in fees.sources} <= {c.doc_id for c in index.chunks}


def test_a_chinese_question_is_not_taken_for_a_short_follow_up(bot, index):
    from apps.customer_service.dialogue import word_count

    assert [word_count(m) for m in ("企业账户呢", "银行星期六几点开门？", "and for business accounts?")] == [3, 6, 4]
    bot.reply("z", "what are the fees for a current account?")
    bot.reply("z", "银行星期六几点开门？")   # "when does the bank open on Saturday?": a new question, not the fees topic
    assert index.queries == ["what are the fees for a current account?"]


def test_a_model_trained_on_another_language_never_answers_english_only(tmp_path):
    class GermanIntents(KeywordIntents):
        english = False

    bot = Assistant(GermanIntents(), OverlapIndex(), SessionStore(tmp_path / "s.sqlite3"), default_actions(),
                    DialogueConfig.load())
    reply = bot.reply("g", "Ich habe eine Frage zu meinem Konto")
    assert reply.text.startswith("Sorry, I'm not sure I understood")   # not understood, never "English only"


def test_chinese_phrases_match_inside_a_message_and_long_chinese_quotes_are_cut_at_their_length():
    from apps.customer_service.dialogue import _clip, _phrases

    handoff = _phrases(["转人工", "human agent"])
    assert handoff.search("我要转人工") and handoff.search("a human agent please") and not handoff.search("humane")
    assert _clip("注意 " + "请" * 300, 100) == "注意 " + "请" * 97 + " …"
    assert _clip("one two three four", 12) == "one two …"
