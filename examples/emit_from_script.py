"""Say something in a chat room from a plain script (a cron job, a deploy hook): no server needed.

    REDIS_URL=redis://127.0.0.1:6379/0 python examples/emit_from_script.py lobby "backup finished"

The message reaches every member of the room on every chat server sharing that Redis and key
prefix (``DCM_KEY_PREFIX``, default ``dcm:``), as if a user named "cron" had said it. The script
is synchronous: an :class:`~dcm_sync.Emitter` registers no server and runs no background loop.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from dcm_sync import DCMError, DistributedStats, Emitter  # noqa: E402


def print_stats(stats: DistributedStats) -> None:
    print(f"cluster: {stats.active_servers} server(s), {stats.total_connections} connection(s), "
          f"{stats.total_rooms} room(s)")
    now = time.time()
    for s in stats.server_stats:
        print(f"  {s.server_id}: {s.active_connections} connection(s), pid {s.pid}, "
              f"last heartbeat {now - s.last_heartbeat:.1f}s ago")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Broadcast a chat message to a room on every server sharing REDIS_URL.",
        epilog="Environment: REDIS_URL (required), DCM_KEY_PREFIX (default 'dcm:'), "
               "DCM_SIGNING_KEYS (the servers' keys, when they sign).")
    parser.add_argument("room", help="room to speak in, e.g. lobby")
    parser.add_argument("text", help="the message")
    args = parser.parse_args(argv)

    url = os.environ.get("REDIS_URL", "").strip()
    if not url or url.startswith("memory://"):
        # memory:// lives inside one process: an emitter there would reach nobody.
        print("emit_from_script: set REDIS_URL to the chat servers' Redis, "
              "e.g. REDIS_URL=redis://127.0.0.1:6379/0", file=sys.stderr)
        return 2
    prefix = os.environ.get("DCM_KEY_PREFIX", "dcm:")
    keys = [k.strip() for k in os.environ.get("DCM_SIGNING_KEYS", "").split(",") if k.strip()]
    message = {"type": "message", "room": args.room, "from": "cron", "text": args.text}
    try:
        with Emitter(url, key_prefix=prefix, signing_keys=keys) as emitter:
            emitter.broadcast_to_room(args.room, message)
            stats = emitter.get_distributed_stats()
    except (DCMError, ValueError) as exc:  # Redis unreachable, message too large, bad room id
        print(f"emit_from_script: {exc}", file=sys.stderr)
        return 1
    print(f"sent to room {args.room!r} (prefix {prefix!r})")
    print_stats(stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
