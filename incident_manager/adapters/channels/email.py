"""The `email` channel: the page as an email over SMTP, via aiosmtplib.

Each attempt opens a connection, upgrades it with STARTTLS where configured, logs in where a
username is configured (the password from the environment variable `password_env`, read at
each attempt, never logged), sends one message with a plain-text and an HTML part
(`render.render_email`; a channel's template gives the subject and the plain text), and
disconnects.

TLS: `implicit_tls` connects over TLS from the start (port 465). Otherwise `starttls` True
requires STARTTLS (a server that does not offer it fails the delivery), False never uses it,
and None (the default) uses it when the server offers it, except that a channel with a
username requires it: a password is never sent in clear text. Certificates are verified, with
the system's CAs or the `ca_file` given.

Headers that make retries recognisable: `Message-ID: <{delivery_id}@{sender's domain}>` is the
same on every attempt, so a mailbox (or a person) can tell a retry from a new page;
`References: <incident.{incident id}@{domain}>` threads every message of an incident;
`Auto-Submitted: auto-generated` keeps out-of-office replies away.

Classification: accepted for at least one recipient is SENT (refused recipients are named in
the detail: retrying would send the others a duplicate, so send one recipient per delivery);
SMTP 4xx replies, connection errors and timeouts RETRY; SMTP 5xx replies FAILED; a server
without a required STARTTLS or AUTH, an untrusted certificate, an unset password variable or
an unusable address FAILED.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr

import aiosmtplib

from incident_manager.adapters.channels import digest
from incident_manager.adapters.channels.base import (
    AttemptResult,
    Channel,
    ChannelMisconfigured,
    Delivery,
    Redactor,
    redact,
)
from incident_manager.adapters.channels.render import MAX_TEMPLATE_SUBJECT, render_email
from incident_manager.adapters.channels.wording import compose
from incident_manager.domain.paging.model import MessageTemplate

MAX_TEMPLATE_TEXT = 20_000
"""Characters of a template's text body."""
DEFAULT_TIMEOUT = 30.0
"""Seconds for a whole attempt; SMTP servers may pause (greylisting, DNS checks) before
answering."""

_UNSAFE_ID = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class SmtpSettings:
    """One configured email channel: the SMTP server it sends through."""

    channel_id: str
    host: str
    sender: str
    """The From address (`incidents@example.com` or `Incidents <incidents@example.com>`)."""
    port: int | None = None
    """None: 465 with implicit TLS, 587 with STARTTLS required, 25 otherwise."""
    starttls: bool | None = None
    implicit_tls: bool = False
    username: str | None = None
    password_env: str | None = None
    """The environment variable holding the password; required with a username."""
    ca_file: str | None = None
    """PEM file of CAs to trust instead of the system's (a private relay's CA)."""
    timeout: float = DEFAULT_TIMEOUT
    template: MessageTemplate | None = None
    """The channel's subject (title) and plain text (body)."""

    def __post_init__(self) -> None:
        if self.implicit_tls and self.starttls:
            raise ValueError("implicit_tls and starttls exclude each other: choose one")
        if self.username and not self.password_env:
            raise ValueError("an SMTP username needs password_env, the variable with the password")
        if self.timeout <= 0:
            raise ValueError("the SMTP timeout must be positive")

    @property
    def requires_starttls(self) -> bool | None:
        """What aiosmtplib's `start_tls` gets: True required, False never, None if offered."""
        if self.implicit_tls:
            return False
        if self.starttls is None and self.username:
            return True
        return self.starttls


@dataclass(frozen=True)
class OutgoingEmail:
    """One message and its envelope, as the encoder builds it."""

    message: EmailMessage
    sender: str
    recipients: tuple[str, ...]
    password: str | None
    note: str = ""
    """Why the default words were sent although the channel has a template; else empty."""


def _domain(sender: str) -> str:
    address = parseaddr(sender)[1]
    domain = address.rpartition("@")[2]
    return _UNSAFE_ID.sub("-", domain) or "incident-manager.invalid"


