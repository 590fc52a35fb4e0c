"""``python -m benchmarks.capacity``: what each connection, room, server and operation costs Redis
(``__main__.py``: the command and its report; ``phases.py``: what each measurement does)."""
