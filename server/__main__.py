"""``python -m server [flags]``: run the embedding service until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import signal
import sys

from server.app import EmbeddingServer
from server.config import ConfigError, load_config
from server.service.logging_setup import configure_logging


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


def main() -> None:
    try:
        asyncio.run(run())
    except ConfigError as error:
        print(f"configuration error:\n{error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
