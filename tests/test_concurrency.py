"""dcm_sync.concurrency: the gevent driver's workers, spawned and killed (a loop that does not
stop by itself when the manager shuts down), and the runners where the manager's operations
run (gevent: the dcm-io greenlets; threads: the caller)."""

from __future__ import annotations

import threading
from typing import Any

import gevent
import pytest

from dcm_sync.concurrency import IO_GREENLETS, _GeventDriver, _ThreadDriver


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


# ------------------------------------------------------------------ the dcm-io greenlets
def test_gevent_runner_runs_a_call_on_a_dcm_io_greenlet_and_returns_its_result() -> None:
    runner = _GeventDriver().runner()
    caller = gevent.getcurrent()
    ran_on: list[Any] = []

    def where(x: int, *, y: int) -> int:
        ran_on.append(gevent.getcurrent())
        return x + y

    assert runner.call(where, 2, y=3) == 5
    assert ran_on[0] is not caller and ran_on[0].name == "dcm-io-0"
    runner.stop()


def test_gevent_runner_raises_the_calls_exception_in_the_caller() -> None:
    runner = _GeventDriver().runner()

    def fails() -> None:
        raise KeyError("no such room")

    with pytest.raises(KeyError, match="no such room"):
        runner.call(fails)
    assert runner.call(lambda: "still serving") == "still serving"
    runner.stop()


def test_gevent_runner_runs_a_nested_call_in_place_and_caps_its_greenlets() -> None:
    runner = _GeventDriver().runner()
    names: set[str] = set()

    def slow(i: int) -> int:
        names.add(gevent.getcurrent().name)
        gevent.sleep(0.01)
        # a call from a dcm-io greenlet runs where it is: no wait on a busy pool
        return runner.call(lambda: i * 2)

    calls = [gevent.spawn(runner.call, slow, i) for i in range(IO_GREENLETS + 8)]
    gevent.joinall(calls, timeout=5)
    assert [c.value for c in calls] == [i * 2 for i in range(IO_GREENLETS + 8)]
    # the first 32 on a dcm-io greenlet each; with all of them busy, the last 8 in their callers
    assert {n for n in names if n.startswith("dcm-io-")} == {f"dcm-io-{i}" for i in range(IO_GREENLETS)}
    assert {n for n in names if not n.startswith("dcm-io-")} == {c.name for c in calls[-8:]}
    # once free, they serve again: no new greenlet
    assert runner.call(lambda: gevent.getcurrent().name) in {f"dcm-io-{i}" for i in range(IO_GREENLETS)}
    runner.stop()


def test_gevent_runner_call_goes_on_after_its_caller_stops_waiting() -> None:
    runner = _GeventDriver().runner()
    done: list[str] = []

    def slow() -> None:
        gevent.sleep(0.05)
        done.append("finished")

    with pytest.raises(gevent.Timeout):
        with gevent.Timeout(0.01):
            runner.call(slow)
    gevent.sleep(0.1)
    assert done == ["finished"]
    runner.stop()


def test_gevent_runner_once_stopped_runs_calls_in_the_caller() -> None:
    runner = _GeventDriver().runner()
    assert runner.call(gevent.getcurrent) is not gevent.getcurrent()
    runner.stop()
    gevent.sleep(0.01)
    assert runner.call(gevent.getcurrent) is gevent.getcurrent()


def test_thread_runner_runs_a_call_in_its_caller() -> None:
    runner = _ThreadDriver().runner()
    assert runner.call(threading.get_ident) == threading.get_ident()


def test_gevent_runner_runs_calls_of_the_drivers_own_greenlets_in_place() -> None:
    # the listener (a driver's greenlet) must never wait for a call that may wait for it
    driver = _GeventDriver()
    runner = driver.runner()
    in_place: list[bool] = []

    def loop() -> None:
        in_place.append(runner.call(gevent.getcurrent) is gevent.getcurrent())

    driver.spawn("dcm-listener", loop).join(1.0)
    assert in_place == [True]
    assert runner.call(gevent.getcurrent) is not gevent.getcurrent()  # a view's greenlet
    runner.stop()


def test_gevent_runner_replaces_a_dcm_io_greenlet_that_ended_while_idle() -> None:
    runner = _GeventDriver().runner()
    first = runner.call(gevent.getcurrent)
    gevent.get_hub().loop.run_callback(first.throw)  # a stray GreenletExit from the hub
    gevent.sleep(0.01)
    assert first.dead
    assert runner.call(lambda: 7) == 7
    assert runner.call(gevent.getcurrent) is not first
    runner.stop()
