"""The assistant's JSON API, mounted by the server at /api/v1/chat.

    POST   /api/v1/chat                        {"session_id": "web-42", "message": "block my card"} -> Reply
    GET    /api/v1/chat/sessions/{id}          the session's turns (404 if unknown)
    DELETE /api/v1/chat/sessions/{id}          delete the session and its turns (204)
    POST   /api/v1/chat/sessions/{id}/handoff  {"reason": "..."} -> the hand-off with its transcript
    POST   /api/v1/chat/sessions/{id}/release  an agent hands the session back to the assistant
    GET    /api/v1/chat/handoffs               open hand-offs with transcripts (?include_released=true: all)

Errors: 404 (unknown session), 409 (release without an open hand-off), 413 (a body over
`MAX_BODY_BYTES` or a message over the assistant's limit) and 429 (store full, with Retry-After
when an idle session will expire) have the body {"detail": "message"} (`ErrorMessage`); every 422
(a malformed body, an empty message, a malformed session id) has FastAPI's validation shape
{"detail": [{"loc": [...], "msg": "...", "type": "..."}]} (`HTTPValidationError` in OpenAPI).
Handlers are plain functions: FastAPI runs them in its thread pool, as the model blocks.
"""
from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field

from .assistant import Assistant, EmptyMessage, MessageTooLong, Reply, shared_assistant
from .store import (
    SESSION_ID, HandoffTicket, InvalidSessionId, NotHandedOff, SessionLimitError, Turn, UnknownSession,
)

MAX_BODY_BYTES = 64 * 1024  # request bodies over this are refused with 413 before being parsed


class _BodyLimitRoute(APIRoute):
    """Reads at most `MAX_BODY_BYTES` of a request body (413 past that; 422 when it is not UTF-8), then hands
    it on."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def limited(request: Request) -> Response:
            body = b""
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_BODY_BYTES:
                    return JSONResponse({"detail": f"request body over {MAX_BODY_BYTES} bytes"}, 413)
            try:   # JSON in UTF-8 (or UTF-16/32, which Python's json detects); FastAPI answers other bytes with a 400
                body.decode(json.detect_encoding(body))
            except UnicodeDecodeError as exc:
                problem = f"the body is not UTF-8 (invalid byte at offset {exc.start})"
                return JSONResponse({"detail": [{"loc": ["body"], "type": "value_error", "msg": problem}]}, 422)

            async def replay() -> dict:
                return {"type": "http.request", "body": body, "more_body": False}

            return await handler(Request(request.scope, replay))

        return limited


class ErrorMessage(BaseModel):
    """The body of the chat API's 404, 409, 413 and 429 answers."""
    detail: str = Field(description="what went wrong, in words", examples=["unknown session 'web-42'"])


# Domain errors -> HTTP status.
_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (MessageTooLong, 413), (UnknownSession, 404), (SessionLimitError, 429), (NotHandedOff, 409))
_ERRORS = {404: "unknown session", 409: "the session has no open hand-off", 413: "body or message too long",
           429: "the session store is full (Retry-After: seconds until an idle session expires, when known)"}


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorMessage, "description": _ERRORS[code]} for code in codes}


@contextmanager
def _http_errors() -> Iterator[None]:
    """Re-raise the assistant's domain errors as HTTPExceptions with their message; an empty message or
    an invalid session id as a validation error at the body's message or the path's session_id."""
    try:
        yield
    except tuple(kind for kind, _ in _STATUS) as exc:
        status = next(code for kind, code in _STATUS if isinstance(exc, kind))
        detail = f"unknown session {exc.args[0]!r}" if isinstance(exc, UnknownSession) else str(exc)
        retry = getattr(exc, "retry_after_s", None)
        headers = {"Retry-After": str(math.ceil(retry))} if retry else None
        raise HTTPException(status, detail, headers=headers) from None
    except (EmptyMessage, InvalidSessionId) as exc:  # FastAPI's validation shape (any other error: a 500)
        where = ("path", "session_id") if isinstance(exc, InvalidSessionId) else ("body", "message")
        raise RequestValidationError([{"loc": where, "msg": str(exc), "type": "value_error"}]) from None


class ChatRequest(BaseModel):
    session_id: str = Field(default_factory=lambda: uuid.uuid4().hex, pattern=f"^{SESSION_ID.pattern}$",
                            examples=["web-42"], description="the conversation (1-64 letters, digits and "
                            "_.:-); a new random id when left out")
    message: str = Field(examples=["I lost my debit card"], description="the customer's message")


class HandoffRequest(BaseModel):
    reason: str = Field("requested through the API", max_length=500, description="why a human should take over")


router = APIRouter(route_class=_BodyLimitRoute)
AssistantDep = Depends(shared_assistant)


@router.post("", response_model=Reply, summary="Send a message, get the assistant's reply",
             responses=_responses(413, 429))
def chat(request: ChatRequest, assistant: Assistant = AssistantDep) -> Reply:
    with _http_errors():
        return assistant.reply(request.session_id, request.message)


@router.get("/sessions/{session_id}", response_model=list[Turn], summary="A session's turns, oldest first",
            responses=_responses(404))
def history(session_id: str, assistant: Assistant = AssistantDep) -> list[Turn]:
    with _http_errors():
        return assistant.history(session_id)


@router.delete("/sessions/{session_id}", status_code=204, response_class=Response,
               summary="Delete a session and its turns", responses=_responses(404))
def delete_session(session_id: str, assistant: Assistant = AssistantDep) -> Response:
    with _http_errors():
        assistant.delete(session_id)
    return Response(status_code=204)


@router.post("/sessions/{session_id}/handoff", response_model=HandoffTicket,
             summary="Hand a session to a human agent", responses=_responses(404, 413, 429))
def handoff(session_id: str, request: HandoffRequest, assistant: Assistant = AssistantDep) -> HandoffTicket:
    with _http_errors():
        return assistant.handoff(session_id, request.reason)


@router.post("/sessions/{session_id}/release", response_model=HandoffTicket,
             summary="Hand a session back from the human agent to the assistant",
             responses=_responses(404, 409, 413))
def release(session_id: str, assistant: Assistant = AssistantDep) -> HandoffTicket:
    with _http_errors():
        return assistant.release(session_id)


@router.get("/handoffs", response_model=list[HandoffTicket],
            summary="Sessions handed to a human agent and not yet released, with their transcripts")
def handoffs(include_released: bool = Query(False, description="also list hand-offs already released"),
             assistant: Assistant = AssistantDep) -> list[HandoffTicket]:
    return assistant.handoffs(include_released)
