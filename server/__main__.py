"""``python -m server [flags]``: run the embedding service until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from server.app import EmbeddingServer
from server.config import ConfigError, load_config
from server.service.logging_setup import configure_logging

log = logging.getLogger("server")


async def run() -> None:
    config = load_config()
    configure_logging(config.log_level, config.log_format)
    server = EmbeddingServer(config)
    await server.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    await server.stop()
    if server.guard.live.wait_for_threads(0):
        log.warning("exiting with worker threads of cancelled calls still running")
    # Every call has ended and none can commit any more (their lifetimes ended), and the
    # stores are durable at each commit: skip the interpreter's teardown (joining executor
    # threads still inside an encoder batch or a solve, unloading the model), which took
    # seconds on a loaded machine, and exit now.
    logging.shutdown()
    os._exit(0)


def main() -> None:
    try:
        asyncio.run(run())
    except ConfigError as error:
        print(f"configuration error:\n{error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
