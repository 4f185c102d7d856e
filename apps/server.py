"""The suite's web server: a hub page, health probes, and each app's page and JSON API, behind
the middleware of apps.web (request ids, JSON access logs, rate and body limits, API token).

An app joins the server with one `App(...)` line in `APPS`; its page is mounted at /{name}, its
API router at /api/v1/{name}, its `load` function (if any) is what /readyz reports on and
what `preload` runs at start, and its `configure` function (if any) gets the server's Settings first. Modules are imported only when the server is built.

    serve()                                   # Settings.load(): $MOE_SUITE_CONFIG, MOE_SUITE_* variables
    serve(config="suite.toml", port=8000)     # a settings file, one override
    app = create_app(settings=Settings(rate_limit_per_minute=0))   # for tests and benchmarks

Models: an app's `load` builds its models once per process (the page and the API share them).
Apps named in `settings.preload` load in a background thread at start, and /readyz answers 503
until they are loaded; the others load on first use.
"""
from __future__ import annotations

import html
import importlib
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastapi
from fastapi.responses import HTMLResponse, JSONResponse

from apps.settings import Settings, SettingsError

DEFAULT_HOST = "127.0.0.1"  # loopback only: expose the suite deliberately (see Settings)
DEFAULT_PORT = 7860
log = logging.getLogger("moe_suite.server")


@dataclass(frozen=True)
class App:
    """One application of the suite: a Gradio page, a JSON API, or both."""
    name: str                 # URL segment: page at /{name}, API at /api/v1/{name}
    title: str
    description: str
    page: str | None = None   # "module:function", a function returning a gradio.Blocks
    api: str | None = None    # "module:attribute", a fastapi.APIRouter
    load: str | None = None   # "module:function" that builds the app's shared models (idempotent)
    configure: str | None = None  # "module:function" given the server's Settings before anything loads


APPS: list[App] = [
    App("lab", "MoE Lab", "Configure one MoE layer, train it on a token stream and watch its "
        "expert load, balance, dropped tokens and loss.", page="apps.lab.page:build"),
    App("chat", "Customer-service assistant", "A bank's support chat: MoE intent recognition, slot filling "
        "with confirmation, knowledge answers with sources, hand-off to a human.",
        page="apps.customer_service.page:build", api="apps.customer_service.api:router",
        load="apps.customer_service.assistant:shared_assistant",
        configure="apps.customer_service.assistant:configure"),
    App("medical", "CT nodule diagnosis", "DICOM studies (and radiology reports) in, lung nodules found, "
        "located and rated for malignancy out; research software, not a medical device.",
        page="apps.medical_imaging.page:build", api="apps.medical_imaging.api:router",
        load="apps.medical_imaging.pipeline:shared_models"),
    App("video", "Video studio", "Text-to-video with time-axis experts, a caption per shot with time "
        "stamps, and style experts for clips and images.",
        page="apps.video_generation.page:build", api="apps.video_generation.api:router",
        load="apps.video_generation.studio:load_models"),
]


def _resolve(ref: str) -> Any:
    """The object that a "module:attribute" reference names."""
    module, _, attribute = ref.partition(":")
    return getattr(importlib.import_module(module), attribute)


