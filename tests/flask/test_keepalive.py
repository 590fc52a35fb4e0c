"""Keepalive on a real chat server (gevent.pywsgi and the project's handler): the server pings
quiet sockets; a client that answers stays connected past stale_connection_timeout, one that
stops answering is removed (reason "stale") within ping_interval + ping_timeout."""

from __future__ import annotations

import threading
import time

import websocket

from testkit.polling import wait_until
from tests.flask.procs import Client, Servers
from tests.flask.wire import raw

KEEPALIVE = {"DCM_PING_INTERVAL": "0.5", "DCM_PING_TIMEOUT": "0.5",
             "DCM_STALE_CONNECTION_TIMEOUT": "1.5", "DCM_CLEANUP_INTERVAL": "0.2"}


def test_answering_clients_stay_and_silent_ones_go_within_interval_plus_timeout(
        servers: Servers) -> None:
    server = servers.chat("dcm", **KEEPALIVE)
    watcher = Client(server.ws_url(), "watcher")
    watcher.join("lobby")
    # a client that answers pings (websocket-client does, while it reads) and sends nothing
    quiet = raw(server, "quiet")
    pings: list[float] = []
    stop = threading.Event()

    def read() -> None:  # bounded by the test: stop is set before the socket closes
        quiet.settimeout(0.2)
        while not stop.is_set():
            try:
                opcode, _ = quiet.recv_data(control_frame=True)
            except websocket.WebSocketTimeoutException:
                continue
            except (websocket.WebSocketConnectionClosedException, OSError):
                return
            if opcode == websocket.ABNF.OPCODE_PING:
                pings.append(time.monotonic())

    reader = threading.Thread(target=read, name="quiet-reader", daemon=True)
    reader.start()
    # a client that stops answering: joins, then reads nothing at all
    silent = raw(server, "silent")
    silent.send('{"op": "join", "room": "lobby"}')
    watcher.recv_until(lambda m: m.get("type") == "joined" and m["user"] == "silent")
    went_quiet = time.monotonic()
    notice = watcher.recv_until(lambda m: m.get("type") == "user-disconnected")
    took = time.monotonic() - went_quiet
    assert (notice["userId"], notice["reason"]) == ("silent", "stale")
    # interval + timeout, plus the loop's tick (a quarter of the smaller) and the welcome's
    # reading time; far below stale_connection_timeout's own cleanup
    assert took < 0.5 + 0.5 + 0.5, took
    watcher.close()  # it reads no more from here on: it would not answer pings either
    time.sleep(2.0)  # past stale_connection_timeout (1.5 s): the condition under test
    stop.set()
    reader.join(5)
    assert len(pings) >= 2  # pinged while quiet, and answered
    # the watcher's close is seen at once; the quiet one is still there: not stale
    wait_until(lambda: server.health()["stats"]["local_connections"] == 1)
    time.sleep(0.3)  # a few more ticks of the keepalive and stale loops
    assert server.health()["stats"]["local_connections"] == 1
