"""Protobuf packages ``tfllmer.*`` (generated stubs live in the versioned subpackages)."""
