"""Running `python -m incident_manager.cli` (imctl) as a person or a script would."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PYTHON = sys.executable
TIMEOUT = 30.0


def imctl_environment(config_home: Path, **variables: str) -> dict[str, str]:
    """This process's environment without IMCTL_* leaking in, contexts under `config_home`,
    times in UTC and a wide `COLUMNS` so tables are not cut, plus `variables`."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("IMCTL_")}
    environment.update(XDG_CONFIG_HOME=str(config_home), TZ="UTC", COLUMNS="200")
    environment.update(variables)
    return environment


@dataclass(frozen=True)
class Result:
    """What one imctl run printed, and its exit code."""

    code: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return f"exit {self.code}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


def run_imctl(*args: str, environment: Mapping[str, str], stdin: str | None = None) -> Result:
    """Run imctl with `args` to completion."""
    done = subprocess.run(
        [PYTHON, "-m", "incident_manager.cli", *args],
        env=dict(environment),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    return Result(done.returncode, done.stdout, done.stderr)
