"""JSON error answers for the whole server.

- 422 for a request that fails validation lists each problem (type, loc, msg) without echoing the
  input: FastAPI's default handler echoes it, which reflects request data into responses and
  crashes with a 500 on inputs JSON cannot encode (`{"message": 1e999}` parses to infinity).
- 500 for an unexpected exception is `{"detail": "internal error", "request_id": ...}`; the
  traceback goes to the log with the request id, never to the client.
"""
from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

log = logging.getLogger("moe_suite.errors")


def validation_problems(exc: RequestValidationError) -> list[dict[str, Any]]:
    """The errors of `exc` without their inputs; `ctx` values as text."""
    out = []
    for error in exc.errors():
        problem = {k: error[k] for k in ("type", "loc", "msg") if k in error}
        if "ctx" in error:
            problem["ctx"] = {k: str(v)[:200] for k, v in error["ctx"].items()}
        out.append(problem)
    return jsonable_encoder(out)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": validation_problems(exc)}, 422)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        rid = request.scope.get("state", {}).get("request_id")
        log.error("unhandled error", exc_info=exc, extra={"event": "error", "request_id": rid})
        return JSONResponse({"detail": "internal error", "request_id": rid}, 500,
                            headers={"X-Request-ID": rid} if rid else None)
