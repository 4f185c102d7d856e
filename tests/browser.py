"""Browser-test fixtures: Debian's Chromium driven by Playwright, against the whole suite served
on a free localhost port (uvicorn in a thread), and screenshots kept as test artifacts.

    from browser import chromium, page, shot, suite_url  # noqa: F401  (fixtures)

    def test_medical_page(page, suite_url):
        page.goto(suite_url + "/medical/")
        page.get_by_role("button", name="Diagnose", exact=True).click()
        page.get_by_text("nodule").first.wait_for()
        shot(page, "medical")

The server mounts every app of `apps.server.APPS` (a new app is served as soon as it is listed
there); the chat's assistant is chat_fakes' (no 3-minute training). An app whose page needs a
stand-in too adds it to `_stand_ins`. Never wait for "networkidle": Gradio keeps a connection open.
Screenshots go to $MOE_SUITE_ARTIFACTS/browser (default tests/artifacts/browser, git-ignored).
Without a `chromium` on PATH the tests skip, saying so (they fail instead under
MOE_SUITE_REQUIRE_BROWSER=1, which .ci/run sets).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from chat_fakes import make_assistant

ARTIFACTS = Path(os.environ.get("MOE_SUITE_ARTIFACTS", Path(__file__).resolve().parent / "artifacts")) / "browser"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 90_000  # one step of a page (a Lab run, a chat turn) on a busy two-core machine


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def chromium():
    """A headless Chromium (Debian's package; Playwright cannot download browsers here). Module-scoped:
    Playwright's sync API runs an event loop in this thread while it is open, which would break
    asyncio.run() in later test modules."""
    path = chromium_path()
    if path is None:
        reason = "no Chromium on PATH: install Debian's `chromium` package (.ci/run does, with apt-get)"
        if os.environ.get("MOE_SUITE_REQUIRE_BROWSER") == "1":  # CI: a missing browser is a failure
            pytest.fail(reason)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _stand_ins(monkeypatch: pytest.MonkeyPatch, app, tmp: Path) -> None:
    """Swap slow-to-build models for stand-ins: the chat's assistant (page and API)."""
    from apps.customer_service import page as chat_page
    from apps.customer_service.assistant import shared_assistant

    assistant = make_assistant(tmp / "chat.sqlite3")
    monkeypatch.setattr(chat_page, "shared_assistant", lambda: assistant)
    app.dependency_overrides[shared_assistant] = lambda: assistant


@pytest.fixture(scope="module")
def suite_url(tmp_path_factory):
    """The base URL of the whole suite (every app in APPS) on a free localhost port."""
    from apps import server
    from apps.settings import Settings
    from apps.web.runner import serve_in_thread

    tmp = tmp_path_factory.mktemp("browser-suite")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("MOE_SUITE_CACHE", str(tmp / "cache"))
        app = server.create_app(settings=Settings(upload_dir=tmp / "uploads"))
        _stand_ins(monkeypatch, app, tmp)
        url, stop = serve_in_thread(app)
        yield url
        stop()


@pytest.fixture
def page(chromium, request):
    """A fresh browser page (own context); a screenshot named after the test is kept if it fails."""
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(TIMEOUT_MS)
    failed_before = request.session.testsfailed
    yield tab
    if request.session.testsfailed > failed_before:  # the call phase is reported before teardown
        shot(tab, f"FAILED-{request.node.name}")
    context.close()


def shot(page, name: str) -> Path:
    """Save a full-page screenshot as ARTIFACTS/<name>.png."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
