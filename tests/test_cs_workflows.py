"""Customer-service workflows an operator runs into after a while: sessions that expire, the
server's own models, a dialogue that fits a custom intent model, out-of-scope calibration on a
small file, the agent's side of a hand-off, error shapes, distinct search results, eval warnings.
Stand-in models (chat_fakes) or tiny from-scratch streams: seconds."""
import json
import sqlite3
import types

import httpx
import pytest
import torch
from chat_fakes import OverlapIndex, Prediction, base_url, http, make_assistant  # noqa: F401  (fixtures)
from pydantic import TypeAdapter
from test_intents import TRAIN_TEMPLATES, _config, _rows, _write_csv

from apps import cli
from apps.customer_service import assistant as assistant_module
from apps.customer_service import store as store_module
from apps.customer_service.actions import default_actions
from apps.customer_service.assistant import Assistant
from apps.customer_service.bench import serve_in_thread
from apps.customer_service.dialogue import (DEFAULT_DIALOGUE, DialogueConfig, DialogueManager, generic_dialogue,
                                             humanise)
from apps.customer_service.intents import IntentModel
from apps.customer_service.retrieval import Embedder, IndexConfig, KnowledgeIndex
from apps.customer_service.store import (
    Handoff, SessionLimitError, SessionState, SessionStore, StoreLimits, Turn, UnknownSession,
)
from apps.settings import Settings, SettingsError
from core.text import from_scratch
from core.text.config import TextStreamConfig
from data_connectors.knowledge import KnowledgeDoc

HOUR = 3600.0


@pytest.fixture
def clock(monkeypatch):
    """The store's time.time(), set by hand: clock[0]."""
    now = [1_000_000.0]
    monkeypatch.setattr(store_module, "time", types.SimpleNamespace(time=lambda: now[0]))
    return now


def _new(store: SessionStore, session_id: str, handoff: bool = False) -> None:
    state = SessionState(session_id, handoff=Handoff("upset", 1.0) if handoff else None)
    store.save(state, Turn("user", "hello"), Turn("assistant", "Hi"))


# ---- 1. sessions expire ----

def test_idle_sessions_expire_when_the_store_fills_but_open_handoffs_stay(tmp_path, clock):
    store = SessionStore(tmp_path / "s.sqlite3", StoreLimits(max_sessions=3, idle_hours=1))
    _new(store, "a"), _new(store, "b"), _new(store, "agent-has-it", handoff=True)
    clock[0] += 2 * HOUR
    _new(store, "c")  # the store is full: the idle sessions go first
    assert store.count() == 2 and store.load("agent-has-it").handoff is not None
    with pytest.raises(UnknownSession):
        store.history("a")
    db = sqlite3.connect(tmp_path / "s.sqlite3")
    assert db.execute("SELECT COUNT(*) FROM turns WHERE session_id IN ('a', 'b')").fetchone() == (0,)
    _new(store, "d")
    with pytest.raises(SessionLimitError, match="expires in about 60 minutes") as refused:
        _new(store, "e")  # nothing idle yet: refused, saying when a place frees up
    assert refused.value.retry_after_s == pytest.approx(HOUR)


def test_a_store_of_open_handoffs_says_an_agent_must_release_one(tmp_path, clock):
    store = SessionStore(tmp_path / "s.sqlite3", StoreLimits(max_sessions=1, idle_hours=1))
    _new(store, "h", handoff=True)
    clock[0] += 5 * HOUR
    with pytest.raises(SessionLimitError, match="releases or deletes") as refused:
        _new(store, "x")
    assert refused.value.retry_after_s is None


def test_lazy_pruning_runs_now_and_then_below_the_limit(tmp_path, clock):
    store = SessionStore(tmp_path / "s.sqlite3", StoreLimits(max_sessions=100, idle_hours=1, prune_every_s=600))
    _new(store, "old")
    clock[0] += 2 * HOUR
    _new(store, "new")  # the first new session of the process prunes
    assert store.count() == 1
    _new(store, "old2")
    clock[0] += 2 * HOUR
    store._last_prune = clock[0] - 60  # pruned a minute ago: not yet again
    _new(store, "new2")
    assert store.count() == 3


