"""The committed stubs under protos/ are what `python -m protos.generate` writes today."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("grpc_tools", reason="grpcio-tools (the dev extra) regenerates the stubs")

from protos import generate  # noqa: E402


def test_committed_stubs_match_a_fresh_generation() -> None:
    stale = generate.stale_files()
    assert not stale, (
        f"the generated stubs under protos/ are stale ({', '.join(stale)}): run "
        f"`{generate.COMMAND}` (grpcio-tools {generate.tools_version()}) and commit the result"
    )


def test_every_proto_has_its_three_stubs_committed() -> None:
    expected = {
        source.removesuffix(".proto") + suffix
        for source in generate.proto_files()
        for suffix in generate.GENERATED_SUFFIXES
    }
    assert set(generate.generated_files()) == expected


def test_the_check_names_an_edited_stub(tmp_path: Path) -> None:
    copy = tmp_path / "protos"
    for name in generate.generated_files():
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(generate.PROTO_ROOT / name, copy / name)
    assert generate.stale_files(copy) == []
    edited = "tfllmer/v1/embedding_service_pb2.pyi"
    with (copy / edited).open("a") as stub:
        stub.write("# edited by hand\n")
    (copy / "tfllmer/v1/embedding_service_pb2_grpc.py").unlink()
    assert generate.stale_files(copy) == [edited, "tfllmer/v1/embedding_service_pb2_grpc.py"]
    assert generate.main(["--check", "--out", str(copy)]) == 1
