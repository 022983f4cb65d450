"""A free loopback port, for processes that cannot bind port 0 and report what they got."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port no one listens on right now. Another process may take it before the caller
    binds it, so servers that can bind port 0 should (``harness.server_process`` does)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