class EmailEncoder:
    """Builds the message of one attempt."""

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._environ = os.environ if environ is None else environ
        self._clock = clock

    def __call__(self, delivery: Delivery[SmtpSettings]) -> OutgoingEmail:
        """The message and envelope; raises ChannelMisconfigured for what retrying can't fix."""
        settings = delivery.settings
        if not delivery.recipients:
            raise ChannelMisconfigured(f"channel {settings.channel_id}: no recipient address")
        password = None
        if settings.username:
            assert settings.password_env is not None  # SmtpSettings checks it
            password = self._environ.get(settings.password_env, "")
            if not password:
                raise ChannelMisconfigured(
                    f"channel {settings.channel_id}: environment variable "
                    f"{settings.password_env} (the SMTP password) is not set"
                )
        content = delivery.content
        note = ""
        if content.digest is not None:
            parts = digest.render_email(content)
        else:
            wording = compose(
                content,
                settings.template,
                "",
                title_limit=MAX_TEMPLATE_SUBJECT,
                body_limit=MAX_TEMPLATE_TEXT,
            )
            template = settings.template
            written = template is not None and template.title is not None and not wording.note
            title = wording.title if written else None
            parts = render_email(content, title, wording.body)
            note = wording.note
        domain = _domain(settings.sender)
        message = EmailMessage()
        try:
            message["From"] = settings.sender
            message["To"] = [
                Address(display_name=r.name or "", addr_spec=r.address) for r in delivery.recipients
            ]
        except (ValueError, IndexError) as error:
            raise ChannelMisconfigured(
                f"channel {settings.channel_id}: not a usable email address ({error})"
            ) from None
        message["Subject"] = parts.subject
        message["Date"] = format_datetime(self._clock().astimezone(UTC))
        message["Message-ID"] = f"<{delivery.delivery_id}@{domain}>"
        incident = _UNSAFE_ID.sub("-", delivery.content.incident_id)
        message["References"] = f"<incident.{incident}@{domain}>"
        message["Auto-Submitted"] = "auto-generated"
        message["X-Auto-Response-Suppress"] = "All"
        message["X-Incident-Id"] = incident
        message.set_content(parts.text)
        message.add_alternative(parts.html, subtype="html")
        envelope_sender = parseaddr(settings.sender)[1] or settings.sender
        recipients = tuple(r.address for r in delivery.recipients)
        return OutgoingEmail(message, envelope_sender, recipients, password, note)


class EmailChannel(Channel[SmtpSettings]):
    """Sends a delivery as one email; see the module's docstring."""

    def __init__(
        self,
        *,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        local_hostname: str | None = None,
    ) -> None:
        self._encode = EmailEncoder(environ, clock)
        self._local_hostname = local_hostname
        self._tls_contexts: dict[str | None, ssl.SSLContext] = {}

    async def _hostname(self) -> str:
        # aiosmtplib would ask getfqdn() (a DNS lookup) on every connection; once will do.
        if self._local_hostname is None:
            self._local_hostname = await asyncio.to_thread(socket.getfqdn)
        return self._local_hostname

    def _tls_context(self, ca_file: str | None) -> ssl.SSLContext:
        # Loading the system's CAs costs milliseconds: one context per CA file, reused.
        context = self._tls_contexts.get(ca_file)
        if context is None:
            context = ssl.create_default_context(cafile=ca_file)
            self._tls_contexts[ca_file] = context
        return context

    async def send(self, delivery: Delivery[SmtpSettings]) -> AttemptResult:
        """One SMTP conversation; every failure becomes a redacted result."""
        settings = delivery.settings
        try:
            outgoing = self._encode(delivery)
            tls_context = self._tls_context(settings.ca_file)
        except ChannelMisconfigured as error:
            return AttemptResult.failed(str(error))
        except OSError as error:
            return AttemptResult.failed(f"cannot read ca_file: {error.strerror or error}")
        redacted = Redactor([outgoing.password])
        try:
            async with asyncio.timeout(settings.timeout):
                refused, reply = await aiosmtplib.send(
                    outgoing.message,
                    sender=outgoing.sender,
                    recipients=list(outgoing.recipients),
                    hostname=settings.host,
                    port=settings.port,
                    username=settings.username,
                    password=outgoing.password,
                    use_tls=settings.implicit_tls,
                    start_tls=settings.requires_starttls,
                    tls_context=tls_context,
                    timeout=settings.timeout,
                    local_hostname=await self._hostname(),
                )
        except Exception as error:
            result = classify_smtp_error(error, settings.timeout, redacted)
        else:
            result = _accepted(outgoing.recipients, refused, reply, redacted)
        detail = f"{result.detail}; {outgoing.note}" if outgoing.note else result.detail
        return AttemptResult(result.outcome, redacted(detail), result.status)


