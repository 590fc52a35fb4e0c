"""The listener (dcm_sync/listener.py): a server subscribes to a room's channel only while it
has local members there, and a quiet subscription is kept, not taken for lost."""

from __future__ import annotations

import time

from dcm_sync import Config, DistributedConnectionManager, create_distributed_connection_manager
from dcm_sync.backends.redis_keys import KeyLayout
from testkit.polling import wait_until
from testkit.recording import RecordingSocket
from testkit.redis_server import RedisServer
from tests.helpers.managers import STEADY


def test_room_channel_subscribed_only_with_local_members(
        redis_server: RedisServer, prefix: str, redis_pair: list[DistributedConnectionManager]) -> None:
    a, b = redis_pair
    r = redis_server.client()

    def channels() -> set[str]:
        return {c.decode() for c in r.pubsub_channels(prefix + "*")}

    layout = KeyLayout(prefix)
    base = {layout.channel(f"server:{a.server_id}"), layout.channel(f"server:{b.server_id}")}
    assert channels() == base
    c1 = a.register_connection(RecordingSocket(), "u1")
    c2 = a.register_connection(RecordingSocket(), "u2")
    a.join_room(c1, "r")
    assert channels() == base | {layout.channel("room:r")}  # confirmed before join_room returned
    a.join_room(c2, "r")
    a.leave_room(c1, "r")
    assert channels() == base | {layout.channel("room:r")}
    a.remove_connection(c2)
    wait_until(lambda: channels() == base)
    assert r.pubsub_numsub(layout.channel("room:r")) == [(layout.channel("room:r").encode(), 0)]


def test_an_idle_listener_keeps_its_subscription(redis_server: RedisServer, prefix: str) -> None:
    # nothing published for several times the connections' socket timeout (redis_timeout/2):
    # the subscription is not taken for lost (redis-py before 8.0 ends a read that was to
    # wait for ever after socket_timeout), and what comes after the quiet spell arrives
    made = [create_distributed_connection_manager(None, Config(
        redis_url=redis_server.url, key_prefix=prefix, redis_timeout=0.4, room_notices="off",
        **STEADY))
        for _ in range(2)]
    try:
        a, b = made
        wa, wb = RecordingSocket(), RecordingSocket()
        a.join_room(a.register_connection(wa, "alice"), "r")
        b.join_room(b.register_connection(wb, "bob"), "r")
        time.sleep(1.5)  # idle: the condition under test, not a wait for something to arrive
        b.broadcast_to_room("r", "after the quiet")
        wait_until(lambda: wa.frames == ["after the quiet"])
        assert a.metrics()["reconnects"] == 0 and b.metrics()["reconnects"] == 0
    finally:
        for m in made:
            m.shutdown()
