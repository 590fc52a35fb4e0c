from __future__ import annotations

import json

import pytest

from dcm_sync import MessageTooLargeError
from dcm_sync.envelopes import EnvelopeError, decode_envelope, encode_envelope, envelope_prefix
from dcm_sync.messages import encode_message, validate_id


def test_message_is_compact_json_and_str_as_is() -> None:
    assert encode_message({"a": [1, 2], "b": "é"}, 1000) == '{"a":[1,2],"b":"é"}'
    assert encode_message("plain text", 1000) == "plain text"


def test_message_not_serializable_is_type_error() -> None:
    with pytest.raises(TypeError):
        encode_message({"when": object()}, 1000)
    with pytest.raises(TypeError):
        encode_message({"x": float("nan")}, 1000)


def test_message_size_counts_utf8_bytes() -> None:
    encode_message("é" * 50, 100)
    with pytest.raises(MessageTooLargeError):
        encode_message("é" * 51, 100)


def test_envelope_round_trip() -> None:
    data = encode_envelope("room", "srv-1", r="lobby", m='{"x":1}', x=["c1"])
    env = decode_envelope(data)
    assert (env.kind, env.origin) == ("room", "srv-1")
    assert env.fields["r"] == "lobby" and env.fields["x"] == ["c1"]
    assert json.loads(data)["v"] == 1


@pytest.mark.parametrize("data", [
    b"", b"not json", b"\xff\xfe", b"[]", b'"str"', b"{}",
    b'{"v":2,"k":"room","o":"a","id":"1","r":"x","m":"y","x":[]}',
    b'{"v":true,"k":"touch","o":"a","id":"1","c":"x"}',
    b'{"v":1.0,"k":"touch","o":"a","id":"1","c":"x"}',
    b'{"v":"1","k":"touch","o":"a","id":"1","c":"x"}',
    b'{"v":1,"k":"nope","o":"a","id":"1"}',
    b'{"v":1,"k":"room","o":"a","id":"1","r":"x","m":"y"}',
    b'{"v":1,"k":"room","o":"a","id":"1","r":"x","m":"y","x":[1]}',
    b'{"v":1,"k":"direct","o":1,"id":"1","c":"x","m":"y"}',
    b'{"v":1,"k":"direct","o":"a","id":"1","c":5,"m":"y"}',
    b"[" * 100000,
])
def test_malformed_envelopes_raise_envelope_error(data: bytes) -> None:
    with pytest.raises(EnvelopeError):
        decode_envelope(data)


@pytest.mark.parametrize("bad,exc", [(None, TypeError), (5, TypeError), (b"x", TypeError),
                                     ("", ValueError), ("x" * 257, ValueError)])
def test_validate_id(bad: object, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        validate_id(bad, "room_id")
    assert validate_id("x" * 256, "room_id") == "x" * 256


@pytest.mark.parametrize("origin", ["a:1:2:ff", "sérveur \"quoted\" \\ x"])
def test_envelope_prefix_matches_own_envelopes_only(origin: str) -> None:
    prefix = envelope_prefix("room", origin)
    assert encode_envelope("room", origin, r="r", m="hi", x=[]).startswith(prefix)
    assert not encode_envelope("room", origin + "x", r="r", m="hi", x=[]).startswith(prefix)
    assert not encode_envelope("direct", origin, c="c", m="hi").startswith(prefix)
    assert decode_envelope(encode_envelope("room", origin, r="r", m="hi", x=[])).origin == origin
