"""A hypothesis-driven fuzz of every request type of ``tfllmer.v1.EmbeddingService`` against a
running server (issue 8, item 3). Used by tests/test_reliability_fuzz.py (a slice in the
default run, the full count under ``-m reliability``) and by ``python -m bench.reliability``.

Cases mix valid and invalid fields on purpose: random catalog names and item ids (empty,
over-long, unknown, non-ASCII), out-of-range and huge integers (versions, dims, k, chunk
sizes, rows up to 2³²−1), open-enum values no server knows, NaN/Inf/negative weights and fit
strengths, byte blocks of the wrong length, empty client streams, streams naming several
catalogs, and messages over the server's receive limit. For every case:

* the status must be one of ``EXPECTED`` (OK or a caller's-mistake code), never INTERNAL,
  UNKNOWN, UNAVAILABLE or DATA_LOSS;
* a rejected call changes nothing: DescribeCatalog of every fuzzed catalog, and the active
  version's served vectors and the raw vectors of the main catalog, are the same bytes
  before and after (an accepted call may change state; the next case compares against it).

Hypothesis runs derandomized (a fixed seed, no example database), so a run is repeatable.
"""

from __future__ import annotations

import hashlib
import math
import struct
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from protos.tfllmer.v1 import embedding_service_pb2 as pb
from protos.tfllmer.v1 import embedding_service_pb2_grpc as pb_grpc
from server.validation import CATALOG_NAME

MAIN, BARE, UNKNOWN = "fuzz-main", "fuzz-bare", "fuzz-unknown"
CATALOGS = (MAIN, BARE, UNKNOWN)
N_MAIN, N_BARE = 40, 12
MAIN_IDS = [f"m{i:02d}" for i in range(N_MAIN)]
KiB = 1024
# The server limits a fuzz run is made for (flags of python -m server / BackgroundServer).
SERVER_SETTINGS: dict[str, Any] = {
    "max_text_chars": 200,
    "max_items_per_upsert": 50,
    "max_pairs_per_push": 1000,
    "max_similar_k": 25,
    "max_receive_message_bytes": 256 * KiB,
}
OVERSIZE = 300 * KiB  # above max_receive_message_bytes
EXPECTED = frozenset({
    grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
})
INT32 = (-(2**31), 2**31 - 1)


def server_flags() -> list[str]:
    return [arg for key, value in SERVER_SETTINGS.items()
            for arg in (f"--{key.replace('_', '-')}", str(value))]


# ---------------------------------------------------------------- strategies

def _invalid_name(name: str) -> bool:
    return not CATALOG_NAME.fullmatch(name)


BAD_NAMES = ["", "-dash", "x" * 65, "{tag}", "naïve", "a b", "a/b", ".", "\x00"]


@st.composite
def catalogs(draw) -> str:
    """Mostly the main catalog (so cases get past the name check), sometimes the bare or an
    unknown one, sometimes an invalid name."""
    pick = draw(st.integers(0, 9))
    if pick < 6:
        return MAIN
    if pick < 8:
        return draw(st.sampled_from([BARE, UNKNOWN]))
    if pick == 8:
        return draw(st.sampled_from(BAD_NAMES))
    return draw(st.text(max_size=70).filter(_invalid_name))


int32s = st.one_of(
    st.integers(0, 4),
    st.integers(-3, 50),
    st.sampled_from([INT32[0], INT32[1], INT32[1] - 1, -1, 0, 2**16, 2**24]),
    st.integers(*INT32),
)
floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e-300, 1e300, 0.5, 0.8, 1.0,
                     0.95, 1.0000001]),
)
item_ids = st.one_of(
    st.sampled_from(MAIN_IDS),
    st.sampled_from(MAIN_IDS),
    st.integers(0, 10**6).map(lambda k: f"new-{k}"),
    st.sampled_from(["", "x" * 513, "é" * 300, "\x00", "unknown-item"]),
    st.text(max_size=24),
)
texts = st.one_of(
    st.integers(0, 10**6).map(lambda k: f"A film numbered {k} (1999). Genres: Drama"),
    st.integers(0, 10**6).map(lambda k: f"A film numbered {k} (1999). Genres: Drama"),
    st.text(max_size=60),
    st.sampled_from(["", "   ", "\n\t", "x" * 201, "A film about the sea (1999). Genres: Drama"]),
)
u4_values = st.one_of(st.integers(0, N_MAIN - 1), st.integers(0, N_MAIN - 1),
                      st.integers(0, N_MAIN - 1), st.sampled_from([2**32 - 1, 2**31, N_MAIN]),
                      st.integers(0, 2**32 - 1))
