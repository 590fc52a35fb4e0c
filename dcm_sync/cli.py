"""The admin command line: ``python -m dcm_sync [OPTIONS] COMMAND [ARGS] [--json]``.

Commands: ``servers``, ``stats``, ``rooms`` (paged, largest first), ``room ROOM`` (its
members), ``user USER`` (the user's connections), ``kick-user USER`` and ``close-room ROOM``.
Each is one function of an `Emitter` returning an `Output` (a table for people, an object for
``--json``); `COMMANDS` describes them with their parameters, and both this module's argparse
front end and ``flask dcm`` (``flask_ext.cli``) are built from it, so there is one
implementation of each command.

Exit codes: 0 when the command ran, including an empty result (an unknown room has no members,
kicking a user with no connection closes 0: the state asked for holds); 1 when Redis failed
(unreachable, refused the credentials); 2 for bad arguments or settings, ``memory://``
included: it lives inside one process, so no other process can look at it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .config import Config
from .emitter import Emitter
from .errors import ConfigError, DCMError

__all__ = ["COMMANDS", "Command", "Param", "Output", "execute", "open_emitter", "render", "main",
           "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

NEEDS_REDIS = ("the command line needs Redis: memory:// lives inside one server process, where "
               "no other process can see it")


@dataclass(frozen=True)
class Output:
    """What a command found: ``data`` for ``--json``; for people, a table (``headings`` and
    ``cells``; ``empty`` instead of a table without rows, ``note`` under one) or ``text``."""

    data: dict[str, Any]
    headings: tuple[str, ...] = ()
    cells: tuple[tuple[str, ...], ...] = ()
    empty: str = ""
    note: str = ""
    text: str = ""


@dataclass(frozen=True)
class Param:
    """A command's parameter: positional when ``flag`` is None; ``minimum`` bounds an int."""

    name: str
    metavar: str
    help: str
    flag: str | None = None
    kind: type[int] | type[str] = str
    default: Any = None
    minimum: int | None = None


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    run: Callable[..., Output]
    params: tuple[Param, ...] = ()


def servers(em: Emitter) -> Output:
    found = em.get_distributed_stats().server_stats
    now = time.time()
    return Output(
        {"servers": [{"server_id": s.server_id, "host": s.host, "port": s.port, "pid": s.pid,
                      "last_heartbeat": s.last_heartbeat,
                      "active_connections": s.active_connections} for s in found]},
        ("SERVER ID", "HOST", "PORT", "PID", "HEARTBEAT", "CONNECTIONS"),
        tuple((s.server_id, s.host, str(s.port), str(s.pid),
               f"{max(0.0, now - s.last_heartbeat):.1f}s ago", str(s.active_connections))
              for s in found),
        empty="no live servers")


def stats(em: Emitter) -> Output:
    st = em.get_distributed_stats()
    data = {"total_connections": st.total_connections, "total_rooms": st.total_rooms,
            "active_servers": st.active_servers}
    width = max(map(len, data))
    return Output(data, text="\n".join(f"{k.replace('_', ' '):<{width}}  {v}"
                                       for k, v in data.items()))


def rooms(em: Emitter, offset: int = 0, limit: int = 50) -> Output:
    page = em.get_rooms(offset, limit + 1)  # one more than shown: is there a next page?
    more = len(page) > limit
    page = page[:limit]
    nxt = offset + limit if more else None
    return Output(
        {"rooms": [{"room_id": r, "members": n} for r, n in page], "offset": offset,
         "limit": limit, "next_offset": nxt},
        ("ROOM", "MEMBERS"), tuple((r, str(n)) for r, n in page),
        empty="no rooms" + (f" from offset {offset}" if offset else ""),
        note=f"rooms {offset + 1}-{offset + len(page)}"
             + (f"; more with --offset {nxt}" if nxt is not None else ""))


def room(em: Emitter, room_id: str) -> Output:
    members = em.get_room_members(room_id)
    return Output(
        {"room_id": room_id, "members": [{"connection_id": m.connection_id, "user_id": m.user_id,
                                          "server_id": m.server_id} for m in members]},
        ("CONNECTION ID", "USER ID", "SERVER ID"),
        tuple((m.connection_id, m.user_id, m.server_id) for m in members),
        empty=f"room {room_id!r} has no members")


def user(em: Emitter, user_id: str) -> Output:
    conns = em.get_user_connections(user_id)
    return Output({"user_id": user_id, "connections": conns}, ("CONNECTION ID",),
                  tuple((c,) for c in conns), empty=f"user {user_id!r} has no connections")


def kick_user(em: Emitter, user_id: str, code: int = 1000, reason: str = "") -> Output:
    closed = em.disconnect_user(user_id, code, reason)
    return Output({"user_id": user_id, "closed": closed},
                  text=f"closed {closed} connection(s) of user {user_id!r}")


def close_room(em: Emitter, room_id: str) -> Output:
    removed = em.close_room(room_id)
    return Output({"room_id": room_id, "removed": removed},
                  text=f"took {removed} member(s) out of room {room_id!r} "
                       "(they stay connected)")


