"""Each service benchmark runs end to end at a tiny size and writes a sane JSON and table.

These check the benchmarks' plumbing (real server process, real Redis, real client, the
report), never their timings: the figures are only required to be positive and finite.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def result(results_dir: Path, name: str) -> dict:
    assert (results_dir / f"{name}.md").read_text().startswith(f"# {name}\n")
    payload = json.loads((results_dir / f"{name}.json").read_text())
    assert payload["benchmark"] == name
    assert payload["machine"]["nproc"] >= 1
    assert payload["targets"]
    for target in payload["targets"].values():
        assert {"definition", "value", "bound", "met"} <= target.keys()
        assert math.isfinite(target["value"]) and target["value"] > 0
    return payload


def test_serving(tmp_path: Path) -> None:
    from bench.serving import main

    main(["--items", "3000", "--repeats", "1", "--clients", "2", "--ids-per-request", "16",
          "--lookup-seconds", "0.3", "--results-dir", str(tmp_path)])
    payload = result(tmp_path, "serving")
    assert set(payload["targets"]) == {"cached_float32", "cold_float32", "cached_float16",
                                       "cold_float16", "lookups"}
    assert payload["stream_bytes"]["float32"] > 3000 * 64 * 4
    assert all(row["vs_floor"] > 0 for row in payload["results"])


def test_push(tmp_path: Path) -> None:
    from bench.push import main

    main(["--repeats", "1", "--copies", "1", "--results-dir", str(tmp_path)])
    payload = result(tmp_path, "push")
    assert payload["raw"]["stored_pairs"] == payload["raw"]["pairs"] > 1_000_000
    assert payload["pairs_per_s"] > 0


def test_ingest(tmp_path: Path) -> None:
    from bench.ingest import main

    main(["--items", "40", "--repeats", "1", "--results-dir", str(tmp_path)])
    payload = result(tmp_path, "ingest")
    assert payload["raw"]["texts"] == 40
    assert [row["texts"] for row in payload["results"]] == [40, 40, 40]


def test_refit(tmp_path: Path) -> None:
    from bench.refit import main

    main(["--items", "3000", "--dim", "16", "--nnz", "20000", "--components", "4",
          "--repeats", "1", "--results-dir", str(tmp_path)])
    payload = result(tmp_path, "refit")
    run = payload["raw"]["runs"][0]
    assert payload["raw"]["pairs"] == 10_000
    assert run["peak_rss_mb"] >= run["baseline_rss_mb"] * 0.5 > 0
    assert run["seconds"] > 0 and run["version"] == 1
    assert run["floor_seconds"] > 0
    assert payload["targets"]["refit_vs_floor"]["value"] == pytest.approx(
        run["seconds"] / run["floor_seconds"])


def test_scale_gathers_each_target_from_its_benchmark_and_fails_what_was_not_run(
        tmp_path: Path) -> None:
    from bench.scale import main

    measured = {"key": "refit_vs_floor", "definition": "ratio", "value": 1.2, "bound": 1.5,
                "at_most": True, "met": True}
    (tmp_path / "refit.json").write_text(json.dumps(
        {"finished_at": "2026-12-03T08:00:00+00:00", "targets": {"refit_vs_floor": measured}}))
    main(["--results-dir", str(tmp_path)])
    assert (tmp_path / "scale.md").read_text().startswith("# scale\n")
    payload = json.loads((tmp_path / "scale.json").read_text())
    assert payload["targets"]["refit_vs_floor"] == {**measured, "source": "refit.json"}
    for key in ("refit_peak_rss_file_store", "ray_fit_agreement", "ray_fit_2_workers_vs_1"):
        assert payload["targets"][key]["met"] is False
        assert payload["targets"][key]["value"] is None
    assert payload["sources"]["scale_ray"]["missing"] == ["ray_fit_agreement",
                                                          "ray_fit_2_workers_vs_1"]


def test_scale_refit_memory(tmp_path: Path) -> None:
    from bench.scale_refit_memory import main

    main(["--items", "3000", "--dim", "16", "--nnz", "20000", "--components", "4",
          "--baseline", "1", "--results-dir", str(tmp_path)])
    payload = result(tmp_path, "scale_refit_memory")
    assert set(payload["targets"]) == {"refit_peak_rss_file_store"}
    files, store = payload["raw"]["runs"]
    assert (files["raw_in"], store["raw_in"]) == ("block files", "the store")
    assert files["blocks"] >= 1 and files["peak_rss_mb"] >= files["idle_rss_mb"] > 0
    assert files["lam"] == pytest.approx(store["lam"], rel=1e-5)  # the same fit either way


@pytest.mark.ray  # starts a local Ray (10-20 s): run with -m ray
def test_scale_ray(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    from bench.scale_ray import main

    main(["--items", "20000", "--dim", "32", "--nnz", "100000", "--block-mb", "1",
          "--task-rows", "2000", "--fit-dim", "4", "--repeats", "1", "--cost-blocks", "2",
          "--eig-dims", "16,32", "--results-dir", str(tmp_path)])
    payload = result(tmp_path, "scale_ray")
    assert set(payload["targets"]) == {"ray_fit_agreement", "ray_fit_2_workers_vs_1"}
    assert payload["targets"]["ray_fit_agreement"]["value"] <= 1e-5
    raw = payload["raw"]
    assert raw["file_blocks"] == raw["task_blocks"] == 2 and len(raw["ray_seconds"]["1"]) == 1
    assert {(row["items"], row["dim"]) for row in payload["sizing"]} == {
        (10_000_000, 1024), (100_000_000, 4096)}
    assert (tmp_path / "scale_ray.md").read_text().count("| 100000000 | 4096 |") == 3
