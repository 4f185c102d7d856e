"""The web server: probes, hub page, the mounted Lab, the app registry and the bind address."""
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import sys
import types

import fastapi
import pytest
from fastapi.testclient import TestClient

from apps import server


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(server.create_app())


def test_probes(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and "lab" in ready.json()["apps"]


def test_hub_links_the_lab(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<a href="/lab/">MoE Lab</a>' in page.text


def test_lab_serves_the_gradio_page(client):
    page = client.get("/lab/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "gradio_config" in page.text and "MoE Lab" in page.text  # our Blocks, not a stub


def test_registered_api_is_mounted_and_listed(monkeypatch):
    router = fastapi.APIRouter()
    router.add_api_route("/ping", lambda: {"pong": True})
    monkeypatch.setitem(sys.modules, "demo_app", types.SimpleNamespace(router=router))
    client = TestClient(server.create_app([server.App("demo", "Demo", "a test app", api="demo_app:router")]))
    assert client.get("/api/v1/demo/ping").json() == {"pong": True}
    assert "/api/v1/demo" in client.get("/").text
    assert client.get("/lab/").status_code == 404


def test_serve_binds_loopback_by_default(monkeypatch):
    calls = []
    monkeypatch.setattr("uvicorn.run", lambda *args, **kwargs: calls.append(kwargs))
    server.serve()
    assert calls[0]["host"] == "127.0.0.1" and calls[0]["port"] == 7860
