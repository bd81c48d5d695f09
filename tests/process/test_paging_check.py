"""`python -m incident_manager.paging check` as a real process: exit codes, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_check_as_a_process_exits_0_or_2_and_never_prints_a_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("users: [\n", encoding="utf-8")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\x00\xff\xfe")

    def check(*files: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "incident_manager.paging", "check", *files],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )

    ok = check("examples/paging.yaml")
    assert (ok.returncode, ok.stdout, ok.stderr) == (
        0,
        "examples/paging.yaml: 2 users, 2 channels, 1 schedule, 2 policies, 3 routes\n",
        "",
    )
    failed = check(
        "examples/paging.yaml", str(bad), str(tmp_path / "missing.yaml"), str(tmp_path), str(binary)
    )
    assert failed.returncode == 2
    assert "Traceback" not in failed.stderr
    assert failed.stderr.splitlines() == [
        f"{bad}:2: not valid YAML: while parsing a flow node; expected the node content, but "
        "found "
        "'<stream end>'",
        f"{tmp_path / 'missing.yaml'}: no such file",
        f"{tmp_path}: is a directory; expected a YAML file",
        f"{binary}:1: not UTF-8 text (byte 0xff); save the file as UTF-8",
    ]
    usage = check()
    assert usage.returncode == 2 and "Traceback" not in usage.stderr
    assert "usage:" in usage.stderr
