"""A server factory for subprocess tests: the suite's real app (middleware, hub, probes, chat API)
with chat_fakes' stand-in assistant, its sessions in $MOE_SUITE_CACHE/chat/sessions.sqlite3.

    python -m uvicorn --factory fake_server:app      (with tests/ on PYTHONPATH)

`app_with_pages` also mounts the Lab and chat pages (the chat page talks to the same assistant).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from chat_fakes import make_assistant

from apps import server
from apps.customer_service import assistant as assistant_module
from apps.customer_service.store import StoreLimits
from apps.settings import cache_dir

_assistant = None


def fake_assistant():
    """One stand-in assistant per process (like shared_assistant), store limits from the environment."""
    global _assistant
    if _assistant is None:
        limits = StoreLimits(max_sessions=int(os.environ.get("FAKE_MAX_SESSIONS", StoreLimits.max_sessions)))
        _assistant = make_assistant(Path(cache_dir()) / "chat" / "sessions.sqlite3", limits=limits)
    return _assistant


def _build(with_pages: bool):
    apps = [a if with_pages else dataclasses.replace(a, page=None) for a in server.APPS
            if with_pages or a.name == "chat"]
    apps = [dataclasses.replace(a, load="fake_server:fake_assistant") if a.name == "chat" else a for a in apps]
    app = server.create_app(apps)
    app.dependency_overrides[assistant_module.shared_assistant] = fake_assistant
    if with_pages:
        from apps.customer_service import page as chat_page

        chat_page.shared_assistant = fake_assistant  # the page calls it directly
    return app


def app():
    return _build(with_pages=False)


def app_with_pages():
    return _build(with_pages=True)
