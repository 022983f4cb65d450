"""The main job end to end, shortened to one epoch per training run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.demo import main

pytestmark = pytest.mark.slow


def test_demo_compares_raw_vectors_pca_and_the_served_version(tmp_path: Path) -> None:
    summary = main(["--epochs", "1", "--dim", "16", "--out", str(tmp_path)])
    labels = [row["item table"] for row in summary["rows"]]
    assert labels == ["LLM-raw-PCA", "PCA + norm", "TF-LLMER (served v2)"]
    assert [row["normalized"] for row in summary["rows"]] == [False, True, True]
    assert summary["v2"]["lam"] > 0 and summary["v2"]["alignment"] > summary["v2"]["pca_alignment"]
    assert (tmp_path / "loss_curves.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "summary.json").read_text())["store"] == "embedded"
    assert "| item table |" in (tmp_path / "summary.md").read_text()
