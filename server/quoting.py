"""Caller-supplied values inside error messages, quoted and clipped.

A status message travels in gRPC trailing metadata (8 KiB by default) and lands in logs: a
message that quotes a 20 KB name whole turns INVALID_ARGUMENT into RESOURCE_EXHAUSTED and
floods the log. Every message that names what a caller sent goes through ``shown``."""

from __future__ import annotations

LIMIT = 40


def shown(value: object, limit: int = LIMIT) -> str:
    """``repr`` of ``value``, cut to ``limit`` characters with its full length noted."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… ({len(text)} characters)"
