"""The read-only web console on the metrics port, in headless Chromium (Debian's chromium
driven by npm's playwright-core) against the real server with MovieLens-100K, the real
encoder and real co-occurrence counts; and its JSON API refusing what it should."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.ports import free_port
from protos.tfllmer.v1 import embedding_service_pb2 as pb
from server.stores import LocalStore
from tests.node_clients import REPO, node_modules
from tests.service_harness import ServerThread
from trainer_client.cooccurrence import window_pairs
from trainer_client.sequences import leave_one_out

pytestmark = pytest.mark.slow
CATALOG = "ml-100k"
TOKEN = "console-trainer-token-0123456789"
ADMIN = "console-admin-token-0123456789"
# Where the screenshot goes: a temporary folder, or (to refresh the README's picture)
# TFLLMER_CONSOLE_SCREENSHOT=bench/results/console.png.
SCREENSHOT_ENV = "TFLLMER_CONSOLE_SCREENSHOT"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="module")
def console(tmp_path_factory, pooled_encoder, movielens_100k) -> Iterator[str]:
    """A server with ML-100K ingested, counts pushed and two versions; its console URL."""
    port = free_port()
    store = LocalStore(tmp_path_factory.mktemp("console") / "store.db")
    with ServerThread(store, pooled_encoder, metrics_port=port, trainer_tokens=[TOKEN],
                      admin_tokens=[ADMIN]) as server, server.channel() as channel:
        stub = server.stub(channel)
        metadata = (("authorization", f"Bearer {ADMIN}"),)
        catalog = movielens_100k.catalog
        items = [pb.Item(id=i, text=t) for i, t in zip(catalog.item_ids, catalog.texts,
                                                       strict=True)]
        stub.UpsertItems(iter([pb.UpsertItemsRequest(catalog=CATALOG, items=items[s:s + 500])
                               for s in range(0, len(items), 500)]), metadata=metadata)
        lo, hi, weights = window_pairs(leave_one_out(movielens_100k.sequences).train, window=3)
        stub.PushCooccurrence(iter([pb.PushCooccurrenceRequest(
            catalog=CATALOG, worker_id="console", batch_id=str(s),
            rows=lo[s:s + 50_000].astype("<u4").tobytes(),
            cols=hi[s:s + 50_000].astype("<u4").tobytes(),
            weights=weights[s:s + 50_000].astype("<f4").tobytes())
            for s in range(0, len(lo), 50_000)]), metadata=metadata)
        for parameters, activate in ((pb.FitParameters(dim=64, lam=0.0), False),
                                     (pb.FitParameters(dim=64, retention_budget=0.8), True)):
            stub.RefitProjection(pb.RefitProjectionRequest(
                catalog=CATALOG, parameters=parameters, activate=activate),
                metadata=metadata, timeout=300)
        yield f"http://127.0.0.1:{port}"


def get(url: str, token: str | None = TOKEN) -> tuple[int, dict]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_the_console_in_headless_chromium_shows_catalogs_versions_and_texts(
        console, tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/run does)")
    modules = node_modules("playwright-core")
    screenshot = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "console.png").resolve()
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["node", str(REPO / "tests" / "js" / "console_check.js"), console, TOKEN, CATALOG,
         "1", str(screenshot)], capture_output=True, text=True, timeout=180, check=False,
        env={**os.environ, "NODE_PATH": str(modules), "CHROMIUM": CHROMIUM})
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout)
    assert seen["without_token"] == "a valid bearer token is needed"
    assert seen["catalogs"] == [CATALOG] and seen["title"] == CATALOG
    assert [row[:2] for row in seen["versions"]] == [["1", "staged"], ["2", "active"]]
    assert seen["chart_points"] == 4  # a PCA and a Rec-PCA point per version
    assert seen["query"].startswith("v2 · nearest to 1: Toy Story (1995)")
    assert len(seen["neighbours"]) == 10
    assert all(n["text"] and n["item_id"] != "1" for n in seen["neighbours"])
    assert seen["neighbours"][0]["item_id"] in seen["browsed_query"]
    assert seen["page_errors"] == []
    assert screenshot.stat().st_size > 10_000


def test_the_api_answers_with_the_tokens_of_the_grpc_service(console) -> None:
    status, catalogs = get(f"{console}/console/api/catalogs")
    assert status == 200 and catalogs["catalogs"][0]["name"] == CATALOG
    assert catalogs["catalogs"][0]["active_version"] == 2
    assert get(f"{console}/console/api/catalogs", token=ADMIN)[0] == 200
    for token in (None, "wrong-token-0123456789", ""):
        status, body = get(f"{console}/console/api/catalogs", token=token)
        assert (status, body) == (401, {"error": "a valid bearer token is needed"})
    status, detail = get(f"{console}/console/api/catalogs/{CATALOG}")
    assert status == 200 and detail["item_count"] == 1682
    diagnostics = detail["versions"][1]["diagnostics"]
    assert diagnostics["alignment"] is not None and diagnostics["retention_budget"] == 0.8
    status, similar = get(f"{console}/console/api/catalogs/{CATALOG}/similar?item=50&k=3")
    assert status == 200 and similar["query"]["text"].startswith("Star Wars (1977)")
    assert [bool(hit["text"]) for hit in similar["items"]] == [True] * 3


@pytest.mark.parametrize("path, status", [
    ("/console/api/catalogs/no-such", 404),
    ("/console/api/catalogs/Bad%20Name!", 400),
    (f"/console/api/catalogs/{CATALOG}/similar?item=nope", 404),
    (f"/console/api/catalogs/{CATALOG}/similar?item=1&k=0", 200),  # 0 means the default
    (f"/console/api/catalogs/{CATALOG}/similar?item=1&k=100000", 400),
    (f"/console/api/catalogs/{CATALOG}/similar?item=1&k=ten", 400),
    (f"/console/api/catalogs/{CATALOG}/similar?item=1&dim=65", 400),
    ("/console/api/elsewhere", 404),
])
def test_the_api_refuses_bad_requests_precisely(console, path: str, status: int) -> None:
    code, body = get(console + path)
    assert code == status, body
    if status != 200:
        assert set(body) == {"error"} and len(body["error"]) < 300


def test_the_page_is_static_and_metrics_stay_on_the_same_port(console) -> None:
    with urllib.request.urlopen(f"{console}/console/", timeout=30) as response:
        page = response.read().decode()
        assert response.headers["Content-Type"].startswith("text/html")
        assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    assert CATALOG not in page  # no data without a token
    with urllib.request.urlopen(f"{console}/metrics", timeout=30) as response:
        assert "grpc_server_handled_total" in response.read().decode()
    request = urllib.request.Request(f"{console}/console/api/catalogs", method="POST", data=b"")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 405
