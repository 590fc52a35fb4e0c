"""Requests between servers: ``on_request``, ``request`` and ``survey`` over the real bus of
every backend, handlers in workers of their own, errors and timeouts as the asker sees them."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from dcm_sync import (
    DCMError,
    DistributedConnectionManager,
    MessageTooLargeError,
    RequestFailedError,
    UnknownServerError,
)
from dcm_sync.envelopes import Reply, Request, decode_body
from dcm_sync.requests import MAX_HANDLERS
from testkit.polling import wait_until
from testkit.recording import connect
from tests.helpers.managers import Managers

Make = Callable[..., DistributedConnectionManager]

K1 = "requests-signing-key-0123456789"
K2 = "another-signing-key-0123456789"
#: a correctness bound on top of a timeout, for a busy shared machine (not a performance figure)
SLACK = 3.0

pytestmark = pytest.mark.timeout(90)


def echo(name: str) -> Callable[[str, Any], Any]:
    return lambda origin, message: {"by": name, "from": origin, "got": message}


class Asking:
    """``mgr.request(...)`` or ``mgr.survey(...)`` in a thread of its own: its result or error,
    and when it returned."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.returned = threading.Event()
        self.started = time.monotonic()
        self.seconds = 0.0
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._thread.start()

    def _run(self, call: Callable[[], Any]) -> None:
        try:
            self.result = call()
        except BaseException as exc:  # handed to the test, which raises or checks it
            self.error = exc
        finally:
            self.seconds = time.monotonic() - self.started
            self.returned.set()

    def wait(self, timeout: float = 30.0) -> Any:
        assert self.returned.wait(timeout), "the call did not return"
        if self.error is not None:
            raise self.error
        return self.result


class Held:
    """A handler that holds each call until released (a slow handler, without sleeping)."""

    def __init__(self, reply: Any = "late") -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.reply = reply
        self.running = 0
        self.most = 0
        self._lock = threading.Lock()

    def __call__(self, origin: str, message: Any) -> Any:
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
        self.entered.set()
        try:
            assert self.release.wait(60), "never released"
            return self.reply
        finally:
            with self._lock:
                self.running -= 1


@pytest.fixture
def held() -> Iterator[Held]:
    handler = Held()
    yield handler
    handler.release.set()  # a failed test must not leave workers waiting


# ----------------------------------------------------------------- request
def test_request_round_trip_to_another_server_and_to_itself(make_manager: Make) -> None:
    a, b = make_manager(), make_manager()
    a.on_request(echo("a"))
    b.on_request(echo("b"))
    message = {"op": "count", "rooms": ["r", "é"], "n": None}
    assert a.request(b.server_id, message, timeout=10) == {"by": "b", "from": a.server_id,
                                                           "got": message}
    assert b.request(a.server_id, "text", timeout=10) == {"by": "a", "from": b.server_id,
                                                          "got": "text"}
    assert a.request(a.server_id, [1, 2], timeout=10) == {"by": "a", "from": a.server_id,
                                                          "got": [1, 2]}
    b.on_request(lambda origin, message: None)
    assert a.request(b.server_id, 0, timeout=10) is None
    for mgr in (a, b):
        assert mgr._requests._pending == {}  # nothing left behind once answered
        assert mgr.metrics()["envelopes_dropped"] == 0


def test_a_later_on_request_replaces_the_handler(make_manager: Make) -> None:
    a, b = make_manager(), make_manager()
    first = b.on_request(echo("first"))
    assert first("x", 1)["by"] == "first"  # returned as given: usable as a decorator
    assert a.request(b.server_id, 1, timeout=10)["by"] == "first"

    @b.on_request
    def second(origin: str, message: Any) -> Any:
        return {"by": "second"}

    assert a.request(b.server_id, 1, timeout=10) == {"by": "second"}
    assert a.request(b.server_id, 2, timeout=10) == {"by": "second"}
    with pytest.raises(TypeError, match="callable"):
        b.on_request("not a function")  # type: ignore[arg-type]
    assert a.request(b.server_id, 3, timeout=10) == {"by": "second"}


def test_unknown_server_raises_at_once(make_manager: Make) -> None:
    a = make_manager()
    started = time.monotonic()
    with pytest.raises(UnknownServerError, match="no-such-server"):
        a.request("no-such-server", {"op": "x"}, timeout=30)
    assert time.monotonic() - started < SLACK
    assert issubclass(UnknownServerError, DCMError)
    assert a._requests._pending == {}


def test_handler_that_raises_is_a_request_failed_error_with_its_message(make_manager: Make) -> None:
    a, b = make_manager(), make_manager()

    def broken(origin: str, message: Any) -> Any:
        raise ValueError(f"cannot do {message['op']}")

    b.on_request(broken)
    with pytest.raises(RequestFailedError, match=r"ValueError: cannot do reload") as info:
        a.request(b.server_id, {"op": "reload"}, timeout=10)
    assert b.server_id in str(info.value) and isinstance(info.value, DCMError)
    b.on_request(echo("b"))  # the server goes on answering
    assert a.request(b.server_id, 1, timeout=10)["got"] == 1


