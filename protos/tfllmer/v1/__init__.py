"""Protobuf package ``tfllmer.v1``: ``embedding_service.proto`` and its generated stubs."""
