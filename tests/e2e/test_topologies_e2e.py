"""examples/gevent_chat_server.py processes on a real Redis Cluster and a real Sentinel setup:
real WebSocket clients, a room message and a direct message across servers, a server killed
(its connections cleaned and its rooms told), and the coordinator's master killed under them.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from dcm_sync.backends.redis_keys import KeyLayout
from testkit.chat import ChatClient, ChatServer, is_departure, is_message, say_until_received
from testkit.topologies import ClusterTopology, SentinelTopology

pytestmark = pytest.mark.topology

Launch = Callable[..., list[ChatServer]]
Connect = Callable[[ChatServer, str], ChatClient]


@pytest.fixture(params=["cluster", "sentinel"])
def topology_url(request: pytest.FixtureRequest) -> str:
    fixture = "cluster_url" if request.param == "cluster" else "sentinel_url"
    return str(request.getfixturevalue(fixture))


def test_chat_across_servers_and_a_killed_server(topology_url: str, launch: Launch,
                                                 connect: Connect) -> None:
    a, b = launch(topology_url, count=2)
    alice, bob, carol = connect(a, "alice"), connect(b, "bob"), connect(b, "carol")
    for client in (alice, bob, carol):
        client.join("lobby")
    a.wait_stats(lambda s: s["total_connections"] == 3 and s["total_rooms"] == 1)

    alice.say("lobby", "hello", seq=1)
    for client in (alice, bob, carol):
        assert client.wait_for(is_message(1, "lobby"))["text"] == "hello"
    assert alice.direct(bob.cid, "psst") is True
    assert bob.wait_for(lambda f: f.get("type") == "direct")["text"] == "psst"

    b.kill()  # SIGKILL: only the expiring heartbeat tells
    for client in (bob, carol):
        notice = alice.wait_for(is_departure(client.cid, "lobby"), timeout=20)
        assert notice["reason"] == "server-failure"
    stats = a.wait_stats(lambda s: s["active_servers"] == 1 and s["total_connections"] == 1)
    assert stats["total_rooms"] == 1
    assert alice.direct(bob.cid, "still there?") is False


def chat_pair_through_a_failover(launch: Launch, connect: Connect, url: str,
                                 kill_master: Callable[[], None]) -> None:
    """Two servers, alice and bob in one room; ``kill_master()`` kills the coordinator's master
    (and waits for its replacement): messages, direct messages and stats come back."""
    a, b = launch(url, count=2)
    alice, bob = connect(a, "alice"), connect(b, "bob")
    alice.join("lobby")
    bob.join("lobby")
    say_until_received(alice, bob, "lobby")
    kill_master()
    say_until_received(alice, bob, "lobby", timeout=30)
    say_until_received(bob, alice, "lobby", timeout=30)
    assert alice.direct(bob.cid, "after") is True
    assert bob.wait_for(lambda f: f.get("type") == "direct" and f.get("text") == "after")
    a.wait_stats(lambda s: s["active_servers"] == 2 and s["total_connections"] == 2, timeout=20)


def test_chat_survives_the_cluster_losing_a_master(fresh_cluster: ClusterTopology, prefix: str,
                                                   launch: Launch, connect: Connect) -> None:
    def kill_lobby_master() -> None:  # the master that owns the lobby's channel
        victim = fresh_cluster.master_for_key(KeyLayout(prefix).channel("room:lobby"))
        fresh_cluster.kill(victim)
        fresh_cluster.wait_failover(victim)

    chat_pair_through_a_failover(launch, connect, fresh_cluster.url, kill_lobby_master)


def test_chat_survives_the_sentinel_master_dying(fresh_sentinel: SentinelTopology,
                                                 launch: Launch, connect: Connect) -> None:
    def kill_master() -> None:
        fresh_sentinel.kill_master()
        fresh_sentinel.wait_failover()

    chat_pair_through_a_failover(launch, connect, fresh_sentinel.url, kill_master)
