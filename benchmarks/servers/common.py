"""What the three benchmark servers share: the bus counter and serving under gevent.pywsgi."""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Callable
from typing import Any

__all__ = ["BusCounter", "serve"]


class BusCounter:
    """Bus messages received per room; which rooms had no local member is decided when asked
    (membership does not change while a benchmark phase runs). One dict increment per message."""

    def __init__(self) -> None:
        self.by_room: Counter[str] = Counter()

    def count(self, room: str) -> None:
        self.by_room[room] += 1

    def reset(self) -> None:
        self.by_room = Counter()

    def stats(self, has_member: Callable[[str], bool]) -> dict[str, int]:
        counts = self.by_room
        return {"bus_room_msgs": sum(counts.values()),
                "bus_nonmember_msgs": sum(n for room, n in counts.items() if not has_member(room))}


def serve(app: Any, handler_class: Any, on_stop: Callable[[], None] | None = None) -> None:
    """Serve ``app`` on 127.0.0.1:$PORT until SIGTERM/SIGINT (no access log)."""
    import gevent
    from gevent import pywsgi

    port = int(os.environ["PORT"])
    server = pywsgi.WSGIServer(("127.0.0.1", port), app, handler_class=handler_class, log=None)

    def stop() -> None:
        try:
            if on_stop is not None:
                on_stop()
        finally:
            server.stop(timeout=1)

    gevent.signal_handler(signal.SIGTERM, stop)
    gevent.signal_handler(signal.SIGINT, stop)
    print(f"serving on 127.0.0.1:{port} (pid {os.getpid()})", flush=True)
    server.serve_forever()