_ROOM = Param("room_id", "ROOM", "the room id")
_USER = Param("user_id", "USER", "the user id")

COMMANDS: tuple[Command, ...] = (
    Command("servers", "List the live servers.", servers),
    Command("stats", "Show connections, rooms and servers in total.", stats),
    Command("rooms", "List the rooms with members, largest first (ties by name), a page at "
            "a time.", rooms,
            (Param("offset", "N", "skip the first N rooms (default 0)", "--offset", int, 0, 0),
             Param("limit", "N", "show at most N rooms (default 50)", "--limit", int, 50, 1))),
    Command("room", "List a room's members (connection, user, server).", room, (_ROOM,)),
    Command("user", "List a user's connections on every server.", user, (_USER,)),
    Command("kick-user", "Close every connection of a user, on every server.", kick_user,
            (_USER,
             Param("code", "CODE", "the WebSocket close code (default 1000)", "--code", int, 1000),
             Param("reason", "TEXT", "the close reason (default empty)", "--reason", str, ""))),
    Command("close-room", "Take every member out of a room; they stay connected.", close_room,
            (_ROOM,)),
)


def render(out: Output, as_json: bool) -> str:
    """``out`` as ``--json`` prints it, or as the table or text people read."""
    if as_json:
        return json.dumps(out.data, indent=2, ensure_ascii=False)
    if not out.headings:
        return out.text
    if not out.cells:
        return out.empty
    widths = [max(len(row[i]) for row in (out.headings, *out.cells))
              for i in range(len(out.headings))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in (out.headings, *out.cells)]
    return "\n".join(lines + ([out.note] if out.note else []))


def open_emitter(cfg: Config, hint: str = "") -> Emitter:
    """An Emitter on ``cfg``'s Redis, prefix, signing key and CA file; `ConfigError` for
    ``memory://`` (``hint`` says where the URL is set)."""
    if urlsplit(cfg.redis_url).scheme == "memory":
        raise ConfigError(NEEDS_REDIS + (f"; {hint}" if hint else ""))
    return Emitter(cfg.redis_url, cfg.key_prefix, max_message_bytes=cfg.max_message_bytes,
                   timeout=cfg.redis_timeout, signing_keys=cfg.signing_keys,
                   ca_file=cfg.redis_ca_file, room_notices=cfg.room_notices)


def execute(cfg: Config, command: Command, params: Mapping[str, Any], as_json: bool,
            hint: str = "") -> str:
    """Run ``command`` on an Emitter opened for it and closed after; what to print.
    `ValueError` (`ConfigError` among them) for bad settings or arguments, `DCMError` when
    Redis failed."""
    with open_emitter(cfg, hint) as em:
        return render(command.run(em, **params), as_json)


# ---------------------------------------------------------------------- python -m dcm_sync
_HINT = "pass --redis-url or set DCM_REDIS_URL (or REDIS_URL)"


def _at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    parse.__name__ = "integer"  # argparse names the type in its error
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dcm_sync",
        description="Look at and act on the connections, rooms and servers that share a "
                    "Redis. Settings not given here come from the environment as the servers "
                    "read it (DCM_<FIELD>, REDIS_URL); the signing key from DCM_SIGNING_KEYS "
                    "only, so that it never shows in a process list.",
        epilog="Exit codes: 0 done (an empty result too), 1 Redis failed, 2 bad arguments or "
               "settings.")
    parser.add_argument("--redis-url", help="the servers' Redis URL (default: DCM_REDIS_URL, "
                                            "else REDIS_URL); memory:// is refused")
    parser.add_argument("--key-prefix", help="the servers' key prefix (default: DCM_KEY_PREFIX, "
                                             "else dcm:)")
    parser.add_argument("--ca-file", help="CA certificates (PEM) for a rediss:// URL "
                                          "(default: DCM_REDIS_CA_FILE)")
    json_flag = argparse.ArgumentParser(add_help=False)
    json_flag.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.help,
                           parents=[json_flag])
        for param in command.params:
            kind: Callable[[str], Any] = (param.kind if param.minimum is None
                                          else _at_least(param.minimum))
            if param.flag is None:
                p.add_argument(param.name, metavar=param.metavar, help=param.help)
            else:
                p.add_argument(param.flag, dest=param.name, metavar=param.metavar, type=kind,
                               default=param.default, help=param.help)
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run the command line; its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    command = next(c for c in COMMANDS if c.name == args.command)
    overrides = {name: value for name, value in (("redis_url", args.redis_url),
                                                 ("key_prefix", args.key_prefix),
                                                 ("redis_ca_file", args.ca_file))
                 if value is not None}
    try:
        cfg = Config.from_env(os.environ if environ is None else environ, **overrides)
        text = execute(cfg, command, {p.name: getattr(args, p.name) for p in command.params},
                       args.json, _HINT)
    except ValueError as exc:  # ConfigError too
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DCMError as exc:
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(text)
    return EXIT_OK
