"""Benchmarks of dcm-sync against python-socketio (Flask-SocketIO + RedisManager) in the same run.

Run ``python -m benchmarks`` (``--quick`` for a short run, ``--json PATH`` for the figures).
Never part of the test suite's pass/fail.
"""
