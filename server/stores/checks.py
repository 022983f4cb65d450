"""Argument checks both stores run before writing: a store never persists something that
would make a later read fail (a bad key, a ragged upsert, a pair outside the catalog).

The rules a request can break are ``server.validation``'s, run again here with the same
messages; the rest are the service's own invariants (an upsert's arrays agree, a version's
shapes match), so a ``ValueError`` from them is a bug and ends a call as INTERNAL.
"""

from __future__ import annotations

import numpy as np

from server.quoting import shown
from server.stores.base import ItemChanges, NewVersion, PairBatch
from server.validation import verify_pairs

RAW_DTYPES = ("<f4", "<f2")


def check_raw_dtype(raw_dtype: str) -> None:
    if raw_dtype not in RAW_DTYPES:
        raise ValueError(f"raw dtype must be one of {RAW_DTYPES}, got {raw_dtype!r}")


def _check_vectors(vectors: np.ndarray | None, n: int, dim: int, what: str) -> None:
    shape = None if vectors is None else np.shape(vectors)
    if n and shape != (n, dim):
        raise ValueError(f"{what} vectors have shape {shape}, expected ({n}, {dim})")


def check_changes(changes: ItemChanges, dim: int, item_count: int) -> None:
    """Raise ``ValueError`` unless ``changes`` is a consistent upsert of a catalog of
    ``item_count`` items and vectors of length ``dim``."""
    n_new = len(changes.new_ids)
    if len(changes.new_text_hashes) != n_new:
        raise ValueError("new_ids and new_text_hashes differ in length")
    if len(set(changes.new_ids)) != n_new:
        raise ValueError("new_ids contains an id twice")
    _check_vectors(changes.new_vectors, n_new, dim, "new")
    rows = np.asarray(changes.changed_rows, dtype=np.int64)
    if len(changes.changed_text_hashes) != len(rows):
        raise ValueError("changed_rows and changed_text_hashes differ in length")
    if len(np.unique(rows)) != len(rows):
        raise ValueError("changed_rows contains a row twice")
    if len(rows) and (rows.min() < 0 or rows.max() >= item_count):
        raise ValueError(f"a changed row is outside the catalog's {item_count} items")
    _check_vectors(changes.changed_vectors, len(rows), dim, "changed")


def check_new_version(new: NewVersion, encoder_dim: int, item_count: int) -> None:
    if not 0 < new.item_count <= item_count:
        raise ValueError(f"a version must cover 1 to the catalog's {item_count} items")
    if not 1 <= new.dim <= encoder_dim:
        raise ValueError(f"version dim {new.dim} outside [1, {encoder_dim}]")
    if np.shape(new.components) != (encoder_dim, new.dim):
        raise ValueError(f"components must be ({encoder_dim}, {new.dim})")
    if np.shape(new.mean) != (encoder_dim,):
        raise ValueError(f"mean must be ({encoder_dim},)")
    if np.shape(new.reduced) != (new.item_count, new.dim):
        raise ValueError(f"reduced vectors must be ({new.item_count}, {new.dim})")


def check_pair_batch(batch: PairBatch, item_count: int) -> None:
    """The batch merges cleanly into a catalog of ``item_count`` items (a bad batch in the
    log would break every later ``read_counts``)."""
    verify_pairs(f"batch {shown(batch.batch_id)}", batch.rows, batch.cols, batch.weights,
                 item_count)
