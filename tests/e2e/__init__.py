"""End-to-end tests: real server processes, real redis-server, real WebSocket clients."""
