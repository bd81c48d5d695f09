"""Message templates: what they may see and do, what the sandbox refuses, the size caps, and
the fallback to the default message when one fails at send time."""

from __future__ import annotations

import pytest

from incident_manager.adapters.channels.slack import escape_mrkdwn
from incident_manager.adapters.channels.wording import Wording, compose, template_context
from incident_manager.domain.paging.model import MessageTemplate
from incident_manager.domain.paging.templates import (
    MAX_TEMPLATE_CHARS,
    TemplateFailed,
    render_template,
    template_problem,
)
from tests.support.pages import page

CONTEXT = template_context(page(assignees=("carol",)))


def render(source: str, limit: int = 3000) -> str:
    return render_template(source, CONTEXT, limit)


def refusal(source: str) -> str:
    with pytest.raises(TemplateFailed) as raised:
        render(source)
    return str(raised.value)


def test_the_context_holds_the_documented_names() -> None:
    assert set(CONTEXT) == {
        "incident",
        "event",
        "level",
        "round",
        "reason",
        "targets",
        "links",
        "occurred_at",
    }
    assert set(CONTEXT["incident"]) == {
        "id",
        "title",
        "severity",
        "state",
        "source",
        "type",
        "alert_count",
        "assignees",
        "labels",
        "runbook_url",
        "opened_at",
    }
    assert CONTEXT["targets"][0] == {
        "kind": "user",
        "id": "alice",
        "name": "Alice Ng",
        "via": "primary",
        "display": "Alice Ng (on call for primary)",
    }
    assert CONTEXT["incident"]["opened_at"] == "2026-03-02T08:59:58.120Z"


def test_a_template_uses_fields_filters_loops_and_conditions() -> None:
    source = (
        "{{ incident.severity }} {{ incident.title|upper|truncate(12, true, '…') }} "
        "{% for t in targets %}{{ t.id }}{{ ', ' if not loop.last }}{% endfor %}"
        "{% if incident.assignees %} owned by {{ incident.assignees|join(' and ') }}{% endif %}"
        " L{{ level }}R{{ round }} {{ incident.labels['region'] }}"
    )
    assert render(source) == "P1 P99 LATENCY… alice, ops-hook owned by carol L1R1 eu-west-1"


def test_alert_text_is_printed_as_written_never_run_as_a_template() -> None:
    context = template_context(page(title="{{ 7 * 7 }} {% for x in y %}"))
    assert render_template("{{ incident.title }}", context, 100) == "{{ 7 * 7 }} {% for x in y %}"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{ incident.__class__ }}", "access to attribute '__class__' of 'dict' object is unsafe"),
        ("{{ targets.__class__.__mro__ }}", "'__class__' of 'list' object is unsafe"),
        ("{{ incident.title.__class__.__base__ }}", "'__class__' of 'str' object is unsafe"),
        ("{{ targets.append(1) }}", "access to attribute 'append' of 'list' object is unsafe"),
        ("{{ incident.labels.update({'a': 1}) }}", "attribute 'update' of 'dict' object is unsafe"),
        ("{{ 'x' * 100000 }}", "a value longer than 10000 characters"),
        ("{{ 'x'.center(100000) }}", "access to attribute 'center' of 'str' object is unsafe"),
        ("{{ '%099999d' % 1 }}", "%-formatting is refused in a template"),
        ("{{ 9 ** 99999 }}", "exponents above 64 are refused"),
        ("{% for i in range(100000) %}{% endfor %}", "range() gives at most 100 numbers"),
    ],
)
def test_the_sandbox_refuses_internals_mutation_and_runaway_work(source: str, message: str) -> None:
    assert message in refusal(source)


@pytest.mark.parametrize("name", ["cycler", "joiner", "lipsum", "namespace", "config", "os"])
def test_a_template_sees_no_globals_but_range_and_dict(name: str) -> None:
    assert refusal(f"{{{{ {name} }}}}") == f"line 1: '{name}' is undefined"


