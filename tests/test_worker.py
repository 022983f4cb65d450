"""The worker CLI against the real service on ML-100K: training beats popularity, torchrun
ranks push exactly the single-process counts, and the CLI's outputs are where it says."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from protos.tfllmer.v1 import embedding_service_pb2 as pb
from server.stores import RedisStore
from tests.service_harness import ServerThread
from trainer_client.cooccurrence import count_cooccurrences
from trainer_client.datasets import dataset_dir
from trainer_client.sequences import leave_one_out
from trainer_client.worker import main, parse_args

pytestmark = pytest.mark.slow
CATALOG = "worker-ml-100k"


@pytest.fixture(scope="module")
def service(
    redis_server, pooled_encoder, movielens_100k
) -> Iterator[tuple[ServerThread, RedisStore]]:
    """ML-100K ingested, version 1 fitted without counts (plain PCA), as before any training."""
    store = RedisStore(redis_server.url, key_prefix="worker-test")
    with ServerThread(store, pooled_encoder) as server, server.channel() as channel:
        stub = server.stub(channel)
        catalog = movielens_100k.catalog
        pairs = zip(catalog.item_ids, catalog.texts, strict=True)
        items = [pb.Item(id=item_id, text=text) for item_id, text in pairs]
        stub.UpsertItems(iter([pb.UpsertItemsRequest(catalog=CATALOG, items=items)]))
        stub.RefitProjection(pb.RefitProjectionRequest(
            catalog=CATALOG, activate=True, parameters=pb.FitParameters(dim=64)))
        yield server, store


def test_sasrec_on_served_vectors_beats_popularity_and_writes_its_outputs(
    service, tmp_path: Path
) -> None:
    server, _ = service
    out = tmp_path / "run"
    code = main(["--server", server.address, "--catalog", CATALOG,
                 "--data", str(dataset_dir("ml-100k")), "--backbone", "sasrec", "--mode", "init",
                 "--epochs", "6", "--patience", "6", "--no-push", "--no-progress",
                 "--out", str(out)])
    assert code == 0
    report = json.loads((out / "metrics.json").read_text())
    assert (out / "loss.png").stat().st_size > 10_000
    valid = report["result"]["best_valid"]["NDCG@10"]
    assert valid > report["popularity"]["valid"]["NDCG@10"]
    assert report["normalized"] is True and report["version"] == 1
    assert report["result"]["losses"][-1] < report["result"]["losses"][0]


def test_torchrun_ranks_push_exactly_the_single_process_counts(
    service, movielens_100k, tmp_path: Path
) -> None:
    server, store = service
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun is not None
    before = store.read_counts(CATALOG, 1682)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TFLLMER_")}
    done = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "trainer_client.worker",
         "--server", server.address, "--catalog", CATALOG, "--data",
         str(dataset_dir("ml-100k")), "--mode", "id", "--epochs", "1", "--no-progress",
         "--worker-id", "ddp", "--out", str(tmp_path / "ddp")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    pushed = store.read_counts(CATALOG, 1682) - before
    expected = count_cooccurrences(leave_one_out(movielens_100k.sequences).train, 1682, window=3)
    assert (pushed != expected).nnz == 0
    report = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert report["world_size"] == 2


def test_help_documents_every_option(capsys) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = capsys.readouterr().out
    for option in ("--server", "--token", "--tls-ca", "--catalog", "--version", "--data",
                   "--csv-columns", "--push", "--window", "--worker-id", "--backbone", "--mode",
                   "--dim", "--normalize", "--temperature", "--max-len", "--epochs",
                   "--patience", "--batch-size", "--lr", "--seed", "--mask-seen", "--out"):
        assert option in text
