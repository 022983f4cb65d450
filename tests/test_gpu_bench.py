"""bench.gpu's logic, run with its GPU paths on the CPU (the CUDA run is on a lent device)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.gpu import main

pytestmark = pytest.mark.slow


def test_gpu_bench_compares_both_paths_and_checks_their_agreement(tmp_path: Path) -> None:
    payload = main(["--device", "cpu", "--texts", "40", "--cpu-texts", "20", "--n", "3000",
                    "--dim", "96", "--nnz", "6000", "--repeats", "1", "--results-dir",
                    str(tmp_path)])
    encode, _, fit, _ = payload["rows"]
    assert encode["min_cosine"] > 0.9999  # same model, same precision on the CPU
    assert fit["max_sine"] < 1e-3  # the same subspace (float32 blocks against float64)
    assert (tmp_path / "gpu.json").is_file() and "| recpca fit |" in (
        tmp_path / "gpu.md").read_text()
