"""Benchmarks of dcm-sync, one entry point per question; never part of the test suite's pass/fail.

- ``python -m benchmarks``: the scenarios against python-socketio (Flask-SocketIO +
  RedisManager) and a hand-written ceiling, in the same run (``--quick`` for a short run,
  ``--json PATH`` for the figures). Its parts: ``scenarios/``, the apps of each side in
  ``servers/``, ``sides.py`` (the three sides and one measured phase), ``loadgen.py`` (the
  WebSocket clients), ``harness.py`` (what every entry shares: results, medians, Redis probes).
- ``python -m benchmarks.capacity``: what a connection, room, server and operation cost Redis.
- ``python -m benchmarks.recovery``: what users see, and recovery times, for each fault.
- ``python -m benchmarks.soak``: churn; nothing lost, duplicated or leaked.
- ``python -m benchmarks.wire.inbound`` / ``python -m benchmarks.wire.hostile``: what reading
  clients' messages costs a server, and what hostile clients cost it.
- ``python -m benchmarks.topology_throughput``: what Redis Cluster costs against a single Redis.
- ``python -m benchmarks.script_cost``: what the core operations cost Redis itself, per script
  call, beside other commits.
- ``python -m benchmarks.bus_read``: a subscriber's bounded read against a blocking one.
- ``python -m benchmarks.history``: what a room history costs a broadcast against a plain room,
  and what a history holds in Redis.

``redis_stats.py`` reads Redis's memory and keys for capacity, soak and the memory scenario.
"""
