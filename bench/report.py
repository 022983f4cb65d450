"""Shared output for benchmarks: one JSON file for machines, one Markdown table for people.

Every benchmark writes ``bench/results/<name>.json`` (the full payload, including machine
facts so numbers from different hosts are never compared blindly) and
``bench/results/<name>.md`` (the same table it prints), so a run leaves a reviewable record.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Target:
    key: str
    definition: str
    value: float
    bound: float
    at_most: bool  # True: value must be <= bound; False: >= bound

    @property
    def met(self) -> bool:
        return self.value <= self.bound if self.at_most else self.value >= self.bound

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "met": self.met}

    def note(self) -> str:
        sign = "≤" if self.at_most else "≥"
        verdict = "met" if self.met else "NOT met"
        return f"{self.definition} = {self.value:.4g} (target {sign} {self.bound:g}: {verdict})"


def format_cell(value: Any) -> str:
    """Readable fixed-width-ish cells: floats to 4 significant digits, lists joined."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return ", ".join(format_cell(item) for item in value)
    return "" if value is None else str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A GitHub-flavoured Markdown table; a row missing a column gets an empty cell."""
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    lines += ["| " + " | ".join(format_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    """Host facts that change benchmark numbers: cores, CPU model, memory, BLAS, versions."""
    info: dict[str, Any] = {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": _proc_field("/proc/cpuinfo", "model name"),
        "mem_total_kb": _proc_field("/proc/meminfo", "MemTotal"),
        "python": platform.python_version(),
    }
    import numpy
    import scipy

    info["numpy"], info["scipy"] = numpy.__version__, scipy.__version__
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return info
    info["threadpools"] = [
        {key: pool.get(key) for key in ("internal_api", "version", "num_threads", "architecture")}
        for pool in threadpool_info()
    ]
    return info


def _proc_field(path: str, field: str) -> str | None:
    try:
        with open(path) as file:
            for line in file:
                key, _, value = line.partition(":")
                if key.strip() == field:
                    return value.strip()
    except OSError:
        pass
    return None


def write_results(
    name: str,
    payload: dict[str, Any],
    table_rows: Sequence[dict[str, Any]],
    columns: Sequence[str],
    notes: Sequence[str] = (),
    results_dir: Path = RESULTS_DIR,
    more_markdown: str = "",
) -> tuple[Path, Path]:
    """Write ``<name>.json`` (payload) and ``<name>.md`` (table + notes + any further
    sections), print the Markdown, and return both paths."""
    results_dir.mkdir(parents=True, exist_ok=True)
    json_path = results_dir / f"{name}.json"
    md_path = results_dir / f"{name}.md"
    json_path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    markdown = f"# {name}\n\n{markdown_table(table_rows, columns)}\n"
    if notes:
        markdown += "\n" + "\n".join(f"- {note}" for note in notes) + "\n"
    if more_markdown:
        markdown += f"\n{more_markdown.strip()}\n"
    md_path.write_text(markdown)
    print(markdown)
    return json_path, md_path
