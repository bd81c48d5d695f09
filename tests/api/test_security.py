"""Who may call what: bearer tokens, roles on every RPC, TLS and mutual TLS.

Certificates are made in the test with `cryptography`: a CA, a server
certificate for 127.0.0.1 and client certificates with chosen common names.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from generated.incident_manager.v1 import (
    alert_ingestion_service_pb2,
    alert_ingestion_service_pb2_grpc,
    alert_pb2,
    incident_pb2,
    incident_service_pb2,
    incident_service_pb2_grpc,
    integrations_pb2,
    integrations_pb2_grpc,
    paging_service_pb2,
)
from incident_manager.adapters.memory import MemoryStorage
from incident_manager.config import Settings
from incident_manager.domain.access import Role, hash_token
from incident_manager.entrypoints import auth as auth_module
from incident_manager.entrypoints.auth import method_policies
from incident_manager.entrypoints.metrics import Metrics
from incident_manager.entrypoints.server import IncidentServer, StartupError
from incident_manager.service.manager import IncidentManager
from tests.support import StartServer, alert, error_info, free_port, new_incident

ROLES = ("ingest", "reader", "responder", "admin")
INCIDENTS = "incident_manager.v1.IncidentService"
INGESTION = "incident_manager.v1.AlertIngestionService"
INTEGRATIONS = "incident_manager.v1.IntegrationService"
PAGING = "incident_manager.v1.PagingService"
READS = {f"{INCIDENTS}/{m}" for m in ("GetIncident", "ListIncidents", "StreamIncidents")} | {
    f"{PAGING}/{m}"
    for m in ("ListNotifications", "TestRoute", "GetOnCall", "ListOverrides", "ListSilences")
}
CHANGES = {
    f"{INCIDENTS}/{m}"
    for m in (
        "CreateIncident",
        "UpdateIncident",
        "ResolveIncident",
        "AddNote",
        "AcknowledgeIncident",
    )
} | {
    f"{PAGING}/{m}" for m in ("CreateOverride", "DeleteOverride", "CreateSilence", "ExpireSilence")
}
FILES = (incident_service_pb2, alert_ingestion_service_pb2, integrations_pb2, paging_service_pb2)
EVERY_METHOD = {
    f"{service.full_name}/{method.name}": method
    for module in FILES
    for service in module.DESCRIPTOR.services_by_name.values()
    for method in service.methods
}
INGESTS = {name for name in EVERY_METHOD if name.startswith((INGESTION, INTEGRATIONS))}
ALLOWED = {
    "ingest": INGESTS,
    "reader": READS,
    "responder": READS | CHANGES,
    "admin": set(EVERY_METHOD),
}


def token_of(role: str) -> str:
    return f"imt_test-token-for-{role}"


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    lines = ["# test credentials", *(f"{hash_token(token_of(r))} {r}-bot {r}" for r in ROLES)]
    path.write_text("\n".join(lines) + "\n")
    return path


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def request_for(name: str) -> Any:
    """A request that gets past authorization quickly, whatever it then answers."""
    method = EVERY_METHOD[name]
    message_class: Any = None
    for module in FILES:
        message_class = getattr(module, method.input_type.name, message_class)
    request = message_class()
    if name.endswith("/StreamIncidents"):
        request.after_sequence = 2**40  # OUT_OF_RANGE at once instead of a live stream
    return request


async def call(channel: grpc.aio.Channel, name: str, token: str | None) -> grpc.StatusCode:
    """The status `name` ends with when called with `token` (or none)."""
    method = EVERY_METHOD[name]
    path = f"/{name}"
    metadata = bearer(token) if token else None
    request = request_for(name)
    serialize = type(request).SerializeToString
    try:
        if method.client_streaming:

            async def one() -> AsyncIterator[Any]:
                yield request

            if method.server_streaming:
                stream = channel.stream_stream(path, serialize, lambda b: b)(
                    one(), metadata=metadata, timeout=5
                )
                async for _ in stream:
                    pass
            else:
                await channel.stream_unary(path, serialize, lambda b: b)(
                    one(), metadata=metadata, timeout=5
                )
        elif method.server_streaming:
            async for _ in channel.unary_stream(path, serialize, lambda b: b)(
                request, metadata=metadata, timeout=5
            ):
                pass
        else:
            await channel.unary_unary(path, serialize, lambda b: b)(
                request, metadata=metadata, timeout=5
            )
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("role", ROLES)
async def test_each_role_may_call_exactly_its_rpcs(
    start_server: StartServer, tokens_file: Path, role: str
) -> None:
    server = await start_server(tokens_file=str(tokens_file))
    wrong = {}
    for name in sorted(EVERY_METHOD):
        code = await call(server.channel, name, token_of(role))
        allowed = name in ALLOWED[role]
        if allowed and code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
            wrong[name] = f"refused with {code.name}"
        if not allowed and code != grpc.StatusCode.PERMISSION_DENIED:
            wrong[name] = f"answered {code.name} instead of PERMISSION_DENIED"
    assert not wrong, f"role {role}: {wrong}"


def test_an_rpc_added_to_a_known_service_later_needs_admin_until_given_a_role(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Roles name their methods: a new RPC, say an ingestion-side purge, must not
    # fall to every ingest token just because of the service it sits in.
    for module in FILES:
        services = {
            name: SimpleNamespace(
                full_name=service.full_name,
                methods=[*service.methods, SimpleNamespace(name="PurgeEverything")],
            )
            for name, service in module.DESCRIPTOR.services_by_name.items()
        }
        monkeypatch.setattr(
            auth_module,
            module.__name__.rpartition(".")[2],
            SimpleNamespace(DESCRIPTOR=SimpleNamespace(services_by_name=services)),
        )
    policy = method_policies(Settings())
    for service in (INCIDENTS, INGESTION, INTEGRATIONS):
        assert policy(f"/{service}/PurgeEverything").role is Role.ADMIN, service
    assert policy(f"/{INCIDENTS}/GetIncident").role is Role.READER
    assert policy(f"/{INCIDENTS}/AddNote").role is Role.RESPONDER
    assert policy(f"/{INGESTION}/SubmitAlert").role is Role.INGEST


async def test_without_a_token_every_rpc_is_unauthenticated(
    start_server: StartServer, tokens_file: Path
) -> None:
    server = await start_server(tokens_file=str(tokens_file))
    codes = {name: await call(server.channel, name, None) for name in EVERY_METHOD}
    assert set(codes.values()) == {grpc.StatusCode.UNAUTHENTICATED}, codes
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await server.incidents.GetIncident(incident_service_pb2.GetIncidentRequest(id="x"))
    assert "authorization: Bearer <token>" in (refused.value.details() or "")


@pytest.mark.parametrize(
    "header",
    ["Bearer imt_not-a-known-token", "Basic dXNlcjpwYXNz", "Bearer ", f"{token_of('admin')}"],
)
async def test_unknown_or_malformed_credentials_are_unauthenticated(
    start_server: StartServer, tokens_file: Path, header: str
) -> None:
    server = await start_server(tokens_file=str(tokens_file))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await server.ingestion.SubmitAlert(
            alert_ingestion_service_pb2.SubmitAlertRequest(alert=alert()),
            metadata=(("authorization", header),),
        )
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    listed = await server.incidents.ListIncidents(
        incident_service_pb2.ListIncidentsRequest(), metadata=bearer(token_of("admin"))
    )
    assert listed.total_size == 0, "a refused alert must not be stored"


@pytest.mark.parametrize("order", ["reader first", "admin first"])
async def test_a_call_with_two_authorization_entries_is_unauthenticated(
    start_server: StartServer, tokens_file: Path, order: str
) -> None:
    # A proxy may check one entry while the server would use another: refuse both.
    tokens = [token_of("reader"), token_of("admin")]
    if order == "admin first":
        tokens.reverse()
    server = await start_server(tokens_file=str(tokens_file))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await server.incidents.CreateIncident(
            incident_service_pb2.CreateIncidentRequest(incident=new_incident()),
            metadata=tuple(("authorization", f"Bearer {token}") for token in tokens),
        )
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "only one" in (refused.value.details() or "")
    listed = await server.incidents.ListIncidents(
        incident_service_pb2.ListIncidentsRequest(), metadata=bearer(token_of("admin"))
    )
    assert listed.total_size == 0


async def test_a_role_refusal_names_the_principal_and_the_role_needed(
    start_server: StartServer, tokens_file: Path
) -> None:
    server = await start_server(tokens_file=str(tokens_file))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await server.incidents.CreateIncident(
            incident_service_pb2.CreateIncidentRequest(incident=new_incident()),
            metadata=bearer(token_of("ingest")),
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    details = refused.value.details() or ""
    assert "ingest-bot" in details and "'responder'" in details


async def test_health_stays_open_and_reflection_follows_its_setting(
    start_server: StartServer, tokens_file: Path
) -> None:
    opened = await start_server(tokens_file=str(tokens_file))
    health = await opened.health.Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    watch = opened.health.Watch(health_pb2.HealthCheckRequest())
    first = await watch.read()
    assert first.status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()
    assert await list_services(opened.channel, None)

    closed = await start_server(
        storage=MemoryStorage(), tokens_file=str(tokens_file), reflection="authenticated"
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await list_services(closed.channel, None)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert INCIDENTS in await list_services(closed.channel, token_of("ingest"))

    off = await start_server(storage=MemoryStorage(), reflection="off")
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await list_services(off.channel, None)
    assert missing.value.code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize("header", ["Bearer imt_revoked-token", "Basic dXNlcjpwYXNz"])
async def test_health_and_open_reflection_answer_callers_with_stale_credentials(
    start_server: StartServer, tokens_file: Path, header: str
) -> None:
    # Clients often attach their token to every call on a channel, health checks
    # included: a revoked token must not make a healthy server look down.
    server = await start_server(tokens_file=str(tokens_file))
    metadata = (("authorization", header),)
    checked = await server.health.Check(health_pb2.HealthCheckRequest(), metadata=metadata)
    assert checked.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(server.channel)

    async def ask() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    answers = [response async for response in stub.ServerReflectionInfo(ask(), metadata=metadata)]
    assert answers and answers[0].HasField("list_services_response")


async def list_services(channel: grpc.aio.Channel, token: str | None) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def ask() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    services: list[str] = []
    async for response in stub.ServerReflectionInfo(
        ask(), metadata=bearer(token) if token else None
    ):
        services.extend(s.name for s in response.list_services_response.service)
    return services


async def test_the_principal_is_who_acts_and_cannot_be_claimed_otherwise(
    start_server: StartServer, tokens_file: Path
) -> None:
    server = await start_server(tokens_file=str(tokens_file))
    responder = bearer(token_of("responder"))
    created = await server.incidents.CreateIncident(
        incident_service_pb2.CreateIncidentRequest(incident=new_incident()), metadata=responder
    )
    incident_id = created.incident.id
    note = await server.incidents.AddNote(
        incident_service_pb2.AddNoteRequest(incident_id=incident_id, content="looking"),
        metadata=responder,
    )
    assert note.note.author == "responder-bot"
    resolved = await server.incidents.ResolveIncident(
        incident_service_pb2.ResolveIncidentRequest(
            id=incident_id, method=incident_pb2.RESOLUTION_METHOD_MANUAL, root_cause="bad deploy"
        ),
        metadata=responder,
    )
    assert resolved.incident.resolution.resolved_by == "responder-bot"
    actors = {event.actor for event in resolved.incident.timeline}
    assert actors == {"responder-bot"}, actors

    with pytest.raises(grpc.aio.AioRpcError) as impersonation:
        await server.incidents.CreateIncident(
            incident_service_pb2.CreateIncidentRequest(incident=new_incident(), actor="ceo"),
            metadata=responder,
        )
    assert impersonation.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_info(impersonation.value).reason == "ACTOR_MISMATCH"
    # Naming yourself is fine.
    same = await server.incidents.CreateIncident(
        incident_service_pb2.CreateIncidentRequest(
            incident=new_incident(title="again"), actor="responder-bot"
        ),
        metadata=responder,
    )
    assert same.incident.timeline[0].actor == "responder-bot"


async def test_a_token_made_by_the_helper_command_works(
    start_server: StartServer, tmp_path: Path
) -> None:
    made = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "incident_manager.tokens", "create", "pager-bot", "reader"],
        capture_output=True,
        text=True,
        check=True,
    )
    token = made.stdout.splitlines()[0].removeprefix("token: ")
    line = made.stdout.splitlines()[1].removeprefix("tokens file line: ")
    assert token not in line, "the tokens file must never hold the token itself"
    path = tmp_path / "tokens"
    path.write_text(line + "\n")
    checked = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "incident_manager.tokens", "check", str(path)],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stderr
    server = await start_server(tokens_file=str(path))
    listed = await server.incidents.ListIncidents(
        incident_service_pb2.ListIncidentsRequest(), metadata=bearer(token)
    )
    assert listed.total_size == 0


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        ("imt_plaintext-token reader-bot reader\n", "never tokens"),
        (f"{hash_token('x')} bot superuser\n", "'superuser' is not a role"),
        (f"{hash_token('x')} bot reader\n{hash_token('x')} other reader\n", "listed twice"),
        ("subject:gateway reader\nsubject:gateway admin\n", "listed twice"),
        (f"{hash_token('x')} bot ingest sources=\n", "at least one source"),
        # A token pasted into the wrong column must not reach the logs.
        (f"{hash_token('x')} imt_pasted-secret reader\n", "looks like a token"),
        (f"{hash_token('x')} bot reader,imt_pasted-secret\n", "looks like a token"),
    ],
)
async def test_a_bad_tokens_file_stops_the_server_with_the_line_to_fix(
    tmp_path: Path, content: str, complaint: str
) -> None:
    path = tmp_path / "tokens"
    path.write_text(content)
    with pytest.raises(StartupError, match=complaint) as refused:
        IncidentServer(_unused_manager(tmp_path), Settings(tokens_file=str(path)), Metrics())
    assert f"{path}:" in str(refused.value)
    assert "imt_" not in str(refused.value), "a tokens-file error quoted a token"


async def test_a_tokens_file_that_is_not_text_is_refused_without_a_traceback(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tokens"
    path.write_bytes(b"\x30\x82\x01\x0a\xff\xfe a DER key, not a tokens file")
    with pytest.raises(StartupError, match="not UTF-8 text") as refused:
        IncidentServer(_unused_manager(tmp_path), Settings(tokens_file=str(path)), Metrics())
    assert f"{path}:" in str(refused.value)
    checked = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "incident_manager.tokens", "check", str(path)],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 1
    assert "Traceback" not in checked.stderr and "not UTF-8 text" in checked.stderr


def _unused_manager(tmp_path: Path) -> Any:
    return IncidentManager(MemoryStorage())


# -- TLS ----------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    directory: Path

    def client(self, common_name: str) -> tuple[bytes, bytes]:
        """(key, certificate) PEM of a client certificate signed by the CA."""
        key, cert = _issue(self.directory, common_name, client=True)
        return key, cert


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _issue(directory: Path, common_name: str, *, client: bool) -> tuple[bytes, bytes]:
    ca_key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
                if common_name
                else [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "no common name")]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
    )
    if not client:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    return _pem_key(key), cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "incident-manager test CA")])
    now = dt.datetime.now(dt.UTC)
    ca = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (directory / "ca.key").write_bytes(_pem_key(key))
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    server_key, server_cert = _issue(directory, "localhost", client=False)
    (directory / "server.key").write_bytes(server_key)
    (directory / "server.pem").write_bytes(server_cert)
    return Pki(directory / "ca.pem", directory / "server.pem", directory / "server.key", directory)


async def tls_channel(
    port: int, pki: Pki, client: tuple[bytes, bytes] | None = None
) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(),
        private_key=client[0] if client else None,
        certificate_chain=client[1] if client else None,
    )
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials)


async def test_tls_serves_encrypted_clients_and_refuses_plaintext(
    start_server: StartServer, pki: Pki
) -> None:
    server = await start_server(tls_cert=str(pki.server_cert), tls_key=str(pki.server_key))
    port = server.server.port
    async with await tls_channel(port, pki) as channel:
        stub = alert_ingestion_service_pb2_grpc.AlertIngestionServiceStub(channel)
        ack = await stub.SubmitAlert(alert_ingestion_service_pb2.SubmitAlertRequest(alert=alert()))
        assert ack.ack.incident_id
    with pytest.raises(grpc.aio.AioRpcError) as plaintext:
        await server.health.Check(health_pb2.HealthCheckRequest(), timeout=3)
    assert plaintext.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_makes_the_certificate_name_the_principal(
    start_server: StartServer, pki: Pki
) -> None:
    server = await start_server(
        tls_cert=str(pki.server_cert),
        tls_key=str(pki.server_key),
        tls_client_ca=str(pki.ca),
    )
    port = server.server.port
    async with await tls_channel(port, pki, pki.client("oncall-alice")) as channel:
        stub = incident_service_pb2_grpc.IncidentServiceStub(channel)
        created = await stub.CreateIncident(
            incident_service_pb2.CreateIncidentRequest(incident=new_incident())
        )
        assert created.incident.timeline[0].actor == "oncall-alice"
    async with await tls_channel(port, pki) as anonymous:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await health_pb2_grpc.HealthStub(anonymous).Check(
                health_pb2.HealthCheckRequest(), timeout=3
            )
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_client_certificate_without_a_common_name_is_unauthenticated(
    start_server: StartServer, pki: Pki
) -> None:
    # Its principal would be nameless, and its changes recorded as 'anonymous'.
    server = await start_server(
        tls_cert=str(pki.server_cert),
        tls_key=str(pki.server_key),
        tls_client_ca=str(pki.ca),
    )
    async with await tls_channel(server.server.port, pki, pki.client("")) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await incident_service_pb2_grpc.IncidentServiceStub(channel).CreateIncident(
                incident_service_pb2.CreateIncidentRequest(incident=new_incident())
            )
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "common name" in (refused.value.details() or "")


async def test_with_a_tokens_file_certificate_names_get_only_their_listed_roles(
    start_server: StartServer, pki: Pki, tokens_file: Path
) -> None:
    with tokens_file.open("a") as extra:
        extra.write("subject:detector-eu ingest\n")
    server = await start_server(
        tls_cert=str(pki.server_cert),
        tls_key=str(pki.server_key),
        tls_client_ca=str(pki.ca),
        tokens_file=str(tokens_file),
    )
    port = server.server.port
    async with await tls_channel(port, pki, pki.client("detector-eu")) as channel:
        ingestion = alert_ingestion_service_pb2_grpc.AlertIngestionServiceStub(channel)
        ack = await ingestion.SubmitAlert(
            alert_ingestion_service_pb2.SubmitAlertRequest(alert=alert())
        )
        assert ack.ack.incident_id
        incidents = incident_service_pb2_grpc.IncidentServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await incidents.ListIncidents(incident_service_pb2.ListIncidentsRequest())
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # A bearer token on the same connection speaks for itself.
        listed = await incidents.ListIncidents(
            incident_service_pb2.ListIncidentsRequest(), metadata=bearer(token_of("reader"))
        )
        assert listed.total_size == 1
    async with await tls_channel(port, pki, pki.client("unlisted-host")) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as unlisted:
            await alert_ingestion_service_pb2_grpc.AlertIngestionServiceStub(channel).SubmitAlert(
                alert_ingestion_service_pb2.SubmitAlertRequest(alert=alert())
            )
        assert unlisted.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "unlisted-host" in (unlisted.value.details() or "")


@pytest.mark.parametrize(
    ("wrong", "named"),
    [
        ("tls_key", "--tls-key"),  # a key of another certificate
        ("tls_cert", "--tls-cert"),  # not a certificate
        ("tls_client_ca", "--tls-client-ca"),  # not a certificate
    ],
)
async def test_unusable_tls_files_stop_the_server_naming_the_file_not_the_port(
    pki: Pki, tmp_path: Path, wrong: str, named: str
) -> None:
    other_key, _ = pki.client("someone-else")
    (tmp_path / "other.key").write_bytes(other_key)
    (tmp_path / "garbage.pem").write_text(
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"
    )
    files: dict[str, Any] = {
        "tls_cert": str(pki.server_cert),
        "tls_key": str(pki.server_key),
        "tls_client_ca": str(pki.ca),
    }
    files[wrong] = str(tmp_path / ("other.key" if wrong == "tls_key" else "garbage.pem"))
    server = IncidentServer(
        IncidentManager(MemoryStorage()),
        Settings(listen="127.0.0.1:0", metrics_listen="off", **files),
        Metrics(),
    )
    with pytest.raises(StartupError) as refused:
        await server.start()
    assert named in str(refused.value)
    assert files[wrong] in str(refused.value)
    assert "already using this port" not in str(refused.value)


async def test_a_plaintext_health_port_beside_tls_serves_only_health(
    start_server: StartServer, pki: Pki
) -> None:
    port = free_port()
    server = await start_server(
        tls_cert=str(pki.server_cert),
        tls_key=str(pki.server_key),
        health_listen=f"127.0.0.1:{port}",
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as probe:
        answer = await health_pb2_grpc.HealthStub(probe).Check(health_pb2.HealthCheckRequest())
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as other:
            await incident_service_pb2_grpc.IncidentServiceStub(probe).ListIncidents(
                incident_service_pb2.ListIncidentsRequest()
            )
        assert other.value.code() == grpc.StatusCode.UNIMPLEMENTED
    await server.server.stop(0)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as probe:
        with pytest.raises(grpc.aio.AioRpcError):
            await health_pb2_grpc.HealthStub(probe).Check(
                health_pb2.HealthCheckRequest(), timeout=2
            )


async def test_a_busy_health_port_stops_the_server_naming_the_health_setting(
    tmp_path: Path,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = IncidentServer(
            _unused_manager(tmp_path),
            Settings(listen="127.0.0.1:0", metrics_listen="off", health_listen=f"127.0.0.1:{port}"),
            Metrics(),
        )
        with pytest.raises(StartupError) as refused:
            await server.start()
    assert f"127.0.0.1:{port}" in str(refused.value)
    assert "--health-listen" in str(refused.value)
    assert "--listen or" not in str(refused.value)
    await server.server.stop(0)


async def test_an_exposed_server_without_tls_or_tokens_warns_loudly(
    start_server: StartServer, tokens_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "incident_manager")
    await start_server(listen="0.0.0.0:0")
    assert any("INSECURE" in r.getMessage() for r in caplog.records)
    caplog.clear()
    await start_server(storage=MemoryStorage(), listen="0.0.0.0:0", tokens_file=str(tokens_file))
    await start_server(storage=MemoryStorage(), listen="127.0.0.1:0")
    assert not any("INSECURE" in r.getMessage() for r in caplog.records)


async def test_tls_without_authentication_and_useless_tokens_files_are_warned_about(
    start_server: StartServer, pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "incident_manager")
    tls = {"tls_cert": str(pki.server_cert), "tls_key": str(pki.server_key)}
    await start_server(listen="0.0.0.0:0", **tls)
    assert any(
        "INSECURE" in r.getMessage() and "without authentication" in r.getMessage()
        for r in caplog.records
    )
    caplog.clear()
    empty = tmp_path / "empty-tokens"
    empty.write_text("# nobody yet\n")
    await start_server(storage=MemoryStorage(), tokens_file=str(empty))
    assert any("lists no credentials" in r.getMessage() for r in caplog.records)
    caplog.clear()
    subjects_only = tmp_path / "subjects"
    subjects_only.write_text("subject:detector-eu ingest\n")
    await start_server(storage=MemoryStorage(), tokens_file=str(subjects_only), **tls)
    assert any("subject: lines are ignored" in r.getMessage() for r in caplog.records)


async def test_events_caused_by_alerts_name_the_caller_not_the_claimed_source(
    start_server: StartServer, tokens_file: Path
) -> None:
    server = await start_server(tokens_file=str(tokens_file))
    ingest = bearer(token_of("ingest"))
    first = await server.ingestion.SubmitAlert(
        alert_ingestion_service_pb2.SubmitAlertRequest(alert=alert(id="a1", source="oncall-alice")),
        metadata=ingest,
    )
    await server.ingestion.BatchSubmitAlerts(
        alert_ingestion_service_pb2.BatchSubmitAlertsRequest(
            alerts=[
                alert(id="a2", source="oncall-alice", severity=incident_pb2.SEVERITY_P0),
                alert(id="a1", source="oncall-alice", status=alert_pb2.ALERT_STATUS_RESOLVED),
                alert(id="a2", source="oncall-alice", status=alert_pb2.ALERT_STATUS_RESOLVED),
            ]
        ),
        metadata=ingest,
    )
    got = await server.incidents.GetIncident(
        incident_service_pb2.GetIncidentRequest(id=first.ack.incident_id),
        metadata=bearer(token_of("reader")),
    )
    # Opened, merged (raising severity) and auto-resolved: all by the ingest
    # token's principal. The alert's source is kept as what it is, a claim.
    assert got.incident.state == incident_pb2.INCIDENT_STATE_RESOLVED
    assert got.incident.resolution.resolved_by == "ingest-bot"
    assert {event.actor for event in got.incident.timeline} == {"ingest-bot"}
    assert got.incident.source == "oncall-alice"
    assert got.incident.timeline[0].details["source"] == "oncall-alice"


async def test_a_token_limited_to_its_sources_cannot_pose_as_another_module(
    start_server: StartServer, tmp_path: Path
) -> None:
    path = tmp_path / "tokens"
    path.write_text(
        f"{hash_token('imt_sentinel')} eu-sentinel ingest sources=llm-sentinel\n"
        f"{hash_token(token_of('reader'))} reader-bot reader\n"
    )
    server = await start_server(tokens_file=str(path))
    sentinel = bearer("imt_sentinel")
    own = await server.ingestion.SubmitAlert(
        alert_ingestion_service_pb2.SubmitAlertRequest(alert=alert(source="llm-sentinel")),
        metadata=sentinel,
    )
    assert own.ack.status == alert_pb2.ACK_STATUS_ACCEPTED
    with pytest.raises(grpc.aio.AioRpcError) as posing:
        await server.ingestion.SubmitAlert(
            alert_ingestion_service_pb2.SubmitAlertRequest(alert=alert(source="llm-shield")),
            metadata=sentinel,
        )
    assert posing.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_info(posing.value).reason == "SOURCE_NOT_ALLOWED"
    assert "'llm-sentinel'" in (posing.value.details() or "")

    batch = await server.ingestion.BatchSubmitAlerts(
        alert_ingestion_service_pb2.BatchSubmitAlertsRequest(
            alerts=[
                alert(id="b1", source="llm-sentinel", title="mine"),
                alert(id="b2", source="llm-shield", title="not mine"),
            ]
        ),
        metadata=sentinel,
    )
    assert [ack.status for ack in batch.acks] == [
        alert_pb2.ACK_STATUS_ACCEPTED,
        alert_pb2.ACK_STATUS_REJECTED,
    ]
    assert "may not send alerts as source 'llm-shield'" in batch.acks[1].message

    async def stream() -> AsyncIterator[alert_ingestion_service_pb2.StreamAlertsRequest]:
        yield alert_ingestion_service_pb2.StreamAlertsRequest(
            alert=alert(id="s1", source="llm-shield", title="streamed")
        )

    [streamed] = [r async for r in server.ingestion.StreamAlerts(stream(), metadata=sentinel)]
    assert streamed.ack.status == alert_pb2.ACK_STATUS_REJECTED

    with pytest.raises(grpc.aio.AioRpcError) as module_posing:
        await integrations_pb2_grpc.IntegrationServiceStub(server.channel).SubmitModuleEvent(
            integrations_pb2.SubmitModuleEventRequest(
                event=integrations_pb2.ModuleEvent(
                    id="m1",
                    source="llm-shield",
                    edge_agent=integrations_pb2.EdgeAgentEvent(agent_id="edge-1"),
                )
            ),
            metadata=sentinel,
        )
    assert module_posing.value.code() == grpc.StatusCode.PERMISSION_DENIED

    listed = await server.incidents.ListIncidents(
        incident_service_pb2.ListIncidentsRequest(), metadata=bearer(token_of("reader"))
    )
    assert {i.source for i in listed.incidents} == {"llm-sentinel"}, "nothing refused was stored"