small_enums = st.one_of(st.integers(0, 3), st.integers(0, 3), st.integers(-2, 6))


@st.composite
def pair_blocks(draw) -> tuple[bytes, bytes, bytes]:
    """Valid packed pairs; valid pairs with one value broken (a row out of range or huge, a
    self pair, a NaN/Inf/zero/negative weight, a truncated block); or arbitrary bytes."""
    mode = draw(st.sampled_from(["valid", "valid", "broken", "broken", "random"]))
    if mode == "random":
        return tuple(draw(st.binary(max_size=40)) for _ in range(3))  # type: ignore[return-value]
    n = draw(st.integers(1, 8))
    rows = np.array(draw(st.lists(st.integers(0, N_MAIN - 1), min_size=n, max_size=n)), "<u4")
    cols = (rows + np.array(draw(st.lists(st.integers(1, N_MAIN - 1), min_size=n, max_size=n)),
                            "<u4")) % N_MAIN
    weights = np.array(draw(st.lists(st.sampled_from([1.0, 2.0, 0.5, 3.0]), min_size=n,
                                     max_size=n)), "<f4")
    if mode == "broken":
        at = draw(st.integers(0, n - 1))
        broken = draw(st.sampled_from(["row", "col", "self", "weight", "truncate"]))
        if broken in ("row", "col"):
            target = rows if broken == "row" else cols
            target[at] = draw(st.one_of(st.integers(N_MAIN, 2**32 - 1),
                                        st.sampled_from([N_MAIN, 2**31, 2**32 - 1])))
        elif broken == "self":
            cols[at] = rows[at]
        elif broken == "weight":
            weights[at] = draw(st.one_of(st.sampled_from([math.nan, math.inf, -math.inf, 0.0,
                                                          -0.0, -1.0]),
                                         st.floats(max_value=0.0, width=32)))
        else:
            blocks = [rows.tobytes(), cols.tobytes(), weights.tobytes()]
            which = draw(st.integers(0, 2))
            blocks[which] = blocks[which][: draw(st.integers(0, 4 * n - 1))]
            return tuple(blocks)  # type: ignore[return-value]
    return rows.tobytes(), cols.tobytes(), weights.tobytes()


@dataclass(frozen=True)
class Case:
    rpc: str
    request: Any  # a message, or a list of messages for client streams
    label: str = ""


@st.composite
def upsert_cases(draw) -> Case:
    catalog = draw(catalogs())
    messages = [pb.UpsertItemsRequest(
        catalog=catalog if draw(st.integers(0, 5)) < 5 else draw(catalogs()),
        items=draw(st.lists(st.builds(lambda i, t: pb.Item(id=i, text=t), item_ids, texts),
                            max_size=draw(st.sampled_from([3, 3, 60])))),
    ) for _ in range(draw(st.integers(0, 3)))]
    return Case("UpsertItems", messages, "empty-stream" if not messages else "")


@st.composite
def push_cases(draw) -> Case:
    messages = []
    catalog = draw(catalogs())
    for _ in range(draw(st.integers(0, 4))):
        rows, cols, weights = draw(pair_blocks())
        messages.append(pb.PushCooccurrenceRequest(
            catalog=catalog if draw(st.integers(0, 5)) < 5 else draw(catalogs()),
            worker_id=draw(st.one_of(st.sampled_from(["w0", "w1"]), st.sampled_from(["w0", "w1"]),
                                     st.sampled_from(["", "w" * 129]), st.text(max_size=10))),
            batch_id=draw(st.one_of(st.integers(0, 10**6).map(str),
                                    st.integers(0, 10**6).map(str),
                                    st.sampled_from(["", "b" * 129]), st.text(max_size=10))),
            rows=rows, cols=cols, weights=weights))
    return Case("PushCooccurrence", messages, "empty-stream" if not messages else "")


