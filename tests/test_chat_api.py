"""The chat API end to end through a real uvicorn server on a free loopback port (the assistant is
chat_fakes', with stand-in models, injected by overriding the `shared_assistant` dependency);
also the `chat ask` command and the page's parts."""
import json
import zipfile

import gradio as gr
import pytest
from chat_fakes import EXPERTS, base_url, http, make_assistant  # noqa: F401  (fixtures)

from apps import cli
from apps.customer_service import api, page
from apps.customer_service.assistant import Assistant, shared_assistant


def test_conversation_and_history(http):
    r = http.post("/api/v1/chat", json={"session_id": "api-1", "message": "block my card"})
    assert r.status_code == 200
    body = r.json()
    assert body["intent"] == "block_card" and body["session_id"] == "api-1" and body["handoff"] is False
    assert body["experts"] == {str(k): {str(e): w for e, w in v.items()} for k, v in EXPERTS.items()}
    assert body["latency_ms"] >= 0 and body["sources"] == []
    assert http.post("/api/v1/chat", json={"session_id": "api-1", "message": "debit"}).json()["text"] == \
        "Shall I block your debit card now?"
    turns = http.get("/api/v1/chat/sessions/api-1").json()
    assert [t["role"] for t in turns] == ["user", "assistant"] * 2 and turns[0]["text"] == "block my card"
    knowledge = http.post("/api/v1/chat", json={"session_id": "api-2", "message": "current account fees"}).json()
    assert knowledge["sources"][0]["id"] == "fees-current"


def test_a_session_id_is_made_when_left_out(http):
    body = http.post("/api/v1/chat", json={"message": "hello"}).json()
    assert len(body["session_id"]) == 32 and body["intent"] == "greeting"


def test_handoff_endpoints(http):
    http.post("/api/v1/chat", json={"session_id": "api-h", "message": "hello"})
    r = http.post("/api/v1/chat/sessions/api-h/handoff", json={"reason": "complaint"})
    assert r.status_code == 200 and r.json()["reason"] == "complaint" and len(r.json()["transcript"]) == 2
    assert http.post("/api/v1/chat", json={"session_id": "api-h", "message": "hello"}).json()["handoff"]
    tickets = {t["session_id"]: t for t in http.get("/api/v1/chat/handoffs").json()}
    assert tickets["api-h"]["reason"] == "complaint" and len(tickets["api-h"]["transcript"]) == 4
    assert http.post("/api/v1/chat/sessions/nobody/handoff", json={}).status_code == 404


@pytest.mark.parametrize("request_kwargs, status, detail", [
    ({"json": {"session_id": "e", "message": " \t "}}, 422, "message is empty"),
    ({"json": {"session_id": "e"}}, 422, "message"),
    ({"json": {"session_id": "../etc", "message": "hi"}}, 422, "session_id"),
    ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 422, "JSON"),
    ({"json": {"session_id": "e", "message": "x" * 3000}}, 413, "limit is 2000"),
    ({"json": {"session_id": "e", "message": "x" * 100_000}}, 413, "request body over 65536 bytes"),
    ({"content": (b"x" * 8192 for _ in range(20))}, 413, "request body over"),  # chunked, no length
])
def test_bad_requests(http, request_kwargs, status, detail):
    r = http.post("/api/v1/chat", **request_kwargs)
    assert r.status_code == status and detail in json.dumps(r.json())


def test_unknown_and_malformed_sessions(http):
    assert http.get("/api/v1/chat/sessions/nobody").status_code == 404
    assert "unknown session" in http.get("/api/v1/chat/sessions/nobody").json()["detail"]
    assert http.get("/api/v1/chat/sessions/bad%20id").status_code == 422


def test_openapi_lists_the_endpoints(http):
    schema = http.get("/openapi.json").json()
    assert {"/api/v1/chat", "/api/v1/chat/sessions/{session_id}", "/api/v1/chat/sessions/{session_id}/handoff",
            "/api/v1/chat/handoffs"} <= schema["paths"].keys()
    assert {"ChatRequest", "Reply", "HandoffTicket"} <= schema["components"]["schemas"].keys()


