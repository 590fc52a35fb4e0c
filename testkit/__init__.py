"""What the tests and the benchmarks share, so that neither imports the other: real
``redis-server`` processes and topologies (Cluster, Sentinel, TLS), a fault proxy, server
processes and their clients, WebSocket frames as a client sees them, recording sockets for
in-process managers, and one polling helper. Not part of the installed library."""
