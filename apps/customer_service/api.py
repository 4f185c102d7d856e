"""The assistant's JSON API, mounted by the server at /api/v1/chat.

    POST /api/v1/chat                          {"session_id": "web-42", "message": "block my card"} -> Reply
    GET  /api/v1/chat/sessions/{id}            the session's turns (404 if unknown)
    POST /api/v1/chat/sessions/{id}/handoff    {"reason": "..."} -> the hand-off with its transcript
    GET  /api/v1/chat/handoffs                 every handed-off session with its transcript

Errors: a body over `MAX_BODY_BYTES` or a message over the assistant's limit -> 413; an empty
message, a malformed session id or body -> 422; an unknown session -> 404; a full store -> 429.
Handlers are plain functions: FastAPI runs them in its thread pool, as the model blocks.
"""
from __future__ import annotations

import uuid
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field

from .assistant import Assistant, MessageTooLong, Reply, shared_assistant
from .store import SESSION_ID, HandoffTicket, SessionLimitError, Turn, UnknownSession

MAX_BODY_BYTES = 64 * 1024  # request bodies over this are refused with 413 before being parsed


class _BodyLimitRoute(APIRoute):
    """Reads at most `MAX_BODY_BYTES` of a request body (413 past that), then hands it on."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def limited(request: Request) -> Response:
            body = b""
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_BODY_BYTES:
                    return JSONResponse({"detail": f"request body over {MAX_BODY_BYTES} bytes"}, 413)

            async def replay() -> dict:
                return {"type": "http.request", "body": body, "more_body": False}

            return await handler(Request(request.scope, replay))

        return limited


# Domain errors -> HTTP status; checked in order, so subclasses of ValueError come first.
_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (MessageTooLong, 413), (UnknownSession, 404), (SessionLimitError, 429), (ValueError, 422))


@contextmanager
def _http_errors() -> Iterator[None]:
    """Re-raise the assistant's domain errors as HTTPExceptions with their message."""
    try:
        yield
    except tuple(kind for kind, _ in _STATUS) as exc:
        status = next(code for kind, code in _STATUS if isinstance(exc, kind))
        detail = f"unknown session {exc.args[0]!r}" if isinstance(exc, UnknownSession) else str(exc)
        raise HTTPException(status, detail) from None


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
             responses={413: {"description": "body or message too long"}, 429: {"description": "store full"}})
def chat(request: ChatRequest, assistant: Assistant = AssistantDep) -> Reply:
    with _http_errors():
        return assistant.reply(request.session_id, request.message)


@router.get("/sessions/{session_id}", response_model=list[Turn], summary="A session's turns, oldest first",
            responses={404: {"description": "unknown session"}})
def history(session_id: str, assistant: Assistant = AssistantDep) -> list[Turn]:
    with _http_errors():
        return assistant.history(session_id)


@router.post("/sessions/{session_id}/handoff", response_model=HandoffTicket,
             summary="Hand a session to a human agent", responses={404: {"description": "unknown session"}})
def handoff(session_id: str, request: HandoffRequest, assistant: Assistant = AssistantDep) -> HandoffTicket:
    with _http_errors():
        return assistant.handoff(session_id, request.reason)


@router.get("/handoffs", response_model=list[HandoffTicket],
            summary="Sessions handed to a human agent, with their transcripts")
def handoffs(assistant: Assistant = AssistantDep) -> list[HandoffTicket]:
    return assistant.handoffs()
