"""A real ``redis-server`` for tests and benchmarks: started on a free loopback port in a
temp dir, never the shared 127.0.0.1:6379 instance.

Tests get them through the fixtures of ``tests/conftest.py``: ``redis_server`` (one per
session; tests that share it must not stop it), ``fresh_redis_server`` (one per test; stop,
start and restart it freely, e.g. to test reconnects or AOF recovery) and ``redis_cluster``.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from harness.ports import free_port


class RedisServer:
    """One ``redis-server`` process; ``restart`` keeps its port and data directory, so with
    ``appendonly=True`` the data survives a restart (or a kill)."""

    def __init__(
        self,
        directory: str | Path | None = None,
        *,
        appendonly: bool = False,
        appendfsync: str = "always",
        extra_args: tuple[str, ...] = (),
        startup_timeout: float = 10.0,
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self._binary = binary
        self._tmp = None if directory else tempfile.TemporaryDirectory(prefix="tfllmer-redis-")
        self.directory = Path(directory or self._tmp.name)  # type: ignore[union-attr]
        self.port = free_port()
        self._args = [
            "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
            "--save", "", "--daemonize", "no", "--protected-mode", "yes",
            "--appendonly", "yes" if appendonly else "no", "--appendfsync", appendfsync,
            *extra_args,
        ]  # fmt: skip
        self._startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self.client_url: str | None = None  # how client() connects, when not plain TCP

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def client(self) -> redis.Redis:
        if self.client_url:
            return redis.Redis.from_url(self.client_url, socket_timeout=5)
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self) -> None:
        """Start the server and return once it answers PING."""
        if self.running:
            return
        log = open(self.directory / "redis.log", "ab")  # noqa: SIM115 (owned by the process)
        self._process = subprocess.Popen([self._binary, *self._args], stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + self._startup_timeout
        with self.client() as client:
            while True:
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.BusyLoadingError):
                    pass
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self.kill()
                    tail = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"redis-server did not start:\n{tail}")
                time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (the server flushes its AOF), or SIGKILL if it does not exit in time."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to write anything."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _free_cluster_port() -> int:
    """A free port whose cluster-bus port (port + 10000) is free too."""
    rng = random.Random()
    for _ in range(500):
        port = rng.randrange(20000, 50000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class RedisClusterServer:
    """A real 3-primary Redis Cluster (``cluster-enabled yes``, joined with
    ``redis-cli --cluster create``), no replicas, each node in its own directory.

    With ``tls`` (a folder holding ``ca.pem``, ``node.pem`` and ``node.key``; the node
    certificate must be valid for both server and client authentication), clients and the
    cluster bus speak TLS only and clients must present a certificate the CA signed; with
    ``password`` every node requires it (and uses it towards the others)."""

    def __init__(self, nodes: int = 3, *, tls: Path | None = None, password: str | None = None,
                 startup_timeout: float = 30.0) -> None:
        if shutil.which("redis-cli") is None:
            raise RuntimeError("redis-cli is not installed")
        self._tmp = tempfile.TemporaryDirectory(prefix="tfllmer-cluster-")
        self.tls, self.password = tls, password
        self.nodes: list[RedisServer] = []
        for i in range(nodes):
            directory = Path(self._tmp.name) / f"node{i}"
            directory.mkdir()
            port = _free_cluster_port()
            extra = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                     "--cluster-node-timeout", "2000"]
            if password:
                extra += ["--requirepass", password, "--masterauth", password]
            if tls:
                extra += ["--tls-port", str(port), "--tls-cluster", "yes",
                          "--tls-cert-file", str(tls / "node.pem"),
                          "--tls-key-file", str(tls / "node.key"),
                          "--tls-ca-cert-file", str(tls / "ca.pem")]
            node = RedisServer(directory, extra_args=tuple(extra))
            node.port = port
            node._args[1] = "0" if tls else str(port)
            scheme = "rediss" if tls else "redis"
            node.client_url = f"{scheme}://{self._auth}127.0.0.1:{port}/0{self._query}"
            self.nodes.append(node)
        self._startup_timeout = startup_timeout

    @property
    def _auth(self) -> str:
        return f":{self.password}@" if self.password else ""

    @property
    def _query(self) -> str:
        if not self.tls:
            return ""
        return (f"?ssl_ca_certs={self.tls / 'ca.pem'}&ssl_certfile={self.tls / 'node.pem'}"
                f"&ssl_keyfile={self.tls / 'node.key'}")

    @property
    def url(self) -> str:
        """The store URL: any one node seeds the cluster client."""
        scheme = "rediss+cluster" if self.tls else "redis+cluster"
        return f"{scheme}://{self._auth}127.0.0.1:{self.nodes[0].port}/0{self._query}"

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        options = ["-a", self.password, "--no-auth-warning"] if self.password else []
        if self.tls:
            options += ["--tls", "--cacert", str(self.tls / "ca.pem"),
                        "--cert", str(self.tls / "node.pem"), "--key", str(self.tls / "node.key")]
        subprocess.run(
            ["redis-cli", *options, "--cluster", "create", *addresses, "--cluster-replicas",
             "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )
        deadline = time.monotonic() + self._startup_timeout
        for node in self.nodes:
            with node.client() as client:
                while client.cluster("info").get("cluster_state") != "ok":
                    if time.monotonic() > deadline:
                        raise RuntimeError("the cluster did not reach cluster_state:ok")
                    time.sleep(0.05)

    def flushall(self) -> None:
        for node in self.nodes:
            with node.client() as client:
                client.flushall()

    def close(self) -> None:
        for node in self.nodes:
            node.close()
        self._tmp.cleanup()

    def __enter__(self) -> RedisClusterServer:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
