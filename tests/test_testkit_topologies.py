"""The test topologies themselves, with redis-py alone: a Cluster whose keys spread over its masters,
whose sharded pub/sub reaches the channel's master and whose replicas take over a killed master;
a Sentinel set that names its master and promotes the replica when the master dies. Bring-up and
failover times are printed (``-rP`` or ``-s`` shows them)."""

from __future__ import annotations

import time

import pytest
import redis

from testkit.topologies import ClusterTopology, SentinelTopology

pytestmark = [pytest.mark.topology, pytest.mark.timeout(120)]


def report(what: str, seconds: float | None) -> None:
    assert seconds is not None
    print(f"[topology] {what}: {seconds:.2f}s")


def wait_message(pubsub: redis.client.PubSub, kind: str, timeout: float = 10.0) -> dict:
    """The next message of type ``kind``; AssertionError (with what came instead) after ``timeout``."""
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=max(0.0, deadline - time.monotonic()))
        if message is None:
            continue
        if message["type"] == kind:
            return message
        seen.append(message)
    raise AssertionError(f"no {kind!r} message within {timeout}s; got {seen}")


def keys_on_distinct_masters(cluster: ClusterTopology, count: int) -> dict[int, str]:
    """Keys ``{tagN}k`` with hash tags chosen so that each lands on a different master: master port -> key."""
    found: dict[int, str] = {}
    shards = cluster.slot_map()
    for n in range(1000):
        key = f"{{tag{n}}}k"
        found.setdefault(cluster.master_port_for(key, shards), key)
        if len(found) == count:
            return found
    raise AssertionError(f"1000 hash tags reach only masters {sorted(found)}:\n{cluster.describe()}")


# ---------------------------------------------------------------------------------------- cluster


def test_cluster_has_three_masters_each_with_a_linked_replica(redis_cluster: ClusterTopology,
                                                              cluster_url: str) -> None:
    report("cluster bring-up (3 masters + 3 replicas)", redis_cluster.startup_seconds)
    masters = redis_cluster.masters()
    assert len(masters) == 3, redis_cluster.describe()
    assert cluster_url == "redis+cluster://" + ",".join(m.address for m in masters)
    for master in masters:
        replicas = redis_cluster.replicas_of(master)
        assert len(replicas) == 1, f"{master}:\n{redis_cluster.describe()}"
        with master.client(decode_responses=True) as r:
            info = r.info("replication")
        assert info["connected_slaves"] == 1, info
        assert info["slave0"]["port"] == replicas[0].port and info["slave0"]["state"] == "online", info
    for node in redis_cluster.nodes:
        with node.client(decode_responses=True) as r:
            assert r.cluster("info")["cluster_state"] == "ok", redis_cluster.describe()
    with redis_cluster.client() as rc:
        assert len(rc.get_primaries()) == 3 and len(rc.get_replicas()) == 3


def test_keys_with_different_hash_tags_land_on_different_masters(redis_cluster: ClusterTopology,
                                                                 cluster_url: str) -> None:
    keys = keys_on_distinct_masters(redis_cluster, 3)
    with redis_cluster.client(decode_responses=True) as rc:
        for port, key in keys.items():
            rc.set(key, f"on {port}")
    for master in redis_cluster.masters():
        with master.client(decode_responses=True) as r:
            for port, key in keys.items():
                if port == master.port:
                    assert r.get(key) == f"on {port}"  # stored on this node itself
                else:
                    with pytest.raises(redis.exceptions.MovedError, match=f" 127.0.0.1:{port}$"):
                        r.get(key)
    with redis_cluster.client(decode_responses=True) as rc:
        assert [rc.get(key) for key in keys.values()] == [f"on {port}" for port in keys]


def test_spublish_reaches_a_shard_subscriber_on_the_channel_master(redis_cluster: ClusterTopology,
                                                                   cluster_url: str) -> None:
    channel = "news{shard-test}"
    master = redis_cluster.master_for_key(channel)
    with master.client(decode_responses=True) as r:
        pubsub = r.pubsub()
        try:
            pubsub.ssubscribe(channel)
            assert wait_message(pubsub, "ssubscribe")["channel"] == channel
            with redis_cluster.client(decode_responses=True) as rc:
                receivers = rc.spublish(channel, "hello")  # routed by the channel's slot
            assert receivers == 1, f"SPUBLISH on {channel} reached {receivers} subscribers"
            message = wait_message(pubsub, "smessage")
            assert (message["channel"], message["data"]) == (channel, "hello")
        finally:
            pubsub.close()


