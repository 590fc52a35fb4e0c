"""``failover_cleanup``: a server holding many connections is killed; how long until its state is gone.

A server process registers ``N`` fake sockets through the core API (``register_connection`` and
``join_room``, ``N/100`` rooms of 100), prints ``ready`` and waits; the benchmark checks the state
in Redis, kills it with SIGKILL, polls ``PTTL servers:{T}<sid>`` every 10 ms until the record has
expired, then polls until the state is gone: ``server-connections:{T}<sid>`` empty, the id out of
``index:servers``, and every room set empty (the room sets are read only once the first two hold,
so that polling does not load Redis during the cleanup). Afterwards (not timed) a ``SCAN`` checks
that no ``connections:*`` key is left and the 256 ``index:rooms:{rXX}`` buckets name no room.
(Key names: :class:`dcm_sync.backends.redis_keys.KeyLayout`.)

A second manager in another process (heartbeat every 0.25 s) detects the death and cleans up:
the time includes its detection delay (up to one heartbeat interval; with the default 30 s
interval, up to 30 s more). ``cleanup_s`` is expiry -> all gone; ``detect_s`` expiry -> the
cleaner's lock appears; ``sweep_s`` the rest.

python-socketio keeps no shared state to clean (nothing to measure).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

if __package__:
    from ..harness import Context, Result, populate, read_line, summarize
else:  # run as a script (the server or the detector), with the repository root on PYTHONPATH
    from benchmarks.harness import Context, Result, populate, read_line, summarize

ROOT = Path(__file__).resolve().parents[2]
ROOM_SIZE = 100
POLL = 0.01                    # seconds between polls of Redis
DEAD_HEARTBEAT = (0.5, 2.0)    # the victim's heartbeat interval and TTL
DETECTOR_HEARTBEAT = (0.25, 10.0)
POPULATE_THREADS = 2
TARGET_S = 5.0


# ------------------------------------------------------------------------------- the scenario
def run(ctx: Context) -> Result:
    from testkit.redis_server import RedisServer, env_for_subprocess

    n = ctx.scale(100_000, 10_000)
    result = Result(headline="cleanup_s", higher_is_better=False)
    prefix = "bench-failover:"
    redis_server = RedisServer()
    detector: subprocess.Popen[bytes] | None = None
    samples: list[dict[str, float]] = []
    problems: list[str] = []
    try:
        redis_server.start()
        env = env_for_subprocess()
        r = redis_server.client()
        detector = spawn(ctx, env, "detector", [redis_server.url, prefix], "failover-detector.log")
        read_line(detector, time.monotonic() + 30, "ready")
        for run_no in range(ctx.runs):
            try:
                samples.append(_one_run(ctx, env, r, redis_server.url, prefix, n, run_no,
                                        detector, problems))
            except Exception as exc:  # report the failure, keep the other runs
                problems.append(f"run {run_no + 1} failed: {type(exc).__name__}: {exc}")
    except Exception as exc:
        problems.append(f"failed: {type(exc).__name__}: {exc}")
    finally:
        if detector is not None:
            stop(detector)
        redis_server.cleanup()

    if samples:
        for metric in ("cleanup_s", "detect_s", "sweep_s", "connections_per_s", "in_cleaner_s",
                       "pop_script_s", "encode_notices_s", "publish_notices_s"):
            result.dcm[metric] = summarize([s[metric] for s in samples])
    else:
        result.dcm["cleanup_s"] = None
    result.peer = {metric: None for metric in result.dcm}
    median = result.dcm["cleanup_s"]["median"] if samples else None
    if median is None or n != 100_000:
        verdict = f" (the target is for the full run's 100,000; this run: {n})"
    else:
        verdict = f" ({'met' if median < TARGET_S else 'NOT met'}: {median:.2f} s)"
    result.notes.append(
        f"{n} connections in {n // ROOM_SIZE} rooms on one SIGKILLed server; detector heartbeat "
        f"{DETECTOR_HEARTBEAT[0]} s (detect_s is bounded by it; with the default 30 s, up to 30 s "
        f"more); target < {TARGET_S:g} s for 100,000" + verdict)
    result.notes.append(
        "in the cleaner (handle_server_failure, timed inside the detector process): pop_script_s "
        "= the POP_SERVER Lua batches (SPOP 1,000 + removal, round trip and parsing), "
        "encode_notices_s = building the departure notices (Departures.notices: JSON message + "
        "envelope per connection and room), publish_notices_s = publishing them (pipelines of "
        "500 PUBLISH)")
    result.notes.append("peer: python-socketio keeps no shared state (rooms live in each "
                        "server's memory), so there is nothing to clean after a server dies")
    result.notes.extend(problems)
    return result


def _one_run(ctx: Context, env: dict[str, str], r: Any, url: str, prefix: str, n: int,
             run_no: int, detector: subprocess.Popen[bytes],
             problems: list[str]) -> dict[str, float]:
    from dcm_sync.backends.redis_keys import KeyLayout
    from testkit.keys import indexed_room_count

    keys = KeyLayout(prefix)
    victim = spawn(ctx, env, "server", [url, prefix, str(n)], f"failover-server-{run_no}.log")
    try:
        line = read_line(victim, time.monotonic() + max(60.0, n / 300), "ready")
        sid = line.split()[1]
        held, in_rooms = _state_counts(r, keys, sid, n // ROOM_SIZE)
        if held != n or in_rooms != n:
            raise RuntimeError(f"the server holds {held} connections, {in_rooms} memberships; "
                               f"expected {n}")
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
    finally:
        stop(victim)

    k_server = keys.server(sid)
    deadline = time.monotonic() + DEAD_HEARTBEAT[1] + 10
    while r.pttl(k_server) != -2:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{k_server} did not expire")
        time.sleep(POLL)
    expired = time.monotonic()

    k_lock, k_conns = keys.cleanup_lock(sid), keys.server_connection_sets(sid)
    k_index = keys.servers_index
    detected = gone = None
    deadline = expired + 120 + n / 1000
    while time.monotonic() < deadline:
        if detector.poll() is not None:
            raise RuntimeError(f"the detector exited with {detector.returncode}")
        pipe = r.pipeline(transaction=False)
        pipe.exists(k_lock)
        for k in k_conns:
            pipe.scard(k)
        pipe.sismember(k_index, sid)
        locked, *sizes, listed = pipe.execute()
        left = sum(sizes)
        now = time.monotonic()
        if detected is None and (locked or left < n):
            detected = now
        if not left and not listed and _state_counts(r, keys, sid, n // ROOM_SIZE)[1] == 0:
            gone = now
            break
        time.sleep(POLL)
    if gone is None:
        raise RuntimeError(f"state of {sid} not gone within {deadline - expired:.0f} s")
    detected = detected if detected is not None else gone
    parts = json.loads(read_line(detector, time.monotonic() + 10, "{"))
    if parts.get("server") != sid or parts.get("removed") != n:
        problems.append(f"run {run_no + 1}: the detector reported {parts}")

    # not timed: nothing of it may be left anywhere
    leftover = sum(1 for _ in r.scan_iter(match=f"{prefix}connections:*", count=1000))
    rooms_left = indexed_room_count(r, prefix)
    if leftover or rooms_left:
        problems.append(f"run {run_no + 1}: {leftover} connections:* keys and {rooms_left} rooms "
                        f"left after cleanup")
    return {"cleanup_s": gone - expired, "detect_s": detected - expired,
            "sweep_s": gone - detected, "connections_per_s": n / max(gone - detected, 1e-9),
            "in_cleaner_s": parts["total_s"], "pop_script_s": parts["pop_s"],
            "encode_notices_s": parts["notices_s"], "publish_notices_s": parts["publish_s"]}


def _state_counts(r: Any, keys: Any, sid: str, rooms: int) -> tuple[int, int]:
    """(connections the server holds, members of all its rooms); ``keys``: the KeyLayout."""
    sets = keys.server_connection_sets(sid)
    pipe = r.pipeline(transaction=False)
    for key in sets:
        pipe.scard(key)
    for i in range(rooms):
        pipe.scard(keys.room(f"room-{i}"))
    counts = pipe.execute()
    return int(sum(counts[:len(sets)])), int(sum(counts[len(sets):]))


def spawn(ctx: Context, env: dict[str, str], role: str, args: list[str],
          log_name: str) -> subprocess.Popen[bytes]:
    with open(ctx.workdir / log_name, "wb") as log:  # the child keeps its own descriptor
        return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), role, *args],
                                cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=log)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Close its stdin (it exits on EOF); kill it if it has not gone within 10 s."""
    if proc.poll() is None and proc.stdin is not None:
        try:
            proc.stdin.close()
        except OSError:
            pass  # it died already
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()


