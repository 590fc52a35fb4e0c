"""``python -m benchmarks.soak [--seconds 60] [--clients 1000] [--json PATH]``: a bounded soak
that looks for leaks under connection churn.

Its own ``redis-server`` and two ``examples/gevent_chat_server.py`` processes on loopback (key
prefix ``soak:``). Observers (``--observers`` per server) join every soak room first and stay;
then ``--clients`` minus the observers churning clients, spread evenly over ``--seconds`` and
run from ``--procs`` load-generator processes, each connect to a random server, join 1-3 random
rooms, send 2-5 tagged messages, wait for their own echoes and disconnect after 1-8 s (leaving
their rooms, with a close frame, with a bare TCP FIN, or with a reset; see
``benchmarks/soak/clients.py``). Afterwards it checks:

* delivery: every tagged message whose send call succeeded reached every observer and its sender
  exactly once (no loss, no duplicates; no churn client got any message twice);
* Redis: ``connected_clients`` back to its value before any client (with only the observers
  left, and with nobody left); no key but the live servers' own (``servers:{T}<sid>``,
  ``index:servers``) once everyone has gone, and with only the observers left exactly theirs;
* servers: open file descriptors and RSS (sampled every 2 s from /proc) flat after warm-up and
  back where they started; each server's own count of local connections back to 0;
* shutdown: both servers exit 0 on SIGTERM and leave no key.

Prints the figures and PASS/FAIL per check; exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from dcm_sync.backends.redis_keys import KeyLayout
from dcm_sync.maintenance import IDLE_CLOSE_SECONDS
from testkit.keys import indexed_rooms, server_connection_ids
from testkit.polling import seconds_until, wait_until
from testkit.processes import ServerProcess, rss_kb
from testkit.redis_server import RedisServer

from ..harness import pipe_reply
from ..redis_stats import key_class
from .clients import MODES, ChurnPlan, ClientReport, churn_main, observer_main
from .report import Observed, evaluate, print_figures

PREFIX = "soak:"
KEYS = KeyLayout(PREFIX)
HEARTBEAT_S = 2.0
# the heartbeat loop runs (and closes idle pooled Redis connections) during the soak
SERVER_ENV = {"DCM_HEARTBEAT_INTERVAL": str(HEARTBEAT_S), "DCM_HEARTBEAT_TTL": "10"}
SAMPLE_EVERY = 2.0  # seconds between samples of RSS, fds and Redis clients

_mp = multiprocessing.get_context("fork")


class SoakError(RuntimeError):
    pass


def proc_figures(pid: int, ws_port: int, redis_port: int) -> dict[str, int]:
    """A server process's RSS (KB), open file descriptors, and of these its TCP connections to
    Redis (``redis``), its accepted client sockets (``ws``) and the rest (``other``)."""
    rss = rss_kb(pid)
    fds = os.listdir(f"/proc/{pid}/fd")
    sockets = set()
    for fd in fds:
        with contextlib.suppress(OSError):  # closed meanwhile
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                sockets.add(link[8:-1])
    redis = ws = 0
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                f = line.split()
                if f[9] in sockets:
                    local, remote = int(f[1].rsplit(":", 1)[1], 16), int(f[2].rsplit(":", 1)[1], 16)
                    if remote == redis_port:
                        redis += 1
                    elif local == ws_port and f[3] != "0A":  # not the listening socket
                        ws += 1
    return {"rss_kb": rss, "fds": len(fds), "redis": redis, "ws": ws, "other": len(fds) - redis - ws}


class Sampler(threading.Thread):
    """Every :data:`SAMPLE_EVERY` s: time, each server's :func:`proc_figures`, Redis clients and keys."""

    def __init__(self, procs: list[tuple[int, int, int]], redis: Any) -> None:
        super().__init__(name="soak-sampler", daemon=True)
        self.procs, self.redis = procs, redis
        self.samples: list[dict[str, Any]] = []
        self.stopped = threading.Event()
        self.t0 = time.monotonic()

    def take(self) -> dict[str, Any]:
        return {"t": round(time.monotonic() - self.t0, 1), "servers": [proc_figures(*p) for p in self.procs],
                "redis_clients": self.redis.info("clients")["connected_clients"],
                "keys": self.redis.dbsize()}

    def run(self) -> None:
        while not self.stopped.wait(SAMPLE_EVERY):
            with contextlib.suppress(Exception):  # a server may be gone at the end: no sample
                self.samples.append(self.take())


class Pipe:
    """The parent's end of a client process: bounded waits for its answers."""

    def __init__(self, name: str, target: Callable[..., None], *args: Any) -> None:
        self.name = name
        self.conn, child = _mp.Pipe()
        self.proc = _mp.Process(target=target, args=(child, *args), name=name, daemon=True)
        self.proc.start()
        child.close()

    def send(self, *msg: Any) -> None:
        self.conn.send(msg)

    def reply(self, want: str, timeout: float) -> tuple[Any, ...]:
        return pipe_reply(self.conn, want, timeout, self.name, SoakError)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.close()
        self.proc.join(3)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)


