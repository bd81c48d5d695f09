"""Real `python -m incident_manager` processes and blocking clients for them.

The fixtures of tests/process/conftest.py hand these to the tests: `launch`
starts a process with any arguments, `start_process` one on a free port and a
database, once it is SERVING. Every process a test started is killed at its end.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from generated.incident_manager.v1 import (
    alert_ingestion_service_pb2_grpc as ingestion_grpc,
)
from generated.incident_manager.v1 import incident_pb2
from generated.incident_manager.v1 import incident_service_pb2 as service_pb2
from generated.incident_manager.v1 import incident_service_pb2_grpc as service_grpc
from tests.support.polling import eventually
from tests.support.ports import free_port

PYTHON = sys.executable
STARTUP_TIMEOUT = 15.0
CALL_TIMEOUT = 10.0
SERVING: int = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: int = health_pb2.HealthCheckResponse.NOT_SERVING


def server_environment(**variables: str) -> dict[str, str]:
    """This process's environment without any INCIDENT_MANAGER_* leaking in, plus `variables`.

    /metrics is off unless asked for: servers run side by side would share port 9090.
    """
    environment = {k: v for k, v in os.environ.items() if not k.startswith("INCIDENT_MANAGER_")}
    environment["INCIDENT_MANAGER_METRICS_LISTEN"] = "off"
    environment.update(variables)
    return environment


@dataclass
class Client:
    """Blocking stubs for every service on one channel."""

    channel: grpc.Channel
    incidents: service_grpc.IncidentServiceStub = field(init=False)
    ingestion: ingestion_grpc.AlertIngestionServiceStub = field(init=False)
    health: health_pb2_grpc.HealthStub = field(init=False)

    def __post_init__(self) -> None:
        self.incidents = service_grpc.IncidentServiceStub(self.channel)
        self.ingestion = ingestion_grpc.AlertIngestionServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def get_incident(self, incident_id: str) -> incident_pb2.Incident:
        """One incident, by id."""
        response = self.incidents.GetIncident(
            service_pb2.GetIncidentRequest(id=incident_id), timeout=CALL_TIMEOUT
        )
        return response.incident

    def list_all_incidents(self, page_size: int = 100) -> list[incident_pb2.Incident]:
        """Every incident, page after page."""
        incidents: list[incident_pb2.Incident] = []
        token = ""
        while True:
            page = self.incidents.ListIncidents(
                service_pb2.ListIncidentsRequest(page_size=page_size, page_token=token),
                timeout=CALL_TIMEOUT,
            )
            incidents.extend(page.incidents)
            token = page.next_page_token
            if not token:
                return incidents


@dataclass
class ServerProcess:
    """One `python -m incident_manager` process and where its stderr goes."""

    popen: subprocess.Popen[bytes]
    address: str
    stderr_path: Path
    clients: list[Client] = field(default_factory=list)

    def stderr(self) -> str:
        """What the server wrote to stderr so far (its JSON log lines)."""
        return self.stderr_path.read_text(errors="replace")

    def client(self) -> Client:
        """A new client on its own channel, closed when the test ends."""
        client = Client(grpc.insecure_channel(self.address))
        self.clients.append(client)
        return client

    def wait_until_serving(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Poll the standard health check until it says SERVING."""
        eventually(
            self._serving,
            timeout=timeout,
            what=lambda: f"the server on {self.address} to say SERVING:\n{self.stderr()}",
        )

    def _serving(self) -> bool:
        if self.popen.poll() is not None:
            raise AssertionError(
                f"server exited with {self.popen.returncode} before serving:\n{self.stderr()}"
            )
        # A fresh channel per attempt: a channel that failed to connect
        # backs off for a second or more before it tries again.
        with grpc.insecure_channel(self.address) as channel:
            try:
                response = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=0.5
                )
            except grpc.RpcError:
                return False
        status: int = response.status
        return status == SERVING

    def signal(self, signum: int) -> None:
        """Send `signum` (SIGTERM, SIGKILL...) to the process."""
        os.kill(self.popen.pid, signum)

    def wait_for_exit(self, timeout: float) -> int:
        """The exit code; fails if the process still runs after `timeout` seconds."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"server still running {timeout}s later:\n{self.stderr()}"
            ) from None

    def close_clients(self) -> None:
        """Close the channel of every client made by `client()`."""
        for client in self.clients:
            client.channel.close()
        self.clients.clear()


def resident_memory(server: ServerProcess) -> int:
    """The server process's resident set size (VmRSS), in bytes."""
    status = Path(f"/proc/{server.popen.pid}/status").read_text()
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    # Only a process that has exited has no resident set.
    raise AssertionError(
        f"server exited with {server.popen.wait(timeout=10)}:\n{server.stderr()[-3000:]}"
    )


Launch = Callable[..., ServerProcess]
"""`launch(args, *, address, environment=None, wait=True)`: see `ServerProcesses.launch`."""
StartProcess = Callable[..., ServerProcess]
"""`start_process(database, *extra_args)`: see `ServerProcesses.start`."""


class ServerProcesses:
    """The server processes one test started, their stderr files in `directory`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[ServerProcess] = []

    def launch(
        self,
        args: Sequence[str],
        *,
        address: str,
        environment: dict[str, str] | None = None,
        wait: bool = True,
    ) -> ServerProcess:
        """Start `python -m incident_manager *args`, which should listen on `address`;
        unless `wait` is false, return once it is SERVING."""
        stderr_path = self.directory / f"server-{len(self.started)}.stderr"
        with stderr_path.open("wb") as stderr:
            popen = subprocess.Popen(
                [PYTHON, "-m", "incident_manager", *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=environment if environment is not None else server_environment(),
                # The default database path is relative: keep it out of the repository.
                cwd=self.directory,
            )
        process = ServerProcess(popen, address, stderr_path)
        self.started.append(process)
        if wait:
            process.wait_until_serving()
        return process

    def start(self, database: Path, *extra: str) -> ServerProcess:
        """A server on a free port of 127.0.0.1 and `database`, logging warnings and
        errors only, once it is SERVING."""
        for _attempt in range(3):
            address = f"127.0.0.1:{free_port()}"
            args = ["--listen", address, "--database", str(database), "--log-level", "WARNING"]
            server = self.launch([*args, *extra], address=address, wait=False)
            try:
                server.wait_until_serving()
            except AssertionError:
                # Another process may have taken the free port meanwhile: try another.
                if server.popen.poll() == 2 and "cannot listen" in server.stderr():
                    continue
                raise
            return server
        raise AssertionError("no free port found in three attempts")

    def kill_all(self) -> None:
        """Close every client, kill every process still running and reap them all."""
        for process in self.started:
            process.close_clients()
            if process.popen.poll() is None:
                process.popen.kill()
            process.popen.wait(timeout=10)
