"""Automated actions in the paging file and in the domain: every mistake with its line and key
path, the body's context and escaping, and how a level holding actions resolves."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from generated.incident_manager.v1 import paging_service_pb2 as paging_pb2
from incident_manager.adapters.channels.base import page_content_from_dict
from incident_manager.adapters.channels.wording import template_context
from incident_manager.adapters.memory import MemoryStorage
from incident_manager.cli.incidents import delivery_line
from incident_manager.domain.model import Incident, IncidentType, Severity
from incident_manager.domain.paging.actions import (
    MAX_ACTION_BODY,
    action_context,
    render_action_body,
)
from incident_manager.domain.paging.escalation import resolve_level
from incident_manager.domain.paging.ledger import Escalation, Notification, NotificationState
from incident_manager.domain.paging.model import Target, TargetKind
from incident_manager.domain.paging.templates import TemplateFailed
from incident_manager.paging import main
from incident_manager.paging.file import PagingConfigError, load_paging_config
from incident_manager.service import paging
from incident_manager.service.paging import page_content
from incident_manager.service.ports import UnitOfWork

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)

# Line numbers in the comments: the cases below name them.
BASE = """\
users:
  - {id: alice, email: alice@example.com}
channels:
  - {id: kill-switch, type: webhook, url: "https://gw.example.com/kill"}
  - {id: mail, type: email, smtp: {host: 127.0.0.1, from: incidents@example.com}}
escalation_policies:
  - id: jailbreak
    levels:
      - after: 0m
        notify:
          - action:
              webhook: kill-switch
              body: '{"model": "{{ incident.labels.model }}"}'
      - after: 5m
        notify: [{user: alice}, {action: {webhook: kill-switch, body: "undo"}}]
routes:
  - policy: jailbreak
