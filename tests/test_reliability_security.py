"""Security and data safety beyond tests/test_auth.py and tests/test_tls.py (issue 8, item 5):

* nothing read from a store is unpickled or evaluated: an AST scan of every server and
  trainer-client source, and hostile values (a pickle that would create a file if it were
  ever unpickled, garbage, truncated blocks) planted in a real redis-server decode to a
  clear ``CorruptDataError`` (DATA_LOSS on the wire), never to code execution;
* Redis with a password and with TLS (``rediss://`` with a CA, client certificate and key
  as URL options) against a real ``redis-server --tls-port`` whose certificates are
  generated here, and a real 3-node Redis Cluster over mutual TLS with a password
  (``rediss+cluster://``).

Process-level checks (tokens on every RPC of a real ``python -m server``, TLS and mutual
TLS, nothing secret in its log) are in tests/test_reliability_processes.py.
"""

from __future__ import annotations

import ast
import ipaddress
import logging
import pickle
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from redis.cluster import RedisCluster

from harness.ports import free_port
from harness.redis_server import RedisClusterServer, RedisServer
from protos.metadata import bearer_metadata
from protos.tfllmer.v1 import embedding_service_pb2 as pb
from server.config import config_from_dict
from server.stores import (
    CooccurrenceTotals,
    CorruptDataError,
    EncoderIdentity,
    ItemChanges,
    NewVersion,
    PairBatch,
    RedisStore,
    StoreUnavailableError,
    open_store,
)
from tests.grpc_harness import eventually
from tests.hash_encoder import HashEncoder
from tests.service_harness import ServerThread
from tests.test_tls import Issued, _certificate, issue, make_ca

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("server", "trainer_client")
UNSAFE_MODULES = {"pickle", "_pickle", "cPickle", "marshal", "shelve", "dill", "cloudpickle",
                  "joblib", "yaml", "jsonpickle"}
UNSAFE_BUILTINS = {"eval", "exec", "compile", "__import__", "breakpoint"}
CATALOG = "sec"
ENCODER = EncoderIdentity("sec-encoder", 6)


# ---------------------------------------------------------------- nothing unpickled/evaluated


def unsafe_uses(source: str, filename: str) -> list[str]:
    """Every import of a deserializer that can run code, every call of eval/exec/compile/
    __import__, every ``np.load(..., allow_pickle=True)`` and ``torch.load``."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            found += [f"{where} import {a.name}" for a in node.names
                      if a.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in (
                UNSAFE_MODULES):
            found.append(f"{where} from {node.module} import")
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in UNSAFE_BUILTINS:
                found.append(f"{where} {func.id}()")
            elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                owner, name = func.value.id, func.attr
                if owner in UNSAFE_MODULES or (owner == "torch" and name == "load"):
                    found.append(f"{where} {owner}.{name}()")
                if owner in ("np", "numpy") and name == "load" and any(
                        k.arg == "allow_pickle" for k in node.keywords):
                    found.append(f"{where} np.load(allow_pickle=...)")
    return found


def test_the_scanner_finds_every_kind_of_unsafe_use() -> None:
    planted = ("import pickle\nfrom yaml import load\nimport marshal as m\n"
               "eval('1')\nexec('x=1')\n__import__('os')\ntorch.load('f')\n"
               "np.load('f', allow_pickle=True)\npickle.loads(b'')\nmodel.eval()\n")
    assert len(unsafe_uses(planted, "planted.py")) == 9  # model.eval() is a method, not eval


def test_no_server_or_client_source_unpickles_or_evaluates() -> None:
    files = [path for folder in SCANNED for path in sorted((ROOT / folder).rglob("*.py"))]
    assert len(files) > 30
    offenders = [use for path in files
                 for use in unsafe_uses(path.read_text(), str(path.relative_to(ROOT)))]
    assert offenders == []


class _CreatesAFile:
    """Unpickling this object would create ``path``: proof of code execution."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


@pytest.fixture
def hostile(tmp_path: Path) -> tuple[bytes, Path]:
    marker = tmp_path / "executed"
    return pickle.dumps(_CreatesAFile(marker)), marker


