"""``python -m trainer_client.admin``: the operator CLI of the embedding service.

It is a client of the wire contract like the trainer worker, and reads catalog files with
the same readers, so it lives on the client side and installs without the server's
dependencies (an ops machine needs only the base distribution).

Subcommands: ``ingest`` (a RecBole ``.item`` file, CSV, Parquet or JSON Lines), ``refit``
(a server-side operation with a progress bar), ``operation`` (re-attach to one),
``activate`` (also rollback), ``describe`` and ``similar``. Connection options
(``protos.connection``) may come before or after the subcommand. The admin token is read
from ``--token`` or ``TFLLMER_TOKEN`` and is never printed. Exit codes: 0 success, 1 the
server refused the call (``error: CODE: details``), 2 bad arguments or input files.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from tqdm import tqdm

from protos import connection
from protos.enums import TRANSFORM, VERSION_STATUS
from protos.tfllmer.v1 import embedding_service_pb2 as pb
from protos.tfllmer.v1 import embedding_service_pb2_grpc as pb_grpc
from trainer_client import item_files, refit_follow
from trainer_client.recbole_data import read_catalog

MISSING = "—"
Stub = pb_grpc.EmbeddingServiceStub
CallOptions = dict[str, Any]  # timeout and metadata of every call
T = TypeVar("T")


class CliError(Exception):
    """A problem with the arguments or input files: printed, exit code 2."""


class OperationFailed(Exception):
    """A refit operation ended with an error: printed like a refused call, exit code 1."""

    def __init__(self, code: str, details: str) -> None:
        super().__init__(f"{code}: {details}")


# ---------------------------------------------------------------- connection


def _channel(target: connection.Connection) -> grpc.Channel:
    try:
        return target.channel()
    except (OSError, ValueError) as error:
        raise CliError(f"TLS: {error}") from error


def _call_options(args: argparse.Namespace, target: connection.Connection) -> CallOptions:
    """Deadline and bearer metadata for every call of this command."""
    timeout = getattr(args, "timeout", None) or args.default_timeout
    return {"timeout": timeout, "metadata": target.metadata()}


# ---------------------------------------------------------------- input files


def read_csv_items(path: Path, id_column: str, text_column: str) -> list[tuple[str, str]]:
    """(id, text) pairs of a CSV file with a header row; ids must be unique, neither empty."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            for column, flag in ((id_column, "--id-column"), (text_column, "--text-column")):
                if column not in columns:
                    raise CliError(
                        f"{path}: no column {column!r} (columns: {', '.join(columns) or 'none'});"
                        f" choose one with {flag}"
                    )
            items, seen = [], set()
            for row in reader:
                item_id, text = (row[id_column] or "").strip(), (row[text_column] or "").strip()
                if not item_id or not text:
                    raise CliError(f"{path}:{reader.line_num}: empty {id_column} or {text_column}")
                if item_id in seen:
                    raise CliError(f"{path}:{reader.line_num}: duplicate id {item_id!r}")
                seen.add(item_id)
                items.append((item_id, text))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise CliError(f"{path}: {error}") from error
    return items


def read_recbole_items(path: Path) -> list[tuple[str, str]]:
    """(id, text) pairs of a RecBole ``.item`` file, texts as "Title (year). Genres: …"."""
    try:
        catalog = read_catalog(path)
    except (OSError, ValueError, KeyError) as error:
        raise CliError(f"{path}: {error}") from error
    return list(zip(catalog.item_ids, catalog.texts, strict=True))


# ---------------------------------------------------------------- formatting


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell; numbers (first char a digit) right-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            str(c).rjust(w) if str(c)[:1].isdigit() else str(c).ljust(w)
            for c, w in zip(cells, widths, strict=True)
        ).rstrip()

    return "\n".join([line(headers), *(line(row) for row in rows)])


