"""The PagingService use cases: the ledger, the route dry run, on-call, overrides, silences.

`Pager` holds the paging rules in force (swapped atomically on reload) and
runs each use case as a unit of work.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from incident_manager.domain.errors import (
    IncidentNotFound,
    PagingNotConfigured,
    PagingObjectNotFound,
    SilenceEnded,
    ValidationError,
    quoted,
)
from incident_manager.domain.model import Clock, IncidentType, Severity
from incident_manager.domain.paging.escalation import Delivery, Unreached, plan, resolve_level
from incident_manager.domain.paging.ledger import Notification, new_override_id, new_silence_id
from incident_manager.domain.paging.model import (
    Matcher,
    Override,
    PagingConfig,
    Silence,
    TargetKind,
)
from incident_manager.domain.paging.routing import PagingSubject, choose_route, silences_holding
from incident_manager.domain.paging.schedules import OnCall, on_call
from incident_manager.domain.query import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from incident_manager.domain.validation import MAX_ID, MAX_NAME, Checker
from incident_manager.service.ports import Storage, UnitOfWork

T = TypeVar("T")
K = TypeVar("K")
MAX_COMMENT = 1024
MAX_SILENCE = timedelta(days=366)
"""Longer silences are refused: a forgotten silence would hide a real outage for good."""
OVERRIDE_REACH = timedelta(days=400)
"""How far from the asked moment GetOnCall looks for overrides."""


@dataclass(frozen=True)
class PlannedStep:
    """One level of one round of a dry run, both from 1."""

    level: int
    round: int
    at: datetime
    deliveries: tuple[Delivery, ...]
    unreached: tuple[Unreached, ...]


@dataclass(frozen=True)
class RoutePlan:
    matched: bool
    route: int = 0
    policy_id: str = ""
    silences: list[Silence] = field(default_factory=list)
    steps: list[PlannedStep] = field(default_factory=list)
    ack_timeout: timedelta | None = None


class RulesHolder:
    """The paging configuration in force; `replace` swaps it at once (SIGHUP)."""

    def __init__(self, config: PagingConfig | None = None) -> None:
        self.current: PagingConfig | None = config

    def replace(self, config: PagingConfig | None) -> None:
        self.current = config

    def __call__(self) -> PagingConfig | None:
        return self.current


class Pager:
    def __init__(
        self,
        storage: Storage,
        rules: RulesHolder,
        clock: Clock,
        wake: Callable[[], None] = lambda: None,
    ) -> None:
        self.storage = storage
        self.rules = rules
        self.clock = clock
        self.wake = wake

    def _book(self) -> PagingConfig:
        book = self.rules.current
        if book is None:
            raise PagingNotConfigured()
        return book

    async def _write(self, work: Callable[[UnitOfWork], T]) -> T:
        def unit(uow: UnitOfWork) -> T:
            with uow:
                value = work(uow)
                uow.commit()
            return value

        return await self.storage.write(unit)

    async def list_notifications(
        self, incident_id: str, page_size: int, page_token: str
    ) -> tuple[list[Notification], str]:
        checker = Checker()
        checker.required("incident_id", incident_id, MAX_ID)
        checker.raise_if_any()
        size = _page_size(page_size)
        key = _decode(
            page_token,
            "ledger",
            incident_id,
            lambda k: (datetime.fromisoformat(k[0]), int(k[1]), str(k[2])),
        )

        def work(uow: UnitOfWork) -> list[Notification]:
            if uow.incidents.get(incident_id) is None:
                raise IncidentNotFound(incident_id)
            return uow.paging.list_notifications(incident_id, key, size + 1)

        rows = await self.storage.read(work)
        token = ""
        if len(rows) > size:
            rows = rows[:size]
            last = rows[-1].ledger_key
            token = _encode("ledger", incident_id, [last[0].isoformat(), last[1], last[2]])
        return rows, token

    async def test_route(
        self,
        source: str,
        type: IncidentType | None,
        severity: Severity | None,
        labels: Mapping[str, str],
        at: datetime | None,
    ) -> RoutePlan:
        checker = Checker()
        checker.required("source", source, MAX_NAME)
        if type is None:
            checker.fail("type", "is required")
        if severity is None:
            checker.fail("severity", "is required")
        checker.string_map("labels", labels)
        checker.raise_if_any()
        assert type is not None and severity is not None
        book = self._book()
        moment = at or self.clock()
        subject = PagingSubject(source, type, severity, dict(labels))
        match = choose_route(book, subject)
        if match is None:
            return RoutePlan(matched=False)
        policy = match.policy
        steps = plan(policy, moment)
        horizon = steps[-1].due + timedelta(microseconds=1)
        schedules = {
            target.id
            for level in policy.levels
            for target in level.targets
            if target.kind is TargetKind.SCHEDULE
        }

        def work(uow: UnitOfWork) -> tuple[list[Silence], list[Override]]:
            silences = uow.paging.silences_active(moment)
            overrides = [
                found
                for schedule in sorted(schedules)
                for found in uow.paging.overrides_between(schedule, moment, horizon)
            ]
            return silences, overrides

        silences, overrides = await self.storage.read(work)
        planned = []
        for step in steps:
            resolved = resolve_level(book, policy.levels[step.level], step.due, overrides)
            planned.append(
                PlannedStep(
                    step.level + 1,
                    step.round + 1,
                    step.due,
                    resolved.deliveries,
                    resolved.unreached,
                )
            )
        return RoutePlan(
            matched=True,
            route=match.index + 1,
            policy_id=policy.id,
            silences=list(silences_holding(silences, subject, moment)),
            steps=planned,
            ack_timeout=policy.ack_timeout,
        )

    async def on_call(self, schedule_id: str, at: datetime | None) -> OnCall:
        checker = Checker()
        checker.required("schedule_id", schedule_id, MAX_ID)
        checker.raise_if_any()
        book = self._book()
        schedule = book.schedule(schedule_id)
        if schedule is None:
            raise PagingObjectNotFound("schedule", schedule_id, "in the paging configuration")
        moment = at or self.clock()
        # Overrides near the moment decide who is on call and where the answer's span ends.
        overrides = await self.storage.read(
            lambda uow: uow.paging.overrides_between(
                schedule_id, moment - OVERRIDE_REACH, moment + OVERRIDE_REACH
            )
        )
        return on_call(schedule, moment, overrides)

    async def create_override(
        self,
        schedule_id: str,
        user_id: str,
        start: datetime | None,
        end: datetime | None,
        created_by: str,
        reason: str,
    ) -> Override:
        checker = Checker("override.")
        checker.required("schedule_id", schedule_id, MAX_ID)
        checker.required("user_id", user_id, MAX_ID)
        checker.required("created_by", created_by, MAX_NAME)
        checker.at_most("reason", reason, MAX_COMMENT)
        if start is None:
            checker.fail("start_time", "is required")
        if end is None:
            checker.fail("end_time", "is required")
        elif start is not None and end <= start:
            checker.fail("end_time", "must be after start_time")
        book = self._book()
        if schedule_id.strip() and book.schedule(schedule_id) is None:
            checker.fail(
                "schedule_id", f"no schedule {quoted(schedule_id)} in the paging configuration"
            )
        if user_id.strip() and book.user(user_id) is None:
            checker.fail("user_id", f"no user {quoted(user_id)} in the paging configuration")
        checker.raise_if_any()
        assert start is not None and end is not None
        override = Override(
            id=new_override_id(),
            schedule_id=schedule_id,
            user_id=user_id,
            start=start,
            end=end,
            created_by=created_by,
            reason=reason,
            create_time=self.clock(),
        )
        await self._write(lambda uow: uow.paging.add_override(override))
        return override

    async def list_overrides(
        self, schedule_id: str, include_ended: bool, page_size: int, page_token: str
    ) -> tuple[list[Override], str]:
        size = _page_size(page_size)
        scope = f"{schedule_id}|{include_ended}"
        key = _decode(page_token, "overrides", scope, _time_and_id)
        now = self.clock()
        rows = await self.storage.read(
            lambda uow: uow.paging.list_overrides(schedule_id, include_ended, now, key, size + 1)
        )
        token = ""
        if len(rows) > size:
            rows = rows[:size]
            token = _encode("overrides", scope, [rows[-1].start.isoformat(), rows[-1].id])
        return rows, token

    async def delete_override(self, override_id: str) -> None:
        checker = Checker()
        checker.required("id", override_id, MAX_ID)
        checker.raise_if_any()

        def work(uow: UnitOfWork) -> None:
            if not uow.paging.delete_override(override_id):
                raise PagingObjectNotFound("override", override_id)

        await self._write(work)

    async def create_silence(
        self,
        matchers: Matcher,
        start: datetime | None,
        end: datetime | None,
        created_by: str,
        comment: str,
    ) -> Silence:
        now = self.clock()
        begins = start or now
        checker = Checker("silence.")
        if matchers.is_empty:
            checker.fail(
                "matchers",
                "at least one matcher (sources, types, severities or labels) is required,"
                " so that nothing is silenced by accident",
            )
        checker.string_list("matchers.sources", sorted(matchers.sources), 64, MAX_NAME)
        checker.string_map("matchers.labels", matchers.labels)
        checker.required("created_by", created_by, MAX_NAME)
        checker.required("comment", comment, MAX_COMMENT)
        if end is None:
            checker.fail("end_time", "is required")
        elif end <= begins:
            checker.fail("end_time", "must be after start_time (or after now, without one)")
        elif end - begins > MAX_SILENCE:
            checker.fail("end_time", "a silence may last at most 366 days")
        checker.raise_if_any()
        assert end is not None
        silence = Silence(
            id=new_silence_id(),
            matcher=matchers,
            start=begins,
            end=end,
            created_by=created_by,
            comment=comment,
            create_time=now,
        )
        await self._write(lambda uow: uow.paging.add_silence(silence))
        return silence

    async def list_silences(
        self, include_expired: bool, page_size: int, page_token: str
    ) -> tuple[list[Silence], str]:
        size = _page_size(page_size)
        scope = str(include_expired)
        key = _decode(page_token, "silences", scope, _time_and_id)
        now = self.clock()
        rows = await self.storage.read(
            lambda uow: uow.paging.list_silences(include_expired, now, key, size + 1)
        )
        token = ""
        if len(rows) > size:
            rows = rows[:size]
            last = rows[-1]
            token = _encode(
                "silences", scope, [(last.create_time or last.start).isoformat(), last.id]
            )
        return rows, token

    async def expire_silence(self, silence_id: str, actor: str) -> Silence:
        checker = Checker()
        checker.required("id", silence_id, MAX_ID)
        checker.required("actor", actor, MAX_NAME)
        checker.raise_if_any()
        now = self.clock()

        def work(uow: UnitOfWork) -> Silence:
            silence = uow.paging.silence(silence_id)
            if silence is None:
                raise PagingObjectNotFound("silence", silence_id)
            if silence.end <= now:
                raise SilenceEnded(silence_id, silence.end.isoformat())
            ended = silence.expired(now, actor)
            uow.paging.save_silence(ended)
            for escalation in uow.paging.held_by(silence_id):
                escalation.due_at = now
                uow.paging.save_escalation(escalation)
            return ended

        ended = await self._write(work)
        self.wake()
        return ended

    def user_name(self, user_id: str | None) -> str:
        """The configured display name of a user, or "" if none is known."""
        book = self.rules.current
        user = book.user(user_id) if book is not None and user_id else None
        return user.name if user is not None else ""

    def silence_state(self, silence: Silence) -> str:
        now = self.clock()
        if silence.end <= now:
            return "EXPIRED"
        return "ACTIVE" if silence.start <= now else "PENDING"


def _page_size(page_size: int) -> int:
    if page_size < 0:
        raise ValidationError.single("page_size", "must not be negative")
    return min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _encode(kind: str, scope: str, key: list[Any]) -> str:
    raw = json.dumps([kind, scope, key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _time_and_id(key: list[Any]) -> tuple[datetime, str]:
    return datetime.fromisoformat(key[0]), str(key[1])


def _decode(token: str, kind: str, scope: str, parse: Callable[[list[Any]], K]) -> K | None:
    """The key a page token carries; INVALID_ARGUMENT for a token we did not make for this."""
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        found_kind, found_scope, key = json.loads(base64.urlsafe_b64decode(padded))
        if found_kind != kind or found_scope != scope:
            raise ValidationError.single(
                "page_token", "belongs to a different request; start again without one"
            )
        return parse(key)
    except (ValueError, binascii.Error, TypeError, IndexError, KeyError):
        raise ValidationError.single(
            "page_token", "is not a token this server returned; start again without one"
        ) from None