@st.composite
def get_cases(draw) -> Case:
    return Case("GetItemEmbeddings", pb.GetItemEmbeddingsRequest(
        catalog=draw(catalogs()), version=draw(st.one_of(st.integers(0, 3), int32s)),
        item_ids=draw(st.lists(item_ids, max_size=5)),
        dtype=draw(small_enums), kind=draw(small_enums),
        max_chunk_bytes=draw(st.one_of(st.just(0), int32s)), omit_item_ids=draw(st.booleans())))


@st.composite
def refit_cases(draw) -> Case:
    parameters = pb.FitParameters(dim=draw(st.one_of(st.integers(0, 16), int32s)),
                                  graph=pb.GraphOptions(
        transform=draw(small_enums), top_k=draw(st.one_of(st.just(0), int32s))))
    strength = draw(st.sampled_from(["none", "lam", "retention"]))
    if strength == "lam":
        parameters.lam = draw(floats)
    elif strength == "retention":
        parameters.retention_budget = draw(floats)
    return Case("RefitProjection", pb.RefitProjectionRequest(
        catalog=draw(catalogs()), parameters=parameters, activate=draw(st.booleans())))


@st.composite
def similar_cases(draw) -> Case:
    request = pb.SimilarItemsRequest(catalog=draw(catalogs()),
                                     version=draw(st.one_of(st.integers(0, 3), int32s)),
                                     k=draw(st.one_of(st.integers(0, 30), int32s)))
    query = draw(st.sampled_from(["none", "item", "item", "vector", "vector-floats",
                                  "vector-floats"]))
    if query == "item":
        request.item_id = draw(item_ids)
    elif query == "vector":
        request.vector = draw(st.binary(max_size=80))
    elif query == "vector-floats":
        dim = draw(st.sampled_from([4, 8, 8, 16, 7]))
        values = draw(st.lists(st.one_of(st.floats(-10, 10), floats), min_size=dim,
                               max_size=dim))
        request.vector = struct.pack(f"<{dim}f", *[_f32(v) for v in values])
    return Case("SimilarItems", request)


def _f32(value: float) -> float:
    """Python floats beyond float32 range pack as ±inf, as a client's cast would."""
    if math.isfinite(value) and abs(value) > 3.4028234663852886e38:
        return math.copysign(math.inf, value)
    return value


