"""Who may call what, in one place: who the caller is, the role each RPC needs,
and who acts in a call.

- **Authentication**: a bearer token from the `authorization` metadata or,
  with mutual TLS, the client certificate's common name. Off (everyone
  anonymous) without a tokens file and without mutual TLS.
- **Authorization**: `ROLE_OF` names the role each RPC needs; an RPC not
  listed needs admin, so a new RPC is closed until someone gives it a role.
  Health is open to all; reflection follows `--reflection`.
- **The actor**: with authentication on, the principal is who acts. A request
  may leave `actor`, `author` or `resolved_by` empty (the principal is filled
  in) or name the principal; naming anyone else is ACTOR_MISMATCH.

The call interceptor runs `Authenticator.admit` before each call and the
servicers read the caller with `caller()` and `acting_as()`. Principals and
roles themselves are domain objects (`domain/access.py`).
"""

from __future__ import annotations

import contextvars
import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health

from generated.incident_manager.v1 import (
    alert_ingestion_service_pb2,
    incident_service_pb2,
    integrations_pb2,
    paging_service_pb2,
)
from incident_manager.config import Settings
from incident_manager.domain.access import ROLE_NAMES, Credentials, Principal, Role
from incident_manager.domain.errors import ActorMismatch, DomainError, SourceNotAllowed

Context = grpc.aio.ServicerContext[Any, Any]

INCIDENT_SERVICE = incident_service_pb2.DESCRIPTOR.services_by_name["IncidentService"].full_name
INGESTION_SERVICE = alert_ingestion_service_pb2.DESCRIPTOR.services_by_name[
    "AlertIngestionService"
].full_name
INTEGRATION_SERVICE = integrations_pb2.DESCRIPTOR.services_by_name["IntegrationService"].full_name
PAGING_SERVICE = paging_service_pb2.DESCRIPTOR.services_by_name["PagingService"].full_name
SERVED_FILES = (
    incident_service_pb2,
    alert_ingestion_service_pb2,
    integrations_pb2,
    paging_service_pb2,
)
"""The proto files whose services the server serves (and whose methods need a role)."""

READER_METHODS = frozenset({"GetIncident", "ListIncidents", "StreamIncidents"})
"""IncidentService methods a reader may call; the others change incidents."""
ROLE_OF: dict[str, Role] = {
    **{f"{INCIDENT_SERVICE}/{name}": Role.READER for name in READER_METHODS},
    **{
        f"{INCIDENT_SERVICE}/{name}": Role.RESPONDER
        for name in (
            "CreateIncident",
            "UpdateIncident",
            "ResolveIncident",
            "AddNote",
            "AcknowledgeIncident",
        )
    },
    **{
        f"{PAGING_SERVICE}/{name}": Role.READER
        for name in ("ListNotifications", "TestRoute", "GetOnCall", "ListOverrides", "ListSilences")
    },
    **{
        f"{PAGING_SERVICE}/{name}": Role.RESPONDER
        for name in (
            "CreateOverride",
            "DeleteOverride",
            "CreateSilence",
            "ExpireSilence",
        )
    },
    **{
        f"{INGESTION_SERVICE}/{name}": Role.INGEST
        for name in ("SubmitAlert", "BatchSubmitAlerts", "StreamAlerts", "HealthCheck")
    },
    **{
        f"{INTEGRATION_SERVICE}/{name}": Role.INGEST
        for name in ("SubmitModuleEvent", "BatchSubmitModuleEvents")
    },
}
"""The role each RPC needs, by name; an RPC not listed needs admin (fail closed)."""

PRINCIPAL: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "principal", default=None
)
"""The authenticated caller of the call being served; None when authentication is off."""


class Access(enum.Enum):
    """Which callers a method admits."""

    OPEN = "open"
    """Anyone, with or without credentials (health; reflection when configured so)."""
    AUTHENTICATED = "authenticated"
    """Any caller with valid credentials, whatever its roles."""
    ROLE = "role"
    """A caller holding the method's role."""


@dataclass(frozen=True)
class MethodPolicy:
    """Who may call one method."""

    access: Access
    role: Role | None = None
    """The role needed, for `Access.ROLE`."""


def method_policies(settings: Settings) -> Callable[[str], MethodPolicy]:
    """Who may call each method, by its full name (`/package.Service/Method`)."""
    table: dict[str, MethodPolicy] = {}
    for file in SERVED_FILES:
        for service in file.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                role = ROLE_OF.get(f"{service.full_name}/{method.name}", Role.ADMIN)
                table[f"/{service.full_name}/{method.name}"] = MethodPolicy(Access.ROLE, role)
    open_to_all = MethodPolicy(Access.OPEN)
    reflection_policy = (
        open_to_all if settings.reflection == "open" else MethodPolicy(Access.AUTHENTICATED)
    )
    admin_only = MethodPolicy(Access.ROLE, Role.ADMIN)

    def policy(method: str) -> MethodPolicy:
        found = table.get(method)
        if found is not None:
            return found
        if method.startswith(f"/{health.SERVICE_NAME}/"):
            return open_to_all
        if method.startswith("/grpc.reflection."):
            return reflection_policy
        return admin_only  # a method nobody listed: fail closed

    return policy


