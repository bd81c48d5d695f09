"""The email channel against a real SMTP server: aiosmtpd's Controller on 127.0.0.1 (port 0),
with STARTTLS on a self-signed certificate made here and AUTH where a test asks for it."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, replace
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from incident_manager.adapters.channels.base import (
    Delivery,
    Link,
    Outcome,
    Recipient,
)
from incident_manager.adapters.channels.email import EmailChannel, SmtpSettings
from tests.support.pages import page
from tests.support.receivers import PASSWORD, LoopbackController, Mailbox

ALICE = Recipient("alice", "alice@example.com", "Alice Ng")


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "smtp test server")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "smtp.pem", directory / "smtp.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@dataclass
class SmtpServer:
    """A running server, its mailbox, and where a channel finds it."""

    mailbox: Mailbox
    port: int
    ca_file: Path | None


def run_server(mailbox: Mailbox, **smtp: Any) -> Iterator[LoopbackController]:
    controller = LoopbackController(
        mailbox,
        hostname="127.0.0.1",
        port=0,
        server_hostname="smtp.test",
        # Generous: the test machine is shared, and a slow start is not what is tested.
        ready_timeout=30,
        **smtp,
    )
    controller.start()
    try:
        yield controller
    finally:
        controller.stop()


@pytest.fixture
def plain_server() -> Iterator[SmtpServer]:
    """No TLS, no AUTH: the sample configuration's local relay."""
    mailbox = Mailbox()
    for controller in run_server(mailbox):
        yield SmtpServer(mailbox, controller.port, None)


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[SmtpServer]:
    """STARTTLS required, then AUTH required."""
    cert, key = self_signed_certificate(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    mailbox = Mailbox()
    for controller in run_server(
        mailbox,
        tls_context=context,
        require_starttls=True,
        authenticator=mailbox.authenticate,
        auth_required=True,
    ):
        yield SmtpServer(mailbox, controller.port, cert)


def settings(server: SmtpServer, **fields: Any) -> SmtpSettings:
    values: dict[str, Any] = {
        "channel_id": "mail",
        "host": "127.0.0.1",
        "port": server.port,
        "sender": "Incidents <incidents@example.com>",
        "timeout": 10.0,
    }
    values.update(fields)
    return SmtpSettings(**values)


def delivery(
    smtp: SmtpSettings, *recipients: Recipient, delivery_id: str = "dlv_01HZX3K8Q5", **content: Any
) -> Delivery[SmtpSettings]:
    return Delivery(delivery_id, smtp, page(**content), recipients or (ALICE,))


@pytest.fixture
def channel() -> EmailChannel:
    return EmailChannel(environ={"SMTP_PASSWORD": PASSWORD}, local_hostname="pager.test")


async def test_a_page_arrives_with_a_text_and_an_html_part(
    plain_server: SmtpServer, channel: EmailChannel
) -> None:
    result = await channel.send(delivery(settings(plain_server)))
    assert (result.outcome, result.status) == (Outcome.SENT, 250)
    assert result.detail == "SMTP 250 accepted for 1 recipient: OK queued as 4F2A1"
    [got] = plain_server.mailbox.received
    assert got.mail_from == "incidents@example.com"
    assert got.rcpt_tos == ["alice@example.com"]
    message = got.message
    assert message["Subject"] == "[P1] p99 latency above 2s on gpt-4o (inc-4711)"
    assert message["To"] == "Alice Ng <alice@example.com>"
    assert message["From"] == "Incidents <incidents@example.com>"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message.get_content_type() == "multipart/alternative"
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    assert isinstance(text, EmailMessage) and isinstance(html, EmailMessage)
    assert "Paged at level 1, round 1: new incident" in text.get_content()
    assert "Alice Ng (on call for primary)" in html.get_content()


async def test_retries_carry_the_same_message_id_and_an_incident_thread(
    plain_server: SmtpServer, channel: EmailChannel
) -> None:
    plain_server.mailbox.data_replies.append("451 4.3.0 try again later")
    first = await channel.send(delivery(settings(plain_server)))
    second = await channel.send(replace(delivery(settings(plain_server)), attempt=2))
    other = await channel.send(delivery(settings(plain_server), delivery_id="dlv_other"))
    assert (first.outcome, first.status) == (Outcome.RETRY, 451)
    assert (second.outcome, other.outcome) == (Outcome.SENT, Outcome.SENT)
    retried, different = plain_server.mailbox.received
    assert retried.message["Message-ID"] == "<dlv_01HZX3K8Q5@example.com>"
    assert different.message["Message-ID"] == "<dlv_other@example.com>"
    assert retried.message["References"] == different.message["References"]
    assert retried.message["References"] == "<incident.inc-4711@example.com>"


async def test_the_html_part_arrives_escaped(
    plain_server: SmtpServer, channel: EmailChannel
) -> None:
    await channel.send(
        delivery(
            settings(plain_server),
            title='<img src=x onerror="alert(1)"> & more',
            links=(Link("<b>trace</b>", "javascript:alert(2)"),),
        )
    )
    [got] = plain_server.mailbox.received
    html = got.message.get_body(("html",))
    assert isinstance(html, EmailMessage)
    body = html.get_content()
    assert (
        "<img" not in body and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt; &amp; more" in body
    )
    assert "<b>trace</b>" not in body and 'href="javascript' not in body
    assert got.message["Subject"] == '[P1] <img src=x onerror="alert(1)"> & more (inc-4711)'


async def test_starttls_and_login_are_used_where_configured(
    tls_server: SmtpServer, channel: EmailChannel
) -> None:
    smtp = settings(
        tls_server,
        starttls=True,
        username="pager",
        password_env="SMTP_PASSWORD",
        ca_file=str(tls_server.ca_file),
    )
    result = await channel.send(delivery(smtp))
    assert result.outcome is Outcome.SENT, result.detail
    [got] = tls_server.mailbox.received
    assert got.over_tls and got.authenticated
    assert tls_server.mailbox.logins == [(b"pager", PASSWORD.encode())]


async def test_a_username_makes_starttls_required_even_if_not_asked_for(
    tls_server: SmtpServer, channel: EmailChannel
) -> None:
    smtp = settings(
        tls_server, username="pager", password_env="SMTP_PASSWORD", ca_file=str(tls_server.ca_file)
    )
    assert smtp.requires_starttls is True
    assert (await channel.send(delivery(smtp))).outcome is Outcome.SENT
    assert tls_server.mailbox.received[0].over_tls


async def test_a_wrong_password_is_final_and_never_shown(
    tls_server: SmtpServer,
) -> None:
    channel = EmailChannel(environ={"SMTP_PASSWORD": "wrong-password-123"})
    smtp = settings(
        tls_server, username="pager", password_env="SMTP_PASSWORD", ca_file=str(tls_server.ca_file)
    )
    result = await channel.send(delivery(smtp))
    assert (result.outcome, result.status) == (Outcome.FAILED, 535)
    assert "login refused" in result.detail
    assert "wrong-password-123" not in result.detail
    assert tls_server.mailbox.received == []


async def test_an_untrusted_certificate_is_final(
    tls_server: SmtpServer, channel: EmailChannel
) -> None:
    smtp = settings(tls_server, starttls=True, username="pager", password_env="SMTP_PASSWORD")
    result = await channel.send(delivery(smtp))
    assert result.outcome is Outcome.FAILED
    assert "TLS certificate not trusted" in result.detail
    # The password was never sent to a server we could not verify.
    assert tls_server.mailbox.logins == []


async def test_required_starttls_that_the_server_lacks_is_final(
    plain_server: SmtpServer, channel: EmailChannel
) -> None:
    result = await channel.send(delivery(settings(plain_server, starttls=True)))
    assert result.outcome is Outcome.FAILED
    assert "STARTTLS" in result.detail
    assert plain_server.mailbox.received == []


async def test_a_server_requiring_login_refuses_a_channel_without_one(
    tls_server: SmtpServer, channel: EmailChannel
) -> None:
    smtp = settings(tls_server, starttls=True, ca_file=str(tls_server.ca_file))
    result = await channel.send(delivery(smtp))
    assert (result.outcome, result.status) == (Outcome.FAILED, 530)


async def test_a_permanent_refusal_is_final(
    plain_server: SmtpServer, channel: EmailChannel
) -> None:
    plain_server.mailbox.refuse_recipients["alice@example.com"] = "550 5.1.1 no such user"
    result = await channel.send(delivery(settings(plain_server)))
    assert (result.outcome, result.status) == (Outcome.FAILED, 550)
    assert "alice@example.com (550 5.1.1 no such user)" in result.detail


async def test_a_temporary_refusal_is_retried(
    plain_server: SmtpServer, channel: EmailChannel
) -> None:
    plain_server.mailbox.refuse_recipients["alice@example.com"] = "451 4.7.1 greylisted"
    result = await channel.send(delivery(settings(plain_server)))
    assert (result.outcome, result.status) == (Outcome.RETRY, 451)


async def test_a_refused_message_body_follows_its_code(
    plain_server: SmtpServer, channel: EmailChannel
) -> None:
    plain_server.mailbox.data_replies += ["554 5.6.0 message rejected", "452 4.3.1 no space"]
    rejected = await channel.send(delivery(settings(plain_server)))
    full = await channel.send(delivery(settings(plain_server)))
    assert (rejected.outcome, rejected.status) == (Outcome.FAILED, 554)
    assert "message refused" in rejected.detail
    assert (full.outcome, full.status) == (Outcome.RETRY, 452)


async def test_a_partly_refused_page_is_sent_and_names_who_was_refused(
    plain_server: SmtpServer, channel: EmailChannel
) -> None:
    plain_server.mailbox.refuse_recipients["bob@example.com"] = "550 5.1.1 no such user"
    bob = Recipient("bob", "bob@example.com")
    result = await channel.send(delivery(settings(plain_server), ALICE, bob))
    assert result.outcome is Outcome.SENT
    assert "accepted for 1 recipient" in result.detail
    assert "refused bob@example.com (550 5.1.1 no such user)" in result.detail


async def test_a_server_that_is_not_there_is_retried(
    unused_tcp_port: int, channel: EmailChannel
) -> None:
    smtp = SmtpSettings("mail", "127.0.0.1", "incidents@example.com", port=unused_tcp_port)
    result = await channel.send(delivery(smtp))
    assert (result.outcome, result.status) == (Outcome.RETRY, None)


async def test_an_unset_password_variable_fails_before_connecting(
    plain_server: SmtpServer,
) -> None:
    channel = EmailChannel(environ={})
    smtp = settings(plain_server, username="pager", password_env="SMTP_PASSWORD")
    result = await channel.send(delivery(smtp))
    assert result.outcome is Outcome.FAILED
    assert "SMTP_PASSWORD" in result.detail and "not set" in result.detail


async def test_a_bad_recipient_address_is_final(
    plain_server: SmtpServer, channel: EmailChannel
) -> None:
    result = await channel.send(delivery(settings(plain_server), Recipient("x", "not an address")))
    assert result.outcome is Outcome.FAILED
    assert "not a usable email address" in result.detail


def test_settings_that_contradict_themselves_are_refused() -> None:
    with pytest.raises(ValueError, match="exclude each other"):
        SmtpSettings("mail", "h", "a@b", implicit_tls=True, starttls=True)
    with pytest.raises(ValueError, match="password_env"):
        SmtpSettings("mail", "h", "a@b", username="u")
