"""``python -m benchmarks.soak``: a bounded soak under connection churn that looks for leaks
(``__main__.py``: the servers, the run and the checks; ``clients.py``: the load-generator
processes; ``report.py``: the verdict)."""
