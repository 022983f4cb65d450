"""Item catalogs kept as Parquet or JSON Lines: (id, text) pairs for the admin CLI's ingest.

Both readers stream (Parquet in record batches of the two columns only, JSON Lines line by
line), accept integer ids (written as their decimal string, as RecBole and CSV ids read),
and reject what the server would: a missing or empty id or text, or an id given twice. Errors
name the file and the row or line, never the whole offending value. pyarrow is needed for
Parquet only (the ``parquet`` extra) and imported when a Parquet file is read.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

PREVIEW = 40  # characters of an offending value quoted in an error


class ItemFileError(ValueError):
    """A file that is not a valid item catalog; the message says where and why."""


def read_parquet_items(path: Path, id_column: str, text_column: str) -> list[tuple[str, str]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as error:  # pragma: no cover - the dev install has it
        raise ItemFileError("reading Parquet needs pyarrow: pip install "
                            "'tfllmer-service[parquet]'") from error
    try:
        table = pq.ParquetFile(path)
    except (OSError, ValueError) as error:  # pyarrow's errors subclass these
        raise ItemFileError(f"{path}: not a Parquet file ({error})") from error
    columns = table.schema_arrow.names
    _require_columns(path, columns, id_column, text_column, "column")

    def rows() -> Iterator[tuple[str, Any, Any]]:
        row = 0
        for batch in table.iter_batches(columns=[id_column, text_column], batch_size=65_536):
            ids, texts = (batch.column(i).to_pylist() for i in range(2))
            for item_id, text in zip(ids, texts, strict=True):
                row += 1
                yield f"row {row}", item_id, text

    try:
        return _checked(path, rows(), id_column, text_column)
    except (OSError, ValueError) as error:
        if isinstance(error, ItemFileError):
            raise
        raise ItemFileError(f"{path}: {error}") from error


def read_jsonl_items(path: Path, id_field: str, text_field: str) -> list[tuple[str, str]]:
    def rows() -> Iterator[tuple[str, Any, Any]]:
        with open(path, encoding="utf-8-sig") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                where = f"line {number}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ItemFileError(f"{path}:{number}: not JSON ({error.msg})") from None
                if not isinstance(record, dict):
                    raise ItemFileError(f"{path}:{number}: each line must be a JSON object")
                if number == 1 or id_field not in record or text_field not in record:
                    _require_columns(path, list(record), id_field, text_field, "field", where)
                yield where, record[id_field], record[text_field]

    try:
        return _checked(path, rows(), id_field, text_field)
    except (OSError, UnicodeDecodeError) as error:
        raise ItemFileError(f"{path}: {error}") from error


def _require_columns(path: Path, present: list[str], id_name: str, text_name: str,
                     kind: str, where: str = "") -> None:
    for name, flag in ((id_name, "--id-column"), (text_name, "--text-column")):
        if name not in present:
            found = ", ".join(present[:20]) or "none"
            place = f" ({where})" if where else ""
            raise ItemFileError(f"{path}{place}: no {kind} {name!r} ({kind}s: {found}); "
                                f"choose one with {flag}")


def _checked(path: Path, rows: Iterable[tuple[str, Any, Any]], id_name: str,
             text_name: str) -> list[tuple[str, str]]:
    items: list[tuple[str, str]] = []
    seen: set[str] = set()
    for where, raw_id, raw_text in rows:
        item_id, text = _as_text(raw_id), _as_text(raw_text)
        if item_id is None or text is None or not item_id.strip() or not text.strip():
            raise ItemFileError(f"{path} ({where}): empty or non-text {id_name} or {text_name}")
        item_id, text = item_id.strip(), text.strip()
        if item_id in seen:
            raise ItemFileError(f"{path} ({where}): duplicate id {item_id[:PREVIEW]!r}")
        seen.add(item_id)
        items.append((item_id, text))
    return items


def _as_text(value: Any) -> str | None:
    """Strings as they are, integer ids as decimal strings, anything else None."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None
