"""Waiting for something that happens a little later: one poll loop for every test.

Blocking tests (the ones that talk to server processes) pass a plain function
and wait here; asyncio tests pass an async function (or one that returns an
awaitable) and `await` the result, so the in-process server on the same event
loop keeps serving while they wait.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")

Description = str | Callable[[], str]
"""What is awaited, for the failure message; a function is asked only on failure,
so the message can show what was seen last."""


@overload
def eventually(
    probe: Callable[[], Awaitable[T | None]],
    *,
    what: Description,
    timeout: float = 10.0,
    interval: float = 0.05,
) -> Awaitable[T]: ...


@overload
def eventually(
    probe: Callable[[], T | None],
    *,
    what: Description,
    timeout: float = 10.0,
    interval: float = 0.05,
) -> T: ...


def eventually(
    probe: Callable[[], Any],
    *,
    what: Description,
    timeout: float = 10.0,
    interval: float = 0.05,
) -> Any:
    """Call `probe` every `interval` seconds until it answers something truthy, and
    return that answer; fail naming `what` once `timeout` seconds have passed.

    Whatever `probe` raises ends the wait at once: raise to say "this will
    never happen", return a falsy value to say "not yet".
    """
    deadline = time.monotonic() + timeout
    answer = probe()
    if inspect.isawaitable(answer):
        return _awaiting(probe, answer, deadline, lambda: _failure(what, timeout), interval)
    _refuse_to_block_an_event_loop()
    while not answer:
        if time.monotonic() > deadline:
            raise AssertionError(_failure(what, timeout))
        time.sleep(interval)
        answer = probe()
    return answer


async def _awaiting(
    probe: Callable[[], Awaitable[Any]],
    first: Awaitable[Any],
    deadline: float,
    failure: Callable[[], str],
    interval: float,
) -> Any:
    answer = await first
    while not answer:
        if time.monotonic() > deadline:
            raise AssertionError(failure())
        await asyncio.sleep(interval)
        answer = await probe()
    return answer


def _refuse_to_block_an_event_loop() -> None:
    """A blocking wait inside a coroutine would stall the in-process server the
    test is waiting for, and fail after `timeout` for no visible reason."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise TypeError(
        "eventually() was given a plain function inside a coroutine; "
        "give it an async function and await the result"
    )


def _failure(what: Description, timeout: float) -> str:
    return f"not within {timeout:g}s: {what() if callable(what) else what}"