def test_body_limit_matches_the_docs():
    assert api.MAX_BODY_BYTES == 64 * 1024


def test_cli_ask_prints_one_json_object(tmp_path, monkeypatch, capsys):
    assistant = make_assistant(tmp_path / "cli.sqlite3")
    given = {}
    monkeypatch.setattr(Assistant, "default", classmethod(lambda cls, **paths: given.update(paths) or assistant))
    assert cli.main(["chat", "ask", "block my card", "--session", "me", "--json"]) == 0
    assert given == {"intent_model": None, "index": None, "dialogue": None}  # the bank's
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["intent"] == "block_card"
    assert cli.main(["chat", "ask", "debit", "--session", "me"]) == 0
    assert "Shall I block your debit card now?" in capsys.readouterr().out
    assert cli.main(["chat", "ask", "   ", "--session", "me"]) == 2


def test_page_chats_and_charts_the_experts(tmp_path, monkeypatch):
    monkeypatch.setattr(page, "shared_assistant", lambda: make_assistant(tmp_path / "p.sqlite3"))
    chat, box, details, figure = page.respond("current account fees", [], "web-p")
    assert [m["role"] for m in chat] == ["user", "assistant"] and box == ""
    assert "fees_charges" in details and "[fees-current]" in details
    assert len(figure.axes) == len(EXPERTS)
    with pytest.raises(gr.Error, match="empty"):
        page.respond("  ", chat, "web-p")
    assert isinstance(page.build(), gr.Blocks)


def test_retrain_tab_switches_the_assistant_to_uploads(tmp_path, monkeypatch):
    from apps.customer_service import intents, retrieval
    from core.text import TextStreamConfig, from_scratch
    from core.text.classifier import TrainConfig

    tiny = TextStreamConfig(dim=32, num_layers=1, num_heads=2, ffn_dim=64, max_positions=64, moe_layers=(0,),
                            num_experts=2, top_k=1, dropout=0.0)
    monkeypatch.setattr(intents, "DEFAULT_TRAIN",
                        intents.IntentTrainConfig(TrainConfig(epochs=1), tiny, upcycle=False))
    monkeypatch.setattr(retrieval, "default_embedder", lambda: retrieval.Embedder(from_scratch(tiny), name="tiny"))
    monkeypatch.setenv("MOE_SUITE_CACHE", str(tmp_path / "cache"))
    assistant = make_assistant(tmp_path / "r.sqlite3")
    monkeypatch.setattr(page, "shared_assistant", lambda: assistant)
    (tmp_path / "intents.yaml").write_text("intents:\n  hello: [hi, hello, hey]\n  bye: [bye, ciao, farewell]\n")
    with zipfile.ZipFile(tmp_path / "kb.zip", "w") as kb:
        kb.writestr("kb/pets.md", "# Pets\n## Dogs\nDogs are allowed in branches.\n")
    status = list(page.retrain(str(tmp_path / "intents.yaml"), str(tmp_path / "kb.zip")))[-1]
    assert "2 intents" in status and "1 documents" in status
    assert assistant.dialogue.intent_model.labels == ("bye", "hello")
    assert assistant.dialogue.index.search("dogs", k=1)[0].id.startswith("pets")
    with pytest.raises(gr.Error):
        list(page.retrain(None, None))


def test_cancelled_retrain_stops_before_training_and_keeps_the_models(tmp_path, monkeypatch):
    from apps.customer_service import intents

    def never(*args, **kwargs):
        raise AssertionError("training ran after the cancel")

    monkeypatch.setattr(intents.IntentModel, "train", never)
    assistant = make_assistant(tmp_path / "c.sqlite3")
    monkeypatch.setattr(page, "shared_assistant", lambda: assistant)
    before = assistant.dialogue.intent_model
    (tmp_path / "intents.yaml").write_text("intents:\n  hello: [hi, hello]\n  bye: [bye, ciao]\n")
    job = page.retrain(str(tmp_path / "intents.yaml"), None)
    assert next(job).startswith("Training the intent model")
    job.close()  # what the page's Cancel button does to the running event
    assert assistant.dialogue.intent_model is before
