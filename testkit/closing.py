"""What a test opens (client sockets, WebSocket clients, socket pairs), closed after the test
whatever its outcome: the root conftest's autouse fixture calls :func:`close_all`. Then a
garbage collection runs, so that anything left unclosed is reported (a ``ResourceWarning``,
an error under ``filterwarnings = error``) by the test that opened it, not by a later one."""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import websocket

T = TypeVar("T")

logger = logging.getLogger(__name__)

_open: list[Callable[[], Any]] = []


def closed_after_test(obj: T, close: Callable[[], Any] | None = None) -> T:
    """Have ``close`` (``obj.close`` by default) called when the test ends; returns ``obj``."""
    _open.append(close if close is not None else obj.close)
    return obj


def ws_connect(url: str, **options: Any) -> websocket.WebSocket:
    """``websocket.create_connection(url, **options)``, its socket shut when the test ends (no
    closing handshake then: the server may be gone or stalled by the test)."""
    ws = websocket.create_connection(url, **options)
    return closed_after_test(ws, ws.shutdown)


def close_all() -> None:
    """Close everything registered since the last call, newest first, then collect garbage."""
    while _open:
        close = _open.pop()
        try:
            close()
        except Exception as exc:  # already closed by a peer that went away: nothing to free
            logger.debug("closing after the test: %s", exc)
    gc.collect()
