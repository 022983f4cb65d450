"""The one error hierarchy of the server: what a call can fail with besides a bug.

Every layer raises these (the stores' errors subclass them), and the servicer maps them to
gRPC status codes in one table (``server.service.servicer.STATUS``). Anything else that
escapes a call is a bug: INTERNAL, logged once with an incident id. The domain layer stays
free of gRPC imports.
"""

from __future__ import annotations


class ServiceError(Exception):
    """A call that cannot succeed as asked; ``message`` is safe to show the caller."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ServiceError, ValueError):
    """The request breaks a rule of the contract (``server.validation``)."""


class NotFound(ServiceError):
    """A catalog, version or item that does not exist."""


class FailedPrecondition(ServiceError):
    """Valid, but not in the catalog's current state (e.g. λ > 0 without counts)."""


class ResourceExhausted(ServiceError):
    """Over a per-call limit of the configuration."""


class Aborted(ServiceError):
    """Lost a race with a concurrent call (a refit running, an upsert that committed
    first); retrying may succeed."""


class Unavailable(ServiceError):
    """The store does not answer; retrying later may succeed."""


class DataLoss(ServiceError):
    """Stored data that does not decode: damage, not the caller's mistake."""