# ------------------------------------------------------------------------------- the children
def _wait_for_eof(stream: IO[bytes], limit: float) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        ready, _, _ = select.select([stream], [], [], 1.0)
        if ready and not stream.read1(4096):  # type: ignore[attr-defined]
            return


def _server_main(url: str, prefix: str, n: int) -> int:
    """The victim: N connections in rooms of ROOM_SIZE, then wait to be killed."""
    from dcm_sync import Config, LocalConnectionManager, create_distributed_connection_manager

    interval, ttl = DEAD_HEARTBEAT
    cfg = Config(redis_url=url, key_prefix=prefix, heartbeat_interval=interval, heartbeat_ttl=ttl)
    mgr = create_distributed_connection_manager(LocalConnectionManager(n + 10), cfg)
    populate(mgr, n, lambda i: [f"room-{i // ROOM_SIZE}"], POPULATE_THREADS)
    print(f"ready {mgr.server_id}", flush=True)
    _wait_for_eof(sys.stdin.buffer, 3600)  # SIGKILLed long before
    mgr.shutdown()
    return 0


def _detector_main(url: str, prefix: str) -> int:
    """The survivor: a manager with a short heartbeat that finds dead servers and cleans up."""
    from dcm_sync import Config, create_distributed_connection_manager

    interval, ttl = DETECTOR_HEARTBEAT
    cfg = Config(redis_url=url, key_prefix=prefix, heartbeat_interval=interval, heartbeat_ttl=ttl)
    mgr = create_distributed_connection_manager(None, cfg)
    _time_cleanups(mgr)
    print(f"ready {mgr.server_id}", flush=True)
    _wait_for_eof(sys.stdin.buffer, 3600)
    print(json.dumps(mgr.metrics()), file=sys.stderr)
    mgr.shutdown()
    return 0


