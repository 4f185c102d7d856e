"""ASGI middleware of the suite's server (pure ASGI: bodies stream through, nothing is buffered).

Outermost first, as `install` stacks them:

- RequestLog: a request id (X-Request-ID in, or a new one; echoed on the response) and one JSON
  access-log line per request: method, route template, status, ms, request id. Never the body,
  the query string or path parameters.
- RateLimit: a token bucket per client IP for requests that do work (everything but GET/HEAD/
  OPTIONS outside /api/); 429 with Retry-After.
- ApiToken: with a token set, /api/* needs `Authorization: Bearer <token>` (401 otherwise).
- BodyLimit: request bodies over the limit get 413, judged on Content-Length when given and on
  the bytes actually received otherwise (chunked bodies); multipart bodies (uploads) have their
  own, larger limit.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import re
import time
import uuid
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from apps.settings import is_loopback

from .logs import request_id_var

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from apps.settings import Settings

access_log = logging.getLogger("moe_suite.access")

REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")  # an incoming X-Request-ID is kept only if it looks like this
API_PREFIX = "/api/"


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


async def send_json(send: Send, status: int, body: dict, headers: dict[str, str] | None = None,
                    hold_open: bool = False) -> None:
    """A JSON response; with `hold_open`, all of it but the end of the message (an empty last body part
    the caller sends), so the answer is out while the request is still read."""
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data, "more_body": hold_open})


def route_template(scope: Scope, root_path: str) -> str:
    """The matched route's template after the app ran ("/api/v1/chat/sessions/{session_id}",
    "/chat/gradio_api/file={path_or_url}", "/chat/*"), or "(unmatched)": never the path itself."""
    mounted = scope.get("root_path", "")[len(root_path):]  # where mounted sub-apps (Gradio pages) sit
    route = scope.get("route")
    if mounted:
        return mounted + (getattr(route, "path_format", None) or "/*")
    # The app's own routes (also when a middleware refused the request before routing): match the
    # path against its documented paths and its mounts.
    path = scope.get("path", "/")
    path = path[len(root_path):] if root_path and path.startswith(root_path) else path
    for template, pattern in _templates(scope.get("app")):
        if pattern.fullmatch(path):
            return template
    return "(unmatched)"


def _templates(app: Any) -> list[tuple[str, re.Pattern]]:
    """(template, regex) for `app`'s OpenAPI paths and its mounts ("/chat/*"), computed once per app."""
    if app is None:
        return []
    cached = getattr(app.state, "_route_templates", None) if hasattr(app, "state") else None
    if cached is not None:
        return cached
    from starlette.routing import Mount

    out = []
    paths = app.openapi().get("paths", {}) if hasattr(app, "openapi") else {}
    for template in paths:
        out.append((template, re.compile(re.sub(r"\\\{[^/]*?\\\}", "[^/]+", re.escape(template)))))
    for route in getattr(app, "routes", ()):
        if isinstance(route, Mount) and route.path:
            out.append((route.path + "/*", re.compile(re.escape(route.path) + "(/.*)?")))
        elif hasattr(route, "path_regex") and hasattr(route, "path_format"):  # "/", "/docs", ...
            out.append((route.path_format, route.path_regex))
    if hasattr(app, "state"):
        app.state._route_templates = out
    return out


