"""The trainer side runs with none of the server's dependencies importable.

A trainer image installs ``.[trainer]``: no encoder (sentence-transformers), no faiss, no
redis, no prometheus. Installing nothing new, this test makes those four unimportable in a
child process (an import hook that raises ModuleNotFoundError, as a missing package does),
then imports every trainer_client module and drives a real server (a separate
``python -m server`` process, which has them) through the admin CLI, the typed client and
the pusher, and runs ``python -m trainer_client.worker --help``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.server_process import ServerProcess

pytestmark = pytest.mark.slow
SERVER_ONLY = ("sentence_transformers", "faiss", "redis", "prometheus_client")

BLOCKER = textwrap.dedent(f"""
    import importlib.abc, sys

    BLOCKED = {SERVER_ONLY!r}

    class Unavailable(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)", name=name)
            return None

    sys.meta_path.insert(0, Unavailable())
""")

TRAINER_SIDE = BLOCKER + textwrap.dedent("""
    import contextlib, io, json, pkgutil, runpy, importlib
    import numpy as np
    import trainer_client
    from trainer_client import admin
    from trainer_client.client import EmbeddingClient
    from trainer_client.pusher import CooccurrencePusher

    address, items_csv, state = sys.argv[1:4]
    modules = sorted(m.name for m in pkgutil.walk_packages(trainer_client.__path__,
                                                          "trainer_client."))
    for name in modules:
        importlib.import_module(name)
    common = ["--server", address]
    assert admin.main([*common, "ingest", "--catalog", "alone", "--csv", items_csv]) == 0
    assert admin.main([*common, "refit", "--catalog", "alone", "--dim", "4", "--lam", "0",
                       "--activate"]) == 0
    with EmbeddingClient(address) as client:
        table = client.fetch_embeddings("alone", dtype="float16")
        summary = CooccurrencePusher(client, "alone", "w0", state).push(
            np.array([0, 1, 2]), np.array([1, 2, 3]), np.ones(3))
        pairs = client.describe("alone").cooccurrence.pairs
    help_text = io.StringIO()
    sys.argv = ["python -m trainer_client.worker", "--help"]
    with contextlib.redirect_stdout(help_text), contextlib.suppress(SystemExit):
        runpy.run_module("trainer_client.worker", run_name="__main__")
    print(json.dumps({
        "modules": modules, "shape": list(table.vectors.shape), "applied": summary.applied,
        "pairs": pairs, "help": help_text.getvalue(),
        "loaded": sorted(set(BLOCKED) & {m.partition(".")[0] for m in sys.modules}),
    }))
""")


def test_the_blocker_makes_the_server_side_unimportable() -> None:
    """The hook does what the trainer test relies on: the server cannot even start."""
    script = BLOCKER + "import server.app\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0
    assert "(blocked)" in done.stderr


def test_the_trainer_side_runs_without_the_server_dependencies(tmp_path: Path) -> None:
    items = tmp_path / "items.csv"
    texts = ["Toy Story (1995). Animation", "Heat (1995). Action, Crime",
             "Fargo (1996). Crime, Drama", "Babe (1995). Children, Comedy",
             "Casino (1995). Drama", "Clueless (1995). Comedy, Romance"]
    items.write_text("id,text\n" + "".join(f"{i},{t}\n" for i, t in enumerate(texts)))
    with ServerProcess(str(tmp_path / "store.db"), tmp_path / "server.log") as server:
        done = subprocess.run(
            [sys.executable, "-c", TRAINER_SIDE, server.address, str(items),
             str(tmp_path / "push-state.json")],
            capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["loaded"] == []
    assert {"trainer_client.admin", "trainer_client.client", "trainer_client.worker",
            "trainer_client.training", "trainer_client.evaluation"} <= set(report["modules"])
    assert report["shape"] == [len(texts), 4]
    assert report["applied"] == 1 and report["pairs"] == 3
    assert report["help"].startswith("usage: python -m trainer_client.worker")
    assert "--tls" in report["help"]