def _num(message: Message, field: str, digits: int = 4) -> str:
    """A float field, or a dash when it is an optional field left unset."""
    optional = message.DESCRIPTOR.fields_by_name[field].has_presence
    if optional and not message.HasField(field):
        return MISSING
    return f"{getattr(message, field):.{digits}g}"


def _status(status: int) -> str:
    return VERSION_STATUS.name(status) or f"unknown ({status})"


def _time(stamp: Timestamp) -> str:
    if not (stamp.seconds or stamp.nanos):
        return MISSING
    when = stamp.ToDatetime(tzinfo=datetime.UTC).replace(microsecond=0)
    return when.isoformat().replace("+00:00", "Z")


def _strength(parameters: pb.FitParameters) -> str:
    if parameters.WhichOneof("strength") == "retention_budget":
        return f"retention {parameters.retention_budget:g}"
    return f"λ {parameters.lam:g}"


def format_diagnostics(d: pb.FitDiagnostics) -> str:
    """Rec-PCA against plain PCA of the same vectors, one measure per row."""
    rows = [
        ["λ", _num(d, "lam"), "0"],
        ["retained variance", _num(d, "retained_variance"), _num(d, "pca_retained_variance")],
        ["graph TV (lower = smoother)", _num(d, "graph_tv"), _num(d, "pca_graph_tv")],
        [f"alignment@{d.alignment_k}", _num(d, "alignment"), _num(d, "pca_alignment")],
        ["whitening p", _num(d, "whitening"), _num(d, "whitening")],
    ]
    return _table(["", "Rec-PCA", "PCA"], rows)


def format_catalog(c: pb.DescribeCatalogResponse) -> str:
    """A readable summary of DescribeCatalog."""
    co = c.cooccurrence
    lines = [
        f"catalog         {c.catalog}",
        f"items           {c.item_count}",
        f"encoder         {c.encoder.name} (dim {c.encoder.dim})",
        f"active version  {c.active_version or 'none'}",
        f"co-occurrence   {co.pairs} pairs, total weight {co.total_weight:g}, {co.batches} batches",
    ]
    if not c.versions:
        return "\n".join([*lines, "versions        none (run refit)"])
    headers = ["version", "status", "dim", "λ", "retained", "alignment", "items", "created"]
    rows = [
        [
            str(v.version),
            _status(v.status),
            str(v.parameters.dim),
            _num(v.diagnostics, "lam"),
            _num(v.diagnostics, "retained_variance"),
            _num(v.diagnostics, "alignment"),
            str(v.item_count),
            _time(v.create_time),
        ]
        for v in c.versions
    ]
    return "\n".join([*lines, "", _table(headers, rows)])


# ---------------------------------------------------------------- subcommands


# Attempts of an ingest or refit call that failed with UNAVAILABLE (a restarting server, a
# lost connection). Each logical call carries one request_id, so a retry of a call that did
# commit returns its first outcome instead of doing the work twice.
ATTEMPTS = 3
RETRY_BACKOFF_S = 1.0


