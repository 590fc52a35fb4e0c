"""many_rooms: 1,000 rooms of 10 members over 3 servers; one client per server (in no room)
broadcasts 100-byte messages to random rooms as fast as it can (bursts with a bounded number of
broadcasts in flight, at each of :data:`WINDOWS`, each side taken at its best: see room_fanout).

Half of the rooms have all 10 members on one server, the other half 5 on one server and 5 on
the next, so that every server holds members of about half of the rooms. Each server's
clients are members of many rooms (the memberships dealt round-robin), and each run joins fresh
rooms. Headline: broadcasts per second delivered in full (all 10 members).
``delivery_cpu_us``: the three servers' CPU time per frame they delivered (each server also
publishes its own sender's broadcasts). Also what each
server received on the bus for rooms it held no member of during a run's bursts
(``nonmember_s0`` ...): counted inside
each server process where its Redis subscriber decodes messages (see
``benchmarks/servers/__init__.py``); this project subscribes to a room only while it has a local
member, so it should be 0.
"""

from __future__ import annotations

import contextlib
import random
from typing import Any

from ..harness import Context, Result
from ..loadgen import data_command
from ..sides import (
    SEQ_SPAN,
    Side,
    SideServers,
    best_of_windows,
    groups,
    join_all,
    measure_sides,
    rate_and_latency,
    run_phase,
)

SERVERS = 3
ROOM_SIZE = 10
WINDOWS = (15, 90)  # broadcasts in flight (not yet received by all members), over the 3 senders


def placement(rooms: int, clients: int) -> tuple[list[list[list[int]]], list[list[int]]]:
    """``joins[server][client]``: the room numbers that client joins; ``members[room][server]``:
    how many of the room's members are on that server."""
    joins: list[list[list[int]]] = [[[] for _ in range(clients)] for _ in range(SERVERS)]
    members = [[0] * SERVERS for _ in range(rooms)]
    cursor = [0] * SERVERS
    for room in range(rooms):
        home = room % SERVERS
        split = {home: ROOM_SIZE} if room % 2 == 0 else {home: ROOM_SIZE // 2,
                                                          (home + 1) % SERVERS: ROOM_SIZE - ROOM_SIZE // 2}
        for server, count in split.items():
            for _ in range(count):  # consecutive clients: distinct while count <= clients
                joins[server][cursor[server] % clients].append(room)
                cursor[server] += 1
            members[room][server] = count
    return joins, members


def run(ctx: Context) -> Result:
    result = Result(headline="broadcasts_per_s", higher_is_better=True)
    rooms = ctx.scale(1000, 240)
    clients = ctx.scale(100, 30)
    burst = ctx.scale(6000, 800)
    limit = ctx.scale(120, 40)
    joins, members = placement(rooms, clients)

    def setup(side: Side, stack: contextlib.ExitStack) -> Any:
        cl = stack.enter_context(SideServers(side, SERVERS, ctx.workdir, "rooms"))
        receivers = stack.enter_context(groups(
            *((f"server{s}", side.proto, [cl.url(s)] * clients) for s in range(SERVERS)),
            ("senders", side.proto, [cl.url(s) for s in range(SERVERS)])))
        cl.wait_bus()
        return cl, receivers[:SERVERS], receivers[SERVERS]

    def one_run(side: Side, state: Any, i: int) -> dict[str, float]:
        cl, receivers, senders = state
        names = [f"rooms{i}-{r}" for r in range(rooms)]  # fresh rooms each run
        join_all([(g, [[names[r] for r in joins[s][c]] for c in range(clients)])
                  for s, g in enumerate(receivers)], timeout=limit)
        commands = [data_command(side.proto, "fanout", "room", name) for name in names]
        cl.stats(reset=True)
        per_window = {}
        for k, window in enumerate(WINDOWS):
            rng = random.Random(10 * i + k)
            lo = (10 * i + k + 1) * SEQ_SPAN
            items: list[list[tuple[str, str, int]]] = [[] for _ in range(SERVERS)]
            expected = [0] * SERVERS
            for j in range(burst):
                room = rng.randrange(rooms)
                items[j % SERVERS].append((*commands[room], lo + j))
                for s in range(SERVERS):
                    expected[s] += members[room][s]
            phase = run_phase(list(zip(receivers, expected, strict=True)), senders, items, None,
                              lo, lo + burst, limit, flow=(receivers, ROOM_SIZE, window), servers=cl)
            per_window[window] = {**rate_and_latency(phase, phase.records, lambda _seq: ROOM_SIZE,
                                                     burst, "burst_", "broadcasts_per_s"),
                                  **phase.delivery_cpu_us(sum(expected), range(SERVERS))}
        figures = best_of_windows(per_window, "broadcasts_per_s")
        stats = cl.stats()
        for s, st in enumerate(stats):
            figures[f"nonmember_s{s}"] = float(st["bus_nonmember_msgs"])
        figures["nonmember_total"] = float(sum(st["bus_nonmember_msgs"] for st in stats))
        figures["bus_room_msgs_total"] = float(sum(st["bus_room_msgs"] for st in stats))
        return figures

    measure_sides(ctx, result, ("dcm", "peer"), setup, one_run)
    result.notes.append(f"{rooms} rooms of {ROOM_SIZE} over {SERVERS} servers x {clients} clients; "
                        f"bursts of {burst} broadcasts to random rooms with "
                        f"{' and '.join(map(str, WINDOWS))} in flight (burst latency at {min(WINDOWS)}); "
                        f"nonmember_*: bus messages a server received for rooms it held no member of, "
                        f"per run (both bursts: {2 * burst} broadcasts)")
    return result
