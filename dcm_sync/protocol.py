"""The frames a recoverable connection gets (routes with ``recovery=True``): the app's messages
wrapped with what resuming needs. ``docs/protocol.md`` is the description for client writers;
this module is the one place that makes them.

    {"dcm": 1, "t": "hello", "id": ID, "token": TOKEN}             first, on a new connection
    {"dcm": 1, "t": "hello", "id": ID, "token": TOKEN, "recovered": B}   first, on a resume
    {"t": "r", "r": ROOM, "e": EPOCH, "o": OFFSET, "d": TEXT}      a history room's message
    {"t": "r", "r": ROOM, "d": TEXT}                               another room message/notice
    {"t": "d", "n": N, "d": TEXT}                                   a direct message (numbered
                                                                    when kept in the mailbox)
    {"t": "j", "r": ROOM, "e": EPOCH, "o": OFFSET}                  joined a history room: its
                                                                    position at the join

TEXT is the message as a route without recovery would send it (JSON for a dict or list).
"""

from __future__ import annotations

import json

from .history import Position

__all__ = ["VERSION", "hello", "room_frame", "direct_frame", "joined_frame"]

VERSION = 1

_str = json.JSONEncoder(ensure_ascii=False).encode  # a JSON string literal


def hello(connection_id: str, token: str, recovered: bool | None = None) -> str:
    tail = "" if recovered is None else f',"recovered":{"true" if recovered else "false"}'
    return (f'{{"dcm":{VERSION},"t":"hello","id":{_str(connection_id)},'
            f'"token":{_str(token)}{tail}}}')


def room_frame(room: str, text: str, position: Position | None) -> str:
    if position is None:
        return f'{{"t":"r","r":{_str(room)},"d":{_str(text)}}}'
    return (f'{{"t":"r","r":{_str(room)},"e":{_str(position.epoch)},"o":{position.offset},'
            f'"d":{_str(text)}}}')


def direct_frame(text: str, number: int | None) -> str:
    if number is None:
        return f'{{"t":"d","d":{_str(text)}}}'
    return f'{{"t":"d","n":{number},"d":{_str(text)}}}'


def joined_frame(room: str, position: Position) -> str:
    return (f'{{"t":"j","r":{_str(room)},"e":{_str(position.epoch)},'
            f'"o":{position.offset}}}')
