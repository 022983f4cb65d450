"""Names both sides of the wire agree on beyond the messages: the service's full name and
the call metadata that carries a caller's bearer token (ARCHITECTURE §7)."""

from __future__ import annotations

from protos.tfllmer.v1 import embedding_service_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["EmbeddingService"].full_name
AUTHORIZATION = "authorization"  # gRPC metadata keys are lower case
BEARER = "bearer"  # the scheme, compared case-insensitively (RFC 6750 §2.1)


def bearer_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata that authenticates a client with ``token``."""
    return ((AUTHORIZATION, f"Bearer {token}"),)
