"""The streamed moments on a real local Ray (2 CPUs): the same fit as the single-process path,
bad data reported as such, a lost worker reported as an engine failure, and a RefitProjection
of a server with ``--fit-engine ray`` that publishes the same projection or, when its tasks
fail, nothing.

Starting Ray takes 10–20 s on a busy 2-core machine, so these run with ``-m ray``."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc
import numpy as np
import pytest

from bench.recpca_fit import make_counts, make_vectors
from protos.tfllmer.v1 import embedding_service_pb2 as pb
from server.fit_engines import FitEngineError
from server.recpca import FitSettings, build_graph, compute_moments, fit_projection, fit_recpca
from server.recpca.row_blocks import ArrayRowBlocks, RowBlocks
from server.recpca.streamed import ProductTask, product_task, streamed_moments
from server.stores import EncoderIdentity, ItemChanges, LocalStore, RawFileStore
from server.stores.raw_files import FileRowBlocks
from tests.hash_encoder import HashEncoder
from tests.recpca_cases import largest_principal_angle
from tests.service_harness import ServerThread

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray

from server.fit_engines.ray_engine import RayEngine  # noqa: E402  (needs ray)


@pytest.fixture(scope="module")
def engine() -> Iterator[RayEngine]:
    # Functions of this test module are shipped by value: the workers need not import tests.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    started = RayEngine(num_cpus=2, include_dashboard=False, log_to_driver=False)
    started.ensure_started()
    yield started
    ray.shutdown()


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_ray_fit_spans_the_single_process_subspace(engine: RayEngine, dtype: type) -> None:
    raw = make_vectors(6000, 64, seed=2).astype(dtype)
    graph = build_graph(make_counts(6000, 60_000, seed=2), 6000)
    fit = FitSettings(dim=16)
    single = compute_moments(raw, graph, backend="numpy")
    on_ray = streamed_moments(ArrayRowBlocks(raw, 700), graph, run=engine)
    np.testing.assert_allclose(on_ray.graph_variation, single.graph_variation,
                               atol=2e-5 * np.abs(single.scatter).max())
    sine = np.sin(largest_principal_angle(fit_projection(single, fit).components,
                                          fit_projection(on_ray, fit).components))
    assert sine <= 1e-5


def test_bad_data_in_a_task_is_a_value_error_naming_the_row(engine: RayEngine) -> None:
    raw = make_vectors(500, 8, seed=0)
    raw[321, 3] = np.inf
    with pytest.raises(ValueError, match="row 321 contains NaN or Inf"):
        streamed_moments(ArrayRowBlocks(raw, 100), run=engine)


class DyingBlocks(ArrayRowBlocks):
    """Its worker process exits while reading block 2 (a node lost mid-fit)."""

    def read_block(self, index: int) -> np.ndarray:
        if index == 2:
            os._exit(1)
        return super().read_block(index)


def test_a_lost_worker_is_a_fit_engine_error(engine: RayEngine) -> None:
    no_retries = RayEngine(max_retries=0)
    with pytest.raises(FitEngineError, match="lost on Ray: WorkerCrashedError"):
        streamed_moments(DyingBlocks(make_vectors(500, 8, seed=0), 100), run=no_retries)


def crash_in_the_product_pass(source: RowBlocks, task: ProductTask) -> Any:
    if task.index == 1:
        raise OSError("block file unreadable")  # what a store failure inside a task looks like
    return product_task(source, task)


CATALOG, N_ITEMS, DIM = "shop", 20_000, 48  # 3 blocks of DEFAULT_BLOCK_ROWS


@pytest.fixture(scope="module", params=["in-store", "file-store"])
def ray_server(request: pytest.FixtureRequest, engine: RayEngine,
               tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[tuple[ServerThread, LocalStore]]:
    """Raw vectors in the catalog store (the fit ships the array once), or in a raw file
    store of 1 MiB blocks (4 blocks; each task reads its blocks from the files)."""
    encoder = HashEncoder(DIM)
    where = tmp_path_factory.mktemp("ray_refit")
    files = (RawFileStore(str(where / "raw"), block_bytes=2**20)
             if request.param == "file-store" else None)
    store = LocalStore(where / "store.db", raw_files=files)
    store.create_catalog(CATALOG, EncoderIdentity(encoder.name, encoder.dim))
    ids = [f"i{row}" for row in range(N_ITEMS)]
    store.commit_items(CATALOG, ItemChanges(0, ids, ids, make_vectors(N_ITEMS, DIM, seed=4)))
    blocks = store.raw_blocks(CATALOG, N_ITEMS)
    assert isinstance(blocks, FileRowBlocks) is (files is not None)
    assert files is None or len(blocks.block_bounds()) == 4
    rng = np.random.default_rng(4)
    rows = rng.integers(0, N_ITEMS, 200_000).astype("<u4")
    cols = ((rows + rng.integers(1, 50, rows.size)) % N_ITEMS).astype("<u4")
    with ServerThread(store, encoder, fit_engine="ray") as running:
        with running.channel() as channel:
            running.stub(channel).PushCooccurrence(iter([pb.PushCooccurrenceRequest(
                catalog=CATALOG, worker_id="w", batch_id="b0", rows=rows.tobytes(),
                cols=cols.tobytes(), weights=np.ones(rows.size, "<f4").tobytes())]), timeout=60)
        yield running, store


def refit(running: ServerThread) -> pb.RefitProjectionResponse:
    with running.channel() as channel:
        return running.stub(channel).RefitProjection(pb.RefitProjectionRequest(
            catalog=CATALOG, activate=True,
            parameters=pb.FitParameters(dim=8, retention_budget=0.8)), timeout=300)


def test_a_refit_on_ray_publishes_the_single_process_projection(ray_server) -> None:
    running, store = ray_server
    assert running.server.servicer is not None
    assert isinstance(running.server.servicer.service.fit_run, RayEngine)
    version = refit(running).version.version
    components, _ = store.read_projection(CATALOG, version)
    state = store.get_catalog(CATALOG)
    assert state is not None
    local = fit_recpca(store.read_raw_stored(CATALOG, 0, N_ITEMS),
                       store.read_counts(CATALOG, N_ITEMS), FitSettings(dim=8, retention=0.8))
    basis = np.linalg.qr(components)[0]  # the served map W T spans W's subspace
    assert np.sin(largest_principal_angle(local.projection.components, basis)) <= 1e-5


def test_a_refit_whose_tasks_fail_is_unavailable_and_publishes_nothing(ray_server) -> None:
    running, store = ray_server
    assert running.server.servicer is not None
    service = running.server.servicer.service
    real = service.fit_run

    def failing(function: Callable[[RowBlocks, Any], Any], source: RowBlocks,
                tasks: Sequence[Any]) -> Iterator[Any]:
        chosen = crash_in_the_product_pass if function is product_task else function
        return real(chosen, source, tasks)

    before = [(v.version, v.status) for v in store.versions(CATALOG)]
    service.fit_run = failing
    try:
        with pytest.raises(grpc.RpcError) as failure:
            refit(running)
    finally:
        service.fit_run = real
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "a fit task failed on Ray: OSError: block file unreadable" in failure.value.details()
    assert [(v.version, v.status) for v in store.versions(CATALOG)] == before


class LoggedBlocks(ArrayRowBlocks):
    """Each read leaves a file named by when it started and ended (in microseconds)."""

    def __init__(self, array: np.ndarray, block_rows: int, log: str) -> None:
        super().__init__(array, block_rows)
        self.log = log

    def read_block(self, index: int) -> np.ndarray:
        began = time.time_ns() // 1000
        time.sleep(0.02)
        block = super().read_block(index)
        open(os.path.join(self.log, f"{began}-{time.time_ns() // 1000}-{index}"), "w").close()
        return block


def test_at_most_max_in_flight_tasks_run_at_once_and_the_result_is_the_same(
        engine: RayEngine, tmp_path) -> None:
    raw = make_vectors(3000, 16, seed=5)
    graph = build_graph(make_counts(3000, 20_000, seed=5), 3000)
    one_at_a_time = streamed_moments(LoggedBlocks(raw, 300, str(tmp_path)), graph,
                                     run=RayEngine(max_in_flight=1))
    reads = sorted(tuple(map(int, name.split("-")[:2])) for name in os.listdir(tmp_path))
    assert len(reads) > 20  # both passes, and the pair reads
    assert all(later[0] >= earlier[1] for earlier, later in zip(reads, reads[1:], strict=False))
    reference = compute_moments(raw, graph, backend="numpy")
    np.testing.assert_allclose(one_at_a_time.graph_variation, reference.graph_variation,
                               atol=2e-5 * np.abs(reference.scatter).max())
    with pytest.raises(ValueError, match="max_in_flight must be >= 1"):
        RayEngine(max_in_flight=0)
