"""Sharded pub/sub read by the listener itself (dcm_sync/backends/redis_sharded.py), on a real
3-master Redis Cluster: every shard's messages arrive, in order per channel; a subscription to
another shard is confirmed while the reader waits; ``close`` wakes the reader; a shard
connection killed by Redis (CLIENT KILL) is recovered from, with threads and under gevent.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dcm_sync import BackendUnavailableError
from dcm_sync.backends import open_backend
from dcm_sync.backends.base import Backend, Subscription
from dcm_sync.backends.redis_keys import KeyLayout
from testkit.polling import wait_until
from testkit.topologies import ClusterTopology
from tests.helpers.managers import Managers, delivered, pair

pytestmark = pytest.mark.topology

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def backend(redis_cluster: ClusterTopology, prefix: str) -> Iterator[Backend]:
    made = open_backend(redis_cluster.url, prefix)
    yield made
    made.close()


def rooms_on_each_master(cluster: ClusterTopology, prefix: str, per_master: int = 1) -> list[str]:
    """Room names whose channels are spread over the masters, ``per_master`` on each."""
    keys, shards = KeyLayout(prefix), cluster.slot_map()
    by_port: dict[int, list[str]] = {m.port: [] for m in cluster.masters()}
    for i in itertools.count():
        room = f"room-{i}"
        found = by_port[cluster.master_port_for(keys.channel(f"room:{room}"), shards)]
        if len(found) < per_master:
            found.append(room)
        if all(len(rooms) == per_master for rooms in by_port.values()):
            return [room for rooms in by_port.values() for room in rooms]
    raise AssertionError("unreachable")


def subscribed(sub: Subscription, channels: list[str]) -> None:
    """Subscribe and read until Redis confirmed (the reader reads the confirmations)."""
    confirmations = sub.subscribe(channels)
    deadline = time.monotonic() + 5
    while not all(c.wait(0) for c in confirmations) and time.monotonic() < deadline:
        assert sub.get_message(0.2) is None  # nothing is published yet
    assert all(c.wait(0) for c in confirmations)


def read(sub: Subscription, count: int, timeout: float = 10.0) -> list[tuple[str, bytes]]:
    got: list[tuple[str, bytes]] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        item = sub.get_message(0.5)
        if item is not None:
            got.append(item)
    return got


def test_messages_of_every_shard_arrive_in_order_per_channel(
        redis_cluster: ClusterTopology, prefix: str, backend: Backend) -> None:
    channels = [f"room:{r}" for r in rooms_on_each_master(redis_cluster, prefix, 2)]
    sub = backend.subscription()
    try:
        subscribed(sub, channels)
        n = 300

        def publish() -> None:  # interleaved over the six channels, while the reader reads
            for i in range(n):
                for channel in channels:
                    backend.publish(channel, str(i).encode())

        publisher = threading.Thread(target=publish, daemon=True)
        publisher.start()
        got = read(sub, n * len(channels))
        publisher.join(10)
        assert len(got) == n * len(channels)
        for channel in channels:
            assert [int(data) for c, data in got if c == channel] == list(range(n))
        assert sub.get_message(0.2) is None  # nothing twice
    finally:
        sub.close()


def test_messages_read_together_are_announced_as_ready(
        redis_cluster: ClusterTopology, prefix: str, backend: Backend) -> None:
    # the listener writes room frames of messages read together in one write per socket,
    # while the subscription says another message is at hand (Subscription.ready)
    room = rooms_on_each_master(redis_cluster, prefix)[0]
    channel = KeyLayout(prefix).channel(f"room:{room}")
    sub = backend.subscription()
    try:
        subscribed(sub, [f"room:{room}"])
        with redis_cluster.master_for_key(channel).client() as r:
            pipe = r.pipeline(transaction=False)
            for i in range(10):
                pipe.execute_command("SPUBLISH", channel, str(i))
            pipe.execute()  # one write from Redis to the subscriber, as a rule
        ready = []
        for i in range(10):
            assert sub.get_message(5.0) == (f"room:{room}", str(i).encode())
            ready.append(sub.ready())
        assert any(ready[:-1]) and ready[-1] is False
    finally:
        sub.close()


def test_another_shard_subscribed_while_the_reader_waits(
        redis_cluster: ClusterTopology, prefix: str, backend: Backend) -> None:
    first, second = (f"room:{r}" for r in rooms_on_each_master(redis_cluster, prefix)[:2])
    sub = backend.subscription()
    got: list[tuple[str, bytes]] = []
    ended: list[BaseException] = []

    def reader() -> None:  # the listener's loop: waits with no timeout
        try:
            while True:
                item = sub.get_message(None)
                if item is not None:
                    got.append(item)
        except BackendUnavailableError as exc:
            ended.append(exc)

    try:
        subscribed(sub, [first])
        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        time.sleep(0.2)  # the reader waits on the first shard's socket alone
        start = time.monotonic()
        # confirmed by the waiting reader well before its bounded wait (5 s) would end
        assert all(c.wait(2.0) for c in sub.subscribe([second]))
        assert time.monotonic() - start < 2.0
        backend.publish(second, b"on the second shard")
        backend.publish(first, b"on the first shard")
        wait_until(lambda: len(got) == 2, 5, "both messages read")
        assert dict(got) == {first: b"on the first shard", second: b"on the second shard"}
        start = time.monotonic()
        sub.close()  # wakes the reader, which finds the subscription closed
        thread.join(2.0)
        assert not thread.is_alive() and ended and time.monotonic() - start < 2.0
    finally:
        sub.close()


def kill_subscribers(cluster: ClusterTopology, key: str) -> int:
    """CLIENT KILL the pub/sub connections on the master of ``key``'s slot."""
    with cluster.master_for_key(key).client() as r:
        return int(r.execute_command("CLIENT", "KILL", "TYPE", "pubsub"))


