"""Real ``python -m server`` processes for fault, scale-out, load and security tests and for
the service benchmarks: bound to port 0 against a given store, stopped with SIGTERM or
killed with SIGKILL, their resident memory (and its peak) read from /proc, optionally
sampled by py-spy. Also a synthetic catalog written straight into the store (random raw
vectors under the real encoder's identity), so tests get large catalogs without encoding
thousands of texts."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.tfllmer.v1 import embedding_service_pb2 as pb
from protos.tfllmer.v1 import embedding_service_pb2_grpc as pb_grpc
from server.stores import CatalogStore, EncoderIdentity, ItemChanges, LocalStore, RedisStore

_LISTENING = re.compile(r"listening on [^ ]+:(\d+) ")
# The identity of the server's default encoder (all-MiniLM-L6-v2, pooled vectors).
DEFAULT_ENCODER = EncoderIdentity("sentence-transformers/all-MiniLM-L6-v2:pooled", 384)


class ServerProcess:
    """One ``python -m server`` process. The first start binds port 0 and reads the port the
    OS gave from the server's log (no race with other processes for a "free" port);
    ``start`` returns once health on that port says SERVING; a restart keeps the port, so
    clients reconnect to the same address.

    Leaving the ``with`` block kills it (a test's crash), or with ``graceful`` sends SIGTERM
    and waits (a benchmark's orderly end). With ``BENCH_PROFILE_DIR`` set, py-spy samples
    the process for its whole life into ``server-<pid>.txt`` there."""

    def __init__(self, store_url: str, log_path: str | Path, *, args: Sequence[str] = (),
                 env: dict[str, str] | None = None,
                 credentials: grpc.ChannelCredentials | None = None,
                 graceful: bool = False) -> None:
        self.port = 0
        self.log_path = Path(log_path)
        self._args = ["--store-url", store_url, "--log-format", "json", *args]
        base = {k: v for k, v in os.environ.items() if not k.startswith("TFLLMER_")}
        self._env = {**base, "HF_HUB_OFFLINE": "1", **(env or {})}
        self._credentials = credentials
        self._graceful = graceful
        self.process: subprocess.Popen[bytes] | None = None
        self._profiler: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def channel(self, **options: object) -> grpc.Channel:
        opts = list(options.items())
        if self._credentials is None:
            return grpc.insecure_channel(self.address, opts)
        return grpc.secure_channel(self.address, self._credentials, opts)

    def stub(self, channel: grpc.Channel) -> pb_grpc.EmbeddingServiceStub:
        return pb_grpc.EmbeddingServiceStub(channel)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 180.0) -> ServerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        argv = [sys.executable, "-m", "server", "--port", str(self.port), *self._args]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(argv, env=self._env, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while not self.port:  # bound to port 0: the log says which port it got
            found = _LISTENING.search(self.log_path.read_bytes()[offset:].decode(errors="replace"))
            ports = _listening_ports(self.process.pid)  # a log level above info says nothing
            if found:
                self.port = int(found.group(1))
            elif len(ports) == 1:
                self.port = ports.pop()
            elif self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"the server did not start:\n{self.log_tail()}")
            else:
                time.sleep(0.1)
        with self.channel() as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the server exited during start-up:\n{self.log_tail()}")
                try:
                    reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        self._start_profiler()
                        return self
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"the server did not start:\n{self.log_tail()}")
                time.sleep(0.2)

    def health(self) -> int:
        """The overall health status (``HealthCheckResponse.ServingStatus``)."""
        with self.channel() as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5)
            return reply.status

    def _start_profiler(self) -> None:
        profile_dir = os.environ.get("BENCH_PROFILE_DIR")
        if not profile_dir or self._profiler is not None:
            return
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        out = Path(profile_dir) / f"server-{self.pid}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        self._profiler = subprocess.Popen(
            [spy, "record", "--pid", str(self.pid), "--format", "raw", "--rate", "200",
             "--output", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # attached before the workload starts

    def _stop_profiler(self) -> None:
        if self._profiler is not None:  # SIGINT: py-spy writes what it sampled and exits
            self._profiler.send_signal(signal.SIGINT)
            self._profiler.wait(60)
            self._profiler = None

    def kill(self) -> None:
        """SIGKILL: no drain, no goodbye, no lock release."""
        self._stop_profiler()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)

    def stop(self) -> int | None:
        """SIGTERM and wait; the exit code."""
        if self.process is None:
            return None
        self._stop_profiler()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def restart(self) -> ServerProcess:
        self.kill()
        return self.start()

    def _status_bytes(self, field: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no {field} in /proc/{self.pid}/status")

    def rss_bytes(self) -> int:
        """Resident memory now (VmRSS)."""
        return self._status_bytes("VmRSS")

    def peak_rss_bytes(self) -> int:
        """Peak resident memory (VmHWM) since the start or the last ``reset_peak``."""
        return self._status_bytes("VmHWM")

    def reset_peak(self) -> None:
        """Set the peak back to the current RSS (Linux ``clear_refs`` ← 5)."""
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_text()[-chars:]

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self._graceful:
            self.stop()
        else:
            self.kill()


def _listening_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` listens on (Linux: its socket inodes in /proc/net)."""
    try:
        inodes = {os.readlink(f"/proc/{pid}/fd/{fd}")[8:-1] for fd in os.listdir(f"/proc/{pid}/fd")
                  if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:[")}
    except OSError:  # the process is gone or its fds changed meanwhile
        return set()
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    ports.add(int(fields[1].rpartition(":")[2], 16))
    return ports


def synthetic_catalog(store: CatalogStore, name: str, n_items: int, *, seed: int = 0,
                      encoder: EncoderIdentity = DEFAULT_ENCODER, chunk: int = 20_000) -> None:
    """Append ``n_items`` items ``{name}-<row>`` with random raw vectors (a low-rank signal
    plus noise, so fits are well conditioned) under ``encoder``'s identity."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((16, encoder.dim)).astype(np.float32)
    state = store.get_catalog(name) or store.create_catalog(name, encoder)
    done = state.item_count
    while done < n_items:
        take = min(chunk, n_items - done)
        vectors = (rng.standard_normal((take, 16)).astype(np.float32) @ basis
                   + 0.3 * rng.standard_normal((take, encoder.dim)).astype(np.float32) + 1.0)
        ids = [f"{name}-{row}" for row in range(done, done + take)]
        store.commit_items(name, ItemChanges(done, ids, [f"h{row}" for row in ids], vectors))
        done += take


def wait_for(condition: Callable[[], bool], timeout: float, interval: float = 0.02,
             what: str = "condition") -> float:
    """Poll until ``condition()``; the seconds it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - started


def refit(stub: pb_grpc.EmbeddingServiceStub, catalog: str, dim: int, activate: bool = True,
          **strength: float) -> int:
    """RefitProjection (λ = 0 unless ``lam`` or ``retention_budget`` is given); the version."""
    parameters = pb.FitParameters(dim=dim, **(strength or {"lam": 0.0}))
    reply = stub.RefitProjection(pb.RefitProjectionRequest(
        catalog=catalog, activate=activate, parameters=parameters), timeout=300)
    return reply.version.version


def status_of(call: Callable[[], object]) -> grpc.StatusCode:
    """The status ``call()`` ended with (OK when it returned)."""
    try:
        call()
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


class FreezingProxy:
    """A TCP proxy in front of Redis that freezes its clients' traffic at a chosen command,
    for deterministic crash points (like toxiproxy, in-process).

    Until ``arm`` is called it forwards everything. Once armed, bytes from clients to Redis
    are forwarded until they match ``pattern`` for the ``after``-th time; the bytes before
    that match still go through (so every earlier command runs) and nothing from then on
    does (that command never completes). ``tripped`` is set at that moment. Replies from
    Redis always flow. ``release`` forwards what was held and lets everything through again,
    so a command can be held back while the test changes the store under it."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream = ("127.0.0.1", upstream_port)
        self._pattern: re.Pattern[bytes] | None = None
        self._remaining = 0
        self._lock = threading.Lock()
        self.tripped = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = [self._listener]
        self._held: list[tuple[socket.socket, bytearray]] = []  # (sink, bytes held back)
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, pattern: bytes, after: int = 1) -> None:
        with self._lock:
            self._pattern, self._remaining = re.compile(pattern), after

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._upstream)
            self._sockets += [client, upstream]
            threading.Thread(target=self._client_to_redis, args=(client, upstream),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(1 << 16):
                sink.sendall(data)
        except OSError:
            pass

    def release(self) -> None:
        """Forward everything held since the freeze, in order, and stop freezing."""
        with self._lock:
            self._pattern = None
            for sink, held in self._held:
                with contextlib.suppress(OSError):
                    sink.sendall(bytes(held))
                held.clear()
            self._held.clear()
            self.tripped.clear()

    def _client_to_redis(self, source: socket.socket, sink: socket.socket) -> None:
        tail = b""  # the end of what was forwarded, so a match may span two reads
        held = bytearray()
        try:
            while data := source.recv(1 << 16):
                # One critical section per read: the bytes before a match reach Redis before
                # anything ``release`` forwards (sending them after the lock let a fast
                # release overtake them, and Redis read a command cut in two), and no
                # connection slips a read past a freeze set between two sections.
                with self._lock:
                    if self.tripped.is_set():  # frozen: hold everything
                        if not held:
                            self._held.append((sink, held))
                        held += data
                        continue
                    window = tail + data
                    forward = len(data)
                    matches = self._pattern.finditer(window) if self._pattern else ()
                    for match in matches:
                        if match.end() <= len(tail):
                            continue  # already counted in the previous read
                        self._remaining -= 1
                        if self._remaining == 0:
                            forward = max(0, match.start() - len(tail))
                            held += data[forward:]
                            self._held.append((sink, held))
                            self.tripped.set()
                            break
                    sink.sendall(data[:forward])
                tail = window[-512:]
        except OSError:
            pass

    def close(self) -> None:
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()


@contextlib.contextmanager
def store_of_kind(kind: str, directory: Path) -> Iterator[tuple[str, CatalogStore]]:
    """A fresh store of ``kind`` ("local": a SQLite file; "redis": its own redis-server):
    the URL a server process is given and a store object on the same data for checks."""
    if kind == "local":
        path = str(directory / "store.db")
        yield path, LocalStore(path)
        return
    from harness.redis_server import RedisServer

    with RedisServer() as redis_server:
        yield redis_server.url, RedisStore(redis_server.url)


def item_stream(catalog: str, count: int, *, prefix: str = "item", per_message: int = 500,
                request_id: str = "") -> Iterator[pb.UpsertItemsRequest]:
    """UpsertItems messages of ``count`` items with distinct, encoder-sized texts."""
    for start in range(0, count, per_message):
        items = [pb.Item(id=f"{prefix}-{i}", text=f"{prefix} {i}: a film about {i % 97} "
                         f"things, {i * 7919 % 1009} places and {i % 13} people")
                 for i in range(start, min(start + per_message, count))]
        yield pb.UpsertItemsRequest(catalog=catalog, items=items,
                                    request_id=request_id if start == 0 else "")
