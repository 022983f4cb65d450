"""The admin CLI (``python -m trainer_client.admin``) against the real server, store and encoder.

``main(argv)`` runs in-process against a ``ServerThread`` on a free port; the CLI only speaks
gRPC, so everything it prints comes from real responses.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

import trainer_client.admin as admin_module
from protos.tfllmer.v1 import embedding_service_pb2 as pb
from protos.tfllmer.v1 import embedding_service_pb2_grpc as pb_grpc
from server.stores import LocalStore
from tests.service_harness import ServerThread
from tests.test_tls import issue, make_ca
from trainer_client.admin import main

REPO = Path(__file__).resolve().parents[1]
MOVIES = [
    ("1", "Toy Story", "1995", "Animation Children's Comedy"),
    ("2", "GoldenEye", "1995", "Action Adventure Thriller"),
    ("3", "Four Rooms", "1995", "Thriller"),
    ("4", "Get Shorty", "1995", "Action Comedy Drama"),
    ("5", "Copycat", "1995", "Crime Drama Thriller"),
    ("6", "Twelve Monkeys", "1995", "Drama Sci-Fi"),
    ("7", "Babe", "1995", "Children's Comedy Drama"),
    ("8", "Dead Man Walking", "1995", "Drama"),
    ("9", "Richard III", "1995", "Drama War"),
    ("10", "Seven", "1995", "Crime Thriller"),
    ("11", "The Usual Suspects", "1995", "Crime Thriller"),
    ("12", "Mighty Aphrodite", "1995", "Comedy"),
    ("13", "Postino, Il", "1994", "Drama Romance"),
    ("14", "Mr. Holland's Opus", "1995", "Drama"),
    ("15", "French Twist", "1995", "Comedy Romance"),
    ("16", "From Dusk Till Dawn", "1996", "Action Comedy Crime Horror Thriller"),
]
ADMIN_TOKEN = "admin-token-0123456789abcdef"
TRAINER_TOKEN = "trainer-token-0123456789abcdef"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, pooled_encoder) -> Iterator[ServerThread]:
    store = LocalStore(tmp_path_factory.mktemp("admin-store") / "store.db")
    with ServerThread(store, pooled_encoder) as running:
        yield running


@pytest.fixture()
def admin(server: ServerThread, capsys: pytest.CaptureFixture[str], monkeypatch):
    """Run the CLI against ``server`` (address from TFLLMER_SERVER): (exit code, out, err)."""
    monkeypatch.setenv("TFLLMER_SERVER", server.address)
    monkeypatch.delenv("TFLLMER_TOKEN", raising=False)

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="module")
def item_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("recbole") / "movies.item"
    lines = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"]
    lines += ["\t".join(movie) for movie in MOVIES]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def counts(out: str) -> dict[str, int]:
    """The added/changed/unchanged/item_count table that ingest prints."""
    header, values = out.strip().splitlines()[-2:]
    return dict(zip(header.split(), map(int, values.split()), strict=True))


def push_counts(server: ServerThread, catalog: str) -> None:
    """Co-occurrence between movies that share a genre (what trainers would push)."""
    genres = [set(movie[3].split()) for movie in MOVIES]
    pairs = [(i, j) for i in range(len(MOVIES)) for j in range(i + 1, len(MOVIES))
             if genres[i] & genres[j]]
    rows, cols = np.array(pairs, dtype="<u4").T
    with server.channel() as channel:
        pb_grpc.EmbeddingServiceStub(channel).PushCooccurrence(iter([pb.PushCooccurrenceRequest(
            catalog=catalog, worker_id="test", batch_id="0", rows=rows.tobytes(),
            cols=cols.tobytes(), weights=np.ones(len(pairs), "<f4").tobytes())]))


def test_ingest_recbole_then_describe_as_text_and_json(admin, item_file: Path) -> None:
    code, out, _ = admin("ingest", "--catalog", "rb", "--recbole-item", str(item_file))
    assert code == 0
    assert counts(out) == {"added": 16, "changed": 0, "unchanged": 0, "item_count": 16}

    code, out, _ = admin("ingest", "--catalog", "rb", "--recbole-item", str(item_file),
                         "--batch", "5")
    assert code == 0
    assert counts(out) == {"added": 0, "changed": 0, "unchanged": 16, "item_count": 16}

    code, out, _ = admin("describe", "--catalog", "rb")
    assert code == 0
    assert "items           16" in out
    assert "sentence-transformers" in out and "(dim 384)" in out
    assert "active version  none" in out and "versions        none" in out

    code, out, _ = admin("describe", "--catalog", "rb", "--json")
    assert code == 0
    described = json.loads(out)
    assert described["catalog"] == "rb" and described["item_count"] == "16"  # int64 as string
    assert described["encoder"]["dim"] == 384 and described["active_version"] == 0
    assert described["versions"] == []


def test_ingest_csv_in_several_messages_and_calls(admin, tmp_path: Path) -> None:
    rows = [f'sku-{n},"Product {n}, size {n}",{n}' for n in range(12)]
    path = write_csv(tmp_path / "items.csv", "sku,title,price", rows)
    code, out, _ = admin("ingest", "--catalog", "csv-shop", "--csv", str(path),
                         "--id-column", "sku", "--text-column", "title",
                         "--batch", "2", "--per-call", "5")
    assert code == 0
    assert counts(out) == {"added": 12, "changed": 0, "unchanged": 0, "item_count": 12}

    rows[3] = 'sku-3,"Product 3, renamed",3'
    write_csv(path, "sku,title,price", rows)
    code, out, _ = admin("ingest", "--catalog", "csv-shop", "--csv", str(path),
                         "--id-column", "sku", "--text-column", "title")
    assert counts(out) == {"added": 0, "changed": 1, "unchanged": 11, "item_count": 12}

    rows[7] = "sku-7," + "x" * 10_000  # over the server's --max-text-chars: the 2nd call fails
    write_csv(path, "sku,title,price", rows + ["sku-12,Product 12,12"])
    code, out, err = admin("ingest", "--catalog", "csv-shop", "--csv", str(path),
                           "--id-column", "sku", "--text-column", "title", "--per-call", "5")
    assert code == 1 and out == ""
    assert err.splitlines()[0] == "note: the first 5 items were stored; rerun to finish"
    assert err.splitlines()[1].startswith("error: INVALID_ARGUMENT: ")
    described = json.loads(admin("describe", "--catalog", "csv-shop", "--json")[1])
    assert described["item_count"] == "12"  # the failed call stored nothing


def test_refit_stage_activate_rollback_and_similar(admin, server, item_file: Path) -> None:
    assert admin("ingest", "--catalog", "life", "--recbole-item", str(item_file))[0] == 0
    push_counts(server, "life")

    code, out, _ = admin("refit", "--catalog", "life", "--dim", "4", "--retention", "0.8",
                         "--transform", "log1p", "--stage")
    assert code == 0, out
    assert "life: version 1 staged" in out and "previous active none" in out
    for label in ("λ", "retained variance", "graph TV", "alignment@", "Rec-PCA", "PCA"):
        assert label in out
    assert "—" not in out  # counts were pushed: every diagnostic has a value

    code, out, _ = admin("activate", "--catalog", "life", "--version", "1")
    assert (code, out.strip()) == (0, "life: active version none → 1")

    code, out, _ = admin("refit", "--catalog", "life", "--dim", "6", "--lam", "0", "--activate")
    assert code == 0
    assert "life: version 2 active" in out and "previous active 1" in out

    code, out, _ = admin("activate", "--catalog", "life", "--version", "1")  # rollback
    assert (code, out.strip()) == (0, "life: active version 2 → 1")

    code, out, _ = admin("describe", "--catalog", "life")
    assert "active version  1" in out and "co-occurrence   " in out
    table = out.split("\n\n")[1].splitlines()
    assert table[0].split()[:3] == ["version", "status", "dim"]
    assert [line.split()[:3] for line in table[1:]] == [["1", "active", "4"],
                                                        ["2", "retired", "6"]]
    described = json.loads(admin("describe", "--catalog", "life", "--json")[1])
    assert described["active_version"] == 1
    assert [v["status"] for v in described["versions"]] == ["VERSION_STATUS_ACTIVE",
                                                            "VERSION_STATUS_RETIRED"]
    assert described["versions"][0]["diagnostics"]["lam"] > 0

    code, out, _ = admin("similar", "--catalog", "life", "--item", "10", "--k", "3")
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0] == "life version 1: nearest to '10'"
    assert lines[1].split() == ["rank", "score", "item", "text"] and len(lines) == 2 + 3
    neighbours = [line.split()[2] for line in lines[2:]]
    assert "10" not in neighbours and len(set(neighbours)) == 3
    titles = {movie[0]: movie[1] for movie in MOVIES}  # each neighbour printed with its text
    assert all(titles[line.split()[2]] in line for line in lines[2:])

    code, out, _ = admin("similar", "--catalog", "life", "--item", "10", "--k", "3",
                         "--dim", "4")
    assert code == 0 and out.startswith("life version 1, first 4 dims: nearest to '10'")

    code, out, _ = admin("similar", "--catalog", "life", "--item", "10", "--version", "2")
    assert code == 0 and out.startswith("life version 2:") and len(out.strip().splitlines()) == 12


def test_refit_detach_and_reattach_and_the_blocking_form(admin, server, item_file: Path
                                                        ) -> None:
    assert admin("ingest", "--catalog", "ops", "--recbole-item", str(item_file))[0] == 0
    code, out, _ = admin("refit", "--catalog", "ops", "--dim", "4", "--lam", "0", "--detach")
    name = out.strip()
    assert code == 0 and name.startswith("refits/") and len(out.splitlines()) == 1
    code, out, _ = admin("operation", "--name", name)  # re-attach: the outcome
    assert code == 0 and "ops: version 1 staged" in out and "retained variance" in out
    code, out, _ = admin("operation", "--name", name)  # again: the same, finished one
    assert code == 0 and "ops: version 1 staged" in out
    code, out, _ = admin("refit", "--catalog", "ops", "--dim", "4", "--lam", "0",
                         "--blocking", "--activate")
    assert code == 0 and "ops: version 2 active" in out

    code, _, err = admin("refit", "--catalog", "ops", "--dim", "4", "--lam", "0.5")
    assert code == 1 and "FAILED_PRECONDITION" in err and "co-occurrence" in err
    code, _, err = admin("operation", "--name", "refits/000000000000/" + "0" * 32)
    assert code == 1 and err.startswith("error: NOT_FOUND: no refit operation")
    code, _, err = admin("operation", "--name", "nonsense")
    assert code == 1 and "INVALID_ARGUMENT" in err


def test_a_refit_that_fails_on_the_server_prints_its_error(admin, server) -> None:
    with server.channel() as channel:  # every item the same text: no variance to fit
        server.stub(channel).UpsertItems(iter([pb.UpsertItemsRequest(
            catalog="same", items=[pb.Item(id=str(i), text="one text") for i in range(8)])]),
            timeout=60)
    code, out, err = admin("refit", "--catalog", "same", "--dim", "2", "--lam", "0")
    assert code == 1 and out == ""
    assert err.splitlines()[-1].startswith("error: FAILED_PRECONDITION: cannot fit catalog")


def test_server_errors_print_code_and_details_and_exit_1(admin, item_file: Path) -> None:
    for argv in (("describe", "--catalog", "no-such-catalog"),
                 ("refit", "--catalog", "no-such-catalog", "--lam", "0"),
                 ("activate", "--catalog", "no-such-catalog", "--version", "1"),
                 ("similar", "--catalog", "no-such-catalog", "--item", "1")):
        code, out, err = admin(*argv)
        assert code == 1 and out == ""
        assert err.startswith("error: NOT_FOUND: ") and "Traceback" not in err

    assert admin("ingest", "--catalog", "err", "--recbole-item", str(item_file))[0] == 0
    code, _, err = admin("refit", "--catalog", "err", "--retention", "1.5")
    assert code == 1 and err.startswith("error: INVALID_ARGUMENT: ")
    code, _, err = admin("refit", "--catalog", "err", "--dim", "4", "--lam", "1")
    assert code == 1 and err.startswith("error: FAILED_PRECONDITION: ")  # no counts yet
    code, _, err = admin("describe", "--catalog", "err", "--server", "127.0.0.1:1",
                         "--timeout", "2")
    assert code == 1 and err.startswith(("error: UNAVAILABLE: ", "error: DEADLINE_EXCEEDED: "))


def test_input_file_errors_are_clear(admin, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "items.csv", "id,title", ["a,Alpha", "b,Beta"])
    code, out, err = admin("ingest", "--catalog", "bad", "--csv", str(path))
    assert code == 2 and out == ""
    assert err.strip() == (f"error: {path}: no column 'text' (columns: id, title); "
                           "choose one with --text-column")
    code, _, err = admin("ingest", "--catalog", "bad", "--csv", str(path),
                         "--text-column", "title", "--id-column", "sku")
    assert code == 2 and "no column 'sku'" in err and "--id-column" in err

    duplicate = write_csv(tmp_path / "dup.csv", "id,text", ["a,Alpha", "a,Again"])
    code, _, err = admin("ingest", "--catalog", "bad", "--csv", str(duplicate))
    assert code == 2 and err.strip() == f"error: {duplicate}:3: duplicate id 'a'"

    code, _, err = admin("ingest", "--catalog", "bad", "--csv", str(tmp_path / "missing.csv"))
    assert code == 2 and "No such file" in err
    assert admin("describe", "--catalog", "bad")[2].startswith("error: NOT_FOUND")  # nothing sent


@pytest.mark.parametrize(
    "argv",
    [
        ["describe"],  # --catalog is required
        ["refit", "--catalog", "c"],  # --lam or --retention is required
        ["refit", "--catalog", "c", "--lam", "0", "--retention", "0.8"],
        ["refit", "--catalog", "c", "--lam", "0", "--top-k", "5"],  # needs --transform topk
        ["refit", "--catalog", "c", "--lam", "0", "--stage", "--activate"],
        ["ingest", "--catalog", "c"],  # a source file is required
        ["ingest", "--catalog", "c", "--csv", "a.csv", "--batch", "0"],
        ["activate", "--catalog", "c", "--version", "0"],
        ["frobnicate"],
    ],
)
def test_argument_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "usage: python -m trainer_client.admin" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("ingest", ["--catalog", "--recbole-item", "--csv", "--parquet", "--jsonl",
                    "--id-column", "--text-column", "--batch", "--per-call"]),
        ("refit", ["--catalog", "--dim", "--lam", "--retention", "--transform", "--top-k",
                   "--activate", "--stage", "--detach", "--blocking"]),
        ("operation", ["--name"]),
        ("activate", ["--catalog", "--version"]),
        ("describe", ["--catalog", "--json"]),
        ("similar", ["--catalog", "--item", "--k", "--version", "--dim"]),
    ],
)
def test_help_of_each_subcommand_documents_its_options(
    command: str, options: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    connection = ["--server", "--token", "--tls-ca", "--tls-cert", "--tls-key", "--timeout"]
    for option in options + connection:
        assert f"  {option}" in out, option
    assert "TFLLMER_SERVER" in out and "TFLLMER_TOKEN" in out


def test_module_help_runs_as_a_subprocess() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trainer_client.admin", "--help"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m trainer_client.admin")
    for command in ("ingest", "refit", "operation", "activate", "describe", "similar"):
        assert command in result.stdout


def test_tokens_from_flag_or_environment_are_sent_and_never_printed(
    pooled_encoder, tmp_path: Path, item_file: Path, capsys, monkeypatch
) -> None:
    store = LocalStore(tmp_path / "store.db")
    monkeypatch.delenv("TFLLMER_TOKEN", raising=False)
    with ServerThread(store, pooled_encoder, admin_tokens=ADMIN_TOKEN,
                      trainer_tokens=TRAINER_TOKEN) as secured:
        # Connection options may come before or after the command.
        base = ["--server", secured.address, "ingest", "--catalog", "auth",
                "--recbole-item", str(item_file)]
        assert main(base) == 1
        assert capsys.readouterr().err.startswith("error: UNAUTHENTICATED: ")
        assert main([*base, "--token", TRAINER_TOKEN]) == 1
        assert capsys.readouterr().err.startswith("error: PERMISSION_DENIED: ")
        assert main([*base, "--token", ADMIN_TOKEN]) == 0
        monkeypatch.setenv("TFLLMER_TOKEN", ADMIN_TOKEN)
        assert main(["describe", "--catalog", "auth", "--server", secured.address]) == 0
        out, err = capsys.readouterr()
        assert "items           16" in out
        for text in (out, err):
            assert ADMIN_TOKEN not in text and TRAINER_TOKEN not in text


def test_mutual_tls(pooled_encoder, tmp_path: Path, capsys) -> None:
    ca = make_ca("admin test CA")
    server_cert = issue(ca, "server", ExtendedKeyUsageOID.SERVER_AUTH)
    client_cert = issue(ca, "operator", ExtendedKeyUsageOID.CLIENT_AUTH)
    pem = {"ca.pem": ca.cert_pem, "server.pem": server_cert.cert_pem,
           "server.key": server_cert.key_pem, "client.pem": client_cert.cert_pem,
           "client.key": client_cert.key_pem}
    for name, data in pem.items():
        (tmp_path / name).write_bytes(data)
    files = {name: str(tmp_path / name) for name in pem}
    settings = {"tls_cert": files["server.pem"], "tls_key": files["server.key"],
                "tls_client_ca": files["ca.pem"]}
    with ServerThread(LocalStore(tmp_path / "store.db"), pooled_encoder, **settings) as secured:
        tls = ["--server", secured.address, "--tls-ca", files["ca.pem"]]
        mutual = [*tls, "--tls-cert", files["client.pem"], "--tls-key", files["client.key"]]
        assert main([*mutual, "describe", "--catalog", "tls"]) == 1
        assert capsys.readouterr().err.startswith("error: NOT_FOUND: ")  # the call got through
        assert main([*tls, "--timeout", "5", "describe", "--catalog", "tls"]) == 1
        assert "NOT_FOUND" not in capsys.readouterr().err  # no client certificate: refused
        with pytest.raises(SystemExit) as half_pair:  # argparse's exit, as for every bad flag
            main([*tls, "--tls-cert", files["client.pem"], "describe", "--catalog", "x"])
        assert half_pair.value.code == 2
        assert "--tls-cert and --tls-key go together" in capsys.readouterr().err


def test_a_bad_catalog_name_is_invalid_argument(admin) -> None:
    code, _, err = admin("similar", "--catalog", "Bad Name!", "--item", "1")
    assert code == 1 and err.startswith("error: INVALID_ARGUMENT: ")
    assert "Traceback" not in err


def test_ingest_reads_parquet_and_json_lines(admin, server, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    movies = {int(m[0]): f"{m[1]} ({m[2]}). Genres: {m[3]}" for m in MOVIES}
    table = pa.table({"movie_id": list(movies), "title": list(movies.values()),
                      "extra": [1.5] * len(movies)})
    pq.write_table(table, tmp_path / "movies.parquet", row_group_size=5)
    code, out, _ = admin("ingest", "--catalog", "from-parquet", "--parquet",
                         str(tmp_path / "movies.parquet"), "--id-column", "movie_id",
                         "--text-column", "title")
    assert code == 0 and out.splitlines()[1].split() == ["16", "0", "0", "16"]

    lines = [json.dumps({"id": str(i), "text": t, "more": [1]}) for i, t in movies.items()]
    (tmp_path / "movies.jsonl").write_text("\n".join(lines[:8]) + "\n\n"
                                           + "\n".join(lines[8:]) + "\n", encoding="utf-8")
    code, out, _ = admin("ingest", "--catalog", "from-parquet", "--jsonl",
                         str(tmp_path / "movies.jsonl"))
    assert code == 0 and out.splitlines()[1].split() == ["0", "0", "16", "16"]  # same texts
    with server.channel() as channel:
        described = server.stub(channel).DescribeCatalog(
            pb.DescribeCatalogRequest(catalog="from-parquet"), timeout=30)
    assert described.item_count == 16


@pytest.mark.parametrize("content, message", [
    ('{"id": "1", "text": "a"}\n{"id": "1", "text": "b"}\n', "(line 2): duplicate id '1'"),
    ('{"id": "1", "text": "a"}\n[1, 2]\n', ":2: each line must be a JSON object"),
    ('{"id": "1", "text": "a"}\nnot json\n', ":2: not JSON"),
    ('{"id": "1", "name": "a"}\n', "no field 'text' (fields: id, name)"),
    ('{"id": "1", "text": ""}\n', "(line 1): empty or non-text id or text"),
    ('{"id": 1.5, "text": "a"}\n', "(line 1): empty or non-text id or text"),
])
def test_bad_json_lines_are_refused_with_the_line(admin, tmp_path: Path, content: str,
                                                  message: str) -> None:
    path = tmp_path / "items.jsonl"
    path.write_text(content, encoding="utf-8")
    code, _, err = admin("ingest", "--catalog", "bad-jsonl", "--jsonl", str(path))
    assert code == 2 and message in err, err


def test_bad_parquet_files_are_refused(admin, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "not.parquet").write_bytes(b"PAR1 not really")
    code, _, err = admin("ingest", "--catalog", "bad-pq", "--parquet",
                         str(tmp_path / "not.parquet"))
    assert code == 2 and "not a Parquet file" in err
    pq.write_table(pa.table({"id": ["a", None], "text": ["x", "y"]}), tmp_path / "null.parquet")
    code, _, err = admin("ingest", "--catalog", "bad-pq", "--parquet",
                         str(tmp_path / "null.parquet"))
    assert code == 2 and "(row 2): empty or non-text id or text" in err
    code, _, err = admin("ingest", "--catalog", "bad-pq", "--parquet",
                         str(tmp_path / "null.parquet"), "--text-column", "title")
    assert code == 2 and "no column 'title' (columns: id, text)" in err


class _Unavailable(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE


def test_ingest_and_refit_retries_reuse_one_request_id(monkeypatch) -> None:
    """A retry after UNAVAILABLE sends the same request_id (so a call that committed before
    its answer was lost is not done twice); each logical call gets a fresh one."""
    monkeypatch.setattr(admin_module, "RETRY_BACKOFF_S", 0.0)
    sent: list[str] = []

    def flaky(request_id: str) -> str:
        sent.append(request_id)
        if len(sent) % 2:
            raise _Unavailable()
        return "ok"

    assert admin_module._idempotent(flaky) == "ok"
    assert admin_module._idempotent(flaky) == "ok"
    assert sent[0] == sent[1] != sent[2] == sent[3] and len(sent[0]) == 36