def test_a_misspelt_name_fails_with_the_templates_line() -> None:
    assert refusal("first\nsecond {{ incident.titel }}") == (
        "line 2: 'dict object' has no attribute 'titel'"
    )


def test_the_output_is_cut_at_the_limit_and_stops_rendering_there() -> None:
    source = "{% for i in range(100) %}{% for j in range(100) %}0123456789{% endfor %}{% endfor %}"
    assert render(source, limit=50) == "0123456789" * 4 + "012345678…"


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("{% if %}", "line 1: Expected an expression, got 'end of statement block'"),
        ("one\ntwo\n{{ incident.title }", "line 3: unexpected '}'"),
        (
            "{% for t in targets %}",
            "line 1: Unexpected end of template. Jinja was looking for the following tags: "
            "'endfor' or 'else'. The innermost block that needs to be closed is 'for'.",
        ),
        (
            "a\n{% macro m() %}{% endmacro %}",
            "line 2: macros are not allowed in a message template",
        ),
        ("{% include 'x.txt' %}", "line 1: include is not allowed in a message template"),
        ("{% extends 'x.txt' %}", "line 1: extends is not allowed in a message template"),
        ("{% for t in targets recursive %}{% endfor %}", "line 1: recursive loops are not allowed"),
        (
            "{% for a in targets %}{% for b in targets %}\n{% for c in targets %}"
            "{% endfor %}{% endfor %}{% endfor %}",
            "line 2: loops nest at most 2 deep in a message template",
        ),
        (
            "x" * (MAX_TEMPLATE_CHARS + 1),
            f"the template has 4001 characters; at most {MAX_TEMPLATE_CHARS}",
        ),
    ],
)
def test_a_template_that_cannot_work_is_found_before_it_is_used(source: str, problem: str) -> None:
    found = template_problem(source)
    assert found is not None and str(found) == problem


def test_a_good_template_has_no_problem() -> None:
    assert (
        template_problem("{{ incident.title }}{% for t in targets %}{{ t.id }}{% endfor %}") is None
    )


def test_compose_renders_the_title_raw_and_the_body_escaped_for_the_channel() -> None:
    content = page(title="a <b> & c")
    template = MessageTemplate(title="{{ incident.title }}", body="{{ incident.title }}")
    wording = compose(
        content, template, "default", title_limit=150, body_limit=3000, escape_body=escape_mrkdwn
    )
    assert wording == Wording("a <b> & c", "a &lt;b&gt; &amp; c")


def test_compose_without_a_template_is_the_default_wording() -> None:
    assert compose(page(), None, "default", title_limit=10, body_limit=10) == Wording("default")


@pytest.mark.parametrize(
    ("template", "note"),
    [
        (
            MessageTemplate(title="{{ nope }}"),
            "title template failed (line 1: 'nope' is undefined); sent the default message",
        ),
        (
            MessageTemplate(title="ok", body="{{ incident.__class__ }}"),
            "body template failed (line 1: refused by the sandbox: access to attribute "
            "'__class__' of 'dict' object is unsafe.); sent the default message",
        ),
        (
            MessageTemplate(title="{% if false %}x{% endif %}"),
            "title template failed (rendered nothing); sent the default message",
        ),
        (
            MessageTemplate(body="{% if %}"),
            "body template failed (line 1: Expected an expression, got 'end of statement "
            "block'); sent the default message",
        ),
    ],
)
def test_a_failing_template_falls_back_to_the_whole_default_message_with_a_note(
    template: MessageTemplate, note: str
) -> None:
    wording = compose(page(), template, "default", title_limit=150, body_limit=3000)
    assert wording == Wording("default", None, note)


def test_a_long_title_is_cut_and_made_one_line() -> None:
    template = MessageTemplate(title="{{ incident.title }}\n{{ incident.title }}")
    wording = compose(page(title="x" * 300), template, "d", title_limit=150, body_limit=10)
    assert len(wording.title) == 150 and "\n" not in wording.title