def classify_keys(redis: Any) -> dict[str, list[str]]:
    """Every key of the database (this soak's own redis-server) by kind (``key_class``:
    ``servers``, ``connections``, ``rooms``, ``index:rooms`` (its 256 buckets)...) for keys under
    the prefix (listed without it), ``foreign`` for others."""
    out: dict[str, list[str]] = {}
    for raw in redis.scan_iter(count=1000):
        key = raw.decode()
        if not key.startswith(PREFIX):
            out.setdefault("foreign", []).append(key)
            continue
        out.setdefault(key_class(key, PREFIX), []).append(key[len(PREFIX):])
    return {k: sorted(v) for k, v in out.items()}


def smembers(redis: Any, key: str) -> set[str]:
    return {m.decode() for m in redis.smembers(key)}


def stats_of(server: ServerProcess) -> dict[str, Any]:
    answer = server.get_json("/stats", timeout=5)
    if answer is None or "error" in answer:
        raise SoakError(f"{server.name}: /stats answered {answer}")
    return answer


def make_plans(args: argparse.Namespace, urls: list[str], rooms: list[str], churn: int) -> list[ChurnPlan]:
    rng = random.Random(args.seed)
    plans = []
    for j in range(churn):
        start = j * args.seconds / churn
        server = rng.randrange(len(urls))
        plans.append(ChurnPlan(
            gid=str(j), server=server, url=urls[server], start=start,
            rooms=tuple(rng.sample(rooms, rng.randint(1, 3))),
            lifetime=max(1.0, min(rng.uniform(1, 8), args.seconds - start)),
            messages=rng.randint(2, 5), mode=rng.choice(MODES)))
    return plans


