"""`python -m incident_manager.paging check FILE...`: see incident_manager.paging."""

from __future__ import annotations

import sys

from incident_manager.paging import main

if __name__ == "__main__":
    sys.exit(main())