def test_cluster_replica_takes_over_a_killed_master_which_rejoins_as_its_replica(
        fresh_cluster: ClusterTopology) -> None:
    report("cluster bring-up (fresh)", fresh_cluster.startup_seconds)
    key = "{failover}written-before"
    master = fresh_cluster.master_for_key(key)
    replica = fresh_cluster.replica_of(master)
    with master.client() as r:
        r.set(key, "kept")
        assert r.wait(1, 5000) == 1, "the replica did not acknowledge the write"

    started = time.monotonic()
    fresh_cluster.kill(master)
    new_master = fresh_cluster.wait_failover(master)
    report("cluster failover (kill -> replica is master, every node cluster_state:ok)",
           time.monotonic() - started)

    assert new_master.port == replica.port and new_master.role == "master", fresh_cluster.describe()
    for node in fresh_cluster.nodes:
        if node.alive:
            with node.client(decode_responses=True) as r:
                assert r.cluster("info")["cluster_state"] == "ok", fresh_cluster.describe()
    assert fresh_cluster.master_for_key(key).port == replica.port
    with new_master.client() as r:
        assert r.get(key) == b"kept"
    with fresh_cluster.client() as rc:  # its first seed may be the dead master
        assert rc.get(key) == b"kept"
        rc.set(key, "written after")
        assert rc.get(key) == b"written after"

    started = time.monotonic()
    back = fresh_cluster.restart(master)
    report("cluster restart of the killed master (until it is a synced replica)", time.monotonic() - started)
    assert (back.role, back.master_id) == ("replica", new_master.node_id), fresh_cluster.describe()
    with back.client() as r:
        r.execute_command("READONLY")  # a replica answers for its master's slots
        assert r.get(key) == b"written after"


# ---------------------------------------------------------------------------------------- sentinel


def test_sentinel_names_the_master(redis_sentinel: SentinelTopology, sentinel_url: str) -> None:
    report("sentinel bring-up (master + replica + 3 sentinels)", redis_sentinel.startup_seconds)
    ports = ",".join(f"127.0.0.1:{p}" for p in redis_sentinel.sentinel_ports)
    assert sentinel_url == f"redis+sentinel://{ports}/mymaster"
    master = redis_sentinel.master()
    sentinel = redis_sentinel.sentinel()
    assert sentinel.discover_master("mymaster") == ("127.0.0.1", master.port)
    assert len(sentinel.discover_slaves("mymaster")) == 1
    client = sentinel.master_for("mymaster", decode_responses=True)
    try:
        client.set("k", "v")
        assert client.get("k") == "v"
        assert client.info("replication")["role"] == "master"
    finally:
        client.close()


def test_sentinel_promotes_the_replica_when_the_master_dies(fresh_sentinel: SentinelTopology) -> None:
    report("sentinel bring-up (fresh)", fresh_sentinel.startup_seconds)
    sentinel = fresh_sentinel.sentinel()
    old = fresh_sentinel.master()
    client = sentinel.master_for("mymaster", decode_responses=True)
    try:
        client.set("written-before", "kept")
        assert client.wait(1, 5000) == 1, "the replica did not acknowledge the write"
    finally:
        client.close()

    started = time.monotonic()
    assert fresh_sentinel.kill_master().port == old.port
    new = fresh_sentinel.wait_failover()
    report("sentinel failover (kill -> every sentinel names the promoted replica)",
           time.monotonic() - started)

    assert new.port != old.port
    assert sentinel.discover_master("mymaster") == ("127.0.0.1", new.port)
    client = sentinel.master_for("mymaster", decode_responses=True)
    try:
        assert client.get("written-before") == "kept"
        client.set("written-after", "ok")
        assert client.info("replication")["role"] == "master"
    finally:
        client.close()
