"""Network faults between a server and Redis, put in by a TCP proxy (testkit/proxy.py)."""
