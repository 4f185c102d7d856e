"""The web server: probes and readiness, the hub, mounted pages and APIs, the middleware (request
ids, JSON access logs, API token, rate limit, body limits), page login, uploads, serve()."""
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import html
import json
import logging
import sys
import threading
import types

import fastapi
import pytest
from fastapi import Depends, File, UploadFile
from fastapi.testclient import TestClient

from apps import server
from apps.settings import Settings
from apps.web.logs import JsonFormatter
from apps.web.middleware import TokenBuckets
from apps.web.uploads import RequestUploads, UploadArea, request_uploads, safe_filename

TOKEN = "s3cret-token-0123456789"
seen_folders = []


def _demo_router() -> fastapi.APIRouter:
    router = fastapi.APIRouter()

    @router.post("/echo")
    async def echo(request: fastapi.Request) -> dict:
        return {"bytes": len(await request.body())}

    @router.get("/items/{item_id}")
    def item(item_id: str) -> dict:
        return {"id": item_id}

    @router.get("/boom")
    def boom() -> dict:
        raise RuntimeError("secret internals")

    @router.post("/upload")
    async def upload(files: list[UploadFile] = File(...), uploads: RequestUploads = Depends(request_uploads)):
        paths = await uploads.save_all(files)
        seen_folders.append(uploads.folder)
        return {"names": [p.name for p in paths], "inside": all(p.parent == uploads.folder for p in paths)}

    return router


@pytest.fixture
def demo(monkeypatch):
    """A registered app "demo" with an API (no page), built with the given settings."""
    monkeypatch.setitem(sys.modules, "demo_app", types.SimpleNamespace(router=_demo_router()))

    def build(tmp_path, client=("203.0.113.9", 50000), **settings) -> TestClient:
        app = server.create_app([server.App("demo", "Demo", "a test app", api="demo_app:router")],
                                Settings(upload_dir=tmp_path / "uploads", **settings))
        return TestClient(app, client=client)
    return build


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(server.create_app(settings=Settings()))


