"""direct: 2 servers x 50 clients; one client on server A sends 100-byte messages to one
client on server B by its connection id, as fast as it can and then at a paced rate.

"As fast as it can": bursts with a bounded number of messages in flight, at each of
:data:`WINDOWS`, each side taken at its best (see room_fanout). Headline: messages delivered per
second (from the first send to the last delivery); ``delivery_cpu_us``: server B's CPU time per
message it delivered in the bursts. Latency p50/p99 over every delivery, in the
burst at the smallest window, and paced. The other 98 clients stay connected, idle.
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
    measure_sides,
    rate_and_latency,
    run_phase,
)

CLIENTS_PER_SERVER = 50
PACED_RATE = 200.0  # messages per second
WINDOWS = (10, 100)  # messages in flight in the bursts


def run(ctx: Context) -> Result:
    result = Result(headline="messages_per_s", higher_is_better=True)
    burst = ctx.scale(10000, 1200)
    paced = ctx.scale(1000, 200)
    limit = ctx.scale(90, 30)
    n = CLIENTS_PER_SERVER

    def setup(side: Side, stack: contextlib.ExitStack) -> Any:
        cl = stack.enter_context(SideServers(side, 2, ctx.workdir, "direct"))
        made = stack.enter_context(groups(
            ("idle", side.proto, [cl.url(0)] * (n - 1) + [cl.url(1)] * (n - 1)),
            ("receiver", side.proto, [cl.url(1)]),
            ("sender", side.proto, [cl.url(0)])))
        cl.wait_bus()
        return (cl, *made)

    def one_run(side: Side, state: Any, i: int) -> dict[str, float]:
        cl, _idle, receiver, sender = state
        head, tail = data_command(side.proto, "direct", "to", receiver.ids[0])

        def phase(k: int, count: int, rate: float | None, window: int, prefix: str,
                  rate_name: str) -> dict[str, float]:
            lo = (10 * i + k + 1) * SEQ_SPAN
            done = run_phase([(receiver, count)], sender, [[(head, tail, lo + j) for j in range(count)]],
                             rate, lo, lo + count, limit, flow=([receiver], 1, window),
                             servers=cl if rate is None else None)
            figures = rate_and_latency(done, done.records, lambda _seq: 1, count, prefix, rate_name)
            return {**figures, **done.delivery_cpu_us(count, [1])}  # server B's

        figures = best_of_windows({w: phase(k, burst, None, w, "burst_", "messages_per_s")
                                   for k, w in enumerate(WINDOWS)}, "messages_per_s")
        figures.update(phase(len(WINDOWS), paced, PACED_RATE, max(WINDOWS), "paced_", ""))
        return figures

    measure_sides(ctx, result, ("dcm", "peer", "ceiling"), setup, one_run)
    result.extra_ratios["p99_ratio"] = ratio(result.dcm.get("paced_p99_ms"),
                                             result.peer.get("paced_p99_ms"), False)
    result.extra_ratios["ceiling_ratio"] = ratio(result.dcm.get("messages_per_s"),
                                                 result.ceiling.get("messages_per_s"), True)
    result.notes.append(f"bursts of {burst} messages with {' and '.join(map(str, WINDOWS))} in flight "
                        f"(burst latency at {min(WINDOWS)}), {paced} paced at {PACED_RATE:.0f}/s; "
                        "sides interleaved run by run")
    return result