def populated(url: str) -> tuple[RedisStore, str]:
    """A catalog with 8 items, an active version and one batch, under a fresh key prefix."""
    prefix = f"sec-{secrets.token_hex(4)}"
    store = RedisStore(url, key_prefix=prefix, block_rows=4)
    store.create_catalog(CATALOG, ENCODER)
    rng = np.random.default_rng(0)
    ids = [f"i{i}" for i in range(8)]
    store.commit_items(CATALOG, ItemChanges(0, ids, ids, rng.standard_normal((8, 6), "f4")))
    reduced = rng.standard_normal((8, 3)).astype(np.float32)
    store.write_version(CATALOG, NewVersion(
        8, 3, ENCODER, {"lam": 0.0, "graph": {"transform": "identity", "top_k": 0}}, {},
        CooccurrenceTotals(), 0.1, rng.standard_normal((6, 3)), rng.standard_normal(6),
        reduced / np.linalg.norm(reduced, axis=1, keepdims=True)), activate=True)
    store.apply_pair_batches(CATALOG, [PairBatch(
        "w", "b", np.array([0], "u4"), np.array([1], "u4"), np.array([1.0], "f4"))])
    return store, prefix


# (what is corrupted, how the key is overwritten, the read that must fail)
CORRUPTIONS = {
    "catalog header": (lambda c, k, bad: c.set(k("meta"), bad),
                       lambda s: s.get_catalog(CATALOG)),
    "version record": (lambda c, k, bad: c.hset(k("versions"), "1", bad),
                       lambda s: s.versions(CATALOG)),
    "projection W": (lambda c, k, bad: c.set(k("v:1:W"), bad),
                     lambda s: s.read_projection(CATALOG, 1)),
    "reduced block": (lambda c, k, bad: c.set(k("v:1:red:0"), bad),
                      lambda s: s.read_reduced(CATALOG, 1, 0, 8)),
    "raw block": (lambda c, k, bad: c.set(k("raw:1"), bad),
                  lambda s: s.read_raw(CATALOG, 0, 8)),
    "float16 reduced block": (lambda c, k, bad: c.set(k("v:1:red16:0"), bad),
                              lambda s: s.read_reduced_bytes(CATALOG, 1, 0, 8, "float16")),
    "id offsets block": (lambda c, k, bad: c.set(k("idends:0"), bad),
                         lambda s: s.item_ids(CATALOG, 0, 8)),
    "id entries block": (lambda c, k, bad: c.set(k("idwire:1"), bad),
                         lambda s: s.item_id_field(CATALOG, 0, 8)),
    "pair log": (lambda c, k, bad: c.lset(k("pairs"), 0, bad),
                 lambda s: s.read_counts(CATALOG, 8)),
}


@pytest.mark.parametrize("payload", ["pickle", "garbage", "empty"])
@pytest.mark.parametrize("what", list(CORRUPTIONS))
def test_a_hostile_or_garbage_stored_value_is_corrupt_data_never_executed(
        redis_server, hostile, what: str, payload: str) -> None:
    pickled, marker = hostile
    bad = {"pickle": pickled, "garbage": secrets.token_bytes(37), "empty": b""}[payload]
    if what.endswith("block"):
        # Vector blocks are bare little-endian floats: bytes of the right length are just
        # numbers. A block shorter than its rows (here 48 bytes) is detected.
        bad = bad[:10]
    store, prefix = populated(redis_server.url)
    corrupt, read = CORRUPTIONS[what]
    with redis_server.client() as client:
        corrupt(client, lambda suffix: f"{prefix}:{{{CATALOG}}}:{suffix}", bad)
    fresh = RedisStore(redis_server.url, key_prefix=prefix, block_rows=4)  # no cached header
    with pytest.raises(CorruptDataError, match="does not decode|row blocks hold"):
        read(fresh)
    assert not marker.exists()
    fresh.close()
    store.close()


def test_corrupt_stored_data_is_data_loss_on_the_wire_with_a_clear_message(
        redis_server, hostile) -> None:
    pickled, marker = hostile
    prefix = f"sec-wire-{secrets.token_hex(4)}"
    store = RedisStore(redis_server.url, key_prefix=prefix)
    with ServerThread(store, HashEncoder(16)) as server, server.channel() as channel:
        stub = server.stub(channel)
        items = [pb.Item(id=f"i{i}", text=f"item text {i}") for i in range(30)]
        stub.UpsertItems(iter([pb.UpsertItemsRequest(catalog=CATALOG, items=items)]))
        stub.RefitProjection(pb.RefitProjectionRequest(
            catalog=CATALOG, activate=True, parameters=pb.FitParameters(dim=4, lam=0)))
        with redis_server.client() as client:
            client.set(f"{prefix}:{{{CATALOG}}}:v:1:red:0", pickled)
        with pytest.raises(grpc.RpcError) as pulled:
            list(stub.GetItemEmbeddings(pb.GetItemEmbeddingsRequest(catalog=CATALOG)))
        assert pulled.value.code() is grpc.StatusCode.DATA_LOSS
        assert "stored data is corrupt" in pulled.value.details()
        with redis_server.client() as client:
            client.hset(f"{prefix}:{{{CATALOG}}}:versions", "1", pickled)
        with pytest.raises(grpc.RpcError) as described:
            stub.DescribeCatalog(pb.DescribeCatalogRequest(catalog=CATALOG))
        assert described.value.code() is grpc.StatusCode.DATA_LOSS
    assert not marker.exists()


