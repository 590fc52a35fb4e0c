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
