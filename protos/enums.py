"""The contract's enums as the Python APIs, CLIs and stores spell them, in both directions.

One table per enum, so the servicer, the client and the admin CLI cannot drift apart. An
enum whose UNSPECIFIED value has a documented meaning in the proto names that default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Generic, TypeVar

from protos.tfllmer.v1 import embedding_service_pb2 as pb

E = TypeVar("E", bound=int)  # a generated enum type, e.g. pb.Dtype


@dataclass(frozen=True)
class WireEnum(Generic[E]):
    """``numbers`` maps each name to its enum value; ``default`` is the name UNSPECIFIED
    (0) stands for, or None where the contract gives it no meaning."""

    numbers: Mapping[str, E]
    default: str | None = None
    _names: Mapping[int, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "numbers", MappingProxyType(dict(self.numbers)))
        object.__setattr__(self, "_names", {n: name for name, n in self.numbers.items()})

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.numbers)

    def number(self, name: str) -> E:
        """The enum value of ``name``; KeyError for a name the table does not have."""
        return self.numbers[name]

    def name(self, number: int) -> str | None:
        """The name of an enum value (UNSPECIFIED: the default); None for a value this
        side does not know (a newer peer's, or garbage)."""
        if number == 0 and self.default is not None:
            return self.default
        return self._names.get(number)


DTYPE = WireEnum(
    {"float32": pb.DTYPE_FLOAT32, "float16": pb.DTYPE_FLOAT16, "bfloat16": pb.DTYPE_BFLOAT16},
    default="float32",
)
KIND = WireEnum(
    {"reduced": pb.EMBEDDING_KIND_REDUCED, "raw": pb.EMBEDDING_KIND_RAW}, default="reduced"
)
TRANSFORM = WireEnum(
    {
        "identity": pb.GRAPH_TRANSFORM_IDENTITY,
        "log1p": pb.GRAPH_TRANSFORM_LOG1P,
        "topk": pb.GRAPH_TRANSFORM_TOP_K,
        "ppmi": pb.GRAPH_TRANSFORM_PPMI,
    },
    default="identity",
)
VERSION_STATUS = WireEnum(
    {
        "staged": pb.VERSION_STATUS_STAGED,
        "active": pb.VERSION_STATUS_ACTIVE,
        "retired": pb.VERSION_STATUS_RETIRED,
    }
)
