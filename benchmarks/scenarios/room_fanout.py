"""room_fanout: 2 servers x 50 clients in one room; one of server A's clients broadcasts
100-byte messages (itself excluded), as fast as it can and then at a paced rate.

"As fast as it can" is a burst with a bounded number of broadcasts in flight (sent, not yet
received by all of B's clients), run at each of :data:`WINDOWS`: the figure is a sustained rate
rather than how deep a queue grows, and each side is taken at its best window (the rates depend
on the window, and not alike: python-socketio handles each event in its own greenlet, this
project and the ceiling handle one socket's messages in order).

Headline: full broadcasts per second at server B, a broadcast counting once all of B's 50
clients got it (from the first send to the last completion). ``delivery_cpu_us``: server B's
CPU time per frame it delivered in the bursts (B only receives: the figure does not depend on
how much of the machine the load generator takes). Latency p50/p99 over every receipt
at B: in the burst at the smallest window, and paced. A's 49 other clients receive too (they
are read, not measured).
"""

from __future__ import annotations

import contextlib
from typing import Any

from ..harness import Context, Result, ratio
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

CLIENTS_PER_SERVER = 50
PACED_RATE = 100.0  # broadcasts per second
WINDOWS = (10, 50)  # broadcasts in flight in the bursts


def run(ctx: Context) -> Result:
    result = Result(headline="broadcasts_per_s", higher_is_better=True)
    burst = ctx.scale(2000, 400)
    paced = ctx.scale(800, 120)
    limit = ctx.scale(90, 30)
    n = CLIENTS_PER_SERVER

    def setup(side: Side, stack: contextlib.ExitStack) -> Any:
        cl = stack.enter_context(SideServers(side, 2, ctx.workdir, "fanout"))
        made = stack.enter_context(groups(("A", side.proto, [cl.url(0)] * (n - 1)),
                                          ("B", side.proto, [cl.url(1)] * n),
                                          ("sender", side.proto, [cl.url(0)])))
        cl.wait_bus()
        return (cl, *made)

    def one_run(side: Side, state: Any, i: int) -> dict[str, float]:
        cl, a, b, sender = state
        room = f"fanout-{i}"  # a fresh room per run
        join_all([(g, [[room]] * g.size) for g in (a, b, sender)], timeout=limit)
        head, tail = data_command(side.proto, "fanout", "room", room)

        def phase(k: int, count: int, rate: float | None, window: int, prefix: str,
                  rate_name: str) -> dict[str, float]:
            lo = (10 * i + k + 1) * SEQ_SPAN
            done = run_phase([(a, count * (n - 1)), (b, count * n)], sender,
                             [[(head, tail, lo + j) for j in range(count)]], rate, lo, lo + count,
                             limit, flow=([b], n, window), servers=cl if rate is None else None)
            figures = rate_and_latency(done, done.records[1:], lambda _seq: n, count, prefix,
                                       rate_name)
            return {**figures, **done.delivery_cpu_us(count * n, [1])}  # server B's

        figures = best_of_windows({w: phase(k, burst, None, w, "burst_", "broadcasts_per_s")
                                   for k, w in enumerate(WINDOWS)}, "broadcasts_per_s")
        figures.update(phase(len(WINDOWS), paced, PACED_RATE, max(WINDOWS), "paced_", ""))
        return figures

    measure_sides(ctx, result, ("dcm", "peer", "ceiling"), setup, one_run)
    result.extra_ratios["p99_ratio"] = ratio(result.dcm.get("paced_p99_ms"),
                                             result.peer.get("paced_p99_ms"), False)
    result.extra_ratios["ceiling_ratio"] = ratio(result.dcm.get("broadcasts_per_s"),
                                                 result.ceiling.get("broadcasts_per_s"), True)
    result.notes.append(f"bursts of {burst} broadcasts with {' and '.join(map(str, WINDOWS))} in flight "
                        f"(burst latency at {min(WINDOWS)}), {paced} paced at {PACED_RATE:.0f}/s; "
                        "sides interleaved run by run, a fresh room each run")
    return result
