"""A server that is told to stop (SIGTERM) closes its sockets with 1001 "going away", so that
clients know to reconnect, and tells the other servers at once: under gevent.pywsgi with the
project's handler, with the app's own SIGTERM handler and without one, and under gunicorn's
worker."""

from __future__ import annotations

import signal

import pytest

from tests.flask.procs import Client, Server, Servers
from tests.flask.wire import close_of

DCM_WORKER = "flask_ext.gunicorn_worker.DCMGeventWebSocketWorker"


def _start(servers: Servers, mode: str) -> Server:
    return servers.gunicorn(DCM_WORKER, workers=1) if mode == "gunicorn" else servers.chat(mode)


@pytest.mark.parametrize("mode", ["plain", "dcm", "gunicorn"])
def test_sigterm_closes_with_1001_and_tells_the_other_servers_at_once(servers: Servers,
                                                                      mode: str) -> None:
    other = servers.chat("dcm")
    stopping = _start(servers, mode)
    watcher = Client(other.ws_url(), "watcher")
    leaving = Client(stopping.ws_url(), "leaving")
    watcher.join("lobby")
    leaving.join("lobby")
    watcher.recv_until(lambda m: m.get("type") == "joined" and m["user"] == "leaving")

    stopping.proc.send_signal(signal.SIGTERM)

    assert close_of(leaving.ws) == (1001, "going away")
    notice = watcher.recv_until(lambda m: m.get("type") == "user-disconnected")
    # "shutdown", not "server-failure": told by the server itself, not found dead later
    assert (notice["userId"], notice["reason"]) == ("leaving", "shutdown")
    assert stopping.proc.wait(15) is not None
    assert other.health()["stats"]["active_servers"] == 1
