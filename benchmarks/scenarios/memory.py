"""``memory``: Redis bytes per connection, and server RSS per idle WebSocket.

Redis: ``INFO memory`` ``used_memory`` before and after registering ``N`` connections through the
core API (``register_connection`` + two ``join_room`` each, rooms of 200 members: ``a-<i // 200>``
and ``b-<i % (N/200)>``), divided by ``N``. The breakdown comes from ``MEMORY USAGE`` (SAMPLES 0)
of the connections' buckets (``connections:{T}:XX`` and ``connection-rooms:{T}:XX``, per
connection), one room set, the server-connections set (per member) and
the 256 ``index:rooms:{rXX}`` buckets (key names: :class:`dcm_sync.backends.redis_keys.KeyLayout`);
``other`` is what they do not explain (hash-table buckets, the room
channels' subscriptions, allocator rounding).

RSS: a gevent server process (``benchmarks/scenarios/memory_processes.py``) with ``M`` real idle WebSockets
from separate client processes (a few hundred each): ``VmRSS`` after minus before, over ``M``.
The server is warmed up first (its manager started, a few sockets opened and closed). Each
client waits for the server's answer on one socket (dcm: a welcome sent once the socket is
registered; peer: the Socket.IO connect answer) before it opens the next one. dcm-sync and
python-socketio (Flask-SocketIO, ``RedisManager``, Engine.IO v4 clients that answer pings) run
one after the other, each with its own ``redis-server``, whose growth over the ``M`` idle
sockets is reported too.

Redis growth is ``used_memory`` less ``mem_clients_normal`` (client buffers, which Redis resizes
on its own and which would add tens of KB of noise between two reads).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ..harness import Context, Result, populate, read_line, summarize
from ..redis_stats import used_memory

ROOT = Path(__file__).resolve().parents[2]
SERVER = Path(__file__).resolve().with_name("memory_processes.py")  # run by path
ROOM_MEMBERS = 200
POPULATE_THREADS = 2
SOCKETS_PER_CLIENT = 400
WARM_UP_SOCKETS = 20
REDIS_TARGET = 250
RSS_TARGET_KB = 20

_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# ------------------------------------------------------------------------------- the scenario
def run(ctx: Context) -> Result:
    from testkit.redis_server import RedisServer

    n = ctx.scale(100_000, 10_000)
    m = ctx.scale(10_000, 1_000)
    result = Result(headline="rss_kb_per_ws", higher_is_better=False)
    notes: list[str] = []
    redis_bytes, redis_dcm, redis_peer = RedisServer(), RedisServer(), RedisServer()
    redis_runs: list[dict[str, float]] = []
    rss_runs: dict[str, list[dict[str, float]]] = {"dcm": [], "peer": []}

    def measure_redis_bytes() -> None:
        for run_no in range(ctx.runs):
            try:
                redis_runs.append(_redis_bytes(redis_bytes, n, run_no))
            except Exception as exc:
                notes.append(f"Redis bytes run {run_no + 1} failed: {type(exc).__name__}: {exc}")

    # Neither figure depends on timing: the Redis bytes (on their own redis-server) are measured
    # while the RSS runs go on.
    worker = threading.Thread(target=measure_redis_bytes, name="redis-bytes", daemon=True)
    try:
        for rs in (redis_bytes, redis_dcm, redis_peer):
            rs.start()
        worker.start()
        for run_no in range(ctx.runs):
            for side, rs in (("dcm", redis_dcm), ("peer", redis_peer)):
                try:
                    rss_runs[side].append(_rss_one(ctx, side, rs, m, run_no))
                except Exception as exc:  # the other side and runs go on
                    notes.append(f"{side} RSS run {run_no + 1} failed: {type(exc).__name__}: "
                                 f"{exc} (logs in {ctx.workdir})")
    except Exception as exc:
        notes.append(f"failed: {type(exc).__name__}: {exc}")
    finally:
        if worker.ident is not None:
            worker.join(600 + n / 100)
        if worker.is_alive():
            notes.append("the Redis bytes measurement did not finish in time")
        for rs in (redis_bytes, redis_dcm, redis_peer):
            rs.cleanup()

    for side, figures in (("dcm", result.dcm), ("peer", result.peer)):
        runs = rss_runs[side]
        figures["rss_kb_per_ws"] = summarize([r["rss_kb_per_ws"] for r in runs]) if runs else None
        figures["redis_bytes_per_idle_ws"] = (
            summarize([r["redis_bytes_per_ws"] for r in runs]) if runs else None)
    if redis_runs:
        result.dcm["redis_bytes_per_conn_2_rooms"] = summarize([r["per_conn"] for r in redis_runs])
        for part in ("hash", "room_member_x2", "server_set_member", "other"):
            result.dcm[f"redis_{part}_bytes"] = summarize([r[part] for r in redis_runs])
    else:
        result.dcm["redis_bytes_per_conn_2_rooms"] = None
    result.peer["redis_bytes_per_conn_2_rooms"] = result.peer["redis_bytes_per_idle_ws"]

    per_conn = result.dcm["redis_bytes_per_conn_2_rooms"]
    result.notes.append(
        f"Redis: {n} connections, 2 rooms each ({n // ROOM_MEMBERS * 2} rooms of {ROOM_MEMBERS}); "
        f"target <= {REDIS_TARGET} bytes per connection"
        + ("" if per_conn is None else
           f" ({'met' if per_conn['median'] <= REDIS_TARGET else 'NOT met'}: "
           f"{per_conn['median']:.0f})"))
    if redis_runs:
        b = redis_runs[0]
        result.notes.append(
            f"breakdown (MEMORY USAGE, run 1): record and rooms in their buckets {b['hash']:.0f} B "
            f"({b['hash_encoding']}; values: {b['hash_fields']}); room set {b['room_member']:.1f} B "
            f"per member ({b['room_encoding']}), x2; server-connections set "
            f"{b['server_set_member']:.1f} B per member; index:rooms:{{rXX}} (256 buckets) "
            f"{b['index_rooms']:.2f} B per "
            f"connection; other {b['other']:.0f} B (hash-table buckets, room "
            f"channel subscriptions, allocator rounding)")
    rss = result.dcm["rss_kb_per_ws"]
    result.notes.append(
        f"RSS: {m} idle WebSockets on one gevent server process (pywsgi), clients in separate "
        f"processes of up to {SOCKETS_PER_CLIENT}; target <= {RSS_TARGET_KB} KB per WebSocket"
        + ("" if rss is None else
           f" ({'met' if rss['median'] <= RSS_TARGET_KB else 'NOT met'}: {rss['median']:.1f})"))
    result.notes.append(
        "redis_bytes_per_idle_ws: Redis growth over the idle sockets (dcm: registered, in no "
        "room); python-socketio writes nothing to Redis per connection or room (its rooms are "
        "local), so ~0 by design; its redis_bytes_per_conn_2_rooms row repeats that measurement")
    result.notes.extend(notes)
    return result


# ------------------------------------------------------------------------------- Redis bytes
def _redis_bytes(redis_server: Any, n: int, run_no: int) -> dict[str, Any]:
    from dcm_sync import Config, LocalConnectionManager, create_distributed_connection_manager
    from dcm_sync.backends.redis_keys import KeyLayout

    r = redis_server.client()
    r.flushall()
    prefix = f"bench-mem-{run_no}:"
    keys = KeyLayout(prefix)
    mgr = create_distributed_connection_manager(
        LocalConnectionManager(n + 10), Config(redis_url=redis_server.url, key_prefix=prefix))
    try:
        before = used_memory(r.info("memory"))
        b_rooms = max(1, n // ROOM_MEMBERS)
        ids = populate(mgr, n, lambda i: [f"a-{i // ROOM_MEMBERS}", f"b-{i % b_rooms}"],
                       POPULATE_THREADS)
        after = used_memory(r.info("memory"))
        per_conn = (after - before) / n

        def usage(key: str) -> int:
            return int(r.memory_usage(key, samples=0) or 0)

        k_hash = keys.connection(ids[n // 2])  # the buckets of the connections' records
        k_room = keys.room("a-0")
        k_servers = keys.server_connection_sets(mgr.server_id)  # 256 sets, by id
        room_member = usage(k_room) / r.scard(k_room)
        server_member = sum(map(usage, k_servers)) / sum(r.scard(k) for k in k_servers)
        index_rooms = sum(usage(k) for k in keys.all_rooms_indexes()) / n
        conns = r.scan_iter(match=f"{prefix}connection*", count=1000)  # records and their rooms
        hash_bytes = sum(map(usage, conns)) / n
        cid = ids[n // 2]
        fields = {"record": len(r.hget(k_hash, cid) or b""),
                  "rooms": len(r.hget(keys.connection_rooms(cid), cid) or b"")}
        out: dict[str, Any] = {
            "per_conn": per_conn, "hash": hash_bytes, "room_member": room_member,
            "room_member_x2": 2 * room_member, "server_set_member": server_member,
            "index_rooms": index_rooms,
            "other": per_conn - hash_bytes - 2 * room_member - server_member - index_rooms,
            "hash_encoding": r.object("encoding", k_hash).decode(),
            "room_encoding": r.object("encoding", k_room).decode(),
            "hash_fields": ", ".join(f"{k} {v} B" for k, v in fields.items()),
        }
        r.flushall()  # so that shutdown has nothing to remove
        return out
    finally:
        mgr.shutdown()
        r.close()


# ------------------------------------------------------------------------------- RSS
def _rss_one(ctx: Context, side: str, redis_server: Any, m: int, run_no: int) -> dict[str, float]:
    """One server of ``side`` with ``m`` idle sockets: its RSS and Redis deltas per socket."""
    from testkit.processes import rss_kb
    from testkit.redis_server import env_for_subprocess, free_port

    env = env_for_subprocess()
    port = free_port()
    clients: list[subprocess.Popen[bytes]] = []
    # one client for the whole run: a client connection costs Redis ~20 KB of its own
    r = redis_server.client()
    try:
        r.flushall()
        with open(ctx.workdir / f"rss-{side}-{run_no}.log", "wb") as log:
            server = subprocess.Popen(
                [sys.executable, str(SERVER), side, str(port), redis_server.url,
                 f"bench-rss-{run_no}:"], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_http(server, port, "/ready", 30.0)
            _warm_up(side, port)
            _wait_count(port, 0, 10.0)
            time.sleep(0.2)
            rss_before = rss_kb(server.pid)
            redis_before = used_memory(r.info("memory"))
            for start in range(0, m, SOCKETS_PER_CLIENT):
                count = min(SOCKETS_PER_CLIENT, m - start)
                with open(ctx.workdir / f"rss-{side}-{run_no}-clients-{start}.log", "wb") as log:
                    clients.append(subprocess.Popen(
                        [sys.executable, str(SERVER), "clients", side, str(port), str(count)],
                        cwd=ROOT, env=env, stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE, stderr=log))
            deadline = time.monotonic() + 60 + m / 50
            for proc in clients:
                read_line(proc, deadline, "connected")
            _wait_count(port, m, 10.0)
            time.sleep(0.3)
            rss_after = rss_kb(server.pid)
            redis_after = used_memory(r.info("memory"))
        finally:
            _kill(server)
    finally:
        for proc in clients:
            _close(proc)
        r.close()
    return {"rss_kb_per_ws": (rss_after - rss_before) / m,
            "redis_bytes_per_ws": (redis_after - redis_before) / m}


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with _http.open(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return int(exc.code), exc.read()


def _wait_http(proc: subprocess.Popen[bytes], port: int, path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if _get(port, path)[0] == 200:
                return
        except OSError:
            pass  # not listening yet
        time.sleep(0.05)
    raise RuntimeError(f"no 200 from {path} within {timeout:.0f} s")


def _wait_count(port: int, expected: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    count = None
    while time.monotonic() < deadline:
        count = json.loads(_get(port, "/count")[1])["connections"]
        if count == expected:
            return
        time.sleep(0.05)
    raise RuntimeError(f"server holds {count} sockets, expected {expected}")


def _warm_up(side: str, port: int) -> None:
    """Open and close a few sockets, so that first-use costs are not counted per socket."""
    from .memory_processes import connect

    socks = [connect(side, port) for _ in range(WARM_UP_SOCKETS)]
    for ws in socks:
        ws.close()


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def _close(proc: subprocess.Popen[bytes]) -> None:
    """Close a client process's stdin (it exits on EOF); kill it if it lingers."""
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            try:
                stream.close()
            except OSError:
                pass  # already gone
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        _kill(proc)


