"""The ``TFLLMER_*`` environment variables that client tools read, and their defaults.

The server's own settings are ``TFLLMER_<SETTING>`` (``server.config``); it rejects unknown
``TFLLMER_*`` variables but knows these, because operators export them in the same shells.
"""

from __future__ import annotations

PREFIX = "TFLLMER_"
DEFAULT_PORT = 50051
DEFAULT_SERVER = f"127.0.0.1:{DEFAULT_PORT}"

SERVER = "TFLLMER_SERVER"  # host:port of the service, for every client CLI and the client
TOKEN = "TFLLMER_TOKEN"  # the caller's bearer token (trainer or admin)
DATA_DIR = "TFLLMER_DATA_DIR"  # the MovieLens cache of `python -m trainer_client.datasets`

CLIENT_VARIABLES = frozenset({SERVER, TOKEN, DATA_DIR})