def test_a_killed_shard_connection_is_recovered_from(
        redis_cluster: ClusterTopology, prefix: str,
        managers_on: Callable[..., Managers]) -> None:
    room = rooms_on_each_master(redis_cluster, prefix)[0]
    a, b, sa, sb, ca, cb = pair(managers_on(redis_cluster.url, probe_interval=1.0), room)
    n = itertools.count(1)
    assert delivered(a, room, cb, sb, next(n))
    assert kill_subscribers(redis_cluster, KeyLayout(prefix).channel(f"room:{room}")) >= 2
    wait_until(lambda: a.metrics()["reconnects"] >= 1 and b.metrics()["reconnects"] >= 1, 10,
               "both listeners subscribed again")
    wait_until(lambda: delivered(a, room, cb, sb, next(n)), 10,
               "broadcasts and direct messages reach bob again")
    # and in order, again: one sender's broadcasts on one room
    for i in range(50):
        a.broadcast_to_room(room, {"seq": i})
    wait_until(lambda: len([m for m in sb.messages() if "seq" in m]) == 50, 10, "all 50")
    assert [m["seq"] for m in sb.messages() if "seq" in m] == list(range(50))


GEVENT_SCRIPT = """
from gevent import monkey; monkey.patch_all()
import sys, time
import redis
from dcm_sync import create_distributed_connection_manager
from testkit.recording import RecordingSocket
from testkit.polling import wait_until

url, prefix, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
a = create_distributed_connection_manager(None, redis_url=url, key_prefix=prefix, probe_interval=1.0)
b = create_distributed_connection_manager(None, redis_url=url, key_prefix=prefix, probe_interval=1.0)
assert a._driver.name == "gevent"
sa, sb = RecordingSocket(), RecordingSocket()
ca, cb = a.register_connection(sa, "alice"), b.register_connection(sb, "bob")
a.join_room(ca, "lobby"); b.join_room(cb, "lobby")
for i in range(100):
    a.broadcast_to_room("lobby", str(i), exclude=[ca])
    a.send_to_connection(cb, "d%d" % i)
wait_until(lambda: len(sb.frames) == 200, 10, "200 frames at bob")
assert [f for f in sb.frames if not f.startswith("d")] == [str(i) for i in range(100)]
assert [f for f in sb.frames if f.startswith("d")] == ["d%d" % i for i in range(100)]
with redis.Redis(port=port) as r:
    assert r.execute_command("CLIENT", "KILL", "TYPE", "pubsub") >= 2
wait_until(lambda: b.metrics()["reconnects"] >= 1, 10, "b subscribed again")
def back():
    a.broadcast_to_room("lobby", "again", exclude=[ca])
    time.sleep(0.1)
    return "again" in sb.frames
wait_until(back, 10, "bob hears alice again")
start = time.monotonic()
a.shutdown(); b.shutdown()
assert time.monotonic() - start < 5, time.monotonic() - start
print("ok")
"""


def test_under_gevent_a_killed_shard_connection_is_recovered_from(
        redis_cluster: ClusterTopology, prefix: str) -> None:
    # the listener waits in gevent's hub on every shard's socket (gevent.select.poll)
    port = redis_cluster.master_port_for(KeyLayout(prefix).channel("room:lobby"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        str(ROOT), os.environ.get("PYTHONPATH", "")]))}
    done = subprocess.run([sys.executable, "-c", GEVENT_SCRIPT, redis_cluster.url, prefix,
                           str(port)], cwd=ROOT, env=env, text=True, capture_output=True,
                          timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, "ok"), done.stderr


NO_HIREDIS_SCRIPT = """
import sys; sys.modules["hiredis"] = None  # redis-py then parses replies itself
import threading, time
import redis.utils
from dcm_sync.backends import open_backend
assert not redis.utils.HIREDIS_AVAILABLE
url, prefix, channels = sys.argv[1], sys.argv[2], sys.argv[3:]
backend = open_backend(url, prefix)
sub = backend.subscription()
confirmations = sub.subscribe(channels)
while not all(c.wait(0) for c in confirmations):
    assert sub.get_message(1.0) is None
def publish():
    for i in range(200):
        for channel in channels:
            backend.publish(channel, str(i).encode())
threading.Thread(target=publish, daemon=True).start()
got, deadline = [], time.monotonic() + 20
while len(got) < 200 * len(channels) and time.monotonic() < deadline:
    item = sub.get_message(None)
    if item is not None:
        got.append(item)
for channel in channels:
    assert [int(d) for c, d in got if c == channel] == list(range(200)), channel
sub.close()
print("ok")
"""


def test_without_hiredis_every_shard_is_read(redis_cluster: ClusterTopology, prefix: str) -> None:
    # redis-py's own parser keeps what it read in a buffer of its own, which polling the
    # socket cannot see: the subscription asks redis-py instead
    channels = [f"room:{r}" for r in rooms_on_each_master(redis_cluster, prefix)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        str(ROOT), os.environ.get("PYTHONPATH", "")]))}
    done = subprocess.run([sys.executable, "-c", NO_HIREDIS_SCRIPT, redis_cluster.url, prefix,
                           *channels], cwd=ROOT, env=env, text=True, capture_output=True,
                          timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, "ok"), done.stderr