def _accepted(
    recipients: tuple[str, ...],
    refused: Mapping[str, aiosmtplib.SMTPResponse],
    reply: str,
    redact: Callable[[str], str],
) -> AttemptResult:
    accepted = len(recipients) - len(refused)
    detail = f"SMTP 250 accepted for {accepted} recipient{'s' if accepted != 1 else ''}"
    if reply:
        # The server's words ("queued as 4F2A1") let an operator find the message in its log.
        detail += f": {redact(reply)}"
    if refused:
        detail += "; refused " + ", ".join(
            f"{address} ({response.code} {redact(response.message)})"
            for address, response in refused.items()
        )
    return AttemptResult.sent(detail, 250)


_STAGES: tuple[tuple[type[aiosmtplib.SMTPResponseException], str], ...] = (
    (aiosmtplib.SMTPAuthenticationError, "login refused"),
    (aiosmtplib.SMTPSenderRefused, "sender refused"),
    (aiosmtplib.SMTPRecipientRefused, "recipient refused"),
    (aiosmtplib.SMTPDataError, "message refused"),
    (aiosmtplib.SMTPHeloError, "greeting refused"),
    (aiosmtplib.SMTPConnectResponseError, "connection refused by the server"),
)


def _by_code(code: int, detail: str) -> AttemptResult:
    if 500 <= code < 600:
        return AttemptResult.failed(detail, code)
    return AttemptResult.retry(detail, code)


def _certificate_error(error: BaseException) -> ssl.SSLCertVerificationError | None:
    seen: BaseException | None = error
    for _ in range(5):  # the cause chain is short; bounded against cycles
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def classify_smtp_error(
    error: BaseException, timeout: float, redact: Callable[[str], str] = redact
) -> AttemptResult:
    """What a failed SMTP conversation means: 4xx and network errors RETRY, 5xx FAILED, a
    server that cannot do what the channel requires FAILED. The server's words pass through
    `redact` before they are put in a detail (which is then cut to length)."""
    certificate = _certificate_error(error)
    if certificate is not None:
        return AttemptResult.failed(
            f"TLS certificate not trusted: {certificate.verify_message or certificate.reason}"
        )
    if isinstance(error, aiosmtplib.SMTPRecipientsRefused):
        codes = [refusal.code for refusal in error.recipients]
        detail = "every recipient refused: " + ", ".join(
            f"{refusal.recipient} ({refusal.code} {refusal.message})"
            for refusal in error.recipients
        )
        # A temporary refusal of any of them is worth another try of the whole message.
        temporary = any(not 500 <= code < 600 for code in codes)
        code = codes[0] if codes else 0
        return (
            AttemptResult.retry(detail, code) if temporary else AttemptResult.failed(detail, code)
        )
    if isinstance(error, aiosmtplib.SMTPResponseException):
        stage = next((name for kind, name in _STAGES if isinstance(error, kind)), "refused")
        return _by_code(error.code, f"SMTP {error.code} {stage}: {redact(error.message)}")
    if isinstance(error, TimeoutError):
        return AttemptResult.retry(f"no answer within {timeout:g}s")
    if isinstance(error, aiosmtplib.SMTPServerDisconnected):
        return AttemptResult.retry(f"the server closed the connection: {redact(error.message)}")
    if isinstance(error, aiosmtplib.SMTPConnectError):
        return AttemptResult.retry(f"cannot connect: {redact(error.message)}")
    if isinstance(error, aiosmtplib.SMTPException):
        # STARTTLS or AUTH required but not offered, no common login method: the server and
        # the channel's settings disagree, and trying again won't change either.
        return AttemptResult.failed(
            f"the SMTP server cannot do what the channel needs: {redact(str(error))}"
        )
    if isinstance(error, ssl.SSLError | OSError):
        return AttemptResult.retry(f"connection failed: {redact(str(error))}")
    if isinstance(error, ValueError):
        return AttemptResult.failed(f"the channel's settings were refused: {redact(str(error))}")
    return AttemptResult.retry(f"unexpected error: {type(error).__name__}")
