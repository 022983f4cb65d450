"""Structured logging: one JSON object per line for log collectors, or text for terminals.

Fields passed with ``extra=`` (rpc, catalog, version, duration_ms, status, ...) become JSON
keys, or ``key=value`` pairs in text. An extra whose name suggests a credential (token,
authorization, metadata, password, secret, api key) is written as ``***``: call metadata
carries bearer tokens, and a log line is no place for them.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

import grpc

_HANDLER_NAME = "tfllmer"
_REDACTED = "***"
_SECRET_KEY = re.compile(r"token|authorization|metadata|password|secret|api_?key", re.IGNORECASE)
# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRIBUTES = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
# Statuses that mean the server, not the caller, failed: logged as warnings.
_SERVER_FAULTS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra=`` fields of ``record``, credentials masked."""
    return {
        key: _REDACTED if _SECRET_KEY.search(key) else value
        for key, value in record.__dict__.items()
        if key not in _STANDARD_ATTRIBUTES and not key.startswith("_")
    }


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


class JsonFormatter(logging.Formatter):
    """time, level, logger, message, the extra fields and, if any, the exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **extra_fields(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value ...``, the exception on the following lines."""

    def format(self, record: logging.LogRecord) -> str:
        fields = "".join(f" {key}={value}" for key, value in extra_fields(record).items())
        line = (
            f"{_timestamp(record)} {record.levelname:<7} {record.name}: "
            f"{record.getMessage()}{fields}"
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    """Send records at ``level`` and above to stderr in ``fmt`` ("json" or "text").

    Calling it again replaces the handler it installed and leaves other handlers (pytest's
    capture, an embedding application's) alone.
    """
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())


def log_rpc(
    logger: logging.Logger,
    rpc: str,
    status: grpc.StatusCode,
    duration_ms: float,
    **fields: Any,
) -> None:
    """One line for a finished RPC: a warning when the server failed, info otherwise."""
    level = logging.WARNING if status in _SERVER_FAULTS else logging.INFO
    extra = {"rpc": rpc, "status": status.name, "duration_ms": round(duration_ms, 3), **fields}
    logger.log(level, "%s %s", rpc, status.name, extra=extra)
