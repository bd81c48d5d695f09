"""Who acts in a call: the caller when authentication is on, passed to the conversions
without changing the request the client sent."""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import TypeVar

import pytest

from generated.incident_manager.v1 import incident_pb2, incident_service_pb2
from incident_manager.config import Settings
from incident_manager.domain.access import Principal, Role
from incident_manager.domain.errors import ActorMismatch, SourceNotAllowed
from incident_manager.entrypoints import conversions as conv
from incident_manager.entrypoints.auth import (
    PRINCIPAL,
    Access,
    acting_as,
    explained,
    method_policies,
)

T = TypeVar("T")
RESPONDER = Principal("responder-bot", frozenset({Role.RESPONDER}))


def as_caller(principal: Principal | None, work: Callable[[], T]) -> T:
    """Run `work` as a call by `principal` (None: authentication off)."""
    context = contextvars.copy_context()

    def call() -> T:
        PRINCIPAL.set(principal)
        return work()

    return context.run(call)


def test_without_authentication_whoever_the_request_names_acts() -> None:
    assert as_caller(None, lambda: acting_as("actor", "alice")) == "alice"
    assert as_caller(None, lambda: acting_as("actor", "")) == ""


def test_an_authenticated_caller_acts_when_the_field_is_empty_or_names_it() -> None:
    assert as_caller(RESPONDER, lambda: acting_as("author", "")) == "responder-bot"
    assert as_caller(RESPONDER, lambda: acting_as("author", "responder-bot")) == "responder-bot"


def test_naming_someone_else_than_the_caller_is_an_actor_mismatch() -> None:
    with pytest.raises(ActorMismatch) as refused:
        as_caller(RESPONDER, lambda: acting_as("resolved_by", "ceo"))
    assert refused.value.metadata == {"field": "resolved_by", "principal": "responder-bot"}


def test_the_conversions_take_the_actor_given_and_leave_the_request_as_sent() -> None:
    create = incident_service_pb2.CreateIncidentRequest(
        incident=incident_pb2.Incident(
            title="t",
            source="s",
            severity=incident_pb2.SEVERITY_P2,
            type=incident_pb2.INCIDENT_TYPE_APPLICATION,
        )
    )
    update = incident_service_pb2.UpdateIncidentRequest(
        incident=incident_pb2.Incident(id="inc_1", title="t")
    )
    update.update_mask.paths.append("title")
    resolve = incident_service_pb2.ResolveIncidentRequest(
        id="inc_1", method=incident_pb2.RESOLUTION_METHOD_MANUAL
    )
    note = incident_service_pb2.AddNoteRequest(incident_id="inc_1", content="looking")
    sent = [message.SerializeToString() for message in (create, update, resolve, note)]

    assert conv.create_incident_from_proto(create, actor="bob").actor == "bob"
    assert conv.update_incident_from_proto(update, actor="bob").actor == "bob"
    assert conv.resolve_incident_from_proto(resolve, resolved_by="bob").resolved_by == "bob"
    assert conv.add_note_from_proto(note, author="bob").author == "bob"
    assert [m.SerializeToString() for m in (create, update, resolve, note)] == sent


def test_every_rpc_of_our_services_needs_a_role_and_health_needs_none() -> None:
    policy = method_policies(Settings())
    assert policy("/incident_manager.v1.IncidentService/ListIncidents").role is Role.READER
    assert policy("/incident_manager.v1.IntegrationService/SubmitModuleEvent").role is Role.INGEST
    assert policy("/grpc.health.v1.Health/Check").access is Access.OPEN
    assert policy("/some.Other/Method").role is Role.ADMIN
    closed = method_policies(Settings(reflection="authenticated"))
    assert closed("/grpc.reflection.v1alpha.ServerReflection/X").access is Access.AUTHENTICATED


def test_a_source_refusal_tells_the_client_where_its_sources_are_set() -> None:
    refusal = SourceNotAllowed("llm-shield", "eu-sentinel", frozenset({"llm-sentinel"}))
    assert "tokens file" not in refusal.message, "the domain does not know the tokens file"
    assert explained(refusal).startswith(refusal.message)
    assert "sources= of its line in the tokens file" in explained(refusal)
