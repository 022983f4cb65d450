"""Read RecBole atomic files (``.item``, ``.inter``) into item texts and user sequences.

RecBole's format is a tab-separated file whose header names each column as
``name:type`` (``token``, ``token_seq``, ``float``...). MovieLens-100K and MovieLens-1M
ship in it (see ``trainer_client.datasets``). Items get stable row indices in the order of
the ``.item`` file; interactions on items missing from it are dropped, with a count.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from trainer_client.interactions import Interaction, build_sequences
from trainer_client.sequences import UserSequences

TITLE_FIELDS = ("movie_title", "title", "name")
YEAR_FIELDS = ("release_year", "year")
GENRE_FIELDS = ("class", "genre", "genres", "categories")


@dataclass(frozen=True)
class Catalog:
    """Items in row order: external ids and the text the encoder reads."""

    item_ids: list[str]
    texts: list[str]

    def __len__(self) -> int:
        return len(self.item_ids)

    def row_of(self) -> dict[str, int]:
        return {item_id: row for row, item_id in enumerate(self.item_ids)}


@dataclass(frozen=True)
class RecBoleDataset:
    name: str
    catalog: Catalog
    sequences: UserSequences
    dropped_interactions: int


def read_atomic(path: Path) -> Iterator[dict[str, str]]:
    """Rows of an atomic file as dicts keyed by the field name (type suffix removed)."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty file, expected a 'name:type' header")
        names = [column.split(":", 1)[0].strip() for column in header]
        for line_no, row in enumerate(reader, start=2):
            if not row or row == [""]:
                continue
            if len(row) != len(names):
                raise ValueError(
                    f"{path}:{line_no}: expected {len(names)} tab-separated fields, "
                    f"got {len(row)}"
                )
            yield {name: value.strip() for name, value in zip(names, row, strict=True)}


def _first_present(row: dict[str, str], fields: tuple[str, ...]) -> str:
    return next((row[field] for field in fields if row.get(field)), "")


def item_text(row: dict[str, str]) -> str:
    """``"Title (year). Genres: A, B"``; parts that are missing are left out."""
    title = _first_present(row, TITLE_FIELDS) or row["item_id"]
    year = _first_present(row, YEAR_FIELDS).removesuffix(".0")
    genres = _first_present(row, GENRE_FIELDS).split()
    text = f"{title} ({year})" if year and f"({year})" not in title else title
    return f"{text}. Genres: {', '.join(genres)}" if genres else text


def read_catalog(item_path: Path) -> Catalog:
    item_ids: list[str] = []
    texts: list[str] = []
    seen: set[str] = set()
    for row in read_atomic(item_path):
        item_id = row.get("item_id")
        if not item_id:
            raise ValueError(f"{item_path}: every row needs an item_id")
        if item_id in seen:
            raise ValueError(f"{item_path}: duplicate item_id {item_id!r}")
        seen.add(item_id)
        item_ids.append(item_id)
        texts.append(item_text(row))
    return Catalog(item_ids, texts)


def read_interactions(inter_path: Path) -> Iterator[Interaction]:
    for row in read_atomic(inter_path):
        yield row["user_id"], row["item_id"], float(row.get("timestamp") or 0.0)


def read_sequences(inter_path: Path, catalog: Catalog) -> tuple[UserSequences, int]:
    """Time-ordered item rows per user; ties in time keep file order. Returns the
    sequences and how many interactions named an item the catalog lacks."""
    return build_sequences(read_interactions(inter_path), catalog.row_of())


def load_recbole(directory: Path, name: str | None = None) -> RecBoleDataset:
    """Load ``<dir>/<name>.item`` and ``<dir>/<name>.inter`` (name defaults to the folder's)."""
    directory = Path(directory)
    name = name or directory.name
    item_path, inter_path = directory / f"{name}.item", directory / f"{name}.inter"
    for path in (item_path, inter_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found; run `python -m trainer_client.datasets fetch` first"
            )
    catalog = read_catalog(item_path)
    sequences, dropped = read_sequences(inter_path, catalog)
    return RecBoleDataset(name, catalog, sequences, dropped)
