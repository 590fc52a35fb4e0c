"""flask_ext.deflate with plain bytes: what the server agrees on for each offer a client can make
(RFC 7692 7), and the compressed messages both ways, read back with a fresh zlib."""

from __future__ import annotations

import os
import zlib

import pytest

from flask_ext.deflate import TAIL, Agreement, Inflater, TooBig, deflate, negotiate

BOTH = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"


@pytest.mark.parametrize(("offer", "answer"), [
    ("permessage-deflate", BOTH),
    ("permessage-deflate; client_max_window_bits", BOTH),  # Chromium's and Firefox's offer
    ("permessage-deflate; client_max_window_bits=12", BOTH),
    ("permessage-deflate; server_no_context_takeover; client_no_context_takeover", BOTH),
    ("Permessage-Deflate; Server_Max_Window_Bits=10", BOTH + "; server_max_window_bits=10"),
    ('permessage-deflate; server_max_window_bits="9"', BOTH + "; server_max_window_bits=9"),
    # the first offer the server can take
    ("permessage-deflate; server_max_window_bits=8, permessage-deflate", BOTH),
    ("x-webkit-deflate-frame, permessage-deflate; client_max_window_bits", BOTH),
])
def test_offers_the_server_takes(offer: str, answer: str) -> None:
    agreed = negotiate(offer)
    assert agreed is not None and agreed.header == answer


@pytest.mark.parametrize("offer", [
    None, "", "x-webkit-deflate-frame", "permessage-deflated",
    "permessage-deflate; server_max_window_bits=8",      # zlib cannot make a 256-byte window
    "permessage-deflate; server_max_window_bits",         # needs a value
    "permessage-deflate; server_max_window_bits=16",
    "permessage-deflate; client_max_window_bits=7",
    "permessage-deflate; client_max_window_bits=abc",     # wsproto's accept raises on this
    "permessage-deflate; server_max_window_bits=0x0f",
    "permessage-deflate; server_max_window_bits=999999999999999999999",
    "permessage-deflate; server_no_context_takeover=1",   # takes no value
    "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
    "permessage-deflate; mystery_parameter",
])
def test_offers_the_server_declines(offer: str | None) -> None:
    assert negotiate(offer) is None


def test_agreements_on_the_same_window_share_an_encoding() -> None:
    assert Agreement(15).encoding == negotiate("permessage-deflate").encoding  # type: ignore[union-attr]
    assert Agreement(10).encoding != Agreement(15).encoding


@pytest.mark.parametrize("bits", [9, 12, 15])
def test_each_message_is_read_by_a_fresh_inflater(bits: int) -> None:
    # no context takeover: the second message does not depend on the first, though they share
    # the process's compressor (a client with no window from before reads it)
    texts = [os.urandom(40).hex().encode() * 30, b'{"type": "message", "text": "' + b"ab" * 600 + b'"}']
    for text in texts:
        data = deflate(text, bits)
        assert len(data) < len(text)
        assert zlib.decompressobj(-bits).decompress(data + TAIL) == text


def _client_deflate(payload: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return (c.compress(payload) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]


def test_inflater_reads_a_message_in_pieces() -> None:
    text = b"hello " * 5000
    data = _client_deflate(text)
    inflater = Inflater(len(text))
    out = b"".join(inflater.feed(data[at:at + 7], at + 7 >= len(data)) for at in range(0, len(data), 7))
    assert out == text


def test_inflater_stops_at_its_limit() -> None:
    bomb = _client_deflate(b"\0" * 10_000_000)  # 10 MB from about 10 KB
    assert len(bomb) < 20_000
    inflater = Inflater(1_000_000)
    with pytest.raises(TooBig):
        inflater.feed(bomb, True)
    exact = Inflater(1000)
    assert exact.feed(_client_deflate(b"a" * 1000), True) == b"a" * 1000


def test_inflater_refuses_what_is_not_deflate() -> None:
    with pytest.raises(zlib.error):
        Inflater(1000).feed(b"\xff\xff\xff\xff not deflate", True)
