"""Room history (dcm_sync/history.py) on every backend: what history rooms keep, in what order
and under which epoch, what they trim and when they expire, and that rooms without history
keep nothing and deliver as before."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from dcm_sync import ConfigError, DistributedConnectionManager, Emitter, HistoryEntry
from dcm_sync.config import Config
from testkit.polling import wait_until
from testkit.recording import connect
from testkit.redis_server import RedisServer

Make = Callable[..., DistributedConnectionManager]
HISTORY = dict(history_rooms=("chat-*", "news"), room_notices="off")


def test_history_rooms_keep_every_servers_messages_in_order(make_manager: Make,
                                                             backend_url: str,
                                                             prefix: str) -> None:
    a, b = make_manager(**HISTORY), make_manager(**HISTORY)
    ca, wa = connect(a, "alice", "chat-1")
    cb, wb = connect(b, "bob", "chat-1")
    with Emitter(backend_url, key_prefix=prefix, history_rooms=("chat-*",)) as emitter:
        for n in range(6):
            (a, b)[n % 2].broadcast_to_room("chat-1", {"n": n}, exclude=[ca] if n == 4 else None)
        emitter.broadcast_to_room("chat-1", "from a script")
        history = b.get_room_history("chat-1")
        assert emitter.get_room_history("chat-1") == history == a.get_room_history("chat-1")
    assert [e.offset for e in history] == [1, 2, 3, 4, 5, 6, 7]
    assert [e.message for e in history] == [f'{{"n":{n}}}' for n in range(6)] + ["from a script"]
    assert len({e.epoch for e in history}) == 1 and history[0].epoch
    assert history[4].exclude == (ca,) and history[0].exclude == ()
    assert isinstance(history[0], HistoryEntry)
    assert a.get_room_history("chat-1", limit=2) == history[-2:]
    assert a.get_room_history("chat-1", limit=0) == []
    # the members got each message once, as on a room without history
    want_b = [f'{{"n":{n}}}' for n in range(6)] + ["from a script"]
    wait_until(lambda: wb.frames == want_b)
    wait_until(lambda: wa.frames == [m for i, m in enumerate(want_b) if i != 4])
    assert cb


def test_rooms_without_history_keep_nothing(make_manager: Make) -> None:
    a = make_manager(**HISTORY)
    _, wa = connect(a, "alice", "plain")
    a.broadcast_to_room("plain", "hi")
    wait_until(lambda: wa.frames == ["hi"])
    assert a.get_room_history("plain") == []
    assert a.get_room_history("never-used") == []
    # a server without history_rooms keeps nothing either, even in a room another server keeps
    plain = make_manager(room_notices="off")
    plain.broadcast_to_room("chat-9", "not kept")
    assert a.get_room_history("chat-9") == []


def test_history_keeps_the_last_history_size(make_manager: Make) -> None:
    a = make_manager(**HISTORY, history_size=5)
    for n in range(1, 9):
        a.broadcast_to_room("news", n)
    assert [(e.offset, e.message) for e in a.get_room_history("news", limit=100)] == [
        (n, str(n)) for n in range(4, 9)]


def test_an_expired_history_starts_again_under_a_new_epoch(make_manager: Make) -> None:
    a = make_manager(**HISTORY, history_ttl=0.3)
    a.broadcast_to_room("news", "old")
    [old] = a.get_room_history("news")
    wait_until(lambda: a.get_room_history("news") == [], timeout=5)
    time.sleep(0.002)  # epochs come from the clock: at least a microsecond apart
    a.broadcast_to_room("news", "new")
    [new] = a.get_room_history("news")
    assert (old.offset, new.offset) == (1, 1)
    assert new.epoch != old.epoch


def test_history_entries_are_checked_like_the_bus(make_manager: Make) -> None:
    """With signing on, the history's envelopes are checked when read: a server with another
    key reads nothing (an entry it cannot trust is skipped, never shown)."""
    key_a, key_b = "a" * 32, "b" * 32
    a = make_manager(**HISTORY, signing_keys=[key_a])
    other = make_manager(**HISTORY, signing_keys=[key_b])
    a.broadcast_to_room("news", "signed")
    assert [e.message for e in a.get_room_history("news")] == ["signed"]
    assert other.get_room_history("news") == []


def test_bad_reads_and_settings_are_refused(make_manager: Make) -> None:
    a = make_manager(**HISTORY)
    for bad in (-1, 10_001, 1.5, True):
        with pytest.raises(ValueError, match="limit"):
            a.get_room_history("news", limit=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        a.get_room_history("", 1)
    for settings, match in ((dict(history_rooms="chat-*"), "list or tuple"),
                            (dict(history_rooms=("",)), "non-empty"),
                            (dict(history_size=0), "history_size"),
                            (dict(history_size=100_001), "history_size"),
                            (dict(history_ttl=0), "history_ttl")):
        with pytest.raises(ConfigError, match=match):
            Config(**settings)  # type: ignore[arg-type]
    assert Config.from_env({"DCM_HISTORY_ROOMS": "chat-*, news"}).history_rooms == ("chat-*", "news")


def test_only_history_rooms_store_anything_in_redis(redis_server: RedisServer, prefix: str) -> None:
    """On a real Redis: a plain room's broadcast writes no key; a history room's writes its
    stream and its epoch, both expiring."""
    from tests.helpers.managers import Managers

    make = Managers(prefix, redis_url=redis_server.url, **HISTORY)
    try:
        a = make()
        r = redis_server.client()
        a.broadcast_to_room("plain", "x")
        assert [k for k in r.scan_iter(f"{prefix}history*")] == []
        a.broadcast_to_room("chat-1", "y")
        keys = sorted(k.decode() for k in r.scan_iter(f"{prefix}history*"))
        assert len(keys) == 2 and all(0 < r.pttl(k) <= 300_000 for k in keys)
    finally:
        make.shutdown_all()
