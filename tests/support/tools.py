"""External programs tests run: grpcurl, our console scripts."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def installed_tool(name: str) -> Path | None:
    """A command installed into this virtualenv (next to python), else one on PATH."""
    beside_python = Path(sys.executable).parent / name
    if beside_python.exists():
        return beside_python
    on_path = shutil.which(name)
    return Path(on_path) if on_path else None
