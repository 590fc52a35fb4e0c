"""What reading clients' frames costs a server (the chat example, ``chat_server.py``):
``python -m benchmarks.wire.inbound`` (messages per second, against older commits) and
``python -m benchmarks.wire.hostile`` (what hostile clients cost)."""
