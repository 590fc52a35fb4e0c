"""WebSocket frames as the tests' and benchmarks' clients see them: a server's frames parsed
(unmasked), and a client's frames made by hand (masked, hostile ones too). Written apart from
``flask_ext.wire``, so that each checks the other."""

from __future__ import annotations

__all__ = ["masked", "parse", "raw_frames", "split"]

Frame = tuple[int, bytes]  # opcode, payload


def masked(opcode: int, payload: bytes, fin: bool = True, length: int | None = None) -> bytes:
    """A client frame with a zero mask; ``length`` may announce more than ``payload`` holds."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


def parse(buf: bytes | bytearray) -> tuple[list[Frame], int]:
    """The whole server frames at the start of ``buf``, ``(opcode, payload)`` each, and the
    number of bytes they take (the rest is a frame not yet whole)."""
    frames, at = split(buf)
    return [(first & 0x0F, payload) for first, payload in frames], at


def raw_frames(buf: bytes | bytearray) -> list[Frame]:
    """The whole server frames in ``buf``, ``(first byte, payload)`` each: the first byte
    has FIN, the reserved bits (RSV1: compressed) and the opcode."""
    return split(buf)[0]


def split(buf: bytes | bytearray) -> tuple[list[Frame], int]:
    """`parse`, with each frame's whole first byte for its opcode."""
    frames: list[Frame] = []
    at, end = 0, len(buf)
    while end - at >= 2:
        n, head = buf[at + 1] & 0x7F, 2
        if n == 126:
            n, head = int.from_bytes(buf[at + 2:at + 4], "big"), 4
        elif n == 127:
            n, head = int.from_bytes(buf[at + 2:at + 10], "big"), 10
        if end - at < head + n:
            break
        frames.append((buf[at], bytes(buf[at + head:at + head + n])))
        at += head + n
    return frames, at
