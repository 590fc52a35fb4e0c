"""The bounded outbox (dcm_sync/outbox.py) over real socket pairs whose client end reads only
when the test says: what waits, what is refused, what a cut or closed client still gets, and
that a client that takes nothing cannot hold its connection or grow the outbox."""

from __future__ import annotations

import threading
import time

from dcm_sync import LocalConnectionManager
from dcm_sync.local import LocalConnection
from dcm_sync.outbox import Cork, SendPolicy
from flask_ext.wire import pong_frame
from testkit.polling import wait_until
from tests.helpers.pair_socket import PairSocket

PONG = 0xA


def _stuck(max_messages: int = 5, max_bytes: int = 1 << 20,
           grace: float = 1.0) -> tuple[PairSocket, LocalConnection]:
    """A connection whose client does not read: the socket buffers fill, then the outbox."""
    sock = PairSocket()
    lcm = LocalConnectionManager(send_policy=SendPolicy(max_messages, max_bytes, abort_grace=grace))
    conn = lcm.add("slow", sock, "u")
    return sock, conn


def test_outbox_holds_what_the_socket_cannot_take_and_refuses_past_its_bound() -> None:
    sock, conn = _stuck(max_messages=5)
    big = "x" * 60_000
    sent = 0
    while conn.send(f"{sent:06d}" + big):  # bounded: the socket buffers are finite
        sent += 1
        assert sent < 10_000
    assert conn.outbox is not None and conn.outbox.queued[0] == 5
    conn.close(1000, "bye")  # not a slow consumer: what waits still goes out, then the close
    frames = sock.read_frames(timeout=2.0)
    assert [int(p[:6]) for op, p in frames if op == 1] == list(range(sent))
    assert frames[-1] == (8, (1000).to_bytes(2, "big") + b"bye")


def test_outbox_byte_bound_and_cutting_a_slow_consumer_drops_what_waits() -> None:
    sock, conn = _stuck(max_messages=1000, max_bytes=200_000)
    big = "y" * 60_000
    sent = 0
    while conn.send(big):
        sent += 1
        assert sent < 10_000
    assert conn.outbox is not None and conn.outbox.queued[1] <= 200_000 + 60_010
    conn.close(1013, "slow consumer", slow=True)
    # what waits: at most the rest of the frame the writer had begun (the stream stays whole),
    # and the close frame (uncounted); every whole message queued behind them is dropped
    assert conn.outbox.queued[1] <= len(big) + 10 and conn.outbox.queued[0] <= 2
    assert conn.send("after the cut")  # dropped quietly
    frames = sock.read_frames(timeout=2.0)
    assert frames[-1] == (8, (1013).to_bytes(2, "big") + b"slow consumer")
    assert len(frames) - 1 < sent  # what waited in the outbox never went out
    assert all(p == big.encode() for op, p in frames[:-1])


def _fill(conn: LocalConnection, size: int = 60_000) -> int:
    """Send until the outbox refuses (the client reads nothing); how many were taken."""
    sent = 0
    while conn.send("z" * size):  # bounded: the socket buffers are finite
        sent += 1
        assert sent < 10_000
    return sent


def test_small_messages_that_wait_go_out_together_whole_and_in_order() -> None:
    sock, conn = _stuck(max_messages=2000, max_bytes=1 << 20)
    sent = 0
    while conn.outbox is None or conn.outbox.queued[0] < 1000:  # the socket is full, then 1,000 wait
        assert conn.send(f"{sent:06d}" + "m" * 94)
        sent += 1
        assert sent < 100_000
    frames = sock.read_frames(timeout=2.0)  # the client reads at last
    assert [int(p[:6]) for op, p in frames] == list(range(sent))
    assert all(len(p) == 100 for _, p in frames)
    # ~100 KB waited: written in a few writes of up to 64 KiB, not in one per message
    assert 1 <= sock.writes <= 5


def test_messages_in_a_write_under_way_still_count_towards_the_bounds() -> None:
    sock, conn = _stuck(max_messages=50, max_bytes=1 << 20)
    sent = 0
    while conn.send("q" * 100):  # the socket is full, then the outbox
        sent += 1
        assert sent < 100_000
    assert conn.outbox is not None and conn.outbox.queued[0] == 50  # refused at the bound
    assert not conn.send("q" * 100)  # and still, while the writer holds a joined write
    frames = sock.read_frames(timeout=2.0)
    assert len(frames) == sent


def test_a_cut_client_that_takes_nothing_is_dropped_after_the_grace_period() -> None:
    sock, conn = _stuck(max_messages=1000, max_bytes=200_000, grace=0.3)
    _fill(conn)
    assert conn.outbox is not None
    started = time.monotonic()
    conn.close(1013, "slow consumer", slow=True)
    assert not sock.reset  # the client has the grace period to take the close frame
    # it takes nothing: the connection is dropped (a reset: nothing left in kernel buffers),
    # which also ends the writer that was blocked on it
    wait_until(lambda: sock.reset, timeout=5)
    assert time.monotonic() - started >= 0.3
    assert conn.outbox.wait_idle(5)


