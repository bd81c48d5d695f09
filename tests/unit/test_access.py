"""The tokens file: the domain parses its text, the config side reads the file and names it."""

from __future__ import annotations

from pathlib import Path

import pytest

from incident_manager.config import TokensFileError, read_tokens_file
from incident_manager.domain.access import (
    Credentials,
    CredentialsFileError,
    Principal,
    Role,
    hash_token,
)


def test_a_tokens_file_text_lists_tokens_and_certificate_subjects() -> None:
    text = (
        "# who may call\n"
        f"{hash_token('imt_a')} detector-eu ingest sources=llm-sentinel,llm-shield\n"
        "\n"
        "subject:oncall-gateway responder  # a client certificate\n"
    )
    credentials = Credentials.parse(text)
    assert credentials.by_token("imt_a") == Principal(
        "detector-eu", frozenset({Role.INGEST}), frozenset({"llm-sentinel", "llm-shield"})
    )
    assert credentials.by_subject("oncall-gateway") == Principal(
        "oncall-gateway", frozenset({Role.RESPONDER})
    )
    assert credentials.by_token("imt_b") is None


def test_a_mistake_names_its_line_and_the_caller_adds_the_file_name() -> None:
    text = f"# comment\n{hash_token('x')} bot reader\n\n{hash_token('y')} bot superuser\n"
    with pytest.raises(CredentialsFileError) as refused:
        Credentials.parse(text)
    assert refused.value.line == 4
    assert str(refused.value).startswith("line 4: 'superuser' is not a role; use ingest, ")
    assert refused.value.in_file("tokens").startswith("tokens:4: 'superuser' is not a role")


def test_reading_the_tokens_file_puts_its_path_before_the_line(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"{hash_token('x')} bot reader\nsubject:gw reader\nsubject:gw admin\n")
    with pytest.raises(TokensFileError, match="listed twice") as refused:
        read_tokens_file(str(path))
    assert str(refused.value).startswith(f"{path}:3: ")


def test_a_tokens_file_that_cannot_be_read_is_named_without_a_line(tmp_path: Path) -> None:
    missing = tmp_path / "absent"
    with pytest.raises(TokensFileError) as refused:
        read_tokens_file(str(missing))
    assert str(refused.value).startswith(f"cannot read the tokens file {missing}: ")


def test_a_principal_limited_to_sources_may_send_only_as_those() -> None:
    limited = Principal("eu-sentinel", frozenset({Role.INGEST}), frozenset({"llm-sentinel"}))
    assert limited.may_send_as("llm-sentinel")
    assert not limited.may_send_as("llm-shield")
    assert Principal("gateway", frozenset({Role.INGEST})).may_send_as("anything")
