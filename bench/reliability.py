"""``python -m bench.reliability``: the reliability run of issue 8, recorded.

1. Faults, scale-out and security scenarios: the ``reliability``-marked tests (real
   redis-server and ``python -m server`` processes killed with SIGKILL, AOF restarts,
   replicas, a 3-node Redis Cluster, mutual TLS and tokens) plus the fast safety tests of
   the default run (store contract on the cluster, corrupt data, Redis TLS, refit
   recovery), run by pytest in a subprocess; every scenario's outcome is recorded.
2. The fuzz: ``--fuzz-cases`` (default 2,000) hypothesis cases of every request type
   against a ``python -m server`` process, and the server's memory while it refuses 8 MiB
   messages over its 256 KiB limit.
3. The load: ``--clients`` (32) trainer clients mixing full pulls, pulls abandoned after
   their first chunk, id look-ups and pushes for ``--seconds`` (60) against a
   ``python -m server`` process.

Writes ``bench/results/reliability.json`` (everything) and ``reliability.md`` (the table
printed at the end). About 6 minutes on 2 cores. Exits 1 if any check failed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from bench.reliability_fuzz import Fuzzer, oversize_memory, server_flags
from bench.reliability_load import run_load
from bench.report import RESULTS_DIR, machine_info, write_results

ROOT = Path(__file__).resolve().parents[1]
# One module per promise of the contract, named ``tests/test_promise_<check>.py``: the check
# ``<check>`` is true when every test in it ran and passed. Figures a promise test measures
# (``record_property``) are kept with its scenario in the JSON.
PROMISE_PREFIX = "test_promise_"
PROMISE_TESTS = sorted(str(path.relative_to(ROOT))
                       for path in (ROOT / "tests").glob(f"{PROMISE_PREFIX}*.py"))
SCENARIO_TESTS = [*PROMISE_TESTS,
    "tests/test_reliability_faults.py",
    "tests/test_reliability_scaleout.py",
    "tests/test_reliability_security_process.py",
    "tests/test_reliability_security.py",
    "tests/test_refit_recovery.py",
    "tests/test_redis_full.py",
    "tests/test_cancelled_streams.py",
    "tests/test_store_contract.py",
]
CATEGORY = {
    "test_reliability_faults": "faults",
    "test_refit_recovery": "faults",
    "test_redis_full": "faults",
    "test_cancelled_streams": "faults",
    "test_reliability_scaleout": "scale-out",
    "test_store_contract": "scale-out (cluster contract)",
    "test_reliability_security_process": "security",
    "test_reliability_security": "security",
}


def run_scenarios(workdir: Path) -> dict[str, Any]:
    junit = workdir / "scenarios.xml"
    started = time.perf_counter()
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               "-m", "reliability or not reliability", "-o", "junit_family=xunit1",
               f"--junitxml={junit}", *SCENARIO_TESTS,
               "-k", "not test_store_contract or cluster"]
    process = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    scenarios = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        module = case.get("classname", "").rsplit(".", 1)[-1]
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            if case.find(tag) is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
        category = ("promise" if module.startswith(PROMISE_PREFIX)
                    else CATEGORY.get(module, module))
        properties = {prop.get("name"): prop.get("value") for prop in case.iter("property")}
        scenarios.append({"category": category, "test": case.get("name"),
                          "module": module, "outcome": outcome,
                          "seconds": round(float(case.get("time", 0)), 2),
                          **({"measured": properties} if properties else {})})
    summary: dict[str, dict[str, int]] = {}
    for scenario in scenarios:
        counts = summary.setdefault(scenario["category"], {"passed": 0, "total": 0})
        counts["total"] += 1
        counts["passed"] += scenario["outcome"] == "passed"
    return {"command": " ".join(command[2:]), "exit_code": process.returncode,
            "seconds": round(time.perf_counter() - started, 1), "by_category": summary,
            "scenarios": scenarios, "output_tail": process.stdout[-3000:]}


def run_fuzz(workdir: Path, cases: int) -> dict[str, Any]:
    from harness.redis_server import RedisServer
    from harness.server_process import ServerProcess

    with RedisServer() as redis_server, ServerProcess(
            redis_server.url, workdir / "fuzz-server.log", args=server_flags()) as server, \
            server.channel() as channel:
        fuzzer = Fuzzer(channel)
        fuzzer.setup()
        report = fuzzer.run(cases, on_case=_progress("fuzz", cases))
        memory = oversize_memory(channel, server.rss_bytes, rounds=30)
    return {**report.as_dict(), "oversize_memory": memory}


def run_load_phase(workdir: Path, clients: int, seconds: float) -> dict[str, Any]:
    from harness.redis_server import RedisServer
    from harness.server_process import ServerProcess, refit, synthetic_catalog
    from server.stores import RedisStore

    catalog = "load"
    with RedisServer() as redis_server:
        synthetic_catalog(RedisStore(redis_server.url), catalog, 10_000)
        with ServerProcess(redis_server.url, workdir / "load-server.log") as server:
            with server.channel() as channel:
                refit(server.stub(channel), catalog, dim=64)
            return run_load(server.address, catalog, clients=clients, seconds=seconds,
                            warmup_s=5, rss=server.rss_bytes)


def _progress(label: str, total: int):
    def report(done: int) -> None:
        if done % 250 == 0 or done == total:
            print(f"{label}: {done}/{total}", file=sys.stderr, flush=True)

    return report


def evaluate(scenarios: dict[str, Any] | None, fuzz: dict[str, Any], load: dict[str, Any]
             ) -> dict[str, bool]:
    checks = {
        "fuzz: cases >= 2000": fuzz["cases"] >= 2000,
        "fuzz: 0 INTERNAL/UNKNOWN": fuzz["internal_errors"] == 0,
        "fuzz: every status expected": fuzz["unexpected_statuses"] == 0,
        "fuzz: rejected calls change nothing": fuzz["rejected_calls_that_changed_state"] == 0,
        "oversize: all RESOURCE_EXHAUSTED": all(
            key.endswith("RESOURCE_EXHAUSTED") for key in fuzz["oversize_memory"]["statuses"]),
        "oversize: RSS growth < 64 MB": fuzz["oversize_memory"]["rss_growth_mb"] < 64,
        "oversize: RSS flat over the second half (< 16 MB)":
            fuzz["oversize_memory"]["rss_growth_second_half_mb"] < 16,
        "load: 0 errors": load["errors"] == 0,
        "load: 0 client retries": load["client_retries"] == 0,
        "load: no push lost": load["lost_after_load"] == {"pairs": 0, "batches": 0,
                                                          "weight": 0.0},
        "load: RSS growth < 10 %": load.get("rss_growth_pct", 100) < 10,
    }
    if scenarios is not None:
        checks["scenarios: all passed"] = scenarios["exit_code"] == 0
        checks.update(promise_checks(scenarios["scenarios"]))
    return checks


def promise_checks(scenarios: list[dict[str, Any]]) -> dict[str, bool]:
    """One check per promise module: at least one test ran and none failed or was skipped."""
    outcomes: dict[str, list[str]] = {
        path.rsplit("/", 1)[-1].removesuffix(".py").removeprefix(PROMISE_PREFIX): []
        for path in PROMISE_TESTS}
    for scenario in scenarios:
        if scenario["module"].startswith(PROMISE_PREFIX):
            outcomes.setdefault(scenario["module"].removeprefix(PROMISE_PREFIX), []).append(
                scenario["outcome"])
    return {name: bool(seen) and all(outcome == "passed" for outcome in seen)
            for name, seen in outcomes.items()}


def table(scenarios: dict[str, Any] | None, fuzz: dict[str, Any], load: dict[str, Any]
          ) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for category, counts in (scenarios or {}).get("by_category", {}).items():
        rows.append({"part": category, "what": "scenarios survived",
                     "result": f"{counts['passed']}/{counts['total']}"})
    by_status = ", ".join(f"{k} {v}" for k, v in fuzz["by_status"].items())
    memory = fuzz["oversize_memory"]
    rows += [
        {"part": "fuzz", "what": "cases tried", "result": fuzz["cases"]},
        {"part": "fuzz", "what": "outcomes", "result": by_status},
        {"part": "fuzz", "what": "INTERNAL / unexpected / rejected-but-changed",
         "result": f"{fuzz['internal_errors']} / {fuzz['unexpected_statuses']} / "
                   f"{fuzz['rejected_calls_that_changed_state']}"},
        {"part": "fuzz", "what": "oversize requests (8 MiB, limit 256 KiB)",
         "result": f"{memory['requests']} refused, server RSS {memory['rss_before_mb']} → "
                   f"{memory['rss_after_mb']} MB (peak {memory['rss_peak_mb']}; second half "
                   f"{memory['rss_growth_second_half_mb']:+} MB)"},
        {"part": "load",
         "what": f"{load['clients']} clients × {load['seconds'] - load['warmup_s']:.0f} s "
                 f"(+ {load['warmup_s']:.0f} s warm-up), requests",
         "result": f"{load['requests']} ({load['requests_per_s']}/s)"},
        {"part": "load", "what": "errors / client retries / pushes lost",
         "result": f"{load['errors']} / {load['client_retries']} / "
                   f"{load['lost_after_load']['batches']}"},
        {"part": "load", "what": "latency p50 / p99 / max (ms)",
         "result": f"{load['p50_ms']:.0f} / {load['p99_ms']:.0f} / {load['max_ms']:.0f}"},
    ]
    for op, stats in load["by_operation"].items():
        rows.append({"part": "load", "what": f"{op}: requests, p99 (ms)",
                     "result": f"{stats['requests']}, {stats['p99_ms']:.0f}"})
    rows.append({"part": "load", "what": "server RSS after warm-up → end",
                 "result": f"{load.get('rss_after_warmup_mb')} → {load.get('rss_end_mb')} MB "
                           f"({load.get('rss_growth_pct')} %)"})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fuzz-cases", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--skip-scenarios", action="store_true",
                        help="only the fuzz and the load (the pytest scenarios take ~4 min)")
    parser.add_argument("--rerender", action="store_true",
                        help="rewrite the Markdown table from the existing JSON, run nothing")
    args = parser.parse_args(argv)
    if args.rerender:
        payload = json.loads((RESULTS_DIR / "reliability.json").read_text())
        payload["checks"] = evaluate(payload["scenarios"], payload["fuzz"], payload["load"])
        return report(payload)
    with tempfile.TemporaryDirectory(prefix="tfllmer-reliability-") as tmp:
        workdir = Path(tmp)
        print("scenarios (pytest)…", file=sys.stderr, flush=True)
        scenarios = None if args.skip_scenarios else run_scenarios(workdir)
        print("fuzz…", file=sys.stderr, flush=True)
        fuzz = run_fuzz(workdir, args.fuzz_cases)
        print("load…", file=sys.stderr, flush=True)
        load = run_load_phase(workdir, args.clients, args.seconds)

    checks = evaluate(scenarios, fuzz, load)
    payload = {"machine": machine_info(), "checks": checks, "scenarios": scenarios,
               "fuzz": fuzz, "load": load}
    return report(payload)


def report(payload: dict[str, Any]) -> int:
    """Write the JSON and the Markdown table of a run; 1 if a check failed."""
    checks = payload["checks"]
    failed = [name for name, ok in checks.items() if not ok]
    notes = [f"checks failed: {', '.join(failed)}" if failed else
             f"all {len(checks)} checks passed"]
    rows = table(payload["scenarios"], payload["fuzz"], payload["load"])
    write_results("reliability", payload, rows, ["part", "what", "result"], notes)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
