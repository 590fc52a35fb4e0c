"""dcm-sync on a real Redis Cluster (3 masters, 3 replicas; dcm_sync/backends/redis_cluster.py),
on loopback: sharded pub/sub, the key layout over the shards, a shard's master killed, a slot
moved under a subscribed room, a confined ACL user, outages of some or every node.

The core flows (broadcast, direct, failure cleanup, stats) run on both topologies through the
``backend_url`` parametrization in tests/conftest.py.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

import pytest

from dcm_sync import Emitter
from dcm_sync.backends.redis_keys import KeyLayout, server_tag
from testkit.polling import seconds_until, wait_until
from testkit.recording import RecordingSocket, connect, settle
from testkit.redis_server import free_port
from testkit.topologies import ClusterTopology
from tests.helpers.acl import EXACT
from tests.helpers.managers import SLOW, Managers, counts, delivered, pair

pytestmark = pytest.mark.topology

# --------------------------------------------------------------------------- Cluster
def test_cluster_uses_sharded_pubsub_and_spreads_keys(
        redis_cluster: ClusterTopology, prefix: str, managers_on: Callable[..., Managers]) -> None:
    make = managers_on(redis_cluster.url)
    servers = [make() for _ in range(3)]
    keys = KeyLayout(prefix)
    conns = []
    for i, mgr in enumerate(servers):
        for j in range(4):
            sock = RecordingSocket()
            cid = mgr.register_connection(sock, f"user-{i}-{j}")
            assert cid.startswith(server_tag(mgr.server_id)) and len(cid) == 19
            for r in range(10):
                mgr.join_room(cid, f"room-{r}")
            conns.append((mgr, cid, sock))
    # every server's record, connection sets and its connections' buckets are on one master
    shards = redis_cluster.slot_map()
    for mgr in servers:
        home = redis_cluster.master_port_for(keys.server(mgr.server_id), shards)
        for other in (*keys.server_connection_sets(mgr.server_id),
                      keys.channel(f"server:{mgr.server_id}"),
                      *(keys.connection(c) for m, c, _ in conns if m is mgr)):
            assert redis_cluster.master_port_for(other, shards) == home
    # rooms (and with them the keys) are spread over all three masters
    holders = {redis_cluster.master_port_for(keys.room(f"room-{r}"), shards) for r in range(10)}
    assert len(holders) == 3
    for master in redis_cluster.masters():
        with master.client() as r:
            assert r.dbsize() > 0
            # the room channels are shard channels, never classic ones
            assert r.pubsub_channels(f"{prefix}*") == []
    room_channel = keys.channel("room:room-3")
    owner = redis_cluster.master_for_key(room_channel)
    with owner.client() as r:
        assert r.execute_command("PUBSUB", "SHARDNUMSUB", room_channel)[1] == 3
    # a broadcast reaches all 12 members, across the 3 servers
    servers[0].broadcast_to_room("room-3", "hello")
    wait_until(lambda: all("hello" in " ".join(s.frames) for _, _, s in conns), 10,
               "every member got the broadcast")
    assert counts(servers[1]) == (12, 10, 3)


def test_cluster_master_killed_delivery_and_state_recover(
        fresh_cluster: ClusterTopology, prefix: str, managers_on: Callable[..., Managers]) -> None:
    room = "lobby"
    a, b, sa, sb, ca, cb = pair(managers_on(fresh_cluster.url, **SLOW), room)
    keys = KeyLayout(prefix)
    # the master holding b's server slot: its record, its connections, its channel
    victim = fresh_cluster.master_for_key(keys.server(b.server_id))
    n = itertools.count(1)
    assert delivered(a, room, cb, sb, next(n))
    fresh_cluster.kill(victim)
    new_master = fresh_cluster.wait_failover(victim)
    assert new_master.port != victim.port
    took = seconds_until(lambda: delivered(a, room, cb, sb, next(n)), 30,
                         "broadcast and direct message reach bob after the failover")
    print(f"cluster failover: delivery back {took:.2f}s after the new master took over")

    wait_until(lambda: counts(a) == (2, 1, 2), 15,
               "stats count both connections, the room and both servers")
    assert fresh_cluster.master_for_key(keys.connection(cb)).port == new_master.port
    # and the cluster keeps working: a new connection on b joins the room and hears alice
    sc = RecordingSocket()
    cc = b.register_connection(sc, "carol")
    b.join_room(cc, room)
    a.broadcast_to_room(room, "after")
    wait_until(lambda: "after" in " ".join(sc.frames), 10, "carol hears alice")


def test_cluster_dead_server_cleaned_after_failover(
        fresh_cluster: ClusterTopology, prefix: str, managers_on: Callable[..., Managers]) -> None:
    # a TTL longer than the failover (~2.5 s): no record expires during it, so b's users are
    # announced once, when b really dies (a shorter TTL announces them during the failover too)
    make = managers_on(fresh_cluster.url, **{**SLOW, "heartbeat_interval": 0.5,
                                             "heartbeat_ttl": 6.0})
    a, b = make(), make()
    keys = KeyLayout(prefix)
    sa = RecordingSocket()
    ca = a.register_connection(sa, "alice")
    a.join_room(ca, "lobby")
    victims = [b.register_connection(RecordingSocket(), f"v{i}") for i in range(5)]
    for cid in victims:
        b.join_room(cid, "lobby")
    victim_master = fresh_cluster.master_for_key(keys.server(b.server_id))
    fresh_cluster.kill(victim_master)
    fresh_cluster.wait_failover(victim_master)
    # a's subscriptions are back (pub/sub keeps nothing for a listener that is reconnecting)
    n = itertools.count(1)
    wait_until(lambda: delivered(b, "lobby", ca, sa, next(n)), 30, "b reaches alice again")
    b.abandon()  # stops without telling anyone, like a killed process
    wait_until(lambda: a.get_distributed_stats().active_servers == 1, 20, "b found dead")

    with fresh_cluster.client() as r:  # one client for the whole poll
        def cleaned() -> bool:
            return (not any(r.hexists(keys.connection(c), c) for c in victims)
                    and {x.decode() for x in r.smembers(keys.room("lobby"))} == {ca})

        wait_until(cleaned, 20, "b's connections removed from Redis and from the room")
    wait_until(lambda: len(sa.of_type("user-disconnected")) == 5, 10,
               "alice told of the 5 departures")
    assert a.handle_server_failure(b.server_id) == 0  # another pass finds nothing to clean
    settle("lobby", [a], [sa])
    assert len(sa.of_type("user-disconnected")) == 5  # each once
    assert {n["reason"] for n in sa.of_type("user-disconnected")} == {"server-failure"}


def test_cluster_room_follows_a_moved_slot(
        fresh_cluster: ClusterTopology, prefix: str, managers_on: Callable[..., Managers]) -> None:
    a, b, sa, sb, ca, cb = pair(managers_on(fresh_cluster.url, **SLOW), "moving")
    keys = KeyLayout(prefix)
    n = itertools.count(1)
    assert delivered(a, "moving", cb, sb, next(n))
    channel = keys.channel("room:moving")
    source = fresh_cluster.master_for_key(channel)
    target = next(m for m in fresh_cluster.masters() if m.port != source.port)
    fresh_cluster.move_slot_of(channel, target)
    assert fresh_cluster.master_for_key(channel).port == target.port
    took = seconds_until(lambda: delivered(a, "moving", cb, sb, next(n)), 20,
                         "room broadcasts reach bob after the room channel's slot moved")
    print(f"slot moved: delivery back after {took:.2f}s")
    with target.client() as r:
        assert r.execute_command("PUBSUB", "SHARDNUMSUB", channel)[1] == 2




#: The README's exact command list for Cluster: the single-Redis list with sharded pub/sub
#: instead of classic pub/sub, and what redis-py needs to read the slot map.
CLUSTER_EXACT = (*(c for c in EXACT if c not in ("+publish", "+subscribe", "+unsubscribe")),
                 "+spublish", "+ssubscribe", "+sunsubscribe", "+cluster|slots",
                 "+command")


def test_cluster_acceptance_flow_as_a_confined_acl_user(
        redis_cluster: ClusterTopology, prefix: str, managers_on: Callable[..., Managers]) -> None:
    name, password = f"dcm-{prefix.rstrip(':')}", f"pw-{prefix.rstrip(':')}"
    nodes = [n for n in redis_cluster.nodes if n.alive]
    for node in nodes:  # ACL users are per node in Cluster
        with node.client() as r:
            r.execute_command("ACL", "SETUSER", name, "reset", "on", f">{password}",
                              f"~{prefix}*", f"&{prefix}*", *CLUSTER_EXACT)
    url = redis_cluster.url.replace("://", f"://{name}:{password}@", 1)
    try:
        make = managers_on(url)
        a, b = make(), make()
        ca, wa = connect(a, "alice", "lobby")
        cb, wb = connect(b, "bob", "lobby")
        a.broadcast_to_room("lobby", {"text": "hello"})
        wait_until(lambda: {"text": "hello"} in wb.messages(), 10, "bob hears alice")
        assert b.send_to_connection(ca, {"text": "direct"}) is True
        wait_until(lambda: {"text": "direct"} in wa.messages(), 10, "alice gets bob's message")
        with Emitter(url, key_prefix=prefix) as emitter:
            emitter.broadcast_to_room("lobby", {"text": "from a script"})
            assert emitter.send_to_connection(cb, {"text": "to bob"}) is True
            assert emitter.get_distributed_stats().active_servers == 2
        wait_until(lambda: {"text": "from a script"} in wa.messages()
                   and {"text": "to bob"} in wb.messages(), 10, "the emitter's messages arrive")
        b.leave_room(cb, "lobby")
        b.join_room(cb, "lobby")
        b.abandon()
        wait_until(lambda: wa.of_type("user-disconnected"), 15, "alice told bob's server died")
        a.shutdown()
        denied = []
        for node in nodes:
            with node.client() as r:
                denied += [e for e in r.acl_log() if e.get("username") == name]
        assert denied == []  # the library never needed more than the README lists
    finally:
        for node in nodes:
            with node.client() as r:
                r.execute_command("ACL", "DELUSER", name)


def test_cluster_scripts_load_on_their_own_shard_while_another_master_is_down(
        fresh_cluster: ClusterTopology, managers_on: Callable[..., Managers]) -> None:
    # No script has run on this cluster yet; one master is down (not yet noticed: the other
    # nodes mark it failed after cluster-node-timeout). A server whose keys live elsewhere must
    # start and register connections meanwhile.
    down = fresh_cluster.masters()[0]
    shards = fresh_cluster.slot_map()
    prefix = next(p for p in (f"t{i}:" for i in range(1000))
                  if fresh_cluster.master_port_for(KeyLayout(p).servers_index, shards) != down.port)
    keys = KeyLayout(prefix)
    server_id = next(s for s in (f"server-{i}" for i in range(1000))
                     if fresh_cluster.master_port_for(keys.server(s), shards) != down.port)
    user = next(u for u in (f"alice-{i}" for i in range(1000))  # the index by user too
                if fresh_cluster.master_port_for(keys.user(u), shards) != down.port)
    fresh_cluster.kill(down)
    a = managers_on(fresh_cluster.url, key_prefix=prefix, **SLOW)(server_id=server_id)
    cid = a.register_connection(RecordingSocket(), user)
    assert a.send_to_connection(cid, "hi") is True
    # then the whole cluster refuses commands (CLUSTERDOWN) until the replica takes over;
    # afterwards a's state is in place (written back if its record expired meanwhile)
    fresh_cluster.wait_failover(down)

    def present() -> bool:
        with fresh_cluster.master_for_key(keys.server(server_id)).client() as r:
            return bool(r.exists(keys.server(server_id)) and r.hexists(keys.connection(cid), cid))

    wait_until(present, 15, "a's record and connection on their shard")


def test_cluster_seeds_may_include_unreachable_nodes(
        redis_cluster: ClusterTopology, prefix: str, managers_on: Callable[..., Managers]) -> None:
    dead_seed = f"127.0.0.1:{free_port()}"  # nothing listens there
    url = redis_cluster.url.replace("://", f"://{dead_seed},", 1)
    a = managers_on(url)()
    cid, ws = connect(a, "alice", "lobby")
    with Emitter(url, key_prefix=prefix) as emitter:
        emitter.broadcast_to_room("lobby", {"text": "from a script"})
        assert emitter.get_distributed_stats().total_connections == 1
    wait_until(lambda: {"text": "from a script"} in ws.messages(), 10, "alice gets it")


def test_cluster_whole_outage_then_back(
        fresh_cluster: ClusterTopology, prefix: str, managers_on: Callable[..., Managers]) -> None:
    # every node down: the listener's rebuilds fail (no slot map can be read) and go on failing
    # until the cluster is back, empty; then both servers write themselves back
    a, b, sa, sb, ca, cb = pair(managers_on(fresh_cluster.url, **SLOW), "lobby")
    n = itertools.count(1)
    assert delivered(a, "lobby", cb, sb, next(n))
    for node in fresh_cluster.nodes:
        fresh_cluster.kill(node)
    time.sleep(2.0)  # several failed reconnect attempts
    fresh_cluster.restart_all()
    wait_until(lambda: delivered(a, "lobby", cb, sb, next(n)), 30,
               "delivery both ways after the whole cluster came back")
    wait_until(lambda: counts(a) == (2, 1, 2), 15, "both servers wrote their state back")
    assert a._listener.worker is not None and a._listener.worker.is_alive()
