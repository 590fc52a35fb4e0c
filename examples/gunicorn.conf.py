"""gunicorn settings for the chat example, run from the repository root:

    REDIS_URL=redis://127.0.0.1:6379/0 PORT=8000 WEB_CONCURRENCY=4 \\
        gunicorn -c examples/gunicorn.conf.py examples.chat.app:app

Every worker is one dcm-sync server (its own server id, sockets and Redis subscription); with
REDIS_URL they share rooms and messages with each other and with any other process on that Redis.
Without REDIS_URL each worker gets its own memory:// state and workers do not see each other.

Post-fork safety: nothing in the app starts at import time. ``DistributedWebSockets(app)`` only
reads configuration; the manager (Redis connections, listener, heartbeat) is made lazily on first
use inside the serving process, and a manager inherited across a fork (pid changed) is never
reused. So each worker builds its own after gunicorn forked it and after the gevent worker
monkey-patched it. Keep ``preload_app`` off all the same: the gevent worker patches after fork,
and a preloaded app would import Flask, redis and their socket users in the master, unpatched.
"""

import os

bind = f"127.0.0.1:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# gevent-websocket's gevent worker with the project's handler: refused tokens get HTTP 401 and
# foreign origins 403 before any handshake.
worker_class = "flask_ext.gunicorn_worker.DCMGeventWebSocketWorker"
worker_connections = 1000  # sockets per worker (gevent greenlets)
preload_app = False

# gunicorn 27 opens a control socket under ~/.gunicorn/ by default (--no-control-socket).
control_socket_disable = True

# WebSockets never finish by themselves. On SIGTERM the project's worker closes this worker's
# sockets at once (rooms are told, reason "shutdown"); graceful_timeout bounds the wait for them
# (and any HTTP request) to end, after which the master SIGKILLs the worker.
graceful_timeout = 3
timeout = 30


def worker_exit(server, worker):
    """In the exiting worker: make sure its server is unregistered (a no-op when the worker's
    SIGTERM handling did it already)."""
    try:
        from examples.chat.app import sockets  # imported lazily: the worker has loaded it already
    except ImportError:
        return
    sockets.shutdown()
