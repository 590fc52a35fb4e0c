"""The maintenance loops' keepalive (dcm_sync/maintenance.py): a quiet socket that answers
pings stays connected past stale_connection_timeout; one that stops answering is removed
(reason "stale") within ping_interval + ping_timeout. Real socket pairs, every backend."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from dcm_sync import DistributedConnectionManager
from testkit.polling import wait_until
from testkit.recording import RecordingSocket
from tests.helpers.pair_socket import PairSocket

Make = Callable[..., DistributedConnectionManager]
PING, PONG = 0x9, 0xA
KEEPALIVE = dict(ping_interval=0.3, ping_timeout=0.3, stale_connection_timeout=0.8,
                 cleanup_interval=0.1)


class PingableSocket(PairSocket):
    """A socket pair the manager can ping; the test plays the client, which answers pings
    (``answering``) or not. ``last_received`` moves when an answer comes, as a transport's
    does when it reads a pong."""

    def __init__(self) -> None:
        super().__init__()
        self.last_received = time.monotonic()
        self.pings = 0
        self.answering = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._client, name="test-client", daemon=True)
        self._thread.start()

    def keepalive(self) -> bytes:
        return bytes([0x80 | PING, 0])

    def _client(self) -> None:
        while not self._stop.is_set():
            for op, _ in self.read_frames(timeout=0.05):
                if op == PING:
                    self.pings += 1
                    if self.answering:
                        self.last_received = time.monotonic()  # the pong, as read by a transport

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        super().close()


def test_a_quiet_client_that_answers_pings_stays_and_one_that_stops_is_removed(
        make_manager: Make) -> None:
    a = make_manager(**KEEPALIVE)
    answering, silent = PingableSocket(), PingableSocket()
    member = RecordingSocket()
    a.join_room(a.register_connection(member, "member"), "r")
    kept = a.register_connection(answering, "kept")
    gone = a.register_connection(silent, "gone")
    a.join_room(gone, "r")
    silent.answering = False
    quiet_since = time.monotonic()
    notice = wait_until(lambda: member.of_type("user-disconnected"), timeout=5)[0]
    took = time.monotonic() - quiet_since
    assert (notice["connectionId"], notice["reason"]) == (gone, "stale")
    # within ping_interval + ping_timeout, and a tick of the loop (a quarter of the smaller)
    assert took < 0.3 + 0.3 + 0.1 + 0.3, took
    assert silent.pings >= 1
    time.sleep(1.2)  # past stale_connection_timeout: the condition under test, not a wait
    assert kept in a.local and answering.pings >= 2
    assert gone not in a.local
    answering.close()
    silent.close()
