"""Issue 17's verdict in one place: the scale targets gathered from the benchmarks that
measure them, each run on its own (they take minutes and want a quiet machine).

* ``refit_vs_floor`` — ``python -m bench.refit`` (1M × 384 float16, 20M non-zeros);
* ``refit_peak_rss_file_store`` — ``python -m bench.scale_refit_memory``;
* ``ray_fit_agreement``, ``ray_fit_2_workers_vs_1`` — ``python -m bench.scale_ray``.

    python -m bench.scale        # after those; writes bench/results/scale.{json,md}

A source that has not been run is listed as missing and its targets as not met: a verdict
never comes from an old file of another shape.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.report import RESULTS_DIR, machine_info, write_results

NAME = "scale"
SOURCES = {
    "refit": ("refit_vs_floor",),
    "scale_refit_memory": ("refit_peak_rss_file_store",),
    "scale_ray": ("ray_fit_agreement", "ray_fit_2_workers_vs_1"),
}


def gather(results_dir: Path) -> dict[str, Any]:
    targets: dict[str, dict[str, Any]] = {}
    sources: dict[str, Any] = {}
    for source, keys in SOURCES.items():
        path = results_dir / f"{source}.json"
        payload = json.loads(path.read_text()) if path.exists() else None
        found = (payload or {}).get("targets", {})
        sources[source] = {
            "file": path.name,
            "machine": (payload or {}).get("machine"),
            "finished_at": (payload or {}).get("finished_at"),
            "missing": [key for key in keys if key not in found],
        }
        for key in keys:
            targets[key] = found.get(key) or {
                "key": key, "definition": f"not measured: run python -m bench.{source}",
                "value": None, "bound": None, "met": False}
            targets[key]["source"] = path.name
    return {"benchmark": NAME, "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine_info(), "sources": sources, "targets": targets}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    payload = gather(args.results_dir)
    rows = [{"target": key, "value": t["value"], "bound": t["bound"],
             "at most": t.get("at_most"), "met": t["met"], "from": t["source"],
             "definition": t["definition"]} for key, t in payload["targets"].items()]
    met = sum(t["met"] for t in payload["targets"].values())
    notes = [f"{met} of {len(rows)} targets met",
             *(f"{name}.json finished {source['finished_at']}"
               for name, source in payload["sources"].items() if source["finished_at"])]
    write_results(NAME, payload, rows,
                  ["target", "value", "bound", "at most", "met", "from", "definition"],
                  notes, args.results_dir)


if __name__ == "__main__":
    main()