def test_refused_calls_are_access_logged_without_their_token(
        redis_server, caplog: pytest.LogCaptureFixture) -> None:
    """The real server's interceptor order: auth refusals reach the access log and metrics
    (an audit trail of failed attempts), and the presented token is never in them."""
    caplog.set_level(logging.INFO, logger="tfllmer.access")
    store = RedisStore(redis_server.url, key_prefix=f"sec-audit-{secrets.token_hex(4)}")
    admin, trainer, wrong = (secrets.token_urlsafe(24) for _ in range(3))
    with ServerThread(store, HashEncoder(16), admin_tokens=(admin,),
                      trainer_tokens=(trainer,)) as server, server.channel() as channel:
        stub = server.stub(channel)
        for metadata in ((), bearer_metadata(wrong), bearer_metadata(trainer)):
            with pytest.raises(grpc.RpcError):
                stub.RefitProjection(pb.RefitProjectionRequest(catalog=CATALOG),
                                     metadata=metadata)
        assert eventually(lambda: len([r for r in caplog.records
                                       if r.name == "tfllmer.access"]) >= 3)
        statuses = [r.status for r in caplog.records if r.name == "tfllmer.access"]
        counted = server.server.metrics.registry.get_sample_value(
            "grpc_server_handled_total", {"grpc_service": "tfllmer.v1.EmbeddingService",
                                          "grpc_method": "RefitProjection",
                                          "grpc_type": "unary",
                                          "grpc_code": "UNAUTHENTICATED"})
    assert statuses.count("UNAUTHENTICATED") == 2 and "PERMISSION_DENIED" in statuses
    assert counted == 2
    assert not any(token in caplog.text for token in (admin, trainer, wrong))


# ---------------------------------------------------------------- Redis password and TLS


def test_a_password_url_is_redacted_in_the_printed_configuration() -> None:
    config = config_from_dict({"store_url": "rediss://:pa55word@redis.internal:6380/0"
                                            "?ssl_ca_certs=/etc/ca.pem"})
    assert "pa55word" not in repr(config) and "pa55word" not in str(config.redacted())


class TlsRedis(RedisServer):
    """``redis-server`` listening with TLS only (``--port 0 --tls-port``)."""

    def __init__(self, pki: Path, *, password: str, auth_clients: str) -> None:
        super().__init__(extra_args=(
            "--tls-cert-file", str(pki / "server.pem"), "--tls-key-file", str(pki / "server.key"),
            "--tls-ca-cert-file", str(pki / "ca.pem"), "--tls-auth-clients", auth_clients,
            "--requirepass", password))
        self.pki, self.password = pki, password
        self.port = free_port()
        self._args[1] = "0"
        self._args += ["--tls-port", str(self.port)]

    def url(self, *, client_cert: bool = True, ca: str = "ca.pem") -> str:  # type: ignore[override]
        query = f"ssl_ca_certs={self.pki / ca}"
        if client_cert:
            query += f"&ssl_certfile={self.pki / 'client.pem'}"
            query += f"&ssl_keyfile={self.pki / 'client.key'}"
        return f"rediss://:{self.password}@127.0.0.1:{self.port}/0?{query}"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url(), socket_timeout=5)


@pytest.fixture(scope="module")
def tls_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ca, other = make_ca("redis test CA"), make_ca("another CA")
    server = issue(ca, "redis", ExtendedKeyUsageOID.SERVER_AUTH)
    client = issue(ca, "tfllmer server", ExtendedKeyUsageOID.CLIENT_AUTH)
    files = tmp_path_factory.mktemp("redis-pki")
    for name, pem in (("ca.pem", ca.cert_pem), ("other-ca.pem", other.cert_pem),
                      ("server.pem", server.cert_pem), ("server.key", server.key_pem),
                      ("client.pem", client.cert_pem), ("client.key", client.key_pem)):
        (files / name).write_bytes(pem)
    return files


