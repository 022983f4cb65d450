"""Push a worker's co-occurrence pairs in bounded, idempotent, resumable batches.

The pairs are cut into batches of ``batch_pairs`` in input order, and batch ``k`` gets the
id ``f"{k:08d}"``: the same input always yields the same batches under the same ids. After
each acknowledged call the last acknowledged batch number is written to a small JSON state
file (a temporary file, then ``os.replace``, so a crash leaves the old state or the new one,
never a torn file). A restarted push skips the batches recorded there; a call whose
acknowledgement was lost is resent, and the server ignores its batches as duplicates (same
worker id and batch id), so no pair is counted twice.

A worker id names one push of one input: pushing different pairs under a worker id already
used would have their batches ignored as duplicates. The state file records a digest of
the input and refuses to resume a different one.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protos.codecs import wire_pairs
from trainer_client.client import EmbeddingClient, PairBatch
from trainer_client.cooccurrence import Weighting, window_pairs
from trainer_client.sequences import UserSequences

_NOTHING_ACKED = -1


@dataclass(frozen=True)
class PushSummary:
    batches: int  # batches the input is cut into
    skipped: int  # acknowledged in an earlier run (state file), not sent again
    applied: int  # applied by the server in this run
    duplicates: int  # sent again but already applied (an acknowledgement had been lost)
    pairs_added: int  # pairs in the batches applied in this run


class CooccurrencePusher:
    """Pushes one worker's pairs to a catalog; ``push`` may be rerun after a crash with the
    same arguments and state file. Transient failures are retried by the client."""

    def __init__(
        self,
        client: EmbeddingClient,
        catalog: str,
        worker_id: str,
        state_path: str | os.PathLike[str],
        batch_pairs: int = 100_000,
        batches_per_call: int = 8,
    ) -> None:
        if batch_pairs < 1 or batches_per_call < 1:
            raise ValueError("batch_pairs and batches_per_call must be >= 1")
        self.client = client
        self.catalog = catalog
        self.worker_id = worker_id
        self.state_path = Path(state_path)
        self.batch_pairs = batch_pairs
        self.batches_per_call = batches_per_call

    def push_sequences(
        self, sequences: UserSequences, window: int = 3, weighting: Weighting = "count"
    ) -> PushSummary:
        """Count and push the within-window pairs of training sequences (never validation
        or test items)."""
        return self.push(*window_pairs(sequences, window, weighting))

    def push(self, rows: np.ndarray, cols: np.ndarray, weights: np.ndarray) -> PushSummary:
        """Push every unordered pair ``(rows[i], cols[i], weights[i])`` exactly once."""
        blocks = wire_pairs(rows, cols, weights)
        identity = self._identity(blocks)
        last_acked = self._load_state(identity)
        n_batches = -(-len(blocks[0]) // self.batch_pairs)
        applied = duplicates = pairs_added = 0
        for first in range(last_acked + 1, n_batches, self.batches_per_call):
            numbers = range(first, min(first + self.batches_per_call, n_batches))
            reply = self.client.push_pairs(
                self.catalog, self.worker_id, [self._batch(blocks, k) for k in numbers])
            applied += reply.batches_applied
            duplicates += reply.duplicates_ignored
            pairs_added += reply.pairs_added
            self._save_state(identity, numbers[-1])
        return PushSummary(
            batches=n_batches, skipped=min(last_acked + 1, n_batches), applied=applied,
            duplicates=duplicates, pairs_added=pairs_added,
        )  # fmt: skip

    def _batch(self, blocks: tuple[np.ndarray, ...], number: int) -> PairBatch:
        part = slice(number * self.batch_pairs, (number + 1) * self.batch_pairs)
        rows, cols, weights = (block[part] for block in blocks)
        return f"{number:08d}", rows, cols, weights

    def _identity(self, blocks: tuple[np.ndarray, ...]) -> dict[str, object]:
        """What a state file must match to be resumed: same target, cut, and input pairs."""
        digest = hashlib.sha256()
        for block in blocks:
            digest.update(block.tobytes())
        return {
            "catalog": self.catalog, "worker_id": self.worker_id,
            "batch_pairs": self.batch_pairs, "pairs": len(blocks[0]),
            "sha256": digest.hexdigest(),
        }  # fmt: skip

    def _load_state(self, identity: dict[str, object]) -> int:
        """The last acknowledged batch number, or -1 without a state file."""
        try:
            state = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return _NOTHING_ACKED
        if {key: state.get(key) for key in identity} != identity:
            raise ValueError(
                f"{self.state_path} records a different push (catalog, worker, batch size or "
                "pairs); delete it to push this input from the start")
        return int(state["last_acked"])

    def _save_state(self, identity: dict[str, object], last_acked: int) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        with open(tmp, "w") as handle:
            json.dump({**identity, "last_acked": last_acked}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.state_path)
