"""A Prometheus collector for a `DistributedConnectionManager` (the ``metrics`` extra).

Register it yourself; each scrape reads the manager afresh::

    from prometheus_client import REGISTRY
    from dcm_sync.prometheus import DCMCollector

    REGISTRY.register(DCMCollector(manager))

Counters: every key of `DistributedConnectionManager.metrics()` as ``dcm_<key>_total``,
with its help text from `dcm_sync.manager.COUNTERS`.
Gauges: ``dcm_local_connections``, ``dcm_backend_up`` and, while the backend answers,
``dcm_cluster_connections``, ``dcm_cluster_rooms`` and ``dcm_active_servers``. Every sample
carries a ``server_id`` label.

This is the only module of dcm_sync that imports ``prometheus_client``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Mapping

try:
    from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError as exc:
    raise ImportError(
        "dcm_sync.prometheus needs prometheus_client: pip install 'dcm-sync[metrics]'"
    ) from exc

from .errors import DCMError
from .manager import COUNTERS, DistributedConnectionManager

__all__ = ["DCMCollector", "COUNTER_HELP"]

logger = logging.getLogger(__name__)

#: Help text of each counter: the manager's own list.
COUNTER_HELP: Mapping[str, str] = COUNTERS

_LABELS = ("server_id",)
_INVALID = re.compile(r"[^a-zA-Z0-9_]")

ManagerSource = DistributedConnectionManager | Callable[[], DistributedConnectionManager]


class DCMCollector(Collector):
    """Yields one manager's counters and gauges at each scrape.

    ``manager`` is the manager, or a no-argument callable returning the current one (resolved
    at each scrape, for managers made lazily). The collector has no ``describe()``: a registry
    without ``auto_describe`` (the default for a new ``CollectorRegistry``) never reads the
    manager at registration."""

    def __init__(self, manager: ManagerSource) -> None:
        self._source = manager

    def _manager(self) -> DistributedConnectionManager:
        if isinstance(self._source, DistributedConnectionManager):
            return self._source
        return self._source()

    def collect(self) -> Iterator[Metric]:
        mgr = self._manager()
        labels = [mgr.server_id]
        for key, value in sorted(mgr.metrics().items()):
            help_text = COUNTER_HELP.get(key, f"dcm_sync counter {key!r} since this manager started.")
            counter = CounterMetricFamily(f"dcm_{_INVALID.sub('_', key)}", help_text, labels=_LABELS)
            counter.add_metric(labels, value)
            yield counter
        yield _gauge("dcm_local_connections", "WebSocket connections held by this process.",
                     labels, len(mgr.local))
        try:
            stats = mgr.get_distributed_stats()
        except DCMError as exc:
            logger.info("scrape without cluster figures, the backend failed: %s", exc)
            yield _gauge("dcm_backend_up", "1 if the backend answered this scrape, else 0.", labels, 0)
            return
        yield _gauge("dcm_backend_up", "1 if the backend answered this scrape, else 0.", labels, 1)
        yield _gauge("dcm_cluster_connections", "WebSocket connections on all live servers.",
                     labels, stats.total_connections)
        yield _gauge("dcm_cluster_rooms", "Rooms with at least one member, cluster-wide.",
                     labels, stats.total_rooms)
        yield _gauge("dcm_active_servers", "Servers with a live heartbeat.", labels,
                     stats.active_servers)


def _gauge(name: str, help_text: str, labels: list[str], value: float) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(name, help_text, labels=_LABELS)
    gauge.add_metric(labels, value)
    return gauge
