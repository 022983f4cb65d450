"""Reading RecBole atomic files and the leave-one-out split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trainer_client.recbole_data import load_recbole
from trainer_client.sequences import leave_one_out

ITEMS = (
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    "10\tToy Story\t1995\tAnimation Children's Comedy\n"
    "20\tHeat\t1995\tAction Crime\n"
    "30\tUntitled\t\t\n"
)
INTERACTIONS = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "b\t20\t5\t300\n"
    "a\t30\t4\t200\n"
    "a\t10\t3\t100\n"
    "b\t10\t2\t100\n"
    "b\t99\t1\t150\n"
    "a\t20\t4\t200\n"
)


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "tiny.item").write_text(ITEMS)
    (folder / "tiny.inter").write_text(INTERACTIONS)
    return folder


def test_item_texts_read_title_year_and_genres(dataset_dir: Path) -> None:
    catalog = load_recbole(dataset_dir).catalog
    assert catalog.item_ids == ["10", "20", "30"]
    assert catalog.texts == [
        "Toy Story (1995). Genres: Animation, Children's, Comedy",
        "Heat (1995). Genres: Action, Crime",
        "Untitled",
    ]


def test_sequences_are_time_ordered_with_ties_in_file_order(dataset_dir: Path) -> None:
    dataset = load_recbole(dataset_dir)
    sequences = dataset.sequences
    assert sequences.users == ["a", "b"]
    assert sequences[0].tolist() == [0, 2, 1]  # 10@100, then 30 and 20 tie at 200 (file order)
    assert sequences[1].tolist() == [0, 1]
    assert dataset.dropped_interactions == 1  # item 99 is not in the catalog


def test_leave_one_out_holds_out_the_last_two_items(dataset_dir: Path) -> None:
    split = leave_one_out(load_recbole(dataset_dir).sequences)
    assert split.train[0].tolist() == [0]
    assert split.train[1].tolist() == []
    assert split.valid_targets.tolist() == [2, 0]
    assert split.test_targets.tolist() == [1, 1]


def test_crlf_files_and_title_ids_with_years_are_read(tmp_path: Path) -> None:
    folder = tmp_path / "ml"
    folder.mkdir()
    (folder / "ml.item").write_bytes(
        b"item_id:token\tmovie_title:token\trelease_year:float\tgenre:token\r\n"
        b"Heat (1995)\tHeat\t1995\tAction\r\n"
    )
    (folder / "ml.inter").write_bytes(
        b"user_id:token\titem_id:token\trating:float\ttimestamp:float\r\nu\tHeat (1995)\t5\t1\r\n"
    )
    dataset = load_recbole(folder)
    assert dataset.catalog.texts == ["Heat (1995). Genres: Action"]
    assert dataset.sequences[0].tolist() == [0]


def test_a_row_with_missing_fields_is_reported_with_its_line(tmp_path: Path) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "bad.item").write_text("item_id:token\tmovie_title:token_seq\n1\n")
    (folder / "bad.inter").write_text("user_id:token\titem_id:token\n")
    with pytest.raises(ValueError, match=r"bad.item:2: expected 2 tab-separated fields"):
        load_recbole(folder)


def test_a_missing_dataset_points_to_the_fetch_command(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="trainer_client.datasets fetch"):
        load_recbole(tmp_path / "nothing")


def test_truncation_and_last_items_on_short_sequences() -> None:
    from trainer_client.sequences import UserSequences

    sequences = UserSequences(["x", "y"], np.array([5, 6, 7]), np.array([0, 1, 3]))
    assert sequences.truncated(1)[1].tolist() == [6]
    assert sequences.last(2).tolist() == [-1, 6]