"""
# line 12: webhook, line 13: body, line 15: the second level's notify


def mistakes(old: str, new: str) -> list[str]:
    assert old in BASE, old
    with pytest.raises(PagingConfigError) as raised:
        load_paging_config(BASE.replace(old, new, 1), "paging.yaml")
    return [m.removeprefix("paging.yaml:") for m in raised.value.messages]


def test_a_level_may_hold_only_actions_or_actions_besides_people() -> None:
    config = load_paging_config(BASE, "paging.yaml")
    policy = config.policy("jailbreak")
    assert policy is not None
    assert policy.levels[0].targets == (
        Target(TargetKind.ACTION, "kill-switch", '{"model": "{{ incident.labels.model }}"}'),
    )
    assert policy.levels[1].targets == (
        Target(TargetKind.USER, "alice"),
        Target(TargetKind.ACTION, "kill-switch", "undo"),
    )
    assert str(policy.levels[1].targets[1]) == "action kill-switch"


def test_an_action_naming_an_unknown_webhook_is_refused_with_a_suggestion() -> None:
    assert mistakes("webhook: kill-switch\n", "webhook: kill-swich\n") == [
        "12: escalation_policies[0].levels[0].notify[0].action.webhook: no webhook channel has "
        "the id 'kill-swich' (did you mean 'kill-switch'?); expected one of kill-switch"
    ]


def test_an_action_naming_a_channel_that_is_not_a_webhook_is_refused() -> None:
    assert mistakes("webhook: kill-switch\n", "webhook: mail\n") == [
        "12: escalation_policies[0].levels[0].notify[0].action.webhook: channel 'mail' is of "
        "type email; an action calls a channel of type webhook; webhook channels: kill-switch"
    ]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "'{{ incident.title }'",
            "line 1 of the template: unexpected '}'",
        ),
        (
            '"{\\n  \\"x\\": {% include \\"other\\" %}\\n}"',
            "line 2 of the template: include is not allowed in a message template",
        ),
        ("'{{ x }}' # " + "y", None),
        ("'   '", "is empty; expected the request's body (a Jinja2 template)"),
        ("'" + "x" * 4001 + "'", "the template has 4001 characters; at most 4000"),
    ],
)
def test_a_body_template_that_cannot_be_used_is_refused_with_its_line(
    body: str, expected: str | None
) -> None:
    old = 'body: \'{"model": "{{ incident.labels.model }}"}\''
    if expected is None:  # a name the context lacks is only known when it is rendered
        load_paging_config(BASE.replace(old, f"body: {body}"), "paging.yaml")
        return
    assert mistakes(old, f"body: {body}") == [
        f"13: escalation_policies[0].levels[0].notify[0].action.body: {expected}"
    ]


def test_an_action_needs_both_its_keys_and_no_others() -> None:
    assert mistakes("              webhook: kill-switch\n", "") == [
        "12: escalation_policies[0].levels[0].notify[0].action.webhook: missing required key "
        "'webhook'; expected the id of a webhook channel"
    ]
    assert mistakes('{action: {webhook: kill-switch, body: "undo"}}', "{action: {hook: x}}") == [
        "15: escalation_policies[0].levels[1].notify[1].action.hook: unknown key 'hook' (did "
        "you mean 'webhook'?); expected webhook or body",
        "15: escalation_policies[0].levels[1].notify[1].action.body: missing required key "
        "'body'; expected the request's body, a Jinja2 template",
    ]
    assert mistakes('{action: {webhook: kill-switch, body: "undo"}}', "{action: kill-switch}") == [
        "15: escalation_policies[0].levels[1].notify[1].action: expected a mapping (key: "
        "value), got the string 'kill-switch'"
    ]


def test_check_passes_on_the_actions_example(capsys: pytest.CaptureFixture[str]) -> None:
    example = ROOT / "examples" / "paging-actions.yaml"
    assert main(["check", str(example)]) == 0
    assert capsys.readouterr().out.endswith(
        "1 user, 2 channels, 1 schedule, 2 policies, 2 routes\n"
    )


def _incident(title: str = "Jailbreak wave", **labels: str) -> Incident:
    return Incident.open(
        title=title,
        description="",
        severity=Severity.P1,
        type=IncidentType.SECURITY,
        source="llm-shield",
        affected_resources=[],
        labels=labels,
        assignees=[],
        fingerprint="fp",
        actor="llm-shield",
        now=T0,
        alert_count=1,
    )


def _page(incident: Incident, level: int = 1) -> dict[str, Any]:
    config = load_paging_config(BASE, "paging.yaml")
    policy = config.policy("jailbreak")
    assert policy is not None
    escalation = Escalation.start(incident.id, policy, 1, T0, "new incident")
    escalation.next_level = level - 1
    resolved = resolve_level(config, policy.levels[level - 1], T0)
    return page_content(config, incident, escalation, T0, resolved.deliveries)


def _shape(value: object) -> object:
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shape(item) for item in value]
    return type(value).__name__


def test_an_action_body_sees_the_same_names_and_values_as_a_channel_template() -> None:
    page = _page(_incident(model="gpt-4o"), level=2)
    ours = action_context(page)
    theirs = template_context(page_content_from_dict(page))
    assert ours == theirs
    assert _shape(ours) == _shape(theirs)
    assert [t["id"] for t in ours["targets"]] == ["alice"]  # the action is nobody paged


def test_a_level_with_a_page_and_an_action_through_one_webhook_sends_both() -> None:
    config = load_paging_config(
        BASE.replace("{user: alice}", "{channel: kill-switch}, {channel: kill-switch}"),
        "paging.yaml",
    )
    policy = config.policy("jailbreak")
    assert policy is not None
    resolved = resolve_level(config, policy.levels[1], T0)
    assert [(d.target.kind, d.channel_id) for d in resolved.deliveries] == [
        (TargetKind.CHANNEL, "kill-switch"),
        (TargetKind.ACTION, "kill-switch"),
    ]


def test_a_json_body_escapes_every_value_so_an_alert_cannot_add_keys() -> None:
    page = _page(_incident('x", "model": "all\n', model="gpt-4o"))
    body = render_action_body('{"reason": "{{ incident.title }}"}', page)
    assert body == '{"reason": "x\\", \\"model\\": \\"all\\n"}'
    text = render_action_body("reason: {{ incident.title }}", page)
    assert text == 'reason: x", "model": "all'


@pytest.mark.parametrize(
    ("source", "body"),
    [
        ('{"reason": "{{ incident.title }}"}', '{"reason": "say \\"hi\\""}'),
        (
            '  [{"n": {{ incident.alert_count }}, "t": "{{ incident.title }}"}]',
            '[{"n": 1, "t": "say \\"hi\\""}]',
        ),
        ("{{ incident.title }} now", 'say "hi" now'),
        ("{% if true %}{{ incident.title }}{% endif %}", 'say "hi"'),
        ("{# a comment #}{{ incident.title }}", 'say "hi"'),
    ],
)
def test_only_a_body_written_as_json_escapes_its_values(source: str, body: str) -> None:
    assert render_action_body(source, _page(_incident('say "hi"'))) == body


def test_a_body_longer_than_the_limit_is_refused_not_cut() -> None:
    page = _page(_incident(model="gpt-4o"))
    fits = render_action_body("{% for i in range(100) %}" + "y" * 160 + "{% endfor %}", page)
    assert len(fits) == MAX_ACTION_BODY
    with pytest.raises(TemplateFailed, match="longer than 16000 characters"):
        render_action_body("{% for i in range(100) %}" + "y" * 161 + "{% endfor %}", page)


def test_a_body_that_names_a_missing_label_fails_with_its_line() -> None:
    page = _page(_incident(team="ml"))
    with pytest.raises(TemplateFailed) as failed:
        render_action_body('{\n"model": "{{ incident.labels.model }}"\n}', page)
    assert str(failed.value) == "line 2: 'dict object' has no attribute 'model'"


def test_imctl_shows_an_action_row_by_its_webhook_once() -> None:
    row = paging_pb2.Notification(
        level=1,
        round=1,
        target_kind=paging_pb2.TARGET_KIND_ACTION,
        target_id="kill-switch",
        channel_id="kill-switch",
        channel_type="webhook",
        recipient="kill-switch",
        state=paging_pb2.NOTIFICATION_STATE_FAILED,
        attempts=1,
        last_error="HTTP 403 Forbidden",
    )
    line = delivery_line(row).plain
    assert line.endswith("level 1/1  action kill-switch: failed, 1 try — HTTP 403 Forbidden")


async def test_a_running_action_whose_webhook_a_reload_retyped_is_suppressed_saying_why() -> None:
    storage = MemoryStorage()
    incident = _incident(model="gpt-4o")
    config = load_paging_config(BASE, "paging.yaml")
    reloaded = load_paging_config(
        """
channels:
  - id: kill-switch
    type: email
    smtp: {host: 127.0.0.1, from: a@example.com}
    to: [b@example.com]
escalation_policies:
  - {id: other, levels: [{after: 0s, notify: [{channel: kill-switch}]}]}
routes:
  - policy: other
""",
        "paging.yaml",
    )

    def open_then_reload(uow: UnitOfWork) -> list[Notification]:
        with uow:
            uow.incidents.add(incident)
            paging.follow_incident(uow.paging, config, incident, None, T0)
            paging.run_due_steps(uow.paging, uow.incidents, reloaded, T0, 10)
            uow.commit()
        return uow.paging.list_notifications(incident.id, None, 10)

    (row,) = await storage.write(open_then_reload)
    assert (row.target, row.state, row.last_error) == (
        "action kill-switch",
        NotificationState.SUPPRESSED,
        "action kill-switch: channel kill-switch is no longer a webhook channel in the paging "
        "configuration (changed by a reload); nothing was sent",
    )
