"""Regenerate the Python stubs of the wire contract: ``python -m protos.generate``.

For every ``.proto`` file under ``protos/`` this writes, next to it, ``*_pb2.py`` (messages),
``*_pb2.pyi`` (type stubs) and ``*_pb2_grpc.py`` (client stub and servicer base), with the
``grpc_tools.protoc`` of the pinned ``grpcio-tools`` (the ``dev`` extra). The output is
deterministic: the same sources and tool version give the same bytes.

protoc runs with ``protos/`` as its include root, so each file keeps its canonical name,
e.g. ``tfllmer/v1/embedding_service.proto`` for package ``tfllmer.v1`` (the name that server
reflection and other languages' code generators see). protoc therefore names the Python
modules ``tfllmer.v1.*``; this project ships them inside the ``protos`` package, so two
generated module paths are rewritten to ``protos.tfllmer.v1.*``: the imports between
generated modules (``*_pb2_grpc.py`` imports its ``*_pb2``) and the module name given to the
message classes (their ``__module__``, which pickle uses). Nothing else is edited.

``python -m protos.generate --check`` regenerates into a temporary directory and exits with
status 1, naming the stale files, when the committed stubs differ.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from importlib import metadata, resources
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PACKAGE = __package__ or "protos"  # the Python package that holds PROTO_ROOT
COMMAND = "python -m protos.generate"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_files(root: Path = PROTO_ROOT) -> list[str]:
    """The ``.proto`` sources under ``root``, as sorted POSIX paths relative to it."""
    return sorted(path.relative_to(root).as_posix() for path in root.rglob("*.proto"))


def generated_files(root: Path = PROTO_ROOT) -> list[str]:
    """The generated stub files under ``root``, as sorted POSIX paths relative to it."""
    return sorted(
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.is_file() and path.name.endswith(GENERATED_SUFFIXES)
    )


def tools_version() -> str:
    return metadata.version("grpcio-tools")


def _protoc(args: list[str]) -> None:
    try:
        from grpc_tools import protoc
    except ImportError as error:
        raise SystemExit(
            "grpc_tools is not installed: install the dev extra (pip install -e '.[dev]')"
        ) from error
    well_known = resources.files("grpc_tools") / "_proto"  # google/protobuf/*.proto
    status = protoc.main(["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{well_known}", *args])
    if status != 0:
        raise RuntimeError(f"grpc_tools.protoc failed with status {status}")


def _qualify(source: str, name: str, top_levels: set[str]) -> str:
    """Rewrite protoc's module paths ``tfllmer.v1.x`` to ``protos.tfllmer.v1.x``."""
    tops = "|".join(sorted(map(re.escape, top_levels)))
    source = re.sub(rf"^(from|import) ((?:{tops})[.\s])", rf"\1 {PACKAGE}.\2", source, flags=re.M)
    if name.endswith("_pb2.py"):
        source, count = re.subn(
            rf"(BuildTopDescriptorsAndMessages\(DESCRIPTOR, ')((?:{tops})\.)",
            rf"\1{PACKAGE}.\2",
            source,
        )
        if count != 1:  # a new protoc writes this line differently: update this function
            raise RuntimeError(f"{name}: expected one BuildTopDescriptorsAndMessages call")
    return source


def generate(out_dir: Path = PROTO_ROOT) -> list[str]:
    """Generate the stubs of every ``.proto`` under ``protos/`` into ``out_dir`` (mirroring
    the source layout) and return their relative paths. Stubs under ``out_dir`` that no
    source produces any more are removed; unchanged files are not rewritten."""
    sources = proto_files()
    if not sources:
        raise RuntimeError(f"no .proto files under {PROTO_ROOT}")
    top_levels = {source.split("/", 1)[0] for source in sources}
    with tempfile.TemporaryDirectory(prefix="protoc-") as scratch:
        outputs = [f"--{kind}_out={scratch}" for kind in ("python", "pyi", "grpc_python")]
        _protoc([*outputs, *sources])
        scratch_root = Path(scratch)
        produced = generated_files(scratch_root)
        contents = {
            name: _qualify((scratch_root / name).read_text("utf-8"), name, top_levels)
            for name in produced
        }
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in generated_files(out_dir):
        if name not in contents:
            (out_dir / name).unlink()
    for name, text in contents.items():
        target = out_dir / name
        data = text.encode("utf-8")
        if not target.is_file() or target.read_bytes() != data:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    return produced


def descriptor_set(include_source_info: bool = True) -> bytes:
    """A serialized ``FileDescriptorSet`` of every ``.proto`` under ``protos/``; with
    ``include_source_info`` it keeps the comments (the generated ``*_pb2`` modules drop
    them), which the tests use to check that every element is documented."""
    with tempfile.TemporaryDirectory(prefix="protoc-") as scratch:
        target = Path(scratch) / "descriptors.binpb"
        flags = ["--include_source_info"] if include_source_info else []
        _protoc([f"--descriptor_set_out={target}", *flags, *proto_files()])
        return target.read_bytes()


def stale_files(root: Path = PROTO_ROOT) -> list[str]:
    """Relative paths of stubs under ``root`` that are missing, different or left over
    compared with a fresh generation; empty when the committed stubs are fresh."""
    with tempfile.TemporaryDirectory(prefix="protos-fresh-") as scratch:
        fresh_root = Path(scratch)
        fresh = set(generate(fresh_root))
        committed = set(generated_files(root))
        stale = fresh ^ committed
        stale.update(
            name
            for name in fresh & committed
            if (fresh_root / name).read_bytes() != (root / name).read_bytes()
        )
    return sorted(stale)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if the committed stubs differ from a fresh generation",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=PROTO_ROOT,
        help="directory to write the stubs into (default: next to the sources)",
    )
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files(args.out)
        if stale:
            print(
                f"stale generated stubs: {', '.join(stale)}; run `{COMMAND}` "
                f"(grpcio-tools {tools_version()})",
                file=sys.stderr,
            )
            return 1
        print("generated stubs are fresh")
        return 0
    written = generate(args.out)
    print(f"grpcio-tools {tools_version()}: wrote {len(written)} files under {args.out}")
    for name in written:
        print(f"  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