def test_a_closed_client_that_takes_nothing_is_dropped_too() -> None:
    # not only a cut: a shutdown's close (what waits goes first) gives up after the grace too
    sock, conn = _stuck(max_messages=5, grace=0.3)
    _fill(conn)
    conn.close(1001, "going away")
    wait_until(lambda: sock.reset, timeout=5)
    assert conn.outbox is not None and conn.outbox.wait_idle(5)


def test_a_closed_client_that_reads_in_time_gets_everything_and_is_not_dropped() -> None:
    sock, conn = _stuck(max_messages=5, grace=2.0)
    sent = _fill(conn, size=1000)
    conn.close(1000, "bye")
    frames = sock.read_frames(timeout=1.0)
    assert len(frames) == sent + 1 and frames[-1][0] == 8
    assert not sock.reset


def test_at_most_one_pong_waits_and_it_answers_the_latest_ping() -> None:
    sock, conn = _stuck(max_messages=1000, max_bytes=10_000_000)
    outbox = conn.outbox
    assert outbox is not None
    _fill(conn, size=60_000)  # the writer is busy: the client does not read
    messages, waiting = outbox.queued
    for n in range(100_000):  # a ping flood from a client that never reads
        payload = f"ping {n}".encode()
        outbox.put_control(pong_frame(payload))
    # one pong waits, counted in the bytes (a flood does not grow the outbox); the writer may
    # have written a little more of what waited meanwhile, never less
    assert outbox.queued[0] <= messages + 1
    assert outbox.queued[1] <= waiting + 2 + len(b"ping 99999")
    conn.close(1000, "bye")
    pongs = [p for op, p in sock.read_frames(timeout=2.0) if op == PONG]
    assert pongs == [b"ping 99999"]


def test_closing_an_idle_outbox_leaves_nothing_to_wait_for() -> None:
    # the WSGI handler waits for the writer before it closes the socket: a socket with nothing
    # queued must not make it wait (it once waited the whole grace period, 5 s, at every close)
    sock, conn = _stuck(grace=5.0)
    assert conn.send("hello")  # written at once: the client's buffers have room
    conn.close(1000, "bye")
    assert conn.outbox is not None and conn.outbox.wait_idle(0.0)
    assert [op for op, _ in sock.read_frames(timeout=1.0)] == [1, 8]


def _room_socket() -> tuple[PairSocket, LocalConnection]:
    """A connection whose client reads, for the cork's tests (the test's thread is the one
    that holds frames back: the policy's default ``current`` is the thread's id)."""
    sock = PairSocket()
    conn = LocalConnectionManager().add("c", sock, "u")
    return sock, conn


def _room_message(sock: PairSocket, text: str) -> bytes:
    return sock.encode_text(text)  # what a room delivery passes: encoded once for all


def test_a_cork_writes_a_batch_of_room_frames_in_one_write_in_order() -> None:
    sock, conn = _room_socket()
    cork = Cork(threading.get_ident())
    cork.install()
    try:
        for n in range(10):
            assert conn.send(f"room {n}", _room_message(sock, f"room {n}"))
        conn.send("direct")  # a direct message joins what is held, in its turn
        assert sock.sends == 0  # held back until the batch ends
        cork.flush()
        assert sock.sends == 1
        cork.active = False  # between batches: room frames go out at once
        conn.send("room 10", _room_message(sock, "room 10"))
        assert sock.sends == 2
    finally:
        cork.uninstall()
    conn.close(1000, "bye")
    frames = sock.read_frames(timeout=2.0)
    assert [p.decode() for op, p in frames if op == 1] == [
        *(f"room {n}" for n in range(10)), "direct", "room 10"]


def test_held_frames_go_before_a_close_and_are_dropped_with_a_slow_consumer() -> None:
    for slow in (False, True):
        sock, conn = _room_socket()
        cork = Cork(threading.get_ident())
        cork.install()
        try:
            conn.send("held", _room_message(sock, "held"))
            conn.close(1013 if slow else 1000, "x", slow=slow)
        finally:
            cork.uninstall()
        frames = sock.read_frames(timeout=2.0)
        assert [p for op, p in frames if op == 1] == ([] if slow else [b"held"])
        assert frames[-1][0] == 8


def test_another_threads_cork_holds_nothing_back() -> None:
    sock, conn = _room_socket()
    cork = Cork(object())  # installed by someone else
    cork.install()
    try:
        conn.send("room", _room_message(sock, "room"))
        assert sock.sends == 1
    finally:
        cork.uninstall()
