"""`python -m incident_manager` / `incident-manager`: run the server until SIGTERM or SIGINT."""

from __future__ import annotations

import os

# grpc's C core writes log lines of its own on stderr (a taken port adds an
# `E1201 ... add_port.cc` line before our message), and they are not the JSON
# lines the rest of stderr is. It reads GRPC_VERBOSITY when grpc is imported,
# so this comes before every import that imports grpc; an operator debugging
# grpc itself can still set GRPC_VERBOSITY=debug.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from incident_manager import __version__, logs
from incident_manager.bootstrap import start_server
from incident_manager.config import Settings, load_settings
from incident_manager.domain.errors import StorageUnavailable
from incident_manager.entrypoints.server import StartupError
from incident_manager.startup import database_problem

log = logging.getLogger("incident_manager")


async def serve(settings: Settings) -> None:
    try:
        server = await start_server(settings)
    except StorageUnavailable as error:
        raise StartupError(database_problem(settings.database, error)) from error
    log.info(
        "incident manager started",
        extra={"version": __version__, "database": settings.database, "port": server.port},
    )
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, server.reload_paging)
    await stopping.wait()
    await server.stop(settings.shutdown_grace.total_seconds(), settings.drain_delay.total_seconds())


def main(argv: Sequence[str] | None = None) -> int:
    settings = load_settings(argv)
    logs.configure(settings.log_level)
    try:
        asyncio.run(serve(settings))
    except (StartupError, StorageUnavailable) as error:
        log.error(str(error))
        # Through the log writer: a print here raced its thread and could land
        # inside the JSON line above.
        logs.say(f"incident-manager: {error}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
