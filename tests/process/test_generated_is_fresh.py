"""The committed generated/ package is exactly what `make generate` produces from protos/."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "generated"
HINT = "run `make generate` and commit generated/"


def files_under(directory: Path) -> dict[str, bytes]:
    """Relative path -> content of every file, ignoring __pycache__."""
    return {
        path.relative_to(directory).as_posix(): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file() and "__pycache__" not in path.relative_to(directory).parts
    }


@pytest.mark.skipif(shutil.which("make") is None, reason="`make` is not on PATH")
def test_the_committed_stubs_are_what_make_generate_produces_now(tmp_path: Path) -> None:
    fresh_dir = tmp_path / "gen"
    # The stamp is assumed up to date (`-o`): this test checks generation and
    # must not reinstall the virtualenv, which needs the network.
    result = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-o",
            ".venv/.dev-installed",
            "generate",
            f"GENERATED_DIR={fresh_dir}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, (
        f"`make generate` failed with exit code {result.returncode}:\n"
        f"{result.stdout}\n{result.stderr}"
    )

    committed = files_under(COMMITTED)
    fresh = files_under(fresh_dir)
    assert fresh, f"`make generate` wrote nothing to {fresh_dir}"
    missing = sorted(fresh.keys() - committed.keys())
    extra = sorted(committed.keys() - fresh.keys())
    differing = sorted(p for p in fresh.keys() & committed.keys() if fresh[p] != committed[p])
    problems = (
        [f"missing from generated/: {p}" for p in missing]
        + [f"in generated/ but no longer generated: {p}" for p in extra]
        + [f"differs from a fresh generation: generated/{p}" for p in differing]
    )
    assert not problems, "generated/ is stale; " + HINT + ":\n  " + "\n  ".join(problems)
