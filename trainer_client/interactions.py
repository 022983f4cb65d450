"""Interaction logs (user, item id, time) from RecBole ``.inter`` files or CSV, turned into
time-ordered sequences of catalog rows.

A worker maps item ids through the *service's* catalog (``row_of``), so its sequences, its
pushed counts and the served vectors all use the same row indices.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np

from trainer_client.sequences import UserSequences

Interaction = tuple[str, str, float]  # (user id, item id, timestamp)


def build_sequences(
    interactions: Iterable[Interaction], row_of: Mapping[str, int]
) -> tuple[UserSequences, int]:
    """Sequences ordered by user, then time (ties keep input order); returns them and how
    many interactions named an item that ``row_of`` lacks (those are dropped)."""
    users: list[str] = []
    items: list[int] = []
    times: list[float] = []
    dropped = 0
    for user, item_id, time in interactions:
        row = row_of.get(item_id)
        if row is None:
            dropped += 1
            continue
        users.append(user)
        items.append(row)
        times.append(time)
    user_names, user_index = np.unique(np.asarray(users, dtype=object), return_inverse=True)
    order = np.lexsort((np.asarray(times), user_index))  # lexsort is stable
    counts = np.bincount(user_index, minlength=len(user_names))
    sequences = UserSequences(
        users=[str(name) for name in user_names],
        items=np.asarray(items, dtype=np.int64)[order],
        offsets=np.concatenate(([0], np.cumsum(counts))).astype(np.int64),
    )
    return sequences, dropped


def read_csv_interactions(
    path: Path, user_column: str = "user_id", item_column: str = "item_id",
    time_column: str = "timestamp",
) -> Iterator[Interaction]:
    """Rows of a CSV with a header; a missing time column means file order."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        for needed in (user_column, item_column):
            if needed not in columns:
                raise ValueError(f"{path}: no column {needed!r} (columns: {', '.join(columns)})")
        has_time = time_column in columns
        for line, row in enumerate(reader):
            time = float(row[time_column]) if has_time and row[time_column] else float(line)
            yield row[user_column], row[item_column], time
