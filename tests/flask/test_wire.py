"""flask_ext.wire with plain bytes: every inbound limit, fragments, control frames, close frames,
the drop action, and the server's frames against RFC 6455. No socket: the decoder is sans-IO."""

from __future__ import annotations

import os
import struct
import zlib
from typing import Any

import pytest
import websocket

from flask_ext.deflate import MIN_BYTES, Agreement
from flask_ext.limits import InboundLimits, Violation
from flask_ext.wire import (
    Closed,
    Inbound,
    Message,
    Reply,
    WireEvent,
    close_frame,
    close_reply,
    deflated_text_frame,
    pong_frame,
    text_frame,
)
from testkit.frames import masked, parse, raw_frames

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def mask_with(key: bytes, opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A client frame masked with ``key`` (the helpers' frames use a zero key)."""
    frame = masked(opcode, b"", fin, length=len(payload))[:-4]
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return frame + key + body


def events(inbound: Inbound, data: bytes, step: int | None = None) -> list[WireEvent]:
    """Feed ``data`` (``step`` bytes at a time, all at once by default) and collect the events."""
    out: list[WireEvent] = []
    step = step or len(data) or 1
    for at in range(0, len(data), step):
        inbound.feed(data[at:at + step])
        while (event := inbound.next_event()) is not None:
            out.append(event)
    return out


def refused(data: bytes, step: int | None = None, **limits: Any) -> tuple[int, str]:
    inbound = Inbound(InboundLimits(**limits))
    with pytest.raises(Violation) as err:
        events(inbound, data, step)
    return err.value.code, err.value.reason


# ---------------------------------------------------------------------------- messages


def test_text_and_binary_messages() -> None:
    inbound = Inbound(InboundLimits(binary=True))
    data = masked(TEXT, "héllo".encode()) + masked(BINARY, b"\x00\xff") + masked(TEXT, b"")
    assert events(inbound, data) == [Message("héllo"), Message(b"\x00\xff"), Message("")]
    assert inbound.idle


@pytest.mark.parametrize("length", [0, 1, 125, 126, 65535, 65536, 200_000])
def test_every_length_form_under_any_mask(length: int) -> None:
    payload = os.urandom(length)
    frame = mask_with(os.urandom(4), BINARY, payload)
    assert events(Inbound(InboundLimits(binary=True)), frame) == [Message(payload)]


def test_any_split_of_the_stream_gives_the_same_events() -> None:
    stream = (mask_with(b"\x01\x02\x03\x04", TEXT, "ça".encode(), fin=False)
              + mask_with(b"\x05\x06\x07\x08", PING, b"ping")
              + mask_with(b"\x09\x0a\x0b\x0c", CONT, " va ✓".encode(), fin=False)
              + mask_with(b"\x0d\x0e\x0f\x10", CONT, b"", fin=False)
              + mask_with(b"\x11\x12\x13\x14", CONT, b"!")
              + mask_with(b"\x15\x16\x17\x18", TEXT, b"x" * 300))
    whole = events(Inbound(InboundLimits()), stream)
    assert whole == [Reply(pong_frame(b"ping")), Message("ça va ✓!"), Message("x" * 300)]
    for step in (1, 2, 3, 5, 7, 64):
        assert events(Inbound(InboundLimits()), stream, step) == whole, step


def test_a_control_frame_between_fragments_is_answered_at_once() -> None:
    inbound = Inbound(InboundLimits())
    assert events(inbound, masked(TEXT, b"he", fin=False) + masked(PING, b"mid")) == [
        Reply(pong_frame(b"mid"))]
    assert not inbound.idle  # a message is begun
    assert events(inbound, masked(PONG, b"") + masked(CONT, b"llo")) == [Message("hello")]
    assert inbound.idle


def test_utf8_split_inside_a_character_across_fragments() -> None:
    text = "é€😀".encode()
    for cut in range(1, len(text)):
        data = masked(TEXT, text[:cut], fin=False) + masked(CONT, text[cut:])
        assert events(Inbound(InboundLimits()), data) == [Message("é€😀")], cut


def test_idle_only_between_whole_frames_and_messages() -> None:
    inbound = Inbound(InboundLimits())
    frame = masked(TEXT, b"hello")
    assert inbound.idle
    for at in range(1, len(frame)):  # a header, a masking key, a payload: each begun
        inbound = Inbound(InboundLimits())
        assert events(inbound, frame[:at]) == []
        assert not inbound.idle, at
        assert events(inbound, frame[at:]) == [Message("hello")]
        assert inbound.idle


# ---------------------------------------------------------------------------- limits


def test_a_message_over_the_size_is_refused() -> None:
    assert refused(masked(TEXT, b"x" * 101), max_message_bytes=100) == (1009, "message too big")
    assert events(Inbound(InboundLimits(max_message_bytes=100)), masked(TEXT, b"x" * 100)) == [
        Message("x" * 100)]


def test_a_huge_announced_length_is_refused_from_the_header_alone() -> None:
    header = masked(TEXT, b"", length=1 << 62)  # no payload at all
    assert refused(header) == (1009, "message too big")
    # the 8-byte length alone, before its masking key
    assert refused(header[:10]) == (1009, "message too big")


def test_fragments_count_toward_the_size_with_their_continuation_headers() -> None:
    first = masked(TEXT, b"x" * 50, fin=False)
    assert refused(first + masked(CONT, b"x" * 51), max_message_bytes=100)[0] == 1009
    # 50 bytes, then each empty continuation frame counts its 6 bytes of header
    inbound = Inbound(InboundLimits(max_message_bytes=100, rate_limit=0))
    assert events(inbound, first + masked(CONT, b"", fin=False) * 8) == []  # 50 + 48
    with pytest.raises(Violation) as err:
        events(inbound, masked(CONT, b"", fin=False))  # 104
    assert (err.value.code, err.value.reason) == (1009, "message too big")


def test_a_stream_of_empty_fragments_is_bounded() -> None:
    inbound = Inbound(InboundLimits(max_message_bytes=1 << 20, rate_limit=0))
    empty = masked(CONT, b"", fin=False)
    events(inbound, masked(TEXT, b"{", fin=False))
    with pytest.raises(Violation) as err:
        for _ in range(1000):  # bounded: 1000 x 1000 frames
            events(inbound, empty * 1000)
    assert err.value.code == 1009
    assert inbound.idle is False


@pytest.mark.parametrize("data", [
    masked(TEXT, b'{"op": "\xff\xfe"}'),
    masked(TEXT, b"ok\xed\xa0\x80"),                              # a lone surrogate
    masked(TEXT, b"\xffok", fin=False),                           # in a first fragment
    masked(TEXT, b"ok", fin=False) + masked(CONT, b"\xc3"),       # cut short at the end
    masked(TEXT, b"ok\xc3", fin=False) + masked(CONT, b"(fine"),  # not a continuation byte
])
def test_invalid_utf8_is_refused_as_soon_as_it_arrives(data: bytes) -> None:
    assert refused(data) == (1007, "invalid UTF-8")


def test_invalid_utf8_is_refused_before_the_frame_ends() -> None:
    inbound = Inbound(InboundLimits())
    frame = masked(TEXT, b"\xff" + b"x" * 1000)
    with pytest.raises(Violation) as err:
        events(inbound, frame[:10])  # the header (4 bytes), the key (4), 2 of the 1001
    assert err.value.code == 1007


def test_binary_is_refused_on_text_routes_from_the_header() -> None:
    header = masked(BINARY, b"", length=1000)[:4]  # not even its masking key
    assert refused(header) == (1003, "binary messages not accepted")
    assert refused(masked(BINARY, b"", fin=False)) == (1003, "binary messages not accepted")


@pytest.mark.parametrize("data,why", [
    (bytes([0x81, 0x02]) + b"hi", "unmasked"),
    (bytes([0xC1, 0x80]) + bytes(4), "a reserved bit"),
    (masked(0x3, b"x"), "an unknown data opcode"),
    (masked(0xB, b"x"), "an unknown control opcode"),
    (masked(PING, b"p" * 126), "a long control frame"),
    (masked(PING, b"p", fin=False), "a fragmented control frame"),
    (masked(CONT, b"x"), "a continuation without a message"),
    (masked(TEXT, b"a", fin=False) + masked(TEXT, b"b"), "a message inside a message"),
])
def test_malformed_frames_are_a_protocol_error(data: bytes, why: str) -> None:
    assert refused(data) == (1002, "protocol error"), why


def test_the_rate_limit_costs_a_token_per_data_frame_and_per_ping() -> None:
    limits = {"rate_limit": 1.0, "rate_burst": 3}
    assert refused(masked(TEXT, b"a", fin=False) + masked(CONT, b"b", fin=False)
                   + masked(CONT, b"c", fin=False) + masked(CONT, b"d"), **limits) == (1008, "rate limit")
    assert refused(masked(PING, b"") * 4, **limits) == (1008, "rate limit")
    inbound = Inbound(InboundLimits(rate_limit=1.0, rate_burst=3))
    assert events(inbound, masked(PING, b"") + masked(TEXT, b"a", fin=False) + masked(CONT, b"b")) == [
        Reply(pong_frame(b"")), Message("ab")]


def test_drop_drops_whole_messages_leaves_pings_unanswered_and_counts() -> None:
    inbound = Inbound(InboundLimits(rate_limit=1.0, rate_burst=2, rate_limit_action="drop"))
    data = (masked(TEXT, b"one", fin=False) + masked(CONT, b"!")  # two tokens: the burst
            + masked(TEXT, b"two", fin=False) + masked(CONT, b"!")  # none left: dropped whole
            + masked(PING, b"p")                                    # not answered
            + masked(TEXT, b"\xff"))                                # dropped, never decoded
    assert events(inbound, data) == [Message("one!")]
    assert inbound.dropped == 4
    assert inbound.idle


def test_a_violation_sticks() -> None:
    inbound = Inbound(InboundLimits())
    with pytest.raises(Violation):
        events(inbound, masked(TEXT, b"\xff"))
    inbound.feed(masked(TEXT, b"fine"))
    with pytest.raises(Violation):
        inbound.next_event()


# ---------------------------------------------------------------------------- close frames


@pytest.mark.parametrize("payload,answer", [
    (b"", (1000, "")),
    (b"\x03", (1002, "protocol error")),                        # half a code
    ((999).to_bytes(2, "big"), (1002, "protocol error")),
    ((1004).to_bytes(2, "big"), (1002, "protocol error")),
    ((1005).to_bytes(2, "big"), (1002, "protocol error")),      # never sent by an endpoint
    ((1006).to_bytes(2, "big"), (1002, "protocol error")),
    ((1015).to_bytes(2, "big"), (1002, "protocol error")),
    ((2999).to_bytes(2, "big"), (1002, "protocol error")),      # reserved for the protocol
    ((5000).to_bytes(2, "big"), (1002, "protocol error")),
    ((1000).to_bytes(2, "big") + b"\xff\xfe", (1007, "invalid UTF-8")),
    ((1001).to_bytes(2, "big") + "bye ✓".encode(), (1001, "")),
    ((1014).to_bytes(2, "big"), (1014, "")),
    ((3000).to_bytes(2, "big"), (3000, "")),
    ((4999).to_bytes(2, "big"), (4999, "")),
])
def test_a_clients_close_frame_is_answered_as_rfc_6455_says(payload: bytes,
                                                            answer: tuple[int, str]) -> None:
    assert close_reply(payload) == answer
    inbound = Inbound(InboundLimits())
    assert events(inbound, mask_with(b"\x0f\x0e\x0d\x0c", CLOSE, payload)) == [Closed(*answer)]


def test_nothing_is_read_after_a_close_frame() -> None:
    inbound = Inbound(InboundLimits())
    data = masked(TEXT, b"before", fin=False) + masked(CLOSE, b"") + masked(TEXT, b"after")
    assert events(inbound, data) == [Closed(1000, "")]
    inbound.feed(masked(TEXT, b"later"))
    assert inbound.next_event() is None


# ---------------------------------------------------------------------------- encoding


@pytest.mark.parametrize("length,header", [
    (0, b"\x81\x00"),
    (125, b"\x81\x7d"),
    (126, b"\x81\x7e\x00\x7e"),
    (65535, b"\x81\x7e\xff\xff"),
    (65536, b"\x81\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
])
def test_text_frames_use_the_shortest_of_the_three_length_forms(length: int, header: bytes) -> None:
    frame = text_frame("x" * length)
    assert frame == header + b"x" * length
    assert parse(frame) == ([(TEXT, b"x" * length)], len(frame))


def test_text_frames_carry_utf8_and_count_its_bytes() -> None:
    frame = text_frame("é" * 63)  # 126 bytes: the 16-bit form
    assert frame[:4] == b"\x81\x7e\x00\x7e" and frame[4:].decode() == "é" * 63


def test_close_and_pong_frames() -> None:
    assert close_frame(1000) == b"\x88\x02\x03\xe8"
    assert close_frame(1013, "slow consumer") == struct.pack("!BBH", 0x88, 15, 1013) + b"slow consumer"
    long = close_frame(4000, "é" * 100)  # 200 bytes of reason: cut to 123, on a character
    assert len(long) == 2 + 2 + 122 and long[4:].decode() == "é" * 61
    assert pong_frame(b"p" * 125) == b"\x8a\x7d" + b"p" * 125


@pytest.mark.parametrize("text", ["", "hi", "é" * 100, "x" * 125, "x" * 126, "ü" * 40_000,
                                  "z" * 70_000])
def test_text_frame_matches_rfc6455(text: str) -> None:
    # websocket-client's frame encoder, unmasked as a server sends it, is the reference
    expected = websocket.ABNF(1, 0, 0, 0, websocket.ABNF.OPCODE_TEXT, 0, text.encode()).format()
    assert text_frame(text) == expected


# ---------------------------------------------------------------------------- permessage-deflate


def client_deflate(payload: bytes) -> bytes:
    """A message as a client compresses it (RFC 7692 7.2.1: the flush's tail taken off)."""
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return (c.compress(payload) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]


RSV1 = 0x40


def deflating(**limits: Any) -> Inbound:
    return Inbound(InboundLimits(**limits), deflate=True)


def test_compressed_messages_whole_fragmented_and_mixed_with_plain_ones() -> None:
    text = "héllo wörld " * 300
    data = client_deflate(text.encode())
    third = len(data) // 3
    stream = (masked(RSV1 | TEXT, data)
              + masked(TEXT, b"plain")                                   # RSV1 clear: as it is
              + masked(RSV1 | TEXT, data[:third], fin=False)
              + masked(PING, b"p")                                       # between fragments
              + masked(CONT, data[third:2 * third], fin=False)
              + masked(CONT, b"", fin=False)
              + masked(CONT, data[2 * third:])
              + masked(RSV1 | BINARY, client_deflate(b"\x00\xff" * 500)))
    for step in (None, 1, 5):
        got = events(deflating(binary=True, rate_limit=0), stream, step)
        assert got == [Message(text), Message("plain"), Reply(pong_frame(b"p")), Message(text),
                       Message(b"\x00\xff" * 500)]


@pytest.mark.parametrize(("data", "deflate", "code"), [
    (masked(RSV1 | TEXT, client_deflate(b"hi")), False, 1002),     # not agreed
    (masked(0x20 | TEXT, b"hi"), True, 1002),                      # RSV2 is never agreed
    (masked(RSV1 | PING, b""), True, 1002),                        # control frames are not compressed
    (masked(RSV1 | TEXT, b"", fin=False) + masked(RSV1 | CONT, b""), True, 1002),
    (masked(RSV1 | TEXT, b"\xff\xff\xff not deflate"), True, 1007),
    (masked(RSV1 | TEXT, client_deflate(b"\xff\xfe")), True, 1007),  # inflates to bad UTF-8
])
def test_compressed_frames_the_server_refuses(data: bytes, deflate: bool, code: int) -> None:
    inbound = Inbound(InboundLimits(), deflate=deflate)
    with pytest.raises(Violation) as err:
        events(inbound, data)
    assert err.value.code == code


def test_a_compressed_message_never_inflates_past_the_limit() -> None:
    bomb = client_deflate(b"a" * 5_000_000)
    assert len(bomb) < 10_000
    for step in (None, 100):
        inbound = deflating(max_message_bytes=100_000)
        with pytest.raises(Violation) as err:
            events(inbound, masked(RSV1 | TEXT, bomb), step)
        assert (err.value.code, err.value.reason) == (1009, "message too big")
    # at the limit exactly it is read
    exact = "a" * 100_000
    assert events(deflating(max_message_bytes=100_000),
                  masked(RSV1 | TEXT, client_deflate(exact.encode()))) == [Message(exact)]


def test_a_dropped_compressed_message_leaves_the_stream_intact() -> None:
    inbound = deflating(rate_limit=1, rate_burst=1, rate_limit_action="drop")
    one = masked(RSV1 | TEXT, client_deflate(b"first " * 100))
    two = masked(RSV1 | TEXT, client_deflate(b"second " * 100))
    assert events(inbound, one + two) == [Message("first " * 100)]
    assert inbound.dropped == 1


def test_deflated_text_frames() -> None:
    agreed = Agreement(15)
    long_text = '{"type": "message", "text": "' + "hello " * 200 + '"}'
    frame = deflated_text_frame(long_text, agreed)
    (first, payload), = raw_frames(frame)
    assert first == 0x80 | RSV1 | TEXT
    assert len(payload) < len(long_text) // 4
    assert zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff").decode() == long_text
    short = "x" * (MIN_BYTES - 1)  # not worth compressing: a plain text frame
    assert deflated_text_frame(short, agreed) == text_frame(short)
