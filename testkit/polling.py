"""Waiting for a condition, bounded: the one polling helper of the tests and benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(check: Callable[[], T], timeout: float = 5.0, what: str = "the condition", *,
               interval: float = 0.01) -> T:
    """Call ``check`` every ``interval`` seconds until it returns something truthy, and return
    that. An exception from ``check`` counts as "not yet" (a topology may be between owners, a
    server still starting). After ``timeout`` seconds, AssertionError naming ``what`` and the
    last exception."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:
            last = exc
        if time.monotonic() > deadline:
            why = f" (last error: {last!r})" if last is not None else ""
            raise AssertionError(f"not within {timeout}s: {what}{why}")
        time.sleep(interval)


def seconds_until(check: Callable[[], object], timeout: float = 5.0, what: str = "the condition",
                  *, interval: float = 0.05) -> float:
    """:func:`wait_until`, returning how many seconds it took."""
    start = time.monotonic()
    wait_until(check, timeout, what, interval=interval)
    return time.monotonic() - start
