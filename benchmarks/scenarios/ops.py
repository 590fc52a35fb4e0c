"""``ops``: register, join, leave and remove per second from one process, and what each costs Redis.

dcm-sync: ``create_distributed_connection_manager`` against a real ``redis-server``, sockets that
do nothing. Each pass is timed per call; Redis commands per operation come from ``INFO
commandstats`` deltas (commands run inside a Lua script count too), round trips per operation
from counting redis-py's ``send_packed_command`` calls (a pipeline or a script call is one).

The passes, on ``N`` connections and rooms of 100 members (``room-<i // 100>``):

    register  N x register_connection
    join      N x join_room; 1 in 100 is a room's first local member (SUBSCRIBE, waits for it)
    leave     N/2 x leave_room (even i: no room empties)
    remove    N x remove_connection (odd i are still in a room: a departure notice is published)

The peer is python-socketio's manager (``RedisManager``, as Flask-SocketIO uses it) doing what its
server does for the same events: connect, enter_room, leave_room, disconnect. Those are local
dict changes; the measured Redis traffic says so.

The measurements run in a child process (``python benchmarks/scenarios/ops.py worker ...``),
once plain (threads) and once under gevent's monkey-patching, the way servers run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__:
    from ..harness import Context, NullSocket, RedisProbe, Result, summarize
else:  # run as a script (the worker), with the repository root on PYTHONPATH
    from benchmarks.harness import Context, NullSocket, RedisProbe, Result, summarize

ROOT = Path(__file__).resolve().parents[2]
OPS = ("register", "join", "leave", "remove")
ROOM_SIZE = 100
WORKER_TIMEOUT = 300.0  # seconds, for all runs of one worker


# ------------------------------------------------------------------------------- the scenario
def run(ctx: Context) -> Result:
    from testkit.redis_server import RedisServer, env_for_subprocess

    n = ctx.scale(10_000, 1_000)
    result = Result(headline="join_per_s", higher_is_better=True)
    redis_server = RedisServer()
    try:
        redis_server.start()
        env = env_for_subprocess()
        sides: dict[str, list[dict[str, float]] | None] = {}
        errors: dict[str, str] = {}
        for side in ("dcm", "dcm-gevent", "peer"):
            try:
                sides[side] = _run_worker(ctx, env, side, redis_server.url, n)
            except Exception as exc:  # a side that fails reports None and says why
                sides[side] = None
                errors[side] = f"{type(exc).__name__}: {exc}"
    finally:
        redis_server.cleanup()

    dcm, dcm_gevent, peer = sides["dcm"], sides["dcm-gevent"], sides["peer"]
    if dcm:
        result.dcm.update(_summaries(dcm, rates=True))
        result.dcm["join_first_per_s"] = summarize([r["join_first_per_s"] for r in dcm])
        result.dcm.update(_summaries(dcm, rates=False))
    else:
        result.dcm["join_per_s"] = None
    if dcm_gevent:
        for op in OPS:
            result.dcm[f"{op}_per_s_gevent"] = summarize([r[f"{op}_per_s"] for r in dcm_gevent])
    if peer:
        result.peer.update(_summaries(peer, rates=True))
        result.peer.update(_summaries(peer, rates=False))
    for metric in result.dcm:  # every row shows on both sides, "-" where the peer has none
        result.peer.setdefault(metric, None)

    result.notes.append(
        f"{n} connections from one process, rooms of {ROOM_SIZE}; join: 1 in {ROOM_SIZE} is a "
        f"room's first local member (join_first: SUBSCRIBE + waiting for its confirmation); leave: "
        f"N/2, no room empties; remove: N, half still in a room (a departure notice is published)")
    if dcm:
        result.notes.append("dcm Redis commands per op (measured, INFO commandstats, incl. inside "
                            "Lua): " + "; ".join(f"{op}: {dcm[0][f'{op}_commands']}" for op in OPS))
    result.notes.append(
        "*_per_s_gevent: the same passes under gevent.monkey.patch_all() (how servers run); "
        "redis-py costs more per round trip there")
    result.notes.append(
        "peer: python-socketio's manager (RedisManager) connect/enter_room/leave_room/disconnect "
        "(ignore_queue, as its server does for a client's own disconnect) change local dicts only "
        "and send nothing to Redis (measured): its rooms are not shared state, so every server "
        "receives and filters every broadcast, and no server can list another's rooms or "
        "members. dcm's ops write cluster-wide state in one round trip each (remove: a second one "
        "publishes the departure notices); the ratio compares "
        "a Redis round trip with a dict update; python-socketio's disconnect walks every room of "
        "the namespace (each socket has a room of its own), so its remove rate falls as the "
        "number of sockets grows")
    for side, err in errors.items():
        result.notes.append(f"{side} failed: {err} (log in {ctx.workdir})")
    return result


def _summaries(runs: list[dict[str, Any]], rates: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for op in OPS:
        if rates:
            out[f"{op}_per_s"] = summarize([r[f"{op}_per_s"] for r in runs])
        else:
            out[f"{op}_round_trips_per_op"] = summarize([r[f"{op}_round_trips"] for r in runs])
            out[f"{op}_commands_per_op"] = summarize([r[f"{op}_commands_per_op"] for r in runs])
    return out


def _run_worker(ctx: Context, env: dict[str, str], side: str, url: str,
                n: int) -> list[dict[str, Any]]:
    log = ctx.workdir / f"ops-{side}.log"
    argv = [sys.executable, str(Path(__file__).resolve()), "worker", side, url, str(n),
            str(ctx.runs)]
    with open(log, "wb") as err:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=err)
        try:
            out, _ = proc.communicate(timeout=WORKER_TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    if proc.returncode != 0:
        raise RuntimeError(f"{side} worker exited with {proc.returncode}; see {log}")
    runs: list[dict[str, Any]] = json.loads(out)
    return runs


# ------------------------------------------------------------------------------- the worker
def _timed(calls: list[Callable[[], Any]]) -> list[float]:
    durations = []
    clock = time.perf_counter
    for call in calls:
        t = clock()
        call()
        durations.append(clock() - t)
    return durations


def _pass(probe: RedisProbe, name: str, calls: list[Callable[[], Any]],
          out: dict[str, Any]) -> list[float]:
    before = probe.snapshot()
    durations = _timed(calls)
    done = probe.snapshot() - before
    count = len(calls)
    out[f"{name}_per_s"] = count / sum(durations)
    out[f"{name}_round_trips"] = done.round_trips / count
    out[f"{name}_commands_per_op"] = done.commands / count
    out[f"{name}_commands"] = done.breakdown(count)
    return durations


def _dcm_run(probe: RedisProbe, url: str, n: int, run_no: int) -> dict[str, Any]:
    from dcm_sync import Config, LocalConnectionManager, create_distributed_connection_manager

    cfg = Config(redis_url=url, key_prefix=f"bench-ops-{os.getpid()}-{run_no}:")
    mgr = create_distributed_connection_manager(LocalConnectionManager(n + 10), cfg)
    out: dict[str, Any] = {}
    try:
        warm = mgr.register_connection(NullSocket(), "warm-up")  # loads the scripts
        mgr.join_room(warm, "warm-up")
        mgr.leave_room(warm, "warm-up")
        mgr.remove_connection(warm)
        ids: list[str] = []
        _pass(probe, "register", [lambda i=i: ids.append(mgr.register_connection(
            NullSocket(), f"user-{i}")) for i in range(n)], out)
        rooms = [f"room-{i // ROOM_SIZE}" for i in range(n)]
        joins = _pass(probe, "join", [lambda c=c, r=r: mgr.join_room(c, r)
                                      for c, r in zip(ids, rooms, strict=True)], out)
        first = [d for i, d in enumerate(joins) if i % ROOM_SIZE == 0]
        out["join_first_per_s"] = len(first) / sum(first)
        _pass(probe, "leave", [lambda c=ids[i], r=rooms[i]: mgr.leave_room(c, r)
                               for i in range(0, n, 2)], out)
        _pass(probe, "remove", [lambda c=c: mgr.remove_connection(c) for c in ids], out)
    finally:
        mgr.shutdown()
    return out


def _peer_run(probe: RedisProbe, url: str, n: int, run_no: int) -> dict[str, Any]:
    import socketio

    manager = socketio.RedisManager(url, channel=f"bench-ops-{os.getpid()}-{run_no}")
    server = socketio.Server(client_manager=manager, async_mode="threading")
    server.manager_initialized = True  # what its first connection does: start the listener
    manager.initialize()
    _wait_subscribed(probe, url, manager.channel)
    out: dict[str, Any] = {}
    ns = "/"
    sids: list[str] = []
    _pass(probe, "register", [lambda: sids.append(manager.connect(server.eio.generate_id(), ns))
                              for _ in range(n)], out)
    rooms = [f"room-{i // ROOM_SIZE}" for i in range(n)]
    _pass(probe, "join", [lambda s=s, r=r: manager.enter_room(s, ns, r)
                          for s, r in zip(sids, rooms, strict=True)], out)
    _pass(probe, "leave", [lambda s=sids[i], r=rooms[i]: manager.leave_room(s, ns, r)
                           for i in range(0, n, 2)], out)

    def disconnect(sid: str) -> None:
        manager.pre_disconnect(sid, ns)
        manager.disconnect(sid, ns, ignore_queue=True)

    _pass(probe, "remove", [lambda s=s: disconnect(s) for s in sids], out)
    return out


def _wait_subscribed(probe: RedisProbe, url: str, channel: str, timeout: float = 10.0) -> None:
    """Wait until the peer's listener has subscribed, so that its SUBSCRIBE is not counted."""
    import redis

    deadline = time.monotonic() + timeout
    with probe.quiet(), redis.Redis.from_url(url) as r:
        while time.monotonic() < deadline:
            if int(r.pubsub_numsub(channel)[0][1]):
                return
            time.sleep(0.01)
    raise RuntimeError(f"python-socketio's listener did not subscribe to {channel!r}")


def worker_main(argv: list[str]) -> int:
    side, url, n, runs = argv[0], argv[1], int(argv[2]), int(argv[3])
    if side == "dcm-gevent":
        from gevent import monkey

        monkey.patch_all()
    import redis

    probe = RedisProbe(redis.Redis.from_url(url))
    measure = _peer_run if side == "peer" else _dcm_run
    results = [measure(probe, url, n, run_no) for run_no in range(runs)]
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        raise SystemExit(worker_main(sys.argv[2:]))
    raise SystemExit("usage: ops.py worker dcm|dcm-gevent|peer REDIS_URL N RUNS")