def _idempotent(send: Callable[[str], T]) -> T:
    """``send(request_id)`` with one fresh request id, retried on UNAVAILABLE."""
    request_id = str(uuid.uuid4())
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return send(request_id)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE or attempt == ATTEMPTS:
                raise
            print(f"note: {error.code().name}; retrying ({attempt}/{ATTEMPTS - 1})",
                  file=sys.stderr)
            time.sleep(RETRY_BACKOFF_S * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def cmd_ingest(stub: Stub, args: argparse.Namespace, call: CallOptions) -> None:
    """Upsert every item of the file, --batch items per message, --per-call items per call."""
    source = args.recbole_item or args.csv or args.parquet or args.jsonl
    try:
        if args.recbole_item:
            items = read_recbole_items(args.recbole_item)
        elif args.parquet:
            items = item_files.read_parquet_items(args.parquet, args.id_column, args.text_column)
        elif args.jsonl:
            items = item_files.read_jsonl_items(args.jsonl, args.id_column, args.text_column)
        else:
            items = read_csv_items(args.csv, args.id_column, args.text_column)
    except item_files.ItemFileError as error:
        raise CliError(str(error)) from error
    if not items:
        raise CliError(f"{source}: no items")
    totals = dict.fromkeys(("added", "changed", "unchanged", "item_count"), 0)
    # disable=None: a bar on a terminal only, none in logs and pipes.
    with tqdm(total=len(items), unit="item", desc="upload", file=sys.stderr, disable=None) as bar:
        for start in range(0, len(items), args.per_call):
            part = items[start : start + args.per_call]
            try:
                def upsert(request_id: str, part: list[tuple[str, str]] = part
                           ) -> pb.UpsertItemsResponse:
                    messages = _upsert_messages(args.catalog, part, args.batch, bar, request_id)
                    return stub.UpsertItems(messages, **call)

                reply = _idempotent(upsert)
            except grpc.RpcError:
                if start:  # earlier calls committed; re-sent items count as unchanged
                    print(
                        f"note: the first {start} items were stored; rerun to finish",
                        file=sys.stderr,
                    )
                raise
            for key in ("added", "changed", "unchanged"):
                totals[key] += getattr(reply, key)
            totals["item_count"] = reply.item_count
    print(_table(list(totals), [[str(value) for value in totals.values()]]))


def _upsert_messages(
    catalog: str, items: list[tuple[str, str]], batch: int, bar: tqdm, request_id: str = ""
) -> Iterator[pb.UpsertItemsRequest]:
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        yield pb.UpsertItemsRequest(
            catalog=catalog, items=[pb.Item(id=i, text=t) for i, t in chunk],
            request_id=request_id if start == 0 else "",
        )
        bar.update(len(chunk))
    bar.set_postfix_str("server encoding new and changed texts…")


def cmd_refit(stub: Stub, args: argparse.Namespace, call: CallOptions) -> None:
    """Fit a new version, staged unless --activate, and show its diagnostics. By default the
    refit runs as a server-side operation followed with a progress bar (--detach: print
    its name and return; --blocking: one unary call)."""
    parameters = pb.FitParameters(
        dim=args.dim,
        graph=pb.GraphOptions(transform=TRANSFORM.number(args.transform), top_k=args.top_k or 0),
        whitening=args.whitening,
    )
    if args.lam is not None:
        parameters.lam = args.lam
    else:
        parameters.retention_budget = args.retention

    def request(request_id: str) -> pb.RefitProjectionRequest:
        return pb.RefitProjectionRequest(catalog=args.catalog, parameters=parameters,
                                         activate=args.activate, request_id=request_id)

    if args.blocking:
        _print_refit(args.catalog, _idempotent(
            lambda request_id: stub.RefitProjection(request(request_id), **call)))
        return
    started = _idempotent(lambda request_id: stub.StartRefit(
        pb.StartRefitRequest(refit=request(request_id)), **call)).operation
    if args.detach:
        print(started.name)
        return
    print(f"refit operation {started.name}", file=sys.stderr)
    _finish_operation(stub, started.name, call)


def cmd_operation(stub: Stub, args: argparse.Namespace, call: CallOptions) -> None:
    """Re-attach to a refit operation: its progress bar, then its outcome."""
    _finish_operation(stub, args.name, call)


def _finish_operation(stub: Stub, name: str, call: CallOptions) -> None:
    try:
        operation = refit_follow.follow(stub, name, call["metadata"])
    except KeyboardInterrupt:
        print(f"the refit goes on on the server; re-attach with: operation --name {name}",
              file=sys.stderr)
        raise
    if operation.WhichOneof("result") == "error":
        code = grpc.StatusCode
        names = {status.value[0]: status.name for status in code}
        raise OperationFailed(names.get(operation.error.code, str(operation.error.code)),
                              operation.error.message)
    _print_refit(operation.catalog, operation.response)


def _print_refit(catalog: str, reply: pb.RefitProjectionResponse) -> None:
    v = reply.version
    print(
        f"{catalog}: version {v.version} {_status(v.status)} "
        f"(dim {v.parameters.dim}, {_strength(v.parameters)}, {v.item_count} items, "
        f"fit {v.fit_seconds:.2f} s; previous active {reply.previous_active_version or 'none'})"
    )
    print(format_diagnostics(v.diagnostics))


def cmd_activate(stub: Stub, args: argparse.Namespace, call: CallOptions) -> None:
    """Switch the active version (an older one rolls back)."""
    reply = stub.ActivateVersion(
        pb.ActivateVersionRequest(catalog=args.catalog, version=args.version), **call
    )
    print(
        f"{args.catalog}: active version "
        f"{reply.previous_active_version or 'none'} → {reply.active_version}"
    )


def cmd_describe(stub: Stub, args: argparse.Namespace, call: CallOptions) -> None:
    """Print the catalog summary, or the raw response as JSON."""
    reply = stub.DescribeCatalog(pb.DescribeCatalogRequest(catalog=args.catalog), **call)
    if args.json:
        print(
            json_format.MessageToJson(
                reply,
                preserving_proto_field_name=True,
                always_print_fields_with_no_presence=True,
                ensure_ascii=False,
            )
        )
    else:
        print(format_catalog(reply))


def cmd_similar(stub: Stub, args: argparse.Namespace, call: CallOptions) -> None:
    """The k nearest items of one item in a version's served space, with their texts."""
    reply = stub.SimilarItems(
        pb.SimilarItemsRequest(
            catalog=args.catalog, version=args.version, item_id=args.item, k=args.k,
            dim=args.dim, include_texts=True,
        ),
        **call,
    )
    space = f", first {args.dim} dims" if args.dim else ""
    print(f"{args.catalog} version {reply.version}{space}: nearest to {args.item!r}")
    rows = [[str(r), f"{n.score:.4f}", n.item_id, _clip(n.text)]
            for r, n in enumerate(reply.items, start=1)]
    print(_table(["rank", "score", "item", "text"], rows))


def _clip(text: str, width: int = 80) -> str:
    """One line of at most ``width`` characters (texts may be long or multi-line)."""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


# ---------------------------------------------------------------- parser


def _at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    parse.__name__ = "integer"  # argparse names the type in its error messages
    return parse


_positive, _natural = _at_least(1), _at_least(0)


def _connection_options() -> argparse.ArgumentParser:
    """Options accepted before and after the subcommand (SUPPRESS: unset unless given)."""
    parent = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    group = parent.add_argument_group("connection")
    connection.add_arguments(group, token_help="admin bearer token", suppress=True)
    group.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="deadline of each call [default 3600 for ingest and refit, 60 otherwise]",
    )
    return parent


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    common = _connection_options()
    parser = argparse.ArgumentParser(
        prog="python -m trainer_client.admin",
        description="Operator CLI of the TF-LLMER embedding service, over gRPC.",
        epilog="Exit codes: 0 done, 1 the server refused the call, 2 bad arguments or input. "
        "Connection options may also follow the command.",
        parents=[common],
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Callable, help_text: str, timeout: float = 60.0,
                catalog: bool = True):
        sub = commands.add_parser(name, parents=[common], help=help_text, description=help_text)
        sub.set_defaults(handler=handler, default_timeout=timeout)
        if catalog:
            sub.add_argument("--catalog", required=True, help="catalog name, e.g. ml-1m")
        return sub

    ingest = command(
        "ingest", cmd_ingest, "Add or update a catalog's items from a file.", timeout=3600
    )
    source = ingest.add_mutually_exclusive_group(required=True)
    source.add_argument("--recbole-item", type=Path, metavar="PATH", help="RecBole .item file")
    source.add_argument("--csv", type=Path, metavar="PATH", help="CSV file with a header row")
    source.add_argument("--parquet", type=Path, metavar="PATH",
                        help="Parquet file (needs pyarrow: the parquet extra)")
    source.add_argument("--jsonl", type=Path, metavar="PATH",
                        help="JSON Lines file: one object per line")
    ingest.add_argument("--id-column", default="id",
                        help="CSV/Parquet column or JSON field of item ids [id]")
    ingest.add_argument("--text-column", default="text",
                        help="CSV/Parquet column or JSON field of item texts [text]")
    ingest.add_argument("--batch", type=_positive, default=1000, help="items per message [1000]")
    ingest.add_argument(
        "--per-call",
        type=_positive,
        default=100_000,
        help="items per UpsertItems call, each atomic; at most the server's "
        "--max-items-per-upsert [100000]",
    )

    refit = command(
        "refit", cmd_refit, "Fit a new Rec-PCA version; staged unless --activate.", timeout=3600
    )
    refit.add_argument("--dim", type=_positive, default=64, help="served dimension [64]")
    strength = refit.add_mutually_exclusive_group(required=True)
    strength.add_argument("--lam", type=float, help="λ given directly (0 = plain PCA)")
    strength.add_argument(
        "--retention",
        type=float,
        metavar="R",
        help="largest λ keeping R × PCA's retained variance, R in (0, 1]; 0.8 is a good start",
    )
    refit.add_argument(
        "--transform",
        choices=sorted(TRANSFORM.names),
        default="identity",
        help="co-occurrence graph transform [identity]",
    )
    refit.add_argument(
        "--top-k",
        type=_positive,
        metavar="K",
        help="neighbours kept per item with --transform topk [server default 50]",
    )
    follow = refit.add_mutually_exclusive_group()
    follow.add_argument("--detach", action="store_true",
                        help="start the refit, print its operation name and return "
                        "(follow it later with `operation --name NAME`)")
    follow.add_argument("--blocking", action="store_true",
                        help="one unary RefitProjection call, no progress (small catalogs)")
    refit.add_argument(
        "--whitening",
        type=float,
        metavar="P",
        help="whitening exponent p in [0, 1] of the served subspace (0 = none, 1 = full) "
        "[server default]",
    )
    mode = refit.add_mutually_exclusive_group()
    mode.add_argument("--activate", action="store_true", help="activate the new version")
    mode.add_argument(
        "--stage",
        action="store_false",
        dest="activate",
        default=False,
        help="only stage it (the default)",
    )

    operation = command("operation", cmd_operation,
                        "Re-attach to a refit operation: progress, then its outcome.",
                        timeout=3600, catalog=False)
    operation.add_argument("--name", required=True, metavar="NAME",
                           help="operation name, as refit --detach printed it")

    activate = command("activate", cmd_activate, "Activate a version; an older one rolls back.")
    activate.add_argument("--version", type=_positive, required=True, help="version to activate")

    describe = command("describe", cmd_describe, "Show a catalog, its versions and counts.")
    describe.add_argument("--json", action="store_true", help="print the response as JSON")

    similar = command("similar", cmd_similar, "List the items nearest to an item.")
    similar.add_argument("--item", required=True, metavar="ID", help="item id to query")
    similar.add_argument("--k", type=_positive, default=10, help="neighbours [10]")
    similar.add_argument("--version", type=_natural, default=0, help="version [0 = active]")
    similar.add_argument("--dim", type=_natural, default=0,
                         help="search the first DIM components only [0 = the version's dim]")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; returns the exit code (argparse exits 2 on its own errors)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "top_k", None) and args.transform != "topk":
        parser.error("--top-k needs --transform topk")
    connection.check_arguments(parser, args)
    target = connection.Connection.from_args(args)
    try:
        with _channel(target) as channel:
            args.handler(pb_grpc.EmbeddingServiceStub(channel), args, _call_options(args, target))
    except CliError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except grpc.RpcError as error:
        print(f"error: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    except OperationFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