@st.composite
def oversize_cases(draw) -> Case:
    """One message over the server's receive limit, of every request type."""
    size = draw(st.integers(OVERSIZE, 4 * OVERSIZE))
    kind = draw(st.sampled_from(["text", "items", "pairs", "ids", "vector", "describe", "refit",
                                 "activate"]))
    big, name = bytes(size), "c" * size
    return {
        "text": lambda: Case("UpsertItems", [pb.UpsertItemsRequest(catalog=MAIN, items=[
            pb.Item(id="huge", text="x" * size)])], "oversize"),
        "items": lambda: Case("UpsertItems", [pb.UpsertItemsRequest(catalog=MAIN, items=[
            pb.Item(id=f"i{k}", text="t") for k in range(size // 8)])], "oversize"),
        "pairs": lambda: Case("PushCooccurrence", [pb.PushCooccurrenceRequest(
            catalog=MAIN, worker_id="w", batch_id="huge", rows=big, cols=big, weights=big)],
            "oversize"),
        "ids": lambda: Case("GetItemEmbeddings", pb.GetItemEmbeddingsRequest(
            catalog=MAIN, item_ids=[f"id-{k:06d}" for k in range(size // 8)]), "oversize"),
        "vector": lambda: Case("SimilarItems", pb.SimilarItemsRequest(catalog=MAIN, vector=big),
                               "oversize"),
        "describe": lambda: Case("DescribeCatalog", pb.DescribeCatalogRequest(catalog=name),
                                 "oversize"),
        "refit": lambda: Case("RefitProjection", pb.RefitProjectionRequest(catalog=name),
                              "oversize"),
        "activate": lambda: Case("ActivateVersion", pb.ActivateVersionRequest(
            catalog=name, version=1), "oversize"),
    }[kind]()


cases = st.one_of(
    upsert_cases(),
    st.builds(lambda c: Case("DescribeCatalog", pb.DescribeCatalogRequest(catalog=c)),
              catalogs()),
    get_cases(),
    push_cases(),
    refit_cases(),
    st.builds(lambda c, v: Case("ActivateVersion", pb.ActivateVersionRequest(catalog=c, version=v)),
              catalogs(), st.one_of(st.integers(-1, 6), int32s)),
    similar_cases(),
    oversize_cases(),
)


# ---------------------------------------------------------------- running

@dataclass
class FuzzReport:
    cases: int = 0
    outcomes: Counter = field(default_factory=Counter)  # (rpc, status name) -> count
    unexpected: list[str] = field(default_factory=list)  # status outside EXPECTED
    state_changes: list[str] = field(default_factory=list)  # rejected calls that changed state
    accepted_changes: int = 0  # OK calls that changed state (allowed)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        by_status: Counter = Counter()
        for (_, code), n in self.outcomes.items():
            by_status[code] += n
        return {
            "cases": self.cases, "seconds": round(self.seconds, 2),
            "by_status": dict(sorted(by_status.items())),
            "by_rpc_and_status": {f"{rpc} {code}": n
                                  for (rpc, code), n in sorted(self.outcomes.items())},
            "internal_errors": by_status.get("INTERNAL", 0) + by_status.get("UNKNOWN", 0),
            "unexpected_statuses": len(self.unexpected),
            "rejected_calls_that_changed_state": len(self.state_changes),
            "accepted_calls_that_changed_state": self.accepted_changes,
            "examples": (self.unexpected + self.state_changes)[:10],
        }


class Fuzzer:
    def __init__(self, channel: grpc.Channel, metadata: Sequence[tuple[str, str]] = ()) -> None:
        self.stub = pb_grpc.EmbeddingServiceStub(channel)
        self.metadata = tuple(metadata)

    def setup(self) -> None:
        """MAIN: 40 items, counts, version 1 active and version 2 staged; BARE: items only."""
        stub, md = self.stub, self.metadata
        texts = [f"A film about subject {i % 7} ({1950 + 3 * i}). Genres: G{i % 5}, G{i % 3}"
                 for i in range(N_MAIN)]
        stub.UpsertItems(iter([pb.UpsertItemsRequest(catalog=MAIN, items=[
            pb.Item(id=i, text=t) for i, t in zip(MAIN_IDS, texts, strict=True)])]), metadata=md)
        rows = np.arange(N_MAIN, dtype="<u4")
        stub.PushCooccurrence(iter([pb.PushCooccurrenceRequest(
            catalog=MAIN, worker_id="setup", batch_id="0", rows=rows.tobytes(),
            cols=((rows + 1) % N_MAIN).astype("<u4").tobytes(),
            weights=np.ones(N_MAIN, "<f4").tobytes())]), metadata=md)
        for budget, activate in ((0.9, True), (0.7, False)):
            stub.RefitProjection(pb.RefitProjectionRequest(
                catalog=MAIN, activate=activate,
                parameters=pb.FitParameters(dim=8, retention_budget=budget)), metadata=md)
        stub.UpsertItems(iter([pb.UpsertItemsRequest(catalog=BARE, items=[
            pb.Item(id=f"b{i}", text=f"Bare item {i}") for i in range(N_BARE)])]), metadata=md)

    def call(self, case: Case) -> grpc.StatusCode:
        method = getattr(self.stub, case.rpc)
        request = iter(case.request) if isinstance(case.request, list) else case.request
        try:
            reply = method(request, timeout=60, metadata=self.metadata)
            if case.rpc == "GetItemEmbeddings":
                for _ in reply:
                    pass
        except grpc.RpcError as error:
            return error.code()
        return grpc.StatusCode.OK

    def state(self) -> bytes:
        """A digest of everything a rejected call must leave unchanged."""
        digest = hashlib.sha256()
        for catalog in CATALOGS:
            try:
                reply = self.stub.DescribeCatalog(pb.DescribeCatalogRequest(catalog=catalog),
                                                  timeout=30, metadata=self.metadata)
                digest.update(reply.SerializeToString(deterministic=True))
            except grpc.RpcError as error:
                digest.update(error.code().name.encode())
        for kind in (pb.EMBEDDING_KIND_REDUCED, pb.EMBEDDING_KIND_RAW):
            for message in self.stub.GetItemEmbeddings(pb.GetItemEmbeddingsRequest(
                    catalog=MAIN, kind=kind), timeout=30, metadata=self.metadata):
                digest.update(message.SerializeToString(deterministic=True))
        return digest.digest()

    def run(self, n_cases: int, on_case: Callable[[int], None] | None = None) -> FuzzReport:
        report = FuzzReport()
        started = time.perf_counter()
        current = [self.state()]

        @settings(max_examples=n_cases, derandomize=True, database=None, deadline=None,
                  phases=[Phase.generate], suppress_health_check=list(HealthCheck),
                  report_multiple_bugs=False)
        @given(case=cases)
        def one(case: Case) -> None:
            code = self.call(case)
            report.cases += 1
            report.outcomes[(case.rpc, code.name)] += 1
            described = f"{case.rpc} {case.label} -> {code.name}: {_short(case.request)}"
            if code not in EXPECTED:
                report.unexpected.append(described)
            after = self.state()
            if after != current[0]:
                if code is grpc.StatusCode.OK:
                    report.accepted_changes += 1
                else:
                    report.state_changes.append(described)
                current[0] = after
            if on_case is not None:
                on_case(report.cases)

        one()
        report.seconds = time.perf_counter() - started
        return report


def _short(request: Any) -> str:
    text = repr(request if not isinstance(request, list) else [m for m in request])
    return text[:300]


def oversize_memory(channel: grpc.Channel, rss: Callable[[], int], rounds: int = 60,
                    size: int = 8 * 1024 * KiB,
                    metadata: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    """Send ``rounds`` rounds of requests ``size`` bytes over the receive limit (UpsertItems,
    PushCooccurrence, SimilarItems) plus an UpsertItems stream of many small messages past
    the item limit; report the server's resident memory before, after every round and at
    the end. Every call must be RESOURCE_EXHAUSTED."""
    stub = pb_grpc.EmbeddingServiceStub(channel)
    block = bytes(size)
    requests: list[tuple[str, Callable[[], Any]]] = [
        ("UpsertItems", lambda: stub.UpsertItems(iter([pb.UpsertItemsRequest(
            catalog=MAIN, items=[pb.Item(id="big", text="x" * size)])]), timeout=60,
            metadata=metadata)),
        ("PushCooccurrence", lambda: stub.PushCooccurrence(iter([pb.PushCooccurrenceRequest(
            catalog=MAIN, worker_id="w", batch_id="big", rows=block, cols=block,
            weights=block)]), timeout=60, metadata=metadata)),
        ("SimilarItems", lambda: stub.SimilarItems(pb.SimilarItemsRequest(
            catalog=MAIN, vector=block), timeout=60, metadata=metadata)),
        ("UpsertItems many", lambda: stub.UpsertItems(iter([pb.UpsertItemsRequest(
            catalog=MAIN, items=[pb.Item(id=f"s{i}-{j}", text="t") for j in range(40)])
            for i in range(2000)]), timeout=60, metadata=metadata)),
    ]
    before = rss()
    codes: Counter = Counter()
    samples = []
    for _ in range(rounds):
        for name, send in requests:
            try:
                send()
                codes[(name, "OK")] += 1
            except grpc.RpcError as error:
                codes[(name, error.code().name)] += 1
        samples.append(rss())
    after, peak, half = samples[-1], max(samples), samples[len(samples) // 2]
    return {
        "requests": sum(codes.values()), "bytes_sent_mb": round(rounds * 3 * size / 2**20),
        "statuses": {f"{k[0]} {k[1]}": v for k, v in sorted(codes.items())},
        "rss_before_mb": round(before / 2**20, 1), "rss_after_mb": round(after / 2**20, 1),
        "rss_peak_mb": round(peak / 2**20, 1),
        "rss_growth_mb": round((after - before) / 2**20, 1),
        # Bounded means flat once allocator pools are warm: growth over the second half.
        "rss_growth_second_half_mb": round((after - half) / 2**20, 1),
        "rss_by_round_mb": [round(v / 2**20, 1) for v in samples],
    }
