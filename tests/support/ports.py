"""Ports for servers a test starts where it cannot pass port 0."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port nobody listens on right now (the OS picks it; we release it at once).

    Someone else may take it before our server binds it: prefer port 0 where the
    server reports the port it got.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
