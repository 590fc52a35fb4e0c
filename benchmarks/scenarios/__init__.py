"""The scenarios, in the order ``python -m benchmarks`` runs them."""

from __future__ import annotations

from collections.abc import Callable

from ..harness import Context, Result
from . import direct, many_rooms, room_fanout

SCENARIOS: dict[str, Callable[[Context], Result]] = {
    "room_fanout": room_fanout.run,
    "direct": direct.run,
    "many_rooms": many_rooms.run,
}

# ops, failover_cleanup and memory run after the three above
from . import failover, memory, ops  # noqa: E402

SCENARIOS.update({"ops": ops.run, "failover_cleanup": failover.run, "memory": memory.run})
