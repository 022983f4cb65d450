"""The wire contract of the service: ``.proto`` sources and their generated Python stubs.

Import the stubs as ``from protos.tfllmer.v1 import embedding_service_pb2,
embedding_service_pb2_grpc``. Regenerate them after editing a ``.proto`` with
``python -m protos.generate``; ``tests/test_protos_are_fresh.py`` fails while they are stale.
"""
