"""``python -m benchmarks.recovery``: for each fault, what a user sees and how long recovery takes
(``__main__.py``: the command; ``faults.py``: faults 1-6 on one Redis; ``topology_faults.py``:
faults 7-9 on Redis Cluster and Sentinel; ``tools.py`` and ``watch.py``: what they are measured
with; ``report.py``: the table)."""