def test_server_without_a_handler_answers_with_an_error(make_manager: Make) -> None:
    a, b = make_manager(), make_manager()
    started = time.monotonic()
    with pytest.raises(RequestFailedError, match=f"no request handler on server {b.server_id}"):
        a.request(b.server_id, "anyone?", timeout=30)
    with pytest.raises(RequestFailedError, match=f"no request handler on server {a.server_id}"):
        a.request(a.server_id, "me?", timeout=30)
    assert time.monotonic() - started < 2 * SLACK  # answered, not timed out


def test_a_reply_that_cannot_be_sent_is_a_request_failed_error(make_manager: Make) -> None:
    a, b = make_manager(), make_manager(max_message_bytes=100)
    b.on_request(lambda origin, message: {"set": {1, 2}} if message == "set" else "x" * 101)
    with pytest.raises(RequestFailedError, match="not JSON-serializable"):
        a.request(b.server_id, "set", timeout=10)
    with pytest.raises(RequestFailedError, match="max_message_bytes is 100"):
        a.request(b.server_id, "big", timeout=10)


def test_no_reply_in_time_is_a_timeout_error(make_manager: Make, held: Held) -> None:
    a, b = make_manager(), make_manager()
    b.on_request(held)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=b.server_id):
        a.request(b.server_id, "slow", timeout=1.0)
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 1.0 + SLACK
    assert held.entered.is_set()
    assert a._requests._pending == {}  # the expired call is gone
    held.release.set()  # its late reply arrives and is dropped
    b.on_request(echo("b"))
    assert a.request(b.server_id, "next", timeout=10)["got"] == "next"
    assert a.metrics()["envelopes_dropped"] == 0


def test_arguments_are_checked_before_anything_is_sent(make_manager: Make) -> None:
    a = make_manager(max_message_bytes=64)
    a.on_request(lambda origin, message: len(message))
    for timeout in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="timeout"):
            a.request(a.server_id, "1", timeout=timeout)
        with pytest.raises(ValueError, match="timeout"):
            a.survey(1, timeout=timeout)
    with pytest.raises(TypeError, match="timeout"):
        a.request(a.server_id, "1", timeout="5")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="server_id"):
        a.request("", 1)
    with pytest.raises(TypeError, match="server_id"):
        a.request(None, 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="JSON-serializable"):
        a.request(a.server_id, object())
    with pytest.raises(TypeError, match="JSON-serializable"):
        a.survey({"x": object()})
    with pytest.raises(MessageTooLargeError):
        a.request(a.server_id, "x" * 65)
    with pytest.raises(MessageTooLargeError):
        a.survey("x" * 65)
    assert a.request(a.server_id, "x" * 64, timeout=10) == 64


# ----------------------------------------------------------------- survey
def test_survey_answers_by_server_id_this_server_included(make_manager: Make) -> None:
    servers = [make_manager() for _ in range(3)]
    for n, mgr in enumerate(servers):
        mgr.on_request(lambda origin, message, n=n: {"n": n, "from": origin, "got": message})
    a = servers[0]
    started = time.monotonic()
    replies = a.survey({"op": "load"}, timeout=30)
    assert time.monotonic() - started < 30  # returned once all had answered, not at the timeout
    assert replies == {mgr.server_id: {"n": n, "from": a.server_id, "got": {"op": "load"}}
                       for n, mgr in enumerate(servers)}
    assert a._requests._pending == {}


def test_survey_leaves_out_a_slow_server_without_waiting_for_it(make_manager: Make,
                                                                held: Held) -> None:
    a, b, c = make_manager(), make_manager(), make_manager()
    a.on_request(echo("a"))
    b.on_request(echo("b"))
    c.on_request(held)
    asking = Asking(lambda: a.survey("who", timeout=2.0))
    replies = asking.wait()
    assert held.entered.is_set() and not held.release.is_set()  # still held when survey returned
    assert set(replies) == {a.server_id, b.server_id}
    assert 1.8 <= asking.seconds < 2.0 + SLACK


def test_survey_leaves_out_servers_that_answered_with_an_error(make_manager: Make) -> None:
    a, b = make_manager(), make_manager()
    make_manager()  # a third server, with no handler at all
    a.on_request(echo("a"))

    def broken(origin: str, message: Any) -> Any:
        raise RuntimeError("nope")

    b.on_request(broken)
    started = time.monotonic()
    assert set(a.survey("who", timeout=30)) == {a.server_id}
    assert time.monotonic() - started < 30  # errors are answers: nobody was waited for


