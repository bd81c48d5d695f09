"""Structured logs: one JSON object per line on stderr.

Records are formatted and written by a background thread (a QueueListener),
so the event loop only creates them: a JSON line per call costs the loop a
few microseconds instead of a format and a write to stderr.
"""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import queue
import sys
from datetime import UTC, datetime
from typing import TextIO

# Attributes every LogRecord has; anything else was passed with `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "taskName"}


PLAIN = "_plain_text"
"""Marks a record written as its text alone, not as JSON (see `say`)."""


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, PLAIN, False):
            return record.getMessage()
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, default=str, ensure_ascii=False)


class _Listener(logging.handlers.QueueListener):
    @property
    def running(self) -> bool:
        """True from start() until stop(): while records put on its queue get written."""
        return self._thread is not None

    def stop(self) -> None:
        """Write what is queued and end the thread; once only, however often called."""
        if self._thread is not None:
            super().stop()


class _Enqueue(logging.handlers.QueueHandler):
    """Hands records to the writer thread with their message and traceback rendered."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record.msg = record.getMessage()
        record.args = None
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        return record


_writer: _Listener | None = None
"""The writer thread `configure` started last."""


def say(text: str) -> None:
    """Write `text` on stderr as a plain line for people, through the log writer.

    A print from this thread could land in the middle of a JSON line the
    writer thread is writing; one writer for both keeps every line whole,
    and in the order the two were asked for.
    """
    if _writer is None or not _writer.running:
        print(text, file=sys.stderr, flush=True)
        return
    record = logging.LogRecord("incident_manager", logging.INFO, "", 0, text, None, None)
    setattr(record, PLAIN, True)
    _writer.queue.put_nowait(record)


def configure(level: str, stream: TextIO | None = None) -> logging.handlers.QueueListener:
    """Send every record as JSON to `stream` (stderr) from a writer thread; returns its listener."""
    # Nothing we log uses the caller's file and line, or thread and process
    # names; finding them costs more than the rest of a record.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    writer = logging.StreamHandler(stream)  # stderr unless told otherwise
    writer.setFormatter(JsonFormatter())
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = _Listener(records, writer)
    listener.start()
    atexit.register(listener.stop)  # writes what is queued before the process exits
    global _writer
    _writer = listener
    root = logging.getLogger()
    root.handlers[:] = [_Enqueue(records)]
    root.setLevel(level)
    return listener
