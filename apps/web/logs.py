"""Structured logs: one JSON object per line, with the request id of the request being served.

    configure_logging(settings)       # root + uvicorn loggers, JSON or text
    log.info("model loaded", extra={"event": "load", "app": "chat", "ms": 812})
    # {"ts": "2026-11-29T19:02:11.512Z", "level": "info", "logger": "moe_suite", "msg": "model loaded",
    #  "request_id": null, "event": "load", "app": "chat", "ms": 812}

What goes in is decided by the callers: the access log (apps.web.middleware) writes the method,
the route template, the status, the milliseconds and the request id; never bodies, query strings
or path parameters (a study UID or a session id in a URL is logged as `{study_uid}`).
"""
from __future__ import annotations

import contextvars
import json
import logging
import logging.config
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from apps.settings import Settings

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

# Attributes every LogRecord has; anything else was passed through `extra=` and is logged as a field.
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "color_message"}  # uvicorn adds color_message, the msg with ANSI colours


class JsonFormatter(logging.Formatter):
    """A LogRecord as one line of JSON: ts, level, logger, msg, request_id and the `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or request_id_var.get()}
        out |= {k: v for k, v in vars(record).items() if k not in _RECORD_FIELDS and not k.startswith("_")}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`time level logger: msg key=value ...` for reading in a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(f"{k}={v}" for k, v in vars(record).items()
                         if k not in _RECORD_FIELDS and k != "request_id" and not k.startswith("_"))
        rid = getattr(record, "request_id", None) or request_id_var.get()
        line = (f"{time.strftime('%H:%M:%S', time.localtime(record.created))} {record.levelname.lower():<7} "
                f"{record.name}: {record.getMessage()}{' ' + extra if extra else ''}{f' [{rid}]' if rid else ''}")
        return line + ("\n" + self.formatException(record.exc_info) if record.exc_info else "")


def logging_config(settings: Settings) -> dict:
    """A logging.config.dictConfig for the root and uvicorn's loggers (uvicorn's own access log is
    replaced by ours: pass access_log=False to uvicorn)."""
    formatter = JsonFormatter if settings.log_format == "json" else TextFormatter
    level = settings.log_level.upper()
    return {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"suite": {"()": formatter}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "suite", "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {name: {"handlers": [], "level": level, "propagate": True}
                    for name in ("uvicorn", "uvicorn.error", "uvicorn.access")},
    }


def configure_logging(settings: Settings) -> None:
    """Apply `logging_config(settings)` to this process."""
    logging.config.dictConfig(logging_config(settings))
