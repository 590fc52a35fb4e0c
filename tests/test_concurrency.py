"""dcm_sync.concurrency: the gevent driver's workers, spawned and killed (a loop that does not
stop by itself when the manager shuts down)."""

from __future__ import annotations

import gevent

from dcm_sync.concurrency import _GeventDriver


def test_gevent_driver_kills_a_worker_that_does_not_stop() -> None:
    driver = _GeventDriver()
    stopped: list[str] = []

    def stubborn() -> None:
        try:
            while True:  # never looks at a stop flag
                gevent.sleep(0.01)
        finally:
            stopped.append("cleanup ran")

    worker = driver.spawn("dcm-stubborn", stubborn)
    gevent.sleep(0.05)
    assert worker.is_alive()
    driver.kill(worker)
    assert not worker.is_alive()
    assert stopped == ["cleanup ran"]