def test_probes(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert ready.json()["apps"]["lab"] == {"models": "none"}
    assert ready.json()["apps"]["chat"] == {"models": "lazy", "detail": "loads on first use"}


def test_hub_links_every_app_page_and_api(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for a in server.APPS:
        assert f'<a href="/{a.name}/">{a.title}</a>' in page.text and html.escape(a.description) in page.text
        assert (f'href="/docs#/{a.name}"' in page.text) == bool(a.api)
    assert '<a href="/docs">API docs</a>' in page.text


def test_lab_serves_the_gradio_page(client):
    page = client.get("/lab/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "gradio_config" in page.text and "MoE Lab" in page.text  # our Blocks, not a stub


def test_openapi_documents_the_apis(client):
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/healthz", "/readyz", "/api/v1/chat"} <= paths.keys()


def test_registered_api_is_mounted_and_listed(demo, tmp_path):
    c = demo(tmp_path)
    assert c.get("/api/v1/demo/items/7").json() == {"id": "7"}
    assert "/api/v1/demo" in c.get("/").text
    assert c.get("/lab/").status_code == 404


def test_request_ids_are_echoed_or_made(demo, tmp_path):
    c = demo(tmp_path)
    assert c.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"
    made = c.get("/healthz", headers={"X-Request-ID": "bad id\twith junk" * 9}).headers["x-request-id"]
    assert len(made) == 32 and made != c.get("/healthz").headers["x-request-id"]


def test_access_log_is_structured_and_keeps_data_out(demo, tmp_path, caplog):
    c = demo(tmp_path)
    with caplog.at_level(logging.INFO, logger="moe_suite.access"):
        c.get("/api/v1/demo/items/PATIENT-JANE-DOE?mrn=12345", headers={"X-Request-ID": "rid-1"})
        c.post("/api/v1/demo/echo", content=b"BODY-SECRET")
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records if r.name == "moe_suite.access"]
    assert lines[0] | {"ms": 0, "ts": ""} == {"ts": "", "level": "info", "logger": "moe_suite.access",
                                                "msg": "request", "request_id": "rid-1", "event": "request",
                                                "method": "GET", "path": "/api/v1/demo/items/{item_id}",
                                                "status": 200, "ms": 0}
    assert lines[1]["path"] == "/api/v1/demo/echo" and lines[1]["status"] == 200
    text = "\n".join(map(json.dumps, lines))
    assert "JANE" not in text and "12345" not in text and "SECRET" not in text


def test_unexpected_errors_answer_json_without_internals(demo, tmp_path, caplog):
    c = TestClient(demo(tmp_path).app, raise_server_exceptions=False)
    with caplog.at_level(logging.ERROR, logger="moe_suite.errors"):
        r = c.get("/api/v1/demo/boom", headers={"X-Request-ID": "rid-boom"})
    assert r.status_code == 500 and r.json() == {"detail": "internal error", "request_id": "rid-boom"}
    assert "secret" not in r.text and r.headers["x-request-id"] == "rid-boom"
    assert any(getattr(rec, "request_id", None) == "rid-boom" and rec.exc_info for rec in caplog.records)


def test_api_token(demo, tmp_path):
    c = demo(tmp_path, api_token=TOKEN)
    assert c.get("/api/v1/demo/items/1").status_code == 401
    wrong = c.get("/api/v1/demo/items/1", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert c.get("/api/v1/demo/items/1", headers={"Authorization": f"Bearer {TOKEN}"}).json() == {"id": "1"}
    assert c.get("/healthz").status_code == 200 and c.get("/").status_code == 200  # probes and hub stay open
    schemes = c.get("/openapi.json").json()["components"]["securitySchemes"]
    assert any(s["scheme"] == "bearer" for s in schemes.values())


def test_rate_limit_answers_429_with_retry_after(demo, tmp_path):
    c = demo(tmp_path, rate_limit_per_minute=60, rate_limit_burst=3)
    codes = [c.post("/api/v1/demo/echo", content=b"x").status_code for _ in range(5)]
    assert codes == [200, 200, 200, 429, 429]
    refused = c.post("/api/v1/demo/echo", content=b"x")
    assert refused.headers["retry-after"] == "1" and "60 requests per minute" in refused.json()["detail"]
    assert c.get("/healthz").status_code == 200  # probes are not counted
    free = demo(tmp_path, ("127.0.0.1", 5000), rate_limit_per_minute=60, rate_limit_burst=3)  # loopback exempt
    assert {free.post("/api/v1/demo/echo", content=b"x").status_code for _ in range(6)} == {200}


def test_token_buckets_refill_and_stay_bounded():
    buckets = TokenBuckets(per_minute=60, burst=2, max_keys=100)
    assert [buckets.take("a", now=0.0) for _ in range(3)] == [0, 0, 1.0]
    assert buckets.take("a", now=1.0) == 0  # one token back after a second
    for n in range(1000):
        buckets.take(f"10.0.{n // 256}.{n % 256}", now=2.0)
    assert len(buckets) <= 100


def test_body_limits_fixed_length_and_chunked(demo, tmp_path):
    c = demo(tmp_path, max_body_bytes=2048, max_upload_bytes=8192)
    assert c.post("/api/v1/demo/echo", content=b"x" * 2048).json() == {"bytes": 2048}
    big = c.post("/api/v1/demo/echo", content=b"x" * 2049)
    assert big.status_code == 413 and big.json() == {"detail": "request body over 2048 bytes"}
    chunked = c.post("/api/v1/demo/echo", content=(b"x" * 1000 for _ in range(5)))  # no Content-Length
    assert chunked.status_code == 413
    lying = c.post("/api/v1/demo/echo", content=b"x" * 10, headers={"Content-Length": "ten"})
    assert lying.status_code == 400
    # multipart bodies have the upload limit
    assert c.post("/api/v1/demo/upload", files={"files": ("a.bin", b"x" * 4000)}).status_code == 200
    assert c.post("/api/v1/demo/upload", files={"files": ("a.bin", b"x" * 9000)}).status_code == 413


def test_uploads_are_named_safely_and_removed_after_the_request(demo, tmp_path):
    c = demo(tmp_path)
    files = [("files", ("../../../etc/passwd", b"a")), ("files", ("C:\\Users\\x\\scan.dcm", b"b")),
             ("files", ("scan.dcm", b"c")), ("files", ("..", b"d"))]
    r = c.post("/api/v1/demo/upload", files=files)
    names = r.json()["names"]
    assert r.status_code == 200 and r.json()["inside"] and names[:2] == ["passwd", "scan.dcm"]
    assert names[2].startswith("scan-") and names[2].endswith(".dcm") and names[3] == "upload"
    assert not seen_folders[-1].exists()  # the request's folder is gone
    assert list((tmp_path / "uploads").iterdir())  # the process's area stays until exit


def test_upload_area_removes_what_dead_processes_left(tmp_path):
    dead = 2**22 + 1  # above Linux's largest pid: no such process
    (tmp_path / f"{dead}-abc" / "req-1").mkdir(parents=True)
    (tmp_path / f"{os.getppid()}-def").mkdir()  # a live process's folder stays
    (tmp_path / "notes").mkdir()                # not ours: stays
    area = UploadArea(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{os.getppid()}-def", "notes", area.root.name])
    with area.request_dir() as folder:
        assert folder.parent == area.root
    assert not folder.exists()
    area.cleanup()
    assert not area.root.exists()
    with area.request_dir() as folder:   # removed under a running server (a tmp cleaner): made again
        assert folder.parent == area.root and (area.root.stat().st_mode & 0o777) == 0o700


@pytest.mark.parametrize("name, safe", [("a/b/../c.txt", "c.txt"), ("..\\..\\x.zip", "x.zip"), ("", "upload"),
                                        ("\x00evil\x1f.dcm", "evil.dcm"), (".hidden", "hidden"),
                                        ("a:b*c?.png", "a_b_c_.png"), ("é" * 300 + ".nii.gz", None)])
def test_safe_filename(name, safe):
    out = safe_filename(name)
    assert "/" not in out and "\\" not in out and "\x00" not in out and len(out.encode()) <= 200
    assert out == safe if safe else out.endswith(".gz")


def test_page_login_when_configured(tmp_path):
    c = TestClient(server.create_app([a for a in server.APPS if a.name == "lab"],
                                     Settings(upload_dir=tmp_path, auth_user="ann", auth_password="pw")))
    assert c.get("/lab/config").status_code == 401
    assert c.post("/lab/login", data={"username": "ann", "password": "no"}).status_code == 400
    assert c.post("/lab/login", data={"username": "ann", "password": "pw"}).status_code == 200
    assert c.get("/lab/config").status_code == 200


def test_preload_readiness(monkeypatch, tmp_path):
    gate = threading.Event()
    loads = []

    def slow():
        loads.append(1)
        gate.wait(10)

    def broken():
        raise OSError("disk on fire")

    monkeypatch.setitem(sys.modules, "models_app", types.SimpleNamespace(slow=slow, broken=broken))
    apps = [server.App("a", "A", "a", load="models_app:slow"), server.App("b", "B", "b", load="models_app:broken"),
            server.App("c", "C", "c", load="models_app:slow")]
    with TestClient(server.create_app(apps, Settings(upload_dir=tmp_path, preload=("a", "b")))) as c:
        assert c.get("/readyz").status_code == 503 and c.get("/healthz").status_code == 200
        gate.set()
        c.app.state.models.thread.join(10)
        body = c.get("/readyz").json()
        assert body["apps"]["a"]["models"] == "loaded" and body["apps"]["c"]["models"] == "lazy"
        assert body["apps"]["b"] == {"models": "failed", "detail": "OSError: disk on fire"}
        assert body["status"] == "not ready" and loads == [1]
    with pytest.raises(ValueError, match="preload: unknown app"):
        server.create_app(apps, Settings(upload_dir=tmp_path, preload=("nope",)))


def test_configure_hooks_get_the_servers_settings_before_models_load(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setitem(sys.modules, "configured_app", types.SimpleNamespace(
        configure=lambda settings: seen.append(("configure", settings.port)),
        load=lambda: seen.append(("load", None))))
    apps = [server.App("a", "A", "a", load="configured_app:load", configure="configured_app:configure")]
    with TestClient(server.create_app(apps, Settings(upload_dir=tmp_path, port=8123, preload=("a",)))) as c:
        c.app.state.models.thread.join(10)
    assert seen == [("configure", 8123), ("load", None)]


def test_serve_binds_loopback_by_default(monkeypatch):
    calls = []
    monkeypatch.setattr("uvicorn.run", lambda *args, **kwargs: calls.append(kwargs))
    monkeypatch.setattr("apps.web.logs.configure_logging", lambda settings: None)  # keep pytest's logging
    for name in list(os.environ):
        if name.startswith("MOE_SUITE_") and name not in ("MOE_SUITE_CACHE", "MOE_SUITE_DATASETS"):
            monkeypatch.delenv(name)
    server.serve()
    assert calls[0]["host"] == "127.0.0.1" and calls[0]["port"] == 7860 and calls[0]["access_log"] is False
    server.serve(host="127.0.0.2", port=8123)
    assert calls[1]["host"] == "127.0.0.2" and calls[1]["port"] == 8123
    with pytest.raises(ValueError, match="not a loopback address"):
        server.serve(host="0.0.0.0")
