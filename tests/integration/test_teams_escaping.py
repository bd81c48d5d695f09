"""Teams renders a card's texts as markdown: what an alert says (title, source, labels,
assignees) is escaped so that it shows as written, through the local Teams fake."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from incident_manager.adapters.channels.base import Delivery, Outcome
from incident_manager.adapters.channels.http import HttpClient
from incident_manager.adapters.channels.teams import (
    TeamsChannel,
    TeamsSettings,
    escape_markdown,
)
from incident_manager.domain.paging.model import MessageTemplate
from tests.support.pages import page
from tests.support.services import Fake, fake_teams

HOSTILE = "*urgent* _now_ [click](https://evil.example) # <b>big</b> `code` ~gone~ a\\b"
ESCAPED = (
    "\\*urgent\\* \\_now\\_ \\[click\\](https://evil.example) \\# \\<b\\>big\\</b\\> "
    "\\`code\\` \\~gone\\~ a\\\\b"
)


@pytest.fixture
async def teams() -> AsyncIterator[Fake]:
    async with fake_teams() as fake:
        yield fake


async def _card(teams: Fake, template: MessageTemplate | None = None) -> dict[str, Any]:
    content = page(
        title=HOSTILE,
        source="edge_*agent*",
        labels={"team": "[ml]", "note": "# heading"},
        assignees=("_alice_", "bob"),
    )
    client = HttpClient()
    try:
        settings = TeamsSettings("ops-teams", "TEAMS_URL", timeout=5.0, template=template)
        result = await TeamsChannel(client, environ={"TEAMS_URL": teams.url}).send(
            Delivery("ntf_teams_escape", settings, content)
        )
    finally:
        await client.close()
    assert result.outcome is Outcome.SENT
    assert teams.problems == []
    card: dict[str, Any] = teams.last["attachments"][0]["content"]
    return card


def test_markdown_characters_and_line_start_list_markers_are_escaped() -> None:
    assert escape_markdown(HOSTILE) == ESCAPED
    assert escape_markdown("- one\n  + two\n3. three\nplain 4. text") == (
        "\\- one\n  \\+ two\n3\\. three\nplain 4. text"
    )
    assert escape_markdown("nothing to do, p99 = 2.5s") == "nothing to do, p99 = 2.5s"


async def test_the_default_card_shows_an_alerts_markdown_as_written(teams: Fake) -> None:
    card = await _card(teams)
    heading = card["body"][0]["items"][0]["text"]
    assert heading == f"\\[P1\\] {ESCAPED}"
    facts = {
        f["title"]: f["value"] for b in card["body"] if b["type"] == "FactSet" for f in b["facts"]
    }
    assert facts["Source"] == "edge\\_\\*agent\\*"
    assert facts["Assignees"] == "\\_alice\\_, bob"
    assert facts["Labels"] == "note=\\# heading, team=\\[ml\\]"


async def test_a_template_keeps_its_own_markdown_and_escapes_the_values(teams: Fake) -> None:
    template = MessageTemplate(body="**{{ incident.source }}**: {{ incident.title }}")
    card = await _card(teams, template)
    texts = [b["text"] for b in card["body"] if b["type"] == "TextBlock"]
    assert f"**edge\\_\\*agent\\***: {ESCAPED}" in texts
