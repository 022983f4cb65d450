"""Structured logs: one JSON object per line with the extra fields; credentials masked."""

from __future__ import annotations

import json
import logging
import sys

import grpc
import pytest

from server.service.logging_setup import (
    JsonFormatter,
    TextFormatter,
    configure_logging,
    log_rpc,
)

SECRET = "s3cr3t-token-value-never-logged"


def record(message: str = "refit done", level: int = logging.INFO, **extra) -> logging.LogRecord:
    logger = logging.getLogger("tfllmer.test")
    return logger.makeRecord(logger.name, level, __file__, 1, message, (), None, extra=extra)


def test_json_line_has_time_level_logger_message_and_extra_fields() -> None:
    line = JsonFormatter().format(record(catalog="ml-100k", version=3, duration_ms=12.5))
    entry = json.loads(line)
    assert "\n" not in line
    assert entry["level"] == "info"
    assert entry["logger"] == "tfllmer.test"
    assert entry["message"] == "refit done"
    assert entry["time"].endswith("+00:00")
    assert (entry["catalog"], entry["version"], entry["duration_ms"]) == ("ml-100k", 3, 12.5)


def test_json_line_carries_the_exception() -> None:
    try:
        raise ValueError("bad vector block")
    except ValueError:
        failed = record(level=logging.ERROR)
        failed.exc_info = sys.exc_info()
    entry = json.loads(JsonFormatter().format(failed))
    assert "ValueError: bad vector block" in entry["exception"]


@pytest.mark.parametrize("key", ["token", "authorization", "metadata", "api_key", "password"])
@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()], ids=["json", "text"])
def test_credential_fields_are_masked(formatter: logging.Formatter, key: str) -> None:
    line = formatter.format(record(**{key: SECRET}))
    assert SECRET not in line
    assert "***" in line


def test_text_line_shows_extra_fields_as_key_value() -> None:
    line = TextFormatter().format(record(catalog="ml-100k", version=3))
    assert line.endswith("tfllmer.test: refit done catalog=ml-100k version=3")


def test_rpc_outcome_is_info_for_callers_mistakes_and_warning_for_server_faults(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    logger = logging.getLogger("tfllmer.test")
    log_rpc(logger, "/s/DescribeCatalog", grpc.StatusCode.NOT_FOUND, 1.23456, catalog="c")
    log_rpc(logger, "/s/GetItemEmbeddings", grpc.StatusCode.UNAVAILABLE, 5.0)
    caller, server = caplog.records
    assert (caller.levelno, caller.status, caller.duration_ms) == (logging.INFO, "NOT_FOUND", 1.235)
    assert (caller.rpc, caller.catalog) == ("/s/DescribeCatalog", "c")
    assert (server.levelno, server.status) == (logging.WARNING, "UNAVAILABLE")


def test_configure_logging_replaces_only_its_own_handler() -> None:
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    try:
        configure_logging("debug", "json")
        configure_logging("warning", "text")
        added = [h for h in root.handlers if h not in before]
        assert len(added) == 1
        assert isinstance(added[0].formatter, TextFormatter)
        assert root.level == logging.WARNING
        assert all(h in root.handlers for h in before)
    finally:
        for handler in root.handlers[:]:
            if handler not in before:
                root.removeHandler(handler)
        root.setLevel(level)