class RequestLog:
    """Request ids and the structured access log."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        incoming = _header(scope, b"x-request-id")
        rid = incoming if incoming and REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        token = request_id_var.set(rid)
        root_path = scope.get("root_path", "")
        status = 500
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            access_log.info("request", extra={
                "request_id": rid, "event": "request", "method": scope["method"],
                "path": route_template(scope, root_path), "status": status,
                "ms": round(1000 * (time.perf_counter() - start), 1)})
            request_id_var.reset(token)


class TokenBuckets:
    """Per-key token buckets: `rate` tokens per second up to `burst`; at most `max_keys` keys kept
    (full buckets are forgotten first, then the least recently used)."""

    def __init__(self, per_minute: int, burst: int, max_keys: int = 65_536):
        self.rate, self.burst, self.max_keys = per_minute / 60, burst, max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, time)

    def take(self, key: str, now: float | None = None) -> float:
        """0 if `key` may go now (one token taken), else the seconds until it may."""
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
        self._buckets[key] = (tokens - 1 if wait == 0 else tokens, now)
        if len(self._buckets) > self.max_keys:
            self._forget(now)
        return wait

    def _forget(self, now: float) -> None:
        full = [k for k, (t, last) in self._buckets.items() if t + (now - last) * self.rate >= self.burst]
        for key in full:
            del self._buckets[key]
        while len(self._buckets) > int(self.max_keys * 0.9):
            self._buckets.popitem(last=False)

    def __len__(self) -> int:
        return len(self._buckets)


class RateLimit:
    """429 with Retry-After when a client IP sends more than its bucket allows."""

    def __init__(self, app: ASGIApp, per_minute: int, burst: int, limit_loopback: bool = False):
        self.app, self.per_minute, self.limit_loopback = app, per_minute, limit_loopback
        self.buckets = TokenBuckets(per_minute, burst)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.per_minute and self._counts(scope):
            client = (scope.get("client") or ("unknown", 0))[0]
            if self.limit_loopback or not is_loopback(client):
                if wait := self.buckets.take(client):
                    retry = max(1, math.ceil(wait))
                    return await send_json(send, 429, {"detail": f"rate limit: {self.per_minute} requests per "
                                                       f"minute per client; retry in {retry} s"},
                                           {"Retry-After": str(retry)})
        await self.app(scope, receive, send)

    @staticmethod
    def _counts(scope: Scope) -> bool:
        return scope["method"] not in ("GET", "HEAD", "OPTIONS") or scope["path"].startswith(API_PREFIX)


class ApiToken:
    """With `token` set, /api/* requests need `Authorization: Bearer <token>`."""

    def __init__(self, app: ASGIApp, token: str):
        self.app, self._token = app, token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(API_PREFIX):
            scheme, _, given = (_header(scope, b"authorization") or "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self._token):
                return await send_json(send, 401, {"detail": "missing or wrong API token: send "
                                                   "'Authorization: Bearer <token>'"},
                                       {"WWW-Authenticate": "Bearer"})
        await self.app(scope, receive, send)


class BodyTooLarge(Exception):
    """Raised from `receive` once a body passes its limit; BodyLimit turns it into 413."""


DRAIN_BYTES = 64 << 20   # a declared over-limit body up to this size is read and dropped after its 413 is sent ...
DRAIN_SECONDS = 5.0      # ... for at most this long: closing with the body unread resets the connection, and a
                         # client still sending (a browser upload) would lose the 413 to the reset


async def _drain(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body"):
            return


class BodyLimit:
    """413 for request bodies over `max_body` bytes (`max_upload` for multipart/form-data); a declared
    length over the limit is answered from the header, then the body (up to DRAIN_BYTES) is read and
    dropped before the connection closes."""

    def __init__(self, app: ASGIApp, max_body: int, max_upload: int):
        self.app, self.max_body, self.max_upload = app, max_body, max_upload

    def limit(self, scope: Scope) -> int:
        content_type = (_header(scope, b"content-type") or "").lower()
        return self.max_upload if content_type.startswith("multipart/form-data") else self.max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit(scope)
        detail = {"detail": f"request body over {limit} bytes"}
        length = _header(scope, b"content-length")
        if length is not None and not length.strip().isdigit():
            return await send_json(send, 400, {"detail": "bad Content-Length"}, {"Connection": "close"})
        if length is not None and int(length) > limit:
            return await self._refuse(receive, send, detail, int(length), _header(scope, b"expect") is not None)
        received, tripped, started, replaced = 0, False, False, False

        async def limited_receive() -> Message:
            nonlocal received, tripped
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    tripped = True
                    raise BodyTooLarge(limit)
            return message

        async def guarded_send(message: Message) -> None:
            # Once the body tripped the limit, whatever the app answers (it may have caught the
            # exception and answered 400 or 500) is replaced by the 413.
            nonlocal started, replaced
            if tripped and not started:
                started = replaced = True
                return await send_json(send, 413, detail, {"Connection": "close"})
            if replaced:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not tripped:
                raise
            # Our BodyTooLarge, or what the app made of it: the client gets (or already got) the 413.
            if not started:
                await send_json(send, 413, detail, {"Connection": "close"})

    @staticmethod
    async def _refuse(receive: Receive, send: Send, detail: dict, declared: int, expects_continue: bool) -> None:
        """413 before the body; then, unless the client waits for "100 Continue" (it sends no body) or declared
        more than DRAIN_BYTES, the answer is held open while the body is read and dropped (DRAIN_SECONDS at
        most), so that the connection closes cleanly after it."""
        drain = not expects_continue and declared <= DRAIN_BYTES
        await send_json(send, 413, detail, {"Connection": "close"}, hold_open=drain)
        if not drain:
            return
        try:
            await asyncio.wait_for(_drain(receive), DRAIN_SECONDS)
        except asyncio.TimeoutError:
            pass
        await send({"type": "http.response.body", "body": b""})


def install(app: Any, settings: Settings) -> None:
    """Stack the middleware on a FastAPI `app` as `settings` ask (RequestLog outermost), and the
    JSON error handlers of apps.web.errors."""
    from .errors import install_error_handlers

    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_body=settings.max_body_bytes, max_upload=settings.max_upload_bytes)
    if settings.api_token is not None:
        app.add_middleware(ApiToken, token=settings.api_token.get_secret_value())
    if settings.rate_limit_per_minute:
        app.add_middleware(RateLimit, per_minute=settings.rate_limit_per_minute, burst=settings.rate_limit_burst,
                           limit_loopback=settings.rate_limit_loopback)
    app.add_middleware(RequestLog)