@pytest.fixture(scope="module", params=["yes", "no"], ids=["mutual-tls", "tls"])
def tls_redis(request, tls_pki: Path) -> Iterator[TlsRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = TlsRedis(tls_pki, password=secrets.token_urlsafe(16), auth_clients=request.param)
    try:
        server.start()
    except RuntimeError as error:  # a build without TLS refuses --tls-port
        pytest.skip(f"this redis-server has no TLS: {error}")
    yield server
    server.close()


def test_the_store_works_over_redis_tls_with_a_password(tls_redis: TlsRedis) -> None:
    store = open_store(tls_redis.url())
    assert isinstance(store, RedisStore)
    store.create_catalog(CATALOG, ENCODER)
    store.commit_items(CATALOG, ItemChanges(0, ["a", "b"], ["h", "h"], np.ones((2, 6), "f4")))
    np.testing.assert_array_equal(store.read_raw(CATALOG, 0, 2), np.ones((2, 6)))
    store.close()
    with tls_redis.client() as raw:  # it really went over TLS: the plain port is closed
        assert raw.connection_pool.connection_class.__name__ == "SSLConnection"
        assert int(raw.config_get("port")["port"]) == 0


def test_redis_tls_refuses_an_untrusted_server_a_wrong_password_and_a_missing_client_cert(
        tls_redis: TlsRedis) -> None:
    bad_urls = [tls_redis.url(ca="other-ca.pem"),  # the client does not trust the server
                tls_redis.url().replace(tls_redis.password, "wrong")]
    mutual = "yes" in tls_redis._args[tls_redis._args.index("--tls-auth-clients") + 1]
    if mutual:
        bad_urls.append(tls_redis.url(client_cert=False))
    else:
        open_store(tls_redis.url(client_cert=False)).ping()
    for url in bad_urls:
        store = open_store(url)
        with pytest.raises(StoreUnavailableError):
            store.ping()
        store.close()


def dual_use_pki(folder: Path) -> Path:
    """ca.pem, node.pem/node.key (server and client authentication: cluster nodes connect
    to each other with it), other-ca.pem."""
    ca, other = make_ca("redis cluster CA"), make_ca("another CA")
    key = ec.generate_private_key(ec.SECP256R1())
    usage = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                   ExtendedKeyUsageOID.CLIENT_AUTH])
    names = x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                         x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    node = Issued(_certificate("redis node", key, ca, [
        (x509.BasicConstraints(ca=False, path_length=None), True), (usage, False),
        (names, False)]), key)
    for name, pem in (("ca.pem", ca.cert_pem), ("other-ca.pem", other.cert_pem),
                      ("node.pem", node.cert_pem), ("node.key", node.key_pem)):
        (folder / name).write_bytes(pem)
    return folder


def test_the_store_works_on_a_redis_cluster_over_mutual_tls_with_a_password(
        tmp_path: Path) -> None:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server or redis-cli is not installed")
    pki, password = dual_use_pki(tmp_path), secrets.token_urlsafe(16)
    with RedisClusterServer(tls=pki, password=password) as cluster:
        assert cluster.url.startswith(f"rediss+cluster://:{password}@")
        store, _ = populated(cluster.url)  # items, a version, a batch: scripts and MULTI
        assert isinstance(store._client, RedisCluster)
        assert [v.version for v in store.versions(CATALOG)] == [1]
        assert store.read_reduced(CATALOG, 1, 0, 8).shape == (8, 3)
        assert store.cooccurrence_totals(CATALOG).batches == 1
        assert store.acquire_refit_lock(CATALOG, "me", 5) and not store.acquire_refit_lock(
            CATALOG, "you", 5)
        store.close()
        with cluster.nodes[0].client() as node:  # TLS only: the plain port is closed
            assert int(node.config_get("port")["port"]) == 0
        for bad in (cluster.url.replace(f":{password}@", ":wrong@"),
                    cluster.url.replace(f":{password}@", ""),
                    cluster.url.replace("ca.pem", "other-ca.pem"),
                    cluster.url.split("&ssl_certfile")[0]):  # no client certificate
            with pytest.raises(StoreUnavailableError):
                open_store(bad).ping()
