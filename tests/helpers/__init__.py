"""Test helpers: real redis-server processes, recording sockets, polling."""