@contextlib.contextmanager
def cleanup_on_signal() -> Iterator[None]:
    """SIGTERM ends the soak like Ctrl-C: every ``finally`` runs and processes are stopped."""
    def raise_interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    figures: dict[str, Any] = {"args": vars(args) | {"json": str(args.json) if args.json else None}}
    rooms = [f"soak-{i}" for i in range(args.rooms)]
    n_obs = 2 * args.observers
    churn = args.clients - n_obs
    if churn <= 0:
        raise SoakError("--clients must exceed 2 x --observers")
    with contextlib.ExitStack() as stack:
        redis_server = RedisServer()
        stack.callback(redis_server.cleanup)
        redis_server.start()
        r = redis_server.client()
        stack.callback(r.close)
        servers: list[ServerProcess] = []
        for i in range(2):
            s = ServerProcess(f"soak-server-{i}", [sys.executable, "examples/gevent_chat_server.py"], workdir,
                              redis_url=redis_server.url, prefix=PREFIX, fast=SERVER_ENV)
            stack.callback(s.kill)
            servers.append(s)
        for s in servers:
            s.wait_ready("/stats", lambda a: "server_id" in a, timeout=30)
        sids = [stats_of(s)["server_id"] for s in servers]
        urls = [f"ws://127.0.0.1:{s.port}/ws" for s in servers]
        procs = [(s.proc.pid, s.port, redis_server.port) for s in servers]

        def clients_of() -> int:
            return int(r.info("clients")["connected_clients"])

        def settle_clients(count: Callable[[], int], baseline: int) -> float | None:
            """Seconds until the Redis client count is back to ``baseline``: a server closes
            pooled connections nobody uses every IDLE_CLOSE_SECONDS (None: not within twice that)."""
            limit = 2 * IDLE_CLOSE_SECONDS + 2 * HEARTBEAT_S
            try:
                return round(seconds_until(lambda: count() <= baseline, limit,
                                           "the Redis client count back to its baseline", interval=0.2), 1)
            except AssertionError:
                return None

        last = [-1]

        def steady() -> bool:  # the same Redis client count twice in a row, 0.5 s apart
            now, prev = clients_of(), last[0]
            last[0] = now
            time.sleep(0.4)
            return now == prev

        sampler = Sampler(procs, redis_server.client())  # its own connection, open before the baseline
        stack.callback(sampler.redis.close)
        sampler.redis.ping()
        wait_until(steady, 10, "Redis client count steady before any client", interval=0.1)
        base = {"redis_clients": clients_of(), "keys": classify_keys(r),
                "servers": [proc_figures(*p) for p in procs]}
        figures["baseline"] = base

        obs = Pipe("observers", observer_main, [urls[i % 2] for i in range(n_obs)], rooms)
        stack.callback(obs.close)
        obs_ids = list(obs.reply("ready", 60)[1])
        base["observers_joined"] = {"redis_clients": clients_of(),
                                    "servers_redis": [proc_figures(*p)["redis"] for p in procs]}
        plans = make_plans(args, urls, rooms, churn)
        workers = []
        for k in range(args.procs):
            w = Pipe(f"churn-{k}", churn_main, plans[k::args.procs], args.seconds)
            stack.callback(w.close)
            workers.append(w)
        sampler.start()
        stack.callback(sampler.stopped.set)
        t0 = time.time() + 0.5
        sampler.t0 = time.monotonic() + 0.5
        for w in workers:
            w.send("go", t0)
        print(f"churn: {churn} clients over {args.seconds:.0f} s from {args.procs} processes, "
              f"{n_obs} observers in {len(rooms)} rooms", flush=True)
        reports: list[ClientReport] = []
        skipped = 0
        for w in workers:
            _, got, skip = w.reply("reports", args.seconds + 90)
            reports += got
            skipped += skip
        churn_done = time.monotonic() - sampler.t0
        sent = {t for rep in reports for t in rep.sent}
        obs.send("finish", len(sent), 3.0, 30.0)
        _, counts, notices, obs_closed = obs.reply("records", 45)
        drain = time.monotonic() - sampler.t0 - churn_done

        # ---- only the observers left
        wait_until(lambda: [stats_of(s)["local_connections"] for s in servers] == [args.observers] * 2, 20,
                   "the servers count only the observers", interval=0.1)
        wait_until(steady, 10, "Redis client count steady after the churn", interval=0.1)
        back_mid = settle_clients(clients_of, base["redis_clients"])
        mid = {"settle_s": back_mid, "redis_clients": clients_of(), "keys": classify_keys(r),
               "servers": [proc_figures(*p) for p in procs], "stats": [stats_of(s) for s in servers],
               "rooms": {room: smembers(r, KEYS.room(room)) for room in rooms},
               "server_conns": set().union(*(server_connection_ids(r, PREFIX, sid) for sid in sids)),
               "index_rooms": indexed_rooms(r, PREFIX), "index_servers": smembers(r, KEYS.servers_index)}

        # ---- nobody left
        obs.send("close")
        obs.reply("closed", 30)
        wait_until(lambda: [stats_of(s)["local_connections"] for s in servers] == [0, 0], 20,
                   "the servers count no connection", interval=0.1)
        wait_until(steady, 10, "Redis client count steady after every client left", interval=0.1)
        back_after = settle_clients(clients_of, base["redis_clients"])
        after = {"settle_s": back_after, "redis_clients": clients_of(), "keys": classify_keys(r),
                 "servers": [proc_figures(*p) for p in procs], "stats": [stats_of(s) for s in servers],
                 "index_servers": smembers(r, KEYS.servers_index)}
        sampler.stopped.set()
        sampler.join(5)
        samples = sampler.samples

        # ---- shutdown
        codes = [s.stop(timeout=10) for s in servers]
        final = {"codes": codes, "keys": classify_keys(r), "redis_clients": clients_of()}

    figures.update(evaluate(Observed(
        reports, skipped, sent, counts, notices, obs_closed, obs_ids, sids, rooms, base, mid, after,
        final, samples, churn_done, drain)))
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="churn duration")
    parser.add_argument("--clients", type=int, default=1000,
                        help="client connections in all, observers included")
    parser.add_argument("--observers", type=int, default=25, help="observers per server")
    parser.add_argument("--rooms", type=int, default=20)
    parser.add_argument("--procs", type=int, default=3, help="churn load-generator processes")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    if not 1 <= args.seconds <= 3600 or args.clients > 20_000 or not 1 <= args.procs <= 16:
        parser.error("--seconds 1..3600, --clients up to 20000, --procs 1..16")
    if args.seed is None:
        args.seed = random.randrange(1 << 30)
    started = time.monotonic()
    with cleanup_on_signal(), tempfile.TemporaryDirectory(prefix="dcm-soak-") as tmp:
        try:
            figures = run(args, Path(tmp))
        except (SoakError, AssertionError) as exc:  # AssertionError: a bounded wait ran out
            print(f"soak aborted: {exc}", file=sys.stderr)
            for log in sorted(Path(tmp).glob("*.log")):
                tail = log.read_text(errors="replace").splitlines()[-15:]
                print(f"--- {log.name}\n" + "\n".join(tail), file=sys.stderr)
            return 1
    figures["wall_seconds"] = round(time.monotonic() - started, 1)
    print_figures(figures)
    print(f"\n{figures['wall_seconds']} s in all (seed {args.seed})")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1, default=sorted))
        print(f"wrote {args.json}")
    return 0 if all(v["pass"] for v in figures["checks"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
