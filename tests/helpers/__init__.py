"""What only the tests use: in-process managers with fast timings, the ACL lists, a socket pair
with the outbox interface, the Prometheus parser. What benchmarks use too is in ``testkit``."""
