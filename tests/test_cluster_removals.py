"""Redis Cluster: a removal is two steps (the connection's hash on its server's shard, then its
room sets on the rooms' shards). When the second step does not happen - the room's shard does
not answer, or the process doing it stops - the removal is finished later from the note the
first step left, and nobody stays in a room they left.

The room's shard is made unreachable with ``CLIENT PAUSE`` on its master (shorter than the
cluster's node timeout: no failover, the cluster stays whole); every other key of the test lives
on another master.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import redis

from dcm_sync.backends.redis_keys import KeyLayout, server_tag
from testkit.polling import wait_until
from testkit.recording import connect, settle
from testkit.topologies import ClusterNode, ClusterTopology
from tests.helpers.managers import Managers

pytestmark = pytest.mark.topology

PAUSE_MS = 6000
TIMEOUT = 0.4  # redis_timeout: a paused shard makes calls fail after a few of these


class Setup:
    """Two servers ``a`` and ``b`` whose keys live on ``home``, the master holding
    ``index:servers``, and a ``room`` whose set lives on another master, ``room_master``."""

    def __init__(self, cluster: ClusterTopology, prefix: str, make: Managers) -> None:
        self.keys = keys = KeyLayout(prefix)
        shards = cluster.slot_map()

        def master(key: str) -> int:
            return cluster.master_port_for(key, shards)

        home = master(keys.servers_index)
        ids = [s for s in (f"server-{i}" for i in range(2000)) if master(keys.server(s)) == home]
        self.room = next(r for r in (f"room-{i}" for i in range(2000))
                         if master(keys.room(r)) != home)
        self.home, self.room_master = cluster.node(home), cluster.node(master(keys.room(self.room)))
        self.a, self.b = make(server_id=ids[0]), make(server_id=ids[1])


@pytest.fixture
def two_servers(redis_cluster: ClusterTopology, prefix: str,
                managers_on: Callable[..., Managers]) -> Callable[[float], Setup]:
    def make(heartbeat_ttl: float) -> Setup:
        return Setup(redis_cluster, prefix, managers_on(
            redis_cluster.url, heartbeat_interval=0.2, heartbeat_ttl=heartbeat_ttl,
            redis_timeout=TIMEOUT))
    return make


@pytest.fixture
def cluster_client(redis_cluster: ClusterTopology) -> Iterator[redis.RedisCluster]:
    """One cluster client for the test, made before any pause (a cluster client made while the
    room's master is paused may wait on it for the slot map)."""
    with redis_cluster.client() as r:
        yield r


@contextmanager
def paused(node: ClusterNode) -> Iterator[None]:
    with node.client() as r:
        r.execute_command("CLIENT", "PAUSE", PAUSE_MS, "ALL")
    try:
        yield
    finally:
        with node.client() as r:
            r.execute_command("CLIENT", "UNPAUSE")


def members(r: redis.RedisCluster, key: str) -> set[str]:
    return {m.decode() for m in r.smembers(key)}


def noted(home: ClusterNode, keys: KeyLayout, cid: str) -> bool:
    """True while ``cid``'s hash is gone and its removal is noted, not finished. Asked of the
    master of its slot (``home``) directly: any other client may wait on the paused master."""
    with home.client() as r:
        return (bool(r.hexists(keys.removing(cid[:4]), cid))
                and not r.hexists(keys.connection(cid), cid))


def test_removal_finished_after_the_rooms_shard_comes_back(
        cluster_client: redis.RedisCluster, two_servers: Callable[[float], Setup]) -> None:
    s = two_servers(30.0)  # heartbeat_ttl
    keys, home, room, room_master, a, b = s.keys, s.home, s.room, s.room_master, s.a, s.b
    ca, wa = connect(a, "alice", room)
    connect(b, "bob", "elsewhere-" + room)
    assert b.get_distributed_stats().total_rooms == 2
    with paused(room_master):
        a.remove_connection(ca)  # alice's record goes; her room set cannot be changed
        assert wa.closed
        assert noted(home, keys, ca)
    # a's heartbeat finishes the removal once the shard answers again
    wait_until(lambda: b.get_distributed_stats().total_rooms == 1, 15, "alice's room gone")
    assert members(cluster_client, keys.room(room)) == set()
    assert not noted(home, keys, ca)
    assert not cluster_client.exists(keys.removing(server_tag(a.server_id)))  # nothing left behind


def test_dead_servers_cleanup_interrupted_then_finished_and_announced(
        cluster_client: redis.RedisCluster, two_servers: Callable[[float], Setup]) -> None:
    s = two_servers(1.0)  # heartbeat_ttl
    keys, home, room, room_master, a, b = s.keys, s.home, s.room, s.room_master, s.a, s.b
    ca, _ = connect(a, "alice", room)
    cb, wb = connect(b, "bob", room)
    start = time.monotonic()
    with paused(room_master):
        a.abandon()  # a dies; b finds it dead and pops its connections, but cannot empty the room
        wait_until(lambda: noted(home, keys, ca), PAUSE_MS / 1000 - 1,
                   "b's cleanup took alice's hash and noted her removal")
        assert time.monotonic() - start < PAUSE_MS / 1000  # still paused: the room step failed
        assert not wb.of_type("user-disconnected")  # nobody was told yet
    wait_until(lambda: members(cluster_client, keys.room(room)) == {cb}, 15,
               "alice out of the room")
    wait_until(lambda: len(wb.of_type("user-disconnected")) == 1, 10, "bob told alice left")
    notice = wb.of_type("user-disconnected")[0]
    assert notice["reason"] == "server-failure" and notice["connectionId"] == ca
    assert [s.server_id for s in b.get_active_servers()] == [b.server_id]
    assert not noted(home, keys, ca)
    assert b.handle_server_failure(a.server_id) == 0  # another pass finds nothing to clean
    settle(room, [b], [wb])
    assert len(wb.of_type("user-disconnected")) == 1  # once
