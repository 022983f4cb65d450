"""The npm clients some tests drive (grpc-js, playwright-core), installed on first use from
``tests/js/package.json`` into ``.cache/node`` with npm's ordinary client. Tests that need
them skip, saying why, where node or npm is absent."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "tests" / "js" / "package.json"
PREFIX = REPO / ".cache" / "node"
MODULES = PREFIX / "node_modules"


def node_modules(*packages: str) -> Path:
    """``node_modules`` holding ``packages`` (installed now if missing), or skip."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed (apt-get install nodejs npm)")
    if not all((MODULES / name / "package.json").exists() for name in packages):
        PREFIX.mkdir(parents=True, exist_ok=True)
        shutil.copy(PACKAGE, PREFIX / "package.json")
        subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund"],
                       cwd=PREFIX, check=True, timeout=600)
    return MODULES


def run_node(script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``tests/js/<script>`` with the npm clients on NODE_PATH."""
    modules = node_modules("@grpc/grpc-js", "@grpc/proto-loader")
    return subprocess.run(
        ["node", str(REPO / "tests" / "js" / script), *args], capture_output=True, text=True,
        timeout=timeout, env={**os.environ, "NODE_PATH": str(modules)}, check=False)
