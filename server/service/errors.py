"""Errors the service raises for a caller's mistake or a state conflict, each carrying the
gRPC status it maps to (ARCHITECTURE §7). The domain layer stays free of gRPC imports; the
servicer translates ``ServiceError.code`` and store errors in one place."""

from __future__ import annotations


class ServiceError(Exception):
    code = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ServiceError):
    code = "INVALID_ARGUMENT"


class NotFound(ServiceError):
    code = "NOT_FOUND"


class FailedPrecondition(ServiceError):
    code = "FAILED_PRECONDITION"


class ResourceExhausted(ServiceError):
    code = "RESOURCE_EXHAUSTED"


class Aborted(ServiceError):
    code = "ABORTED"


class Unavailable(ServiceError):
    code = "UNAVAILABLE"