def test_survey_leaves_out_a_dead_server_after_the_timeout(make_manager: Make) -> None:
    # the dead server's record lives for heartbeat_ttl: the survey counts it and waits for it
    a, b, dead = (make_manager(heartbeat_ttl=30.0) for _ in range(3))
    for mgr in (a, b, dead):
        mgr.on_request(echo(mgr.server_id))
    dead.abandon()
    assert dead.server_id in {s.server_id for s in a.get_active_servers()}
    started = time.monotonic()
    assert set(a.survey("who", timeout=1.5)) == {a.server_id, b.server_id}
    assert 1.4 <= time.monotonic() - started < 1.5 + SLACK
    with pytest.raises(TimeoutError):
        a.request(dead.server_id, "who", timeout=1.0)  # alive as far as the registry knows


# ----------------------------------------------------------------- handlers off the listener
def test_a_held_handler_does_not_delay_other_messages(make_manager: Make, held: Held) -> None:
    a, b = make_manager(), make_manager()
    _, wa = connect(a, "alice", "r")
    cb, wb = connect(b, "bob", "r")
    got: list[Any] = []
    b.on_server_message(lambda origin, message: got.append(message))
    b.on_request(held)
    asking = Asking(lambda: a.request(b.server_id, "slow", timeout=60))
    assert held.entered.wait(30)
    a.broadcast_to_room("r", {"room": 1})
    assert a.send_to_connection(cb, {"direct": 2})
    assert a.send_to_server(b.server_id, {"control": 3})
    # b's listener reads its server channel in order, so these arrive while the handler is held
    wait_until(lambda: len(wb.frames) == 2 and got == [{"control": 3}], 30)
    assert wb.messages() == [{"room": 1}, {"direct": 2}]
    b.on_request(echo("b"))  # another request is answered while the first is still held
    assert a.request(b.server_id, "quick", timeout=30)["got"] == "quick"
    assert not asking.returned.is_set()
    held.release.set()
    assert asking.wait() == "late"


def test_handler_calls_at_once_are_bounded(prefix: str, held: Held) -> None:
    make = Managers(prefix, redis_url=f"memory://{uuid.uuid4().hex}")
    try:
        a, b = make(), make()
        b.on_request(held)
        callers = [Asking(lambda: a.request(b.server_id, "q", timeout=60))
                   for _ in range(MAX_HANDLERS + 4)]
        wait_until(lambda: held.running == MAX_HANDLERS, 30)
        time.sleep(0.2)  # a moment for a worker that should not exist to start
        assert held.most == MAX_HANDLERS
        held.release.set()
        assert [c.wait() for c in callers] == ["late"] * len(callers)  # the queued ones too
        assert held.most == MAX_HANDLERS
    finally:
        make.shutdown_all()


# ----------------------------------------------------------------- shutdown, envelopes, signing
def test_shutdown_releases_waiting_callers_with_dcm_error(make_manager: Make, held: Held) -> None:
    a, b = make_manager(), make_manager()
    b.on_request(held)
    asking = Asking(lambda: a.request(b.server_id, "slow", timeout=60))
    surveying = Asking(lambda: a.survey("slow", timeout=60))
    wait_until(lambda: held.running == 2, 30)
    a.shutdown()
    with pytest.raises(DCMError, match="shut down"):
        asking.wait(timeout=SLACK)
    with pytest.raises(DCMError, match="shut down"):
        surveying.wait(timeout=SLACK)
    with pytest.raises(DCMError, match="shut down"):
        a.request(b.server_id, "after")
    assert a._requests._pending == {}


def test_a_reply_nobody_waits_for_is_dropped(make_manager: Make) -> None:
    a = make_manager()
    a.on_request(echo("a"))
    stray = a._envelope(Reply("no-such-request", True, {"x": 1}))
    a._dispatch(f"server:{a.server_id}", stray)
    assert a._requests._pending == {} and a.metrics()["envelopes_dropped"] == 0
    assert a.request(a.server_id, 1, timeout=10)["got"] == 1


def test_request_and_reply_envelopes_round_trip() -> None:
    from dcm_sync.envelopes import EnvelopeWriter

    for keys in ((), (K1,)):
        writer = EnvelopeWriter("srv", keys, "p:")
        for body in (Request("abc.1", {"op": [1, None]}), Request("abc.2", None),
                     Reply("abc.1", True, "text"), Reply("abc.1", False, "boom")):
            received = decode_body(writer(body), writer.signer)
            assert received.origin == "srv" and received.body == body


def test_requests_with_signing_on(make_manager: Make) -> None:
    a, b = make_manager(signing_keys=[K1]), make_manager(signing_keys=[K1])
    b.on_request(echo("b"))
    a.on_request(echo("a"))
    assert a.request(b.server_id, {"op": "x"}, timeout=10) == {"by": "b", "from": a.server_id,
                                                               "got": {"op": "x"}}
    assert set(a.survey("all", timeout=30)) == {a.server_id, b.server_id}
    # a server with another key drops the request (and the asker times out)
    other = make_manager(signing_keys=[K2])
    other.on_request(echo("other"))
    with pytest.raises(TimeoutError):
        a.request(other.server_id, "x", timeout=1.0)
    wait_until(lambda: other.metrics()["signature_failures"] >= 1)
    for mgr in (a, b):
        assert mgr.metrics()["envelopes_dropped"] == 0
