"""In-process managers for the core tests, with timings fast enough that failure detection
and cleanup happen within a test."""

from __future__ import annotations

import time
from typing import Any

from dcm_sync import Config, DistributedConnectionManager, create_distributed_connection_manager
from testkit.recording import RecordingSocket

# Fast timings so that failure detection and cleanup happen within a test.
FAST = dict(heartbeat_interval=0.1, heartbeat_ttl=0.5, cleanup_interval=0.1,
            stale_connection_timeout=60.0)


class Managers:
    """Started managers with the FAST timings, the test's key prefix and ``defaults``;
    ``managers(**overrides)`` makes one, :meth:`shutdown_all` stops every one made."""

    def __init__(self, prefix: str, **defaults: Any) -> None:
        self.settings: dict[str, Any] = dict(key_prefix=prefix, **FAST)
        self.settings.update(defaults)
        self.made: list[DistributedConnectionManager] = []

    def __call__(self, **overrides: Any) -> DistributedConnectionManager:
        mgr = create_distributed_connection_manager(None, Config(**{**self.settings, **overrides}))
        self.made.append(mgr)
        return mgr

    def shutdown_all(self) -> None:
        for mgr in self.made:
            mgr.shutdown()


#: Timings for topology tests: slow enough that a failover does not read as a dead server.
SLOW = dict(heartbeat_interval=0.3, heartbeat_ttl=1.5, probe_interval=1.0, probe_timeout=1.0)


def delivered(a: DistributedConnectionManager, room: str, target: str, sock: RecordingSocket,
              n: int) -> bool:
    """Send broadcast n and direct message n from ``a``; True once both reached ``sock``."""
    try:
        a.broadcast_to_room(room, {"b": n})
        a.send_to_connection(target, {"d": n})
    except Exception:
        return False
    time.sleep(0.1)
    got = list(sock.frames)
    return f'{{"b":{n}}}' in got and f'{{"d":{n}}}' in got


def pair(make: Managers, room: str) -> tuple[DistributedConnectionManager,
                                             DistributedConnectionManager,
                                             RecordingSocket, RecordingSocket, str, str]:
    """Two servers; alice on the first and bob on the second, both in ``room``."""
    a, b = make(), make()
    sa, sb = RecordingSocket(), RecordingSocket()
    ca, cb = a.register_connection(sa, "alice"), b.register_connection(sb, "bob")
    a.join_room(ca, room)
    b.join_room(cb, room)
    return a, b, sa, sb, ca, cb


def counts(mgr: DistributedConnectionManager) -> tuple[int, int, int]:
    """``(connections, rooms, servers)`` as the cluster-wide stats give them."""
    stats = mgr.get_distributed_stats()
    return stats.total_connections, stats.total_rooms, stats.active_servers


#: FAST, but no server is found dead when a busy machine holds a heartbeat back for a moment:
#: the tests that use these managers look at the keys, and a cleaner's lock would be one more
STEADY = {**FAST, "heartbeat_ttl": 10.0}