class Denied(Exception):
    """A call refused before it runs, with the status code and message the client gets."""

    def __init__(
        self, code: grpc.StatusCode, message: str, principal: Principal | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.principal = principal
        """The caller, when it was identified and then refused (for the call's log line)."""


class Authenticator:
    """Decides who the caller is. Off (everyone anonymous) without tokens or mutual TLS."""

    def __init__(self, credentials: Credentials | None, mutual_tls: bool) -> None:
        self.credentials = credentials
        self.mutual_tls = mutual_tls

    @property
    def enabled(self) -> bool:
        """Whether callers must authenticate (a tokens file or mutual TLS is configured)."""
        return self.credentials is not None or self.mutual_tls

    def admit(self, method: str, policy: MethodPolicy, context: Context) -> Principal | None:
        """The caller, allowed to call `method`; Denied if it may not.

        The principal is also kept for the servicers (`caller()`). Open
        methods ignore credentials: a stale token must not fail a probe.
        """
        if not self.enabled or policy.access is Access.OPEN:
            return None
        principal = self.identify(context)
        try:
            self.authorize(method, policy, principal)
        except Denied as denied:
            denied.principal = principal
            raise
        PRINCIPAL.set(principal)
        return principal

    def identify(self, context: Context) -> Principal | None:
        """The caller, None if it presented nothing; Denied for bad credentials."""
        token = _bearer_token(context.invocation_metadata() or ())
        if token is not None:
            if self.credentials is None:
                raise Denied(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "this server does not accept bearer tokens (no tokens file is configured); "
                    "authenticate with a client certificate instead",
                )
            principal = self.credentials.by_token(token)
            if principal is None:
                raise Denied(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "the bearer token is not known to this server; check that its hash is in "
                    "the tokens file (python -m incident_manager.tokens create makes both)",
                )
            return principal
        if self.mutual_tls:
            names = list(context.auth_context().get("x509_common_name") or ())
            if names:
                name = names[0].decode(errors="replace")
                if not name:
                    # grpc gives an empty name for a certificate without one.
                    raise Denied(
                        grpc.StatusCode.UNAUTHENTICATED,
                        "the client certificate has no subject common name (CN), which this "
                        "server takes as the caller's principal; issue one with a CN",
                    )
                if self.credentials is None:
                    # The certificate authority is the whole trust decision.
                    return Principal(name, frozenset({Role.ADMIN}))
                return self.credentials.by_subject(name) or Principal(name, frozenset())
        return None

    def authorize(self, method: str, policy: MethodPolicy, principal: Principal | None) -> None:
        """Denied unless `principal` may call `method` under `policy`."""
        if policy.access is Access.OPEN or not self.enabled:
            return
        if principal is None:
            raise Denied(
                grpc.StatusCode.UNAUTHENTICATED,
                f"{method} needs credentials: send the metadata "
                "'authorization: Bearer <token>'"
                + (" or a client certificate" if self.mutual_tls else ""),
            )
        if policy.access is Access.ROLE and policy.role and not principal.has(policy.role):
            held = ", ".join(sorted(role.value for role in principal.roles)) or "no roles"
            raise Denied(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{principal.name} ({held}) may not call {method}: it needs the role "
                f"'{policy.role.value}' or 'admin' (roles: {ROLE_NAMES})",
            )


def _bearer_token(metadata: Any) -> str | None:
    values = [value for key, value in metadata if key == "authorization"]
    if not values:
        return None
    if len(values) > 1:
        # A proxy in front may have checked another entry than the one we would use.
        raise Denied(
            grpc.StatusCode.UNAUTHENTICATED,
            f"the call has {len(values)} authorization metadata entries; send only one",
        )
    value = values[0]
    text = value if isinstance(value, str) else value.decode(errors="replace")
    scheme, _, token = text.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Denied(
            grpc.StatusCode.UNAUTHENTICATED,
            "the authorization metadata must be 'Bearer <token>'",
        )
    return token.strip()


def caller() -> Principal | None:
    """The authenticated caller of the call being served; None when authentication is off."""
    return PRINCIPAL.get()


def acting_as(field: str, claimed: str) -> str:
    """Who acts in this call, given what the request's `field` claims.

    With authentication off, whoever the request names (empty if it names
    nobody). With it on, the caller: an empty field means the caller, and
    naming anyone else is ActorMismatch.
    """
    principal = PRINCIPAL.get()
    if principal is None:
        return claimed
    if claimed and claimed != principal.name:
        raise ActorMismatch(field, claimed, principal.name)
    return principal.name


def explained(error: DomainError) -> str:
    """The error's message for the client, with what only this layer knows.

    The domain knows that a principal may send as some sources only; that
    the tokens file grants them is known here.
    """
    if isinstance(error, SourceNotAllowed):
        return f"{error.message} (set by the sources= of its line in the tokens file)"
    return error.message
