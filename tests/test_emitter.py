from __future__ import annotations

from collections.abc import Callable

import pytest

from dcm_sync import DCMError, DistributedConnectionManager, Emitter, MessageTooLargeError
from testkit.polling import wait_until
from testkit.recording import RecordingSocket


def test_emitter_reaches_rooms_and_connections(make_manager: Callable[..., DistributedConnectionManager],
                                                backend_url: str, prefix: str) -> None:
    a, b = make_manager(room_notices="off"), make_manager(room_notices="off")
    wa, wb = RecordingSocket(), RecordingSocket()
    ca = a.register_connection(wa, "alice")
    cb = b.register_connection(wb, "bob")
    a.join_room(ca, "news")
    b.join_room(cb, "news")
    with Emitter(backend_url, key_prefix=prefix) as em:
        em.broadcast_to_room("news", {"headline": "x"}, exclude=[cb])
        assert em.send_to_connection(cb, "just bob") is True
        assert em.send_to_connection("0" * 32, "nobody") is False
        stats = em.get_distributed_stats()
        assert (stats.total_connections, stats.active_servers, stats.local_connections) == (2, 2, 0)
        with pytest.raises(MessageTooLargeError):
            em.broadcast_to_room("news", "x" * (2 * 1024 * 1024))
    wait_until(lambda: wa.frames and wb.frames)
    assert wa.messages() == [{"headline": "x"}]
    assert wb.frames == ["just bob"]
    assert len(a.get_active_servers()) == 2  # the emitter registered no server
    with pytest.raises(DCMError):
        em.broadcast_to_room("news", "closed")
    em.close()


def test_rooms_largest_first_paged(make_manager: Callable[..., DistributedConnectionManager],
                                   backend_url: str, prefix: str) -> None:
    a, b = make_manager(), make_manager()
    for mgr, user, rooms in ((a, "u1", ["big", "mid", "zed"]), (b, "u2", ["big", "mid"]),
                             (a, "u3", ["big", "abc"]), (b, "u4", [])):
        cid = mgr.register_connection(RecordingSocket(), user)
        for room in rooms:
            mgr.join_room(cid, room)
    ranked = [("big", 3), ("mid", 2), ("abc", 1), ("zed", 1)]  # ties by name
    with Emitter(backend_url, key_prefix=prefix) as em:
        assert em.get_rooms() == ranked
        assert em.get_rooms(1, 2) == ranked[1:3]
        assert em.get_rooms(4) == []
        for bad in ((-1, 50), (0, 0)):
            with pytest.raises(ValueError):
                em.get_rooms(*bad)
    assert b.get_rooms(limit=1) == ranked[:1]
    cid = a.get_room_members("zed")[0].connection_id
    a.leave_room(cid, "zed")  # an emptied room is gone from the list
    assert a.get_rooms() == ranked[:3]
