"""The main job end to end, shortened to one epoch per training run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.demo import main

pytestmark = pytest.mark.slow


def test_demo_runs_the_whole_loop_and_writes_its_table_and_curves(tmp_path: Path) -> None:
    summary = main(["--epochs", "1", "--patience", "1", "--dim", "16", "--out", str(tmp_path)])
    versions = [row["version"] for row in summary["rows"]]
    assert versions == [1, 2]
    assert summary["rows"][0]["λ"] == 0 and summary["rows"][1]["λ"] > 0
    assert summary["rows"][1]["alignment@10"] > summary["v1_alignment_with_later_counts"]
    assert (tmp_path / "loss_curves.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "summary.json").read_text())["store"] == "embedded"
    assert "| version |" in (tmp_path / "summary.md").read_text()
