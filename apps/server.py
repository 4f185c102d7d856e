"""The suite's web server: a hub page, health probes, and each app's page and JSON API.

An app joins the server with one `App(...)` line in `APPS`; its page is mounted at /{name} and
its API router at /api/v1/{name}. Modules are imported only when the server is built.
"""
from __future__ import annotations

import html
import importlib
from dataclasses import dataclass
from typing import Any

import fastapi
from fastapi.responses import HTMLResponse

DEFAULT_HOST = "127.0.0.1"  # loopback only: expose the suite deliberately, e.g. behind a proxy
DEFAULT_PORT = 7860


@dataclass(frozen=True)
class App:
    """One application of the suite: a Gradio page, a JSON API, or both."""
    name: str                 # URL segment: page at /{name}, API at /api/v1/{name}
    title: str
    description: str
    page: str | None = None   # "module:function", a function returning a gradio.Blocks
    api: str | None = None    # "module:attribute", a fastapi.APIRouter


APPS: list[App] = [
    App("lab", "MoE Lab", "Configure one MoE layer, train it on a token stream and watch its "
        "expert load, balance, dropped tokens and loss.", page="apps.lab.page:build"),
    App("chat", "Customer-service assistant", "A bank's support chat: MoE intent recognition, slot filling "
        "with confirmation, knowledge answers with sources, hand-off to a human.",
        page="apps.customer_service.page:build", api="apps.customer_service.api:router"),
]


def _resolve(ref: str) -> Any:
    """The object that a "module:attribute" reference names."""
    module, _, attribute = ref.partition(":")
    return getattr(importlib.import_module(module), attribute)


def _hub_item(a: App) -> str:
    title = html.escape(a.title)
    name = f'<a href="/{a.name}/">{title}</a>' if a.page else title
    api = f' &middot; API: <a href="/docs#/{a.name}"><code>/api/v1/{a.name}</code></a>' if a.api else ""
    return f"<li>{name} &mdash; {html.escape(a.description)}{api}</li>"


def _hub_html(apps: list[App]) -> str:
    items = "\n".join(_hub_item(a) for a in apps)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>MoE Suite</title>
<style>body{{font-family:system-ui,sans-serif;max-width:46rem;margin:3rem auto;padding:0 1rem}}
li{{margin:.6rem 0;line-height:1.5}}</style></head>
<body><h1>MoE Suite</h1>
<p>Applications built on one DeepSeek-style Mixture-of-Experts core.</p>
<ul>
{items}
</ul>
<p><a href="/docs">API docs</a> &middot; <a href="/healthz">/healthz</a> &middot;
<a href="/readyz">/readyz</a></p>
</body></html>"""


def create_app(apps: list[App] | None = None) -> fastapi.FastAPI:
    """The FastAPI app with every app in `apps` (default `APPS`) mounted."""
    import gradio as gr  # not at the top: the CLI imports this module for its defaults

    apps = APPS if apps is None else apps
    server = fastapi.FastAPI(title="MoE Suite")
    hub = _hub_html(apps)

    @server.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> str:
        return hub

    @server.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @server.get("/readyz")
    def readyz() -> dict:
        # Every app is built before the server answers at all, so answering means ready.
        return {"status": "ready", "apps": [a.name for a in apps]}

    for a in apps:
        if a.api:
            server.include_router(_resolve(a.api), prefix=f"/api/v1/{a.name}", tags=[a.name])
        if a.page:
            gr.mount_gradio_app(server, _resolve(a.page)(), path=f"/{a.name}", ssr_mode=False)
    return server


def serve(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
    """Run the server with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run("apps.server:create_app", factory=True, host=host, port=port)