def test_prune_sessions_command(tmp_path, clock, capsys):
    path = tmp_path / "chat.sqlite3"
    store = SessionStore(path)
    _new(store, "stale"), _new(store, "waiting", handoff=True), _new(store, "fresh")
    store.close()
    with sqlite3.connect(path) as db:  # two of them last spoke 30 hours ago
        db.execute("UPDATE sessions SET updated_at = updated_at - ? WHERE id != 'fresh'", (30 * HOUR,))
    assert cli.main(["chat", "prune-sessions", "--store", str(path), "--idle-hours", "24", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert out["sessions_removed"] == 1 and out["sessions_left"] == 2 and out["idle_hours"] == 24
    assert cli.main(["chat", "prune-sessions", "--store", str(path), "--idle-hours", "0"]) == 2
    assert cli.main(["chat", "prune-sessions", "--store", str(tmp_path / "none.sqlite3")]) == 2
    assert "no such session store" in capsys.readouterr().err


def test_prune_sessions_without_a_store_creates_none_and_names_bad_settings(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MOE_SUITE_CACHE", str(tmp_path / "cache"))
    assert cli.main(["chat", "prune-sessions", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (out["sessions_removed"], out["sessions_left"]) == (0, 0) and not (tmp_path / "cache").exists()
    monkeypatch.setenv("MOE_SUITE_CHAT_INDEX", str(tmp_path))  # not an index: unrelated to pruning
    assert cli.main(["chat", "prune-sessions"]) == 2
    assert "chat_index" in (err := capsys.readouterr().err) and "--idle-hours" in err
    assert cli.main(["chat", "prune-sessions", "--idle-hours", "5"]) == 0


def test_an_expired_session_loads_fresh_and_its_pending_action_never_runs(tmp_path, clock):
    bot = make_assistant(tmp_path / "s.sqlite3", limits=StoreLimits(idle_hours=1))
    assert bot.reply("s", "block my card").text.startswith("Which card")
    assert "block your debit card" in bot.reply("s", "debit").text
    clock[0] += 2 * HOUR  # the customer comes back after the session expired
    assert bot.store.load("s") == SessionState("s")  # expired on load: deleted with its turns
    with pytest.raises(UnknownSession):
        bot.store.history("s")
    _new(bot.store, "waiting", handoff=True)
    clock[0] += 2 * HOUR
    assert bot.store.load("waiting").handoff is not None  # an open hand-off never expires
    reply = bot.reply("s", "yes")
    assert reply.intent != "block_card" and "blocked" not in reply.text.lower()


def test_a_session_loaded_close_to_expiring_survives_a_prune_during_its_turn(tmp_path, clock):
    store = SessionStore(tmp_path / "s.sqlite3", StoreLimits(idle_hours=1))
    _new(store, "s")
    clock[0] += HOUR - 5  # five seconds left when its customer writes again
    state = store.load("s")
    clock[0] += 10  # the turn takes ten seconds; another session's prune runs meanwhile
    store.prune()
    store.save(state, Turn("user", "still there?"))
    assert [t.text for t in store.history("s")] == ["hello", "Hi", "still there?"]  # nothing lost


def test_history_of_an_expired_session_is_gone_as_for_load(tmp_path, clock):
    store = SessionStore(tmp_path / "s.sqlite3", StoreLimits(idle_hours=1))
    _new(store, "s")
    _new(store, "waiting", handoff=True)
    clock[0] += 2 * HOUR
    with pytest.raises(UnknownSession):
        store.history("s")  # not yet pruned, but expired
    assert store.history("waiting")  # an open hand-off never expires


def test_a_cli_assistant_expires_sessions_on_the_servers_clock(tmp_path, monkeypatch):
    monkeypatch.setenv("MOE_SUITE_CHAT_SESSION_IDLE_HOURS", "48")
    from apps.customer_service import intents as intents_module
    from apps.customer_service import retrieval as retrieval_module
    monkeypatch.setattr(intents_module, "load_default_intent_model", lambda: TelecomIntents())
    monkeypatch.setattr(retrieval_module, "load_default_index", lambda: OverlapIndex())
    bot = Assistant.default(store=tmp_path / "s.sqlite3")
    assert bot.store.limits.idle_hours == 48


def test_pruning_deletes_in_batches_outside_the_new_sessions_transaction(tmp_path, clock, monkeypatch):
    monkeypatch.setattr(store_module, "PRUNE_BATCH", 2)
    store = SessionStore(tmp_path / "s.sqlite3", StoreLimits(idle_hours=1))
    for i in range(5):
        _new(store, f"old{i}")
    clock[0] += 2 * HOUR
    statements = []
    store._conn.set_trace_callback(statements.append)
    _new(store, "new")
    assert store.count() == 1
    transactions = " ".join(statements).split("BEGIN IMMEDIATE")[1:]
    pruning = [t for t in transactions if "DELETE FROM sessions" in t]
    assert len(pruning) == 3  # 2 + 2 + 1 sessions, each batch its own short transaction
    assert not any("INSERT INTO sessions" in t for t in pruning)


def test_a_store_written_before_hand_off_release_still_opens(tmp_path):
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript("""CREATE TABLE sessions (id TEXT PRIMARY KEY, intent TEXT, slots TEXT NOT NULL, pending TEXT,
        query TEXT, low_turns INTEGER NOT NULL, handoff_reason TEXT, handoff_at REAL, created_at REAL NOT NULL,
        updated_at REAL NOT NULL);
        INSERT INTO sessions VALUES ('s1', NULL, '{}', NULL, NULL, 0, 'upset', 5.0, 1.0, 1.0);""")
    db.commit(), db.close()
    store = SessionStore(path)
    assert store.load("s1").handoff == Handoff("upset", 5.0)
    assert store.release("s1").released_at is not None and store.load("s1").handoff is None


# ---- 2. the server's own models ----

def test_chat_settings_name_the_field_of_a_bad_path(tmp_path):
    with pytest.raises(SettingsError, match="MOE_SUITE_CHAT_INDEX: chat_index: .*no manifest.json"):
        Settings.load(environ={"MOE_SUITE_CHAT_INDEX": str(tmp_path)})
    with pytest.raises(SettingsError, match="chat_intent_model: .*no config.json"):
        Settings.load(environ={"MOE_SUITE_CHAT_INTENT_MODEL": str(tmp_path / "missing")})
    (tmp_path / "manifest.json").write_text('{"task": "retrieval"}')
    (tmp_path / "config.json").write_text('{"kind": "image_classifier"}')
    with pytest.raises(SettingsError, match="chat_intent_model: .*no kind = 'text_classifier'"):
        Settings.load(environ={"MOE_SUITE_CHAT_INTENT_MODEL": str(tmp_path), "MOE_SUITE_CHAT_INDEX": str(tmp_path)})
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(SettingsError, match="chat_intent_model: .*config.json: unreadable"):
        Settings.load(environ={"MOE_SUITE_CHAT_INTENT_MODEL": str(tmp_path)})
    from apps.customer_service.intents import DEFAULT_MODEL

    assert Settings.load(environ={"MOE_SUITE_CHAT_INTENT_MODEL": str(DEFAULT_MODEL),
                                  "MOE_SUITE_CHAT_INDEX": str(tmp_path)}).chat_index == tmp_path
    with pytest.raises(SettingsError, match="chat_dialogue: .*no such dialogue file"):
        Settings.load(environ={"MOE_SUITE_CHAT_DIALOGUE": str(tmp_path / "missing.yaml")})
    (tmp_path / "bad.yaml").write_text("settings: {nonsense: 1}\n")
    bad = Settings.load(environ={"MOE_SUITE_CHAT_DIALOGUE": str(tmp_path / "bad.yaml")})  # read by the chat app
    with pytest.raises(SettingsError, match="chat_dialogue: .*bad.yaml: unknown dialogue settings"):
        assistant_module.configure(bad)
    unknown_action = DEFAULT_DIALOGUE.read_text().replace("action: block_card", "action: launch_rocket")
    (tmp_path / "rocket.yaml").write_text(unknown_action)
    with pytest.raises(SettingsError, match="chat_dialogue: .*actions not registered: launch_rocket"):
        assistant_module.configure(Settings.load(environ={"MOE_SUITE_CHAT_DIALOGUE": str(tmp_path / "rocket.yaml")}))
    with pytest.raises(SettingsError, match="chat_session_idle_hours"):
        Settings.load(environ={"MOE_SUITE_CHAT_SESSION_IDLE_HOURS": "0"})


def test_shared_assistant_builds_from_the_chat_settings(tmp_path, monkeypatch):
    (tmp_path / "model").mkdir(), (tmp_path / "index").mkdir()
    (tmp_path / "model" / "config.json").write_text('{"kind": "text_classifier"}')
    (tmp_path / "index" / "manifest.json").write_text('{"task": "retrieval"}')
    config = tmp_path / "suite.toml"
    config.write_text(f'chat_intent_model = "{tmp_path / "model"}"\nchat_index = "{tmp_path / "index"}"\n'
                      f'chat_dialogue = "{DEFAULT_DIALOGUE}"\nchat_session_idle_hours = 6\n')
    given = {}
    monkeypatch.setattr(Assistant, "default", classmethod(lambda cls, **kw: given.update(kw) or "built"))
    monkeypatch.setattr(assistant_module, "_shared", None)
    monkeypatch.setattr(assistant_module, "_shared_settings", None)
    monkeypatch.setenv("MOE_SUITE_CONFIG", str(config))
    assert assistant_module.shared_assistant() == "built"
    assert given["intent_model"] == tmp_path / "model" and given["index"] == tmp_path / "index"
    assert given["dialogue"] == DEFAULT_DIALOGUE and given["limits"].idle_hours == 6


# ---- 3. a dialogue that fits a custom model ----

TELECOM = ["bill_dispute", "roaming_activate", "change_address", "goodbye", "speak_to_human"]


class TelecomIntents:
    """A custom model's interface: `labels`, and a confident prediction of the first label named."""
    labels = tuple(TELECOM)
    oos_threshold = None
    oos_calibration = None
    calibration_warning = None

    def predict(self, texts):
        label = next((lab for lab in TELECOM if lab.split("_")[0] in texts[0].lower()), None)
        top = [(label, 0.95), ("bill_dispute" if label != "bill_dispute" else "goodbye", 0.02)] if label else [
            ("bill_dispute", 0.3), ("goodbye", 0.2)]
        return [Prediction(top[0][0], top[0][1], top, {}, False)]


def test_a_custom_model_gets_a_generic_dialogue_not_the_banks(tmp_path, monkeypatch):
    monkeypatch.setattr(IntentModel, "load", classmethod(lambda cls, path: TelecomIntents()))
    monkeypatch.setattr(KnowledgeIndex, "load", classmethod(lambda cls, path: OverlapIndex()))
    bot = Assistant.default(intent_model=tmp_path / "m", index=tmp_path / "i", store=tmp_path / "s.sqlite3")
    assert bot.warnings == []
    goodbye = bot.reply("t1", "goodbye").text
    assert "bank" not in goodbye.lower() and goodbye.startswith("Goodbye")
    change = bot.reply("t2", "change my address please")
    assert change.intent == "change_address" and "address" not in (bot.store.load("t2").pending or {}).get(
        "slot", "")  # answered from the knowledge base, not the bank's address action
    assert bot.store.load("t2").pending is None
    config = bot.dialogue.config
    assert "bill dispute" in config.responses["out_of_scope"] and "roaming activate" in config.responses[
        "out_of_scope"] and "mortgage" not in config.responses["out_of_scope"]
    assert not any(spec.action for spec in config.intents.values()) and config.slots == {}


def test_a_given_dialogue_for_other_intents_warns(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(IntentModel, "load", classmethod(lambda cls, path: TelecomIntents()))
    monkeypatch.setattr(KnowledgeIndex, "load", classmethod(lambda cls, path: OverlapIndex()))
    monkeypatch.setenv("MOE_SUITE_CACHE", str(tmp_path / "cache"))
    assert cli.main(["chat", "ask", "goodbye", "--intent-model", str(tmp_path / "m"), "--index",
                     str(tmp_path / "i"), "--dialogue", str(DEFAULT_DIALOGUE), "--json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out.splitlines()[-1])
    assert "banking with us" in out["text"]  # the bank's dialogue, given explicitly, applies...
    assert any("does not have" in w and "block_card" in w for w in out["warnings"])  # ...with a warning
    assert any("does not configure" in w and "bill_dispute" in w for w in out["warnings"])
    assert "warning:" in captured.err


def test_generic_dialogue_names_many_topics_briefly():
    config = generic_dialogue([f"topic_{i}" for i in range(30)] + ["oos"])
    assert "topic 0" in config.responses["out_of_scope"] and "18 more topics" in config.responses["out_of_scope"]
    assert "oos" not in config.intents


def test_generic_dialogue_hands_off_on_a_custom_label_and_splits_camel_case():
    config = generic_dialogue(["BillDispute", "roaming_activate", "talk_to_agent", "greeting", "oos"])
    out_of_scope = config.responses["out_of_scope"]
    assert config.settings.handoff_intent == "talk_to_agent" and "agent" not in out_of_scope
    assert "bill dispute and roaming activate, or put you through" in out_of_scope
    assert "speak to human" not in generic_dialogue(["speak_to_human", "bill"]).responses["out_of_scope"]
    assert generic_dialogue(["LiveAgent", "hello"]).responses["out_of_scope"] == (
        "Sorry, that's outside what I can help with here. I can put you through to a colleague.")
    manager = DialogueManager(TelecomIntents(), OverlapIndex(), default_actions(), config)
    assert manager._start(SessionState("s"), "talk_to_agent", "agent please").handoff


def test_labels_that_merely_hold_a_person_word_are_topics_not_hand_offs():
    for label in ("human_resources", "agent_fees", "operator_error", "staff_discount", "HumanResources",
                  "travel_agent_booking", "find_an_agent"):
        config = generic_dialogue([label, "bill", "oos"])
        assert config.settings.handoff_intent != label, label
        assert humanise(label).lower() in config.responses["out_of_scope"].lower(), label
    for label in ("speak_to_a_human", "request_human_agent", "contact_agent", "escalate", "real_person", "agent"):
        assert generic_dialogue(["agent_fees", label, "oos"]).settings.handoff_intent == label, label


def test_a_retrained_bank_model_keeps_the_banks_dialogue(tmp_path, monkeypatch):
    bank = DialogueConfig.load()
    retrained = types.SimpleNamespace(labels=(*bank.intents, "fees_charges", "oos"), oos_threshold=None,
                                      calibration_warning=None, predict=TelecomIntents().predict)
    monkeypatch.setattr(IntentModel, "load", classmethod(lambda cls, path: retrained))
    monkeypatch.setattr(KnowledgeIndex, "load", classmethod(lambda cls, path: OverlapIndex()))
    bot = Assistant.default(intent_model=tmp_path / "m", index=tmp_path / "i", store=tmp_path / "s.sqlite3")
    assert bot.dialogue.config == bank and bot.warnings == []


# ---- 4. out of scope on a small file ----

@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    """A tiny model on 96 rows without oos rows: 8 held out, the bound needs 45."""
    path = tmp_path_factory.mktemp("small") / "m"
    model, _ = IntentModel.train(*_rows(TRAIN_TEMPLATES), _config(epochs=3))
    model.save(path)
    return model, path


def test_too_few_held_out_rows_leave_oos_uncalibrated(small_model):
    model, path = small_model
    assert model.oos_threshold is None
    assert model.oos_calibration == {"calibrated": False, "held_out_rows": 8, "rows_needed": 45}
    assert IntentModel.load(path).oos_calibration == model.oos_calibration
    assert model.english and IntentModel.load(path).english   # English rows: "English only" stays on
    manager = DialogueManager(model, OverlapIndex(), default_actions(), generic_dialogue(model.labels))
    assert manager.low_confidence == 0.5  # the dialogue's cut-off, not lowered


def _train_tiny_intents(data, out, capsys) -> tuple[dict, str]:
    """`chat train-intents` on a tiny stream from scratch, 2 steps: (its JSON summary, its stderr)."""
    stream = json.dumps({"dim": 32, "num_layers": 1, "num_heads": 2, "ffn_dim": 64, "max_positions": 64,
                         "moe_layers": [0], "num_experts": 2, "top_k": 1})
    assert cli.main(["chat", "train-intents", "--data", str(data), "--out", str(out),
                     "--from-scratch", "--stream", stream, "--max-steps", "2", "--json"]) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out.splitlines()[-1]), captured.err


def test_train_intents_warns_when_oos_is_not_calibrated(tmp_path, capsys):
    _write_csv(tmp_path / "train.csv", *_rows(TRAIN_TEMPLATES))
    out, err = _train_tiny_intents(tmp_path / "train.csv", tmp_path / "m", capsys)
    assert out["oos_threshold"] is None and out["oos_calibration"]["calibrated"] is False
    assert any("8 held-out" in w and "needs 45" in w for w in out["warnings"])
    assert "warning: out-of-scope threshold not calibrated" in err


def test_eval_intents_says_when_a_model_without_an_oos_rule_meets_oos_rows(tmp_path, capsys):
    _write_csv(tmp_path / "train.csv", *_rows(TRAIN_TEMPLATES))   # 8 held-out rows: no threshold calibrated
    _train_tiny_intents(tmp_path / "train.csv", tmp_path / "m", capsys)
    _write_csv(tmp_path / "test.csv", ["my balance please", "what is the weather"], ["balance", "oos"])
    assert cli.main(["chat", "eval-intents", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "test.csv"),
                     "--json"]) == 0
    out = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert out["oos_recall"] == 0.0 and any("no out-of-scope rule" in w for w in out["warnings"])


def test_train_intents_on_chinese_warns_that_the_text_model_reads_little_and_drops_english_only(tmp_path, capsys):
    rows = {"挂失": ["我的银行卡丢了", "卡被偷了怎么办", "怎么办理挂失"], "密码": ["取款密码修改", "忘记密码了", "重置密码"],
            "营业时间": ["周六营业吗", "几点开门", "营业时间是什么"]}
    _write_csv(tmp_path / "zh.csv", [t for ts in rows.values() for t in ts * 2],
               [label for label, ts in rows.items() for _ in ts * 2])
    out, err = _train_tiny_intents(tmp_path / "zh.csv", tmp_path / "m", capsys)
    assert any("unknown to the text model's vocabulary" in w for w in out["warnings"])
    assert "unknown to the text model's vocabulary" in err
    assert IntentModel.load(tmp_path / "m").english is False


# ---- 5. the agent's side of a hand-off ----

def test_an_agent_releases_and_deletes_sessions(http):
    http.post("/api/v1/chat", json={"session_id": "rel-1", "message": "hello"})
    http.post("/api/v1/chat/sessions/rel-1/handoff", json={"reason": "complaint"})
    assert http.post("/api/v1/chat", json={"session_id": "rel-1", "message": "hello"}).json()["handoff"]
    assert "rel-1" in [t["session_id"] for t in http.get("/api/v1/chat/handoffs").json()]
    released = http.post("/api/v1/chat/sessions/rel-1/release")
    assert released.status_code == 200 and released.json()["released_at"] is not None
    reply = http.post("/api/v1/chat", json={"session_id": "rel-1", "message": "hello"}).json()
    assert reply["handoff"] is False and reply["intent"] == "greeting"  # the assistant answers again
    assert "rel-1" not in [t["session_id"] for t in http.get("/api/v1/chat/handoffs").json()]
    every = http.get("/api/v1/chat/handoffs", params={"include_released": "true"}).json()
    assert [t["released_at"] is not None for t in every if t["session_id"] == "rel-1"] == [True]
    again = http.post("/api/v1/chat/sessions/rel-1/release")
    assert again.status_code == 409 and "no open hand-off" in again.json()["detail"]
    assert http.delete("/api/v1/chat/sessions/rel-1").status_code == 204
    assert http.get("/api/v1/chat/sessions/rel-1").status_code == 404
    assert http.delete("/api/v1/chat/sessions/rel-1").status_code == 404
    assert http.post("/api/v1/chat/sessions/nobody/release").status_code == 404


def test_agent_endpoints_need_the_api_token(tmp_path):
    from fastapi.testclient import TestClient

    from apps import server
    from apps.customer_service.assistant import shared_assistant

    apps = [a for a in server.APPS if a.name == "chat"]
    apps = [type(apps[0])(**{**apps[0].__dict__, "page": None})]
    app = server.create_app(apps, Settings(api_token="t" * 20, rate_limit_per_minute=0))
    app.dependency_overrides[shared_assistant] = lambda: make_assistant(tmp_path / "a.sqlite3")
    with TestClient(app) as c:
        assert c.delete("/api/v1/chat/sessions/x").status_code == 401
        assert c.post("/api/v1/chat/sessions/x/release").status_code == 401
        auth = {"Authorization": "Bearer " + "t" * 20}
        assert c.delete("/api/v1/chat/sessions/x", headers=auth).status_code == 404


# ---- 6. a slot question does not repeat forever ----

def test_unanswerable_slot_question_hands_off(tmp_path):
    bot = make_assistant(tmp_path / "s.sqlite3")
    assert "Which card" in bot.reply("s", "block my card").text
    first = bot.reply("s", "blorp")
    assert first.text.startswith("Sorry, I didn't catch that") and not first.handoff
    assert bot.reply("s", "blarg").handoff  # handoff_after = 2 turns not understood
    assert bot.store.load("s").handoff.reason.startswith("no usable answer")


def test_a_good_answer_after_a_retry_resets_the_count(tmp_path):
    bot = make_assistant(tmp_path / "s.sqlite3")
    bot.reply("s", "block my card"), bot.reply("s", "blorp")
    assert bot.reply("s", "debit").text == "Shall I block your debit card now?"
    assert not bot.reply("s", "hmm").handoff  # one retry of the confirmation: not yet


# ---- 7. one documented error shape ----

def test_error_bodies_match_the_openapi_schema(http):
    spec = http.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    error, invalid, session = "ErrorMessage", "HTTPValidationError", "/api/v1/chat/sessions/{session_id}"
    expected = {  # (path, method) -> error status -> the schema its body is declared with
        ("/api/v1/chat", "post"): {"413": error, "422": invalid, "429": error},
        (session, "get"): {"404": error, "422": invalid},
        (session, "delete"): {"404": error, "422": invalid},
        (session + "/handoff", "post"): {"404": error, "413": error, "422": invalid, "429": error},
        (session + "/release", "post"): {"404": error, "409": error, "413": error, "422": invalid},
        ("/api/v1/chat/handoffs", "get"): {"422": invalid},
    }
    declared = {}
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            if path.startswith("/api/v1/chat"):
                declared[path, method] = {code: r["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
                                          for code, r in op["responses"].items() if int(code) >= 400}
    assert declared == expected
    assert schemas[error]["properties"]["detail"]["type"] == "string"
    assert schemas[invalid]["properties"]["detail"]["type"] == "array"
    assert schemas[invalid]["properties"]["detail"]["items"]["$ref"].endswith("/ValidationError")
    listed = TypeAdapter(dict[str, list[dict]])
    message = TypeAdapter(dict[str, str])
    for r in (http.post("/api/v1/chat", json={"session_id": "e", "message": "  "}),
              http.get("/api/v1/chat/sessions/-bad-"), http.post("/api/v1/chat", json={"message": 3})):
        assert r.status_code == 422
        errors = listed.validate_python(r.json())["detail"]
        assert all({"loc", "msg", "type"} <= e.keys() for e in errors)
    assert http.post("/api/v1/chat", json={"session_id": "e", "message": "  "}).json()["detail"][0]["loc"] == [
        "body", "message"]
    for r in (http.get("/api/v1/chat/sessions/nobody"), http.post("/api/v1/chat", json={"message": "x" * 3000})):
        assert r.status_code in (404, 413) and message.validate_python(r.json())
    for name in ("Reply", "Turn", "HandoffTicket", "Source"):
        props = schemas[name]["properties"]
        assert all(p.get("description") for p in props.values()), name
    assert "Unix seconds" in schemas["Turn"]["properties"]["at"]["description"]


def test_a_full_store_answers_429_with_when_to_retry(tmp_path, clock):
    url, stop = serve_in_thread(make_assistant(tmp_path / "f.sqlite3", limits=StoreLimits(max_sessions=1)))
    try:
        assert httpx.post(url + "/api/v1/chat", json={"session_id": "a", "message": "hello"}).status_code == 200
        clock[0] += 0.5
        r = httpx.post(url + "/api/v1/chat", json={"session_id": "b", "message": "hello"})
        assert r.status_code == 429 and "expires in about" in r.json()["detail"]
        assert r.headers["retry-after"] == str(24 * 3600)  # 86399.5 s rounded up: never too early
    finally:
        stop()


class BrokenIndex(OverlapIndex):
    def search(self, query, k=5):
        raise ValueError("a bug deep in retrieval")


def test_a_value_error_inside_the_assistant_is_a_500_not_a_422(tmp_path):
    url, stop = serve_in_thread(make_assistant(tmp_path / "s.sqlite3", index=BrokenIndex()))
    try:
        r = httpx.post(url + "/api/v1/chat", json={"session_id": "a", "message": "what are the fees"})
        assert r.status_code == 500
    finally:
        stop()


# ---- 8. k distinct documents ----

def test_search_returns_k_documents_beside_a_very_long_one(tmp_path):
    torch.manual_seed(0)
    embedder = Embedder(from_scratch(TextStreamConfig(dim=32, num_layers=1, num_heads=2, ffn_dim=64,
                                                      num_experts=2, top_k=1)), name="tiny")
    long_text = " ".join(f"reset your password step {i} with the settings page and the app" for i in range(400))
    docs = [KnowledgeDoc("manual", "Manual", long_text, "kb"),
            KnowledgeDoc("signal", "No signal", "Restart the phone when there are no bars.", "kb"),
            KnowledgeDoc("porting", "Number porting", "Keep your number when you move to us.", "kb"),
            KnowledgeDoc("roaming", "Roaming", "Calls abroad cost the same inside the EU.", "kb")]
    index = KnowledgeIndex.build(docs, tmp_path / "ix", IndexConfig(chunk_words=20, overlap_words=0), embedder)
    assert len(index) > 150
    found = index.search("how do I reset my password?", k=4)
    assert sorted(p.id for p in found) == ["manual", "porting", "roaming", "signal"]
    assert found[0].id == "manual"
    scanned = []
    search = index._best_per_document
    index._best_per_document = lambda q, lex, n, k, *weight: scanned.append(n) or search(q, lex, n, k, *weight)
    assert len(index.search("how do I reset my password?", k=9)) == 4  # the index has only 4...
    assert max(scanned) < len(index)  # ...and asking for 9 does not scan every chunk to look for more


# ---- 9. eval-intents on labels the model never saw ----

def test_eval_intents_warns_about_labels_the_model_never_saw(small_model, tmp_path, capsys):
    _, path = small_model
    _write_csv(tmp_path / "test.csv", ["my balance please", "will it rain", "is it sunny"],
               ["balance", "weather", "weather"])
    assert cli.main(["chat", "eval-intents", "--model", str(path), "--data", str(tmp_path / "test.csv"),
                     "--json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out.splitlines()[-1])
    assert out["unknown_labels"] == ["weather"] and out["unknown_label_rows"] == 2
    assert any("weather" in w and "never trained on" in w for w in out["warnings"])
    assert "errors" in out["unknown_labels_scored_as"] and "warning:" in captured.err


def test_the_retrain_page_switches_to_a_dialogue_for_the_uploaded_intents(tmp_path, monkeypatch):
    from apps.customer_service import page

    switched = {}
    monkeypatch.setattr(IntentModel, "train", classmethod(
        lambda cls, texts, labels, cfg: (TelecomIntents(), types.SimpleNamespace(val_accuracy=None))))
    monkeypatch.setattr(page, "shared_assistant", lambda: types.SimpleNamespace(use=lambda **kw: switched.update(kw)))
    (tmp_path / "t.csv").write_text("text,label\nmy bill is wrong,bill_dispute\nroaming on,roaming_activate\n")
    list(page.retrain(str(tmp_path / "t.csv"), None))
    out_of_scope = switched["dialogue_config"].responses["out_of_scope"]
    assert "bill dispute" in out_of_scope and "cards" not in out_of_scope


# ---- 10. other languages ----

@pytest.mark.parametrize("message", ["Je voudrais bloquer ma carte", "Ich habe meine Karte verloren",
                                     "He perdido mi tarjeta", "我的卡丢了", "Я потерял карту"])
def test_a_message_in_another_language_gets_english_only(tmp_path, message):
    bot = make_assistant(tmp_path / "s.sqlite3")  # KeywordIntents: unsure about all of these
    reply = bot.reply("s", message)
    assert reply.text == DialogueConfig.load().responses["not_english"] and reply.intent is None
    assert bot.reply("s", message).handoff  # two in a row: a human takes over (handoff_after = 2)


def test_english_without_function_words_is_still_answered(tmp_path):
    bot = make_assistant(tmp_path / "s.sqlite3")
    assert bot.reply("a", "block card").intent == "block_card"
    assert bot.reply("b", "asdf qwerty").text.startswith("Sorry, I'm not sure I understood")
    assert bot.reply("c", "card problem").text.startswith("Did you mean block a card or")


def test_looks_english_reads_scripts_function_words_and_names():
    from core.text.language import looks_english

    assert all(map(looks_english, ["I lost my card", "block card", "asdf", "1234 5678", "El Paso branch hours",
                                   "I lost my card in Las Vegas", "um card lost", "is there a fee in Spain"]))
    assert not any(map(looks_english, ["Je voudrais bloquer ma carte", "Wo ist meine Karte?", "Ho perso la mia carta",
                                       "Perdi o meu cartão", "我的卡丢了", "بطاقتي ضاعت"]))


ENGLISH_WITH_NAMES = ["send money to mi mama", "transfer to van der berg", "bill due on Mon", "payment failed Mon",
                      "top up for Tu", "call me after 5pm ET", "charge from Al", "send 50 to Su",
                      "transfer money to Les", "un-block my card", "my ES card", "Bill for DAS subscription",
                      "pay Ben et al"]


@pytest.mark.parametrize("message", ENGLISH_WITH_NAMES)
def test_english_with_names_and_abbreviations_looks_english(message):
    from core.text.language import looks_english

    assert looks_english(message)


@pytest.mark.parametrize("message", ["Je voudrais bloquer ma carte", "Ich habe meine Karte verloren",
                                     "Mi tarjeta esta bloqueada", "Vorrei bloccare la carta", "Qué pasa con mi cuenta",
                                     "Mon compte est bloqué", "Es ist ein Fehler", "我的卡丢了"])
def test_real_foreign_messages_still_look_foreign(message):
    from core.text.language import looks_english

    assert not looks_english(message)


@pytest.mark.parametrize("message, intent, confidence", [("transfer to Jose Garcia Para", "transfer_money", 0.53),
                                                         ("Pay Дмитрий Иванович Смирнов", "transfer_money", 0.68),
                                                         ("call me after 5pm ET", "speak_to_human", 0.51)])
def test_a_message_the_model_understood_is_acted_on_whatever_its_names(tmp_path, monkeypatch, message, intent,
                                                                       confidence):
    import chat_fakes

    monkeypatch.setattr(chat_fakes, "RULES", [("", [(intent, confidence), ("greeting", 0.01)])])
    reply = make_assistant(tmp_path / "s.sqlite3").reply("s", message)
    assert reply.intent == intent and reply.text != DialogueConfig.load().responses["not_english"]


def test_a_dialogue_naming_intents_the_bank_model_lacks_warns(tmp_path, monkeypatch):
    import apps.customer_service.intents as intents
    import apps.customer_service.retrieval as retrieval

    monkeypatch.setattr(intents, "load_default_intent_model", lambda: TelecomIntents())
    monkeypatch.setattr(retrieval, "load_default_index", lambda: OverlapIndex())
    bot = Assistant.default(dialogue=DEFAULT_DIALOGUE, store=tmp_path / "s.sqlite3")
    [warning] = bot.warnings  # only the configured intents the model lacks, not the other way round
    assert "does not have" in warning and "block_card" in warning
