"""What the tests share, whatever their tier.

Imported from here: request builders (`alert`, `new_incident`), the rich error
details of a failed call (`error_info`, `field_violations`, `status_details`),
one poll loop (`eventually`), `free_port`, `FakeClock`, the handles on an
in-process server (`Running`, `StartServer`, `next_message`) and `installed_tool`.

Imported from their modules, by the tiers that need them:
`tests.support.processes` (real server processes and blocking clients),
`tests.support.load` (clients that load them and the ledger of their acks),
`tests.support.postgres` (throwaway PostgreSQL databases),
`tests.support.hooks` (a webhook receiver on a thread of its own, for server processes) and
`tests.support.docs` (the documents whose examples are checked and run).
"""

from tests.support.builders import alert, new_incident
from tests.support.clock import FakeClock
from tests.support.errors import error_info, field_violations, status_details
from tests.support.inprocess import TEST_SETTINGS, Running, StartServer, next_message
from tests.support.polling import eventually
from tests.support.ports import free_port
from tests.support.tools import installed_tool

__all__ = [
    "TEST_SETTINGS",
    "FakeClock",
    "Running",
    "StartServer",
    "alert",
    "error_info",
    "eventually",
    "field_violations",
    "free_port",
    "installed_tool",
    "new_incident",
    "next_message",
    "status_details",
]
