"""Version records as JSON, and how a status follows from the active pointer.

A store keeps the immutable part of a record (written once, when the version is
published) apart from the mutable part (active pointer, last activation time), so that
activating is a single pointer switch and never rewrites a record.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from server.stores.base import CooccurrenceTotals, EncoderIdentity, NewVersion, VersionRecord
from server.stores.packing import decoding


def record_json(new: NewVersion, created_at: float, **layout: Any) -> str:
    """The immutable fields of a version record, with ``layout``: what a store notes about
    how it keeps the payload (read by that store only, ignored by ``parse_record``)."""
    return json.dumps(
        {
            **layout,
            "item_count": new.item_count,
            "dim": new.dim,
            "encoder": asdict(new.encoder),
            "parameters": new.parameters,
            "diagnostics": new.diagnostics,
            "counts": asdict(new.counts),
            "created_at": created_at,
            "fit_seconds": new.fit_seconds,
        }
    )


def status_of(version: int, active: int, activated_at: float | None) -> str:
    if version == active:
        return "active"
    return "staged" if activated_at is None else "retired"


@decoding("version record")
def parse_record(
    version: int, text: str | bytes, active: int, activated_at: float | None
) -> VersionRecord:
    fields = json.loads(text)
    return VersionRecord(
        version=version,
        status=status_of(version, active, activated_at),
        item_count=int(fields["item_count"]),
        dim=int(fields["dim"]),
        encoder=EncoderIdentity(**fields["encoder"]),
        parameters=fields["parameters"],
        diagnostics=fields["diagnostics"],
        counts=CooccurrenceTotals(**fields["counts"]),
        created_at=float(fields["created_at"]),
        activated_at=activated_at,
        fit_seconds=float(fields["fit_seconds"]),
    )