class Models:
    """The load state of each app's models: "none" (no models), "lazy" (loads on first use),
    "loading", "loaded" or "failed"; `preload` loads the named apps in a background thread."""

    def __init__(self, apps: list[App], preload: tuple[str, ...]):
        names = {a.name for a in apps}
        wanted = names if "all" in preload else set(preload)
        if unknown := sorted(wanted - names):
            raise SettingsError(f"preload: unknown app(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        self.apps = {a.name: a for a in apps}
        self.preload = [a.name for a in apps if a.name in wanted and a.load]
        self.state = {a.name: ("lazy" if a.load else "none") for a in apps}
        self.detail: dict[str, str] = {}
        self.seconds: dict[str, float] = {}
        self.thread: threading.Thread | None = None

    def load(self, name: str) -> None:
        """Build app `name`'s models now (in this thread)."""
        self.state[name] = "loading"
        start = time.perf_counter()
        try:
            _resolve(self.apps[name].load)()
        except Exception as exc:  # reported by /readyz; the server keeps serving the other apps
            self.state[name], self.detail[name] = "failed", f"{type(exc).__name__}: {exc}"
            log.exception("loading failed", extra={"event": "load", "app": name})
            return
        self.state[name], self.seconds[name] = "loaded", round(time.perf_counter() - start, 2)
        log.info("models loaded", extra={"event": "load", "app": name, "seconds": self.seconds[name]})

    def start_preload(self) -> None:
        if self.preload and self.thread is None:
            self.thread = threading.Thread(target=lambda: [self.load(n) for n in self.preload],
                                           name="preload", daemon=True)
            self.thread.start()

    def report(self) -> tuple[bool, dict[str, dict]]:
        """(ready, per app: models state, detail). Ready = every preloaded app loaded."""
        ready = all(self.state[n] == "loaded" for n in self.preload)
        out = {}
        for name, state in self.state.items():
            entry: dict[str, Any] = {"models": state}
            if state == "lazy":
                entry["detail"] = "loads on first use"
            elif name in self.detail:
                entry["detail"] = self.detail[name]
            if name in self.seconds:
                entry["load_seconds"] = self.seconds[name]
            out[name] = entry
        return ready, out


def _hub_item(a: App, token: bool) -> str:
    title = html.escape(a.title)
    links = []
    if a.page:
        links.append(f'<a class="page" href="/{a.name}/">open the page</a>')
    if a.api:
        links.append(f'<a class="api" href="/docs#/{a.name}">API <code>/api/v1/{a.name}</code></a>'
                     + (" (bearer token)" if token else ""))
    name = f'<a href="/{a.name}/">{title}</a>' if a.page else title
    return (f'<li id="app-{html.escape(a.name)}"><h2>{name}</h2><p>{html.escape(a.description)}</p>'
            f'<p class="links">{" &middot; ".join(links)}</p></li>')


def _hub_html(apps: list[App], token: bool = False) -> str:
    items = "\n".join(_hub_item(a, token) for a in apps)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>MoE Suite</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font-family:system-ui,sans-serif;max-width:46rem;margin:3rem auto;padding:0 1rem;color:#222}}
ul{{list-style:none;padding:0}} li{{margin:1rem 0;padding:.8rem 1rem;border:1px solid #ddd;border-radius:.5rem}}
h2{{margin:.2rem 0;font-size:1.2rem}} p{{margin:.3rem 0;line-height:1.5}} .links{{font-size:.95rem}}</style>
</head>
<body><h1>MoE Suite</h1>
<p>Applications built on one DeepSeek-style Mixture-of-Experts core.</p>
<ul>
{items}
</ul>
<p><a href="/docs">API docs</a> &middot; <a href="/healthz">/healthz</a> &middot;
<a href="/readyz">/readyz</a></p>
</body></html>"""


def create_app(apps: list[App] | None = None, settings: Settings | None = None) -> fastapi.FastAPI:
    """The FastAPI app with every app in `apps` (default `APPS`) mounted, configured by `settings`
    (default `Settings.load()`: the settings file and MOE_SUITE_* variables)."""
    from apps.web import install
    from apps.web.uploads import UploadArea

    apps = APPS if apps is None else apps
    settings = settings or Settings.load()
    models = Models(apps, settings.preload)
    uploads = UploadArea(settings.upload_dir)
    for a in apps:
        if a.configure:
            _resolve(a.configure)(settings)

    @asynccontextmanager
    async def lifespan(_: fastapi.FastAPI) -> AsyncIterator[None]:
        if settings.exposed_without_auth:
            log.warning("serving beyond loopback without API token or page login "
                        "(allow_public_without_auth = true): something in front must authenticate",
                        extra={"event": "exposure", "host": settings.host})
        models.start_preload()
        yield
        uploads.cleanup()

    server = fastapi.FastAPI(
        title="MoE Suite", lifespan=lifespan,
        description="Apps on one Mixture-of-Experts core. Every response carries X-Request-ID; "
                    "/api/v1/* needs `Authorization: Bearer <token>` when the server has an API token.")
    server.state.settings, server.state.uploads, server.state.models = settings, uploads, models
    install(server, settings)
    hub = _hub_html(apps, token=settings.api_token is not None)

    @server.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> str:
        return hub

    @server.get("/healthz", summary="The process is up")
    def healthz() -> dict:
        return {"status": "ok"}

    @server.get("/readyz", summary="Whether the apps' models are loaded (503 while a preload is pending "
                "or failed)", responses={503: {"description": "not ready"}})
    def readyz() -> JSONResponse:
        ready, report = models.report()
        return JSONResponse({"status": "ready" if ready else "not ready", "apps": report}, 200 if ready else 503)

    dependencies = _docs_bearer() if settings.api_token is not None else []
    for a in apps:
        if a.api:
            server.include_router(_resolve(a.api), prefix=f"/api/v1/{a.name}", tags=[a.name],
                                  dependencies=dependencies)
    if any(a.page for a in apps):
        import gradio as gr  # not at the top: the CLI imports this module for its defaults

        # Gradio keeps uploads and outputs in GRADIO_TEMP_DIR: inside our upload area, removed at exit.
        os.environ["GRADIO_TEMP_DIR"] = str(uploads.root / "gradio")
        for a in apps:
            if a.page:
                gr.mount_gradio_app(server, _resolve(a.page)(), path=f"/{a.name}", ssr_mode=False,
                                    auth=settings.gradio_auth, max_file_size=settings.max_upload_bytes,
                                    footer_links=["api"])
    return server


def _docs_bearer() -> list:
    """A no-op dependency that makes /docs show the bearer scheme (ApiToken middleware enforces it)."""
    from fastapi import Depends
    from fastapi.security import HTTPBearer

    return [Depends(HTTPBearer(auto_error=False, description="the server's api_token"))]


def serve(settings: Settings | None = None, *, config: str | Path | None = None, **overrides: Any) -> None:
    """Run the server with uvicorn until interrupted: `settings`, or Settings.load(config, **overrides)
    (overrides such as host=, port= win over the file and the environment). One worker: the apps
    keep per-process state (models, session locks)."""
    import uvicorn

    from apps.web.logs import configure_logging, logging_config

    settings = settings or Settings.load(config, **overrides)
    configure_logging(settings)
    log.info("starting", extra={"event": "start", "settings": settings.public_dict()})
    uvicorn.run(_factory(settings), factory=True, host=settings.host, port=settings.port, access_log=False,
                log_config=logging_config(settings), timeout_graceful_shutdown=10)


def _factory(settings: Settings) -> Callable[[], fastapi.FastAPI]:
    """create_app with `settings`, built when uvicorn starts."""
    return lambda: create_app(settings=settings)