def _time_cleanups(mgr: Any) -> None:
    """Measure where the cleaner's time goes: wrap (on this instance only) the backend's pop
    and publish, the building of the departure notices and the cleanup itself (the heartbeat
    loop calls the maintenance part's ``handle_server_failure``, not the manager's); print one
    JSON line per cleanup."""
    spent: dict[str, float] = {}

    def timed(obj: Any, name: str, key: str) -> None:
        inner = getattr(obj, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                spent[key] = spent.get(key, 0.0) + time.perf_counter() - t

        setattr(obj, name, wrapper)

    timed(mgr._backend, "pop_server_connections", "pop_s")
    timed(mgr._backend, "publish_many", "publish_s")
    timed(mgr._departures, "notices", "notices_s")
    maintenance = mgr._maintenance
    handle = maintenance.handle_server_failure

    def handle_timed(server_id: str) -> int:
        spent.clear()
        spent.update(pop_s=0.0, publish_s=0.0, notices_s=0.0)
        t = time.perf_counter()
        removed = handle(server_id)
        if removed:
            print(json.dumps({"server": server_id, "removed": removed,
                              "total_s": time.perf_counter() - t, **spent}), flush=True)
        return int(removed)

    maintenance.handle_server_failure = handle_timed


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {os.getpid()} %(name)s %(message)s")
    role, rest = sys.argv[1], sys.argv[2:]
    if role == "server":
        raise SystemExit(_server_main(rest[0], rest[1], int(rest[2])))
    if role == "detector":
        raise SystemExit(_detector_main(rest[0], rest[1]))
    raise SystemExit("usage: failover.py server URL PREFIX N | detector URL PREFIX")
