"""Signed envelopes (Config.signing_keys): servers with a shared key talk, anything else is
dropped, counted and never delivered; keys rotate without downtime."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import dcm_sync.dispatch
from dcm_sync import Config, ConfigError, DistributedConnectionManager, Emitter
from dcm_sync.backends.base import Subscription
from dcm_sync.backends.redis_keys import KeyLayout
from dcm_sync.envelopes import RoomMessage, decode_envelope, encode_envelope
from dcm_sync.signing import SIGNED_HEADER_LENGTH, EnvelopeError, EnvelopeSigner, SignatureError
from testkit.polling import wait_until
from testkit.recording import connect
from testkit.redis_server import RedisServer
from tests.helpers.managers import Managers

Make = Callable[..., DistributedConnectionManager]

K1 = "first-secret-key-0123456789"
K2 = b"second-secret-key-\x00\xff-0123"
K3 = "a-key-nobody-else-has-0123456"

pytestmark = pytest.mark.timeout(60)


# ----------------------------------------------------------------- the envelope format
def test_signed_envelope_round_trip_and_header() -> None:
    signer = EnvelopeSigner([K1], "app:")
    body = encode_envelope("direct", "srv", c="c1", m="hi")
    data = signer.sign(body)
    assert data.startswith(b"S1.") and data[SIGNED_HEADER_LENGTH - 1:SIGNED_HEADER_LENGTH] == b"."
    assert data[SIGNED_HEADER_LENGTH:] == body and len(data) == len(body) + 47
    assert signer.open(data) == body
    assert decode_envelope(data, signer).fields["m"] == "hi"
    assert decode_envelope(data.decode(), signer).fields["m"] == "hi"
    # a server with signing off takes a signed envelope without checking it
    assert decode_envelope(data).fields["m"] == "hi"
    assert decode_envelope(data.decode()).fields["m"] == "hi"


def test_signature_binds_key_prefix_and_body() -> None:
    body = encode_envelope("direct", "srv", c="c1", m="hi")
    data = EnvelopeSigner([K1], "app:").sign(body)
    with pytest.raises(SignatureError, match="bad signature"):
        EnvelopeSigner([K1], "other:").open(data)  # another deployment
    with pytest.raises(SignatureError, match="bad signature"):
        EnvelopeSigner([K3], "app:").open(data)  # another key
    tampered = data.replace(b'"hi"', b'"ho"')
    with pytest.raises(SignatureError, match="bad signature"):
        EnvelopeSigner([K1], "app:").open(tampered)
    flipped = data[:10] + bytes([data[10] ^ 1]) + data[11:]
    with pytest.raises(SignatureError):
        EnvelopeSigner([K1], "app:").open(flipped)


@pytest.mark.parametrize("data,why", [
    (encode_envelope("direct", "srv", c="c1", m="hi"), "unsigned"),
    (b"S2." + b"A" * 43 + b"." + encode_envelope("direct", "srv", c="c1", m="hi"), "scheme"),
    (b"S1.short." + encode_envelope("direct", "srv", c="c1", m="hi"), "malformed"),
    (b"S1.", "malformed"),
    (b"", "unsigned"),
    ("S1.é", "malformed"),
    ("\ud800", "UTF-8"),
])
def test_signing_on_refuses_anything_not_signed(data: bytes | str, why: str) -> None:
    with pytest.raises(SignatureError, match=why):
        decode_envelope(data, EnvelopeSigner([K1], "app:"))


def test_rotation_first_key_signs_every_key_verifies() -> None:
    old, both_new_first, both_old_first = (EnvelopeSigner([K1], "p:"), EnvelopeSigner([K2, K1], "p:"),
                                           EnvelopeSigner([K1, K2], "p:"))
    body = encode_envelope("touch", "s", c="c")
    for signer in (old, both_old_first, both_new_first):
        assert both_new_first.open(signer.sign(body)) == body
        assert both_old_first.open(signer.sign(body)) == body
    assert old.open(both_old_first.sign(body)) == body
    with pytest.raises(SignatureError):
        old.open(both_new_first.sign(body))  # signed with K2 only


def test_signature_error_is_an_envelope_error() -> None:
    assert issubclass(SignatureError, EnvelopeError)


# ----------------------------------------------------------------- configuration
def test_config_signing_keys_accepts_str_and_bytes_and_hides_them() -> None:
    cfg = Config(signing_keys=[K1, bytearray(K2)])
    assert cfg.signing_keys == (K1, K2)
    assert Config().signing_keys == ()
    assert K1 not in repr(cfg) and "signing_keys" not in repr(cfg)
    assert hash(cfg) == hash(Config(signing_keys=(K1, K2)))  # still a hashable value
    assert cfg.replace(signing_keys=[K3]).signing_keys == (K3,)


@pytest.mark.parametrize("keys,match", [
    (["short"], r"signing_keys\[0\]: a signing key must be at least 16 bytes"),
    ([K1, "x" * 15], r"signing_keys\[1\]"),
    ([K1, 12345678901234567890], r"must be str or bytes"),
    (K1, "list or tuple"),
    (K1.encode(), "list or tuple"),
    ({K1}, "list or tuple"),
    (None, "list or tuple"),
])
def test_config_rejects_bad_signing_keys_without_echoing_them(keys: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        Config(signing_keys=keys)
    assert K1 not in str(info.value)


def test_signing_keys_from_environment_and_mappings() -> None:
    env = {"DCM_SIGNING_KEYS": f" {K1} , {K3},, "}
    assert Config.from_env(env).signing_keys == (K1, K3)
    assert Config.from_env({"DCM_SIGNING_KEYS": ""}).signing_keys == ()
    assert Config.from_env({}).signing_keys == ()
    assert Config.from_mapping({"signing_keys": f"{K1},{K3}"}).signing_keys == (K1, K3)
    assert Config.from_mapping({"signing_keys": [K3]}).signing_keys == (K3,)  # Flask config list
    with pytest.raises(ConfigError, match="at least 16 bytes"):
        Config.from_env({"DCM_SIGNING_KEYS": f"{K1},tooshort"})


# ----------------------------------------------------------------- managers
def bus_sniffer(mgr: DistributedConnectionManager, *channels: str) -> Subscription:
    sub = mgr._backend.subscription()
    confirmations = sub.subscribe(channels)
    deadline = time.monotonic() + 5
    while not all(c.wait(0) for c in confirmations):  # confirmations arrive as replies are read
        assert time.monotonic() < deadline, "subscription not confirmed"
        assert sub.get_message(0.05) is None
    return sub


def drain(sub: Subscription) -> list[tuple[str, bytes]]:
    out = []
    while (item := sub.get_message(0.2)) is not None:
        out.append(item)
    return out


def test_managers_sharing_a_key_talk_and_sign_everything(make_manager: Make) -> None:
    a, b = make_manager(signing_keys=[K1]), make_manager(signing_keys=(K1,))
    received: list[tuple[str, Any]] = []
    b.on_server_message(lambda origin, msg: received.append((origin, msg)))
    ca, wa = connect(a, "alice", "r")
    cb, wb = connect(b, "bob", "r")
    sniff = bus_sniffer(a, "room:r", "room:s", f"server:{b.server_id}")
    try:
        a.broadcast_to_room("r", {"n": 1})
        assert a.send_to_connection(cb, {"n": 2})
        assert a.send_to_server(b.server_id, {"op": "reload"})
        a.join_room(cb, "s")  # routed to b, which joins locally and subscribes
        a.touch(cb)
        # b's server channel is read in order: once this arrives, b has sent its subscription
        # to room s (in Cluster over another shard's connection, made on the spot)
        assert a.send_to_server(b.server_id, {"op": "sync"})
        wait_until(lambda: len(wb.frames) == 2 and len(received) == 2)
        a.broadcast_to_room("s", {"to": "s"})
        wait_until(lambda: {"to": "s"} in wb.messages())
        a.leave_room(cb, "s")
        wait_until(lambda: "s" not in b.local.get(cb).rooms)  # type: ignore[union-attr]
        b.remove_connection(ca)  # routed to a (disconnect); bob is told in room r
        wait_until(lambda: wb.of_type("user-disconnected") and wa.closed)
        seen = drain(sniff)
    finally:
        sniff.close()
    assert wb.messages()[:3] == [{"n": 1}, {"n": 2}, {"to": "s"}]
    # besides bob's join notice (signed like everything else; it may come before or after)
    assert [m for m in wa.messages() if m.get("type") != "user-joined"] == [{"n": 1}]
    assert received == [(a.server_id, {"op": "reload"}), (a.server_id, {"op": "sync"})]
    kinds = {decode_envelope(data, EnvelopeSigner([K1], a.config.key_prefix)).kind for _, data in seen}
    assert {"room", "direct", "server", "join", "leave", "touch"} <= kinds
    assert all(data.startswith(b"S1.") for _, data in seen)
    for mgr in (a, b):
        assert mgr.metrics()["envelopes_dropped"] == 0 and mgr.metrics()["signature_failures"] == 0


def test_own_room_broadcasts_skipped_by_prefix_with_signing_on(
        make_manager: Make, monkeypatch: pytest.MonkeyPatch) -> None:
    a = make_manager(signing_keys=[K1])
    _, wa = connect(a, "alice", "r")
    own = a._envelope(RoomMessage("r", "echo"))
    decoded: list[bytes] = []
    real = dcm_sync.dispatch.decode_body
    monkeypatch.setattr(dcm_sync.dispatch, "decode_body",
                        lambda data, signer=None: decoded.append(data) or real(data, signer))
    a._dispatch("room:r", own)
    assert decoded == [] and wa.frames == []  # dropped by prefix, never decoded
    a.broadcast_to_room("r", "once")
    assert wa.frames == ["once"]
    assert a.metrics()["envelopes_dropped"] == 0


def test_a_server_with_another_key_drops_and_counts(make_manager: Make) -> None:
    a, b = make_manager(signing_keys=[K1]), make_manager(signing_keys=[K3])
    received: list[Any] = []
    b.on_server_message(lambda origin, msg: received.append(msg))
    connect(a, "alice", "r")
    cb, wb = connect(b, "bob", "r")
    a.broadcast_to_room("r", "1")
    assert a.send_to_connection(cb, "2") is True  # routed: b exists, but b will drop it
    assert a.send_to_server(b.server_id, "3") is True
    wait_until(lambda: b.metrics()["signature_failures"] == 3)
    assert b.metrics()["envelopes_dropped"] == 3
    assert wb.frames == [] and received == []
    assert b.is_ready()


def test_key_rotation_both_directions(make_manager: Make) -> None:
    # a already signs with the new key K2; b still signs with K1; both verify both
    a = make_manager(signing_keys=[K2, K1], room_notices="off")
    b = make_manager(signing_keys=[K1, K2], room_notices="off")
    ca, wa = connect(a, "alice", "r")
    cb, wb = connect(b, "bob", "r")
    a.broadcast_to_room("r", "from a")
    b.broadcast_to_room("r", "from b")
    assert a.send_to_connection(cb, "a->b") and b.send_to_connection(ca, "b->a")
    wait_until(lambda: len(wa.frames) == 3 and len(wb.frames) == 3)
    assert sorted(wa.frames) == ["b->a", "from a", "from b"]
    assert sorted(wb.frames) == ["a->b", "from a", "from b"]
    # last step of the rotation: b drops K1 and signs with K2; a server left on K1 alone is cut off
    c = make_manager(signing_keys=[K2], room_notices="off")
    old = make_manager(signing_keys=[K1], room_notices="off")
    cc, wc = connect(c, "carol", "r")
    _, wo = connect(old, "olga", "r")
    a.broadcast_to_room("r", "after")
    wait_until(lambda: "after" in wc.frames and old.metrics()["signature_failures"] >= 1)
    assert "after" not in wo.frames
    for mgr in (a, b, c):
        assert mgr.metrics()["envelopes_dropped"] == 0


def test_signing_server_drops_unsigned_non_signing_server_accepts_signed(make_manager: Make) -> None:
    signing = make_manager(signing_keys=[K1], room_notices="off")
    plain = make_manager(room_notices="off")
    _, ws = connect(signing, "s", "r")
    _, wp = connect(plain, "p", "r")
    signing.broadcast_to_room("r", "signed")
    plain.broadcast_to_room("r", "plain")
    wait_until(lambda: "signed" in wp.frames and signing.metrics()["signature_failures"] == 1)
    assert ws.frames == ["signed"] and sorted(wp.frames) == ["plain", "signed"]
    assert plain.metrics()["envelopes_dropped"] == 0


def test_emitter_signs_with_the_first_key(make_manager: Make, backend_url: str, prefix: str) -> None:
    a = make_manager(signing_keys=[K1, K2])
    cid, wa = connect(a, "alice", "r")
    with Emitter(backend_url, key_prefix=prefix, signing_keys=[K2]) as em:
        em.broadcast_to_room("r", "room")
        assert em.send_to_connection(cid, "direct")
    with Emitter(backend_url, key_prefix=prefix) as unsigned:
        unsigned.broadcast_to_room("r", "unsigned")
    wait_until(lambda: len(wa.frames) == 2 and a.metrics()["signature_failures"] == 1)
    assert sorted(wa.frames) == ["direct", "room"]
    with pytest.raises(ConfigError):
        Emitter(backend_url, key_prefix=prefix, signing_keys=["short"])


# ----------------------------------------------------------------- raw bytes on a real Redis
@pytest.fixture
def redis_managers(redis_server: RedisServer, prefix: str) -> Iterator[Managers]:
    managers = Managers(prefix, redis_url=redis_server.url)
    yield managers
    managers.shutdown_all()


def test_raw_publishes_on_redis_are_dropped_unless_validly_signed(
        redis_managers: Managers, redis_server: RedisServer, prefix: str) -> None:
    b = redis_managers(signing_keys=[K1])
    received: list[Any] = []
    b.on_server_message(lambda origin, msg: received.append(msg))
    cb, wb = connect(b, "bob", "r")
    good = EnvelopeSigner([K1], prefix)
    room = encode_envelope("room", "intruder", r="r", m="room", x=[])
    direct = encode_envelope("direct", "intruder", c=cb, m="direct")
    server = encode_envelope("server", "intruder", p="control")
    to_b = f"server:{b.server_id}"
    bad: list[tuple[str, bytes, bool]] = []  # (channel, data, a signature failure?)
    for channel, body in (("room:r", room), (to_b, direct), (to_b, server)):
        assert body.startswith(b'{"v":1,')
        bad += [
            (channel, body, True),                                          # unsigned
            (channel, EnvelopeSigner([K3], prefix).sign(body), True),       # wrong key
            (channel, EnvelopeSigner([K1], "other:").sign(body), True),     # another deployment
            (channel, b"S2." + good.sign(body)[3:], True),                  # unknown scheme
            (channel, good.sign(body)[:SIGNED_HEADER_LENGTH - 1] + b"x" + body, True),
            (channel, good.sign(b'{"v":2,' + body[7:]), False),             # signed, other version
        ]
    bad.append((to_b, good.sign(b"not json"), False))
    r, keys = redis_server.client(), KeyLayout(prefix)
    try:
        for channel, data, _ in bad:
            r.publish(keys.channel(channel), data)
        want_dropped, want_sig = len(bad), sum(sig for _, _, sig in bad)
        wait_until(lambda: b.metrics()["envelopes_dropped"] == want_dropped)
        assert b.metrics()["signature_failures"] == want_sig
        assert wb.frames == [] and received == []
        # the same bytes, validly signed for this deployment, are delivered
        r.publish(keys.channel("room:r"), good.sign(room))
        r.publish(keys.channel(to_b), good.sign(direct))
        r.publish(keys.channel(to_b), good.sign(server))
        wait_until(lambda: len(wb.frames) == 2 and received == ["control"])
        assert wb.frames == ["room", "direct"]
        assert b.metrics()["envelopes_dropped"] == want_dropped
    finally:
        r.close()
    assert b.is_ready()
