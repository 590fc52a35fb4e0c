"""The proxy itself, against a real redis-server: each control does what the fault tests rely on."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from testkit.polling import wait_until
from testkit.proxy import TcpProxy
from testkit.redis_server import RedisServer


def client(proxy: TcpProxy, timeout: float = 1.0) -> redis.Redis:
    return redis.Redis.from_url(proxy.url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                retry_on_timeout=False, retry=None)


def test_forwards_and_adds_latency(proxy: TcpProxy) -> None:
    r = client(proxy)
    assert r.set("k", "v") and r.get("k") == b"v"
    assert proxy.connections == 1
    proxy.latency(0.1)
    started = time.monotonic()
    assert r.get("k") == b"v"
    assert 0.2 <= time.monotonic() - started < 1.0  # 0.1 s each way
    r.close()
    wait_until(lambda: proxy.connections == 0, timeout=2)


def test_stall_holds_then_resume_delivers(proxy: TcpProxy) -> None:
    r = client(proxy, timeout=0.3)
    r.ping()
    proxy.stall()
    with pytest.raises(redis.TimeoutError):
        r.ping()
    with pytest.raises(redis.TimeoutError):  # a new connection is stalled too
        client(proxy, timeout=0.3).ping()
    proxy.resume()
    assert client(proxy).ping()


def test_cut_resets_until_restore(proxy: TcpProxy, own_redis: RedisServer) -> None:
    r = client(proxy)
    r.ping()
    proxy.cut()
    assert proxy.connections == 0
    for _ in range(2):  # the open one, then a new one
        with pytest.raises(redis.ConnectionError):
            r.ping()
    proxy.restore()
    assert r.ping()
    assert own_redis.client().ping()


def test_deafen_only_silences_subscribers_that_exist(proxy: TcpProxy, own_redis: RedisServer) -> None:
    direct = own_redis.client()
    old = client(proxy).pubsub()  # type: ignore[no-untyped-call]
    old.subscribe("ch")
    assert old.get_message(timeout=1.0)["type"] == "subscribe"
    commands = client(proxy)
    commands.ping()
    assert proxy.deafen_subscribers() == 1
    assert commands.ping()  # not a subscriber: still answered
    new = client(proxy).pubsub()  # type: ignore[no-untyped-call]
    new.subscribe("ch")
    assert new.get_message(timeout=1.0)["type"] == "subscribe"
    assert direct.publish("ch", "hello") == 2
    got = new.get_message(timeout=1.0)
    assert got is not None and got["data"] == b"hello"
    assert old.get_message(timeout=0.3) is None
    assert proxy.dropped_bytes > 0
    proxy.undeafen()
    direct.publish("ch", "again")
    got = old.get_message(timeout=1.0)
    assert got is not None and got["data"] == b"again"
    for ps in (old, new):
        ps.close()


def test_close_stops_every_thread(own_redis: RedisServer) -> None:
    before = set(threading.enumerate())
    p = TcpProxy(("127.0.0.1", own_redis.port))
    rs = [client(p) for _ in range(3)]
    for r in rs:
        r.ping()
    assert p.connections == 3
    p.close()
    assert p.threads() == []
    assert set(threading.enumerate()) <= before
    with pytest.raises(redis.ConnectionError):
        rs[0].ping()
