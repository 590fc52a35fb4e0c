"""``GET /metrics`` in the Prometheus text format, for `DistributedWebSockets.metrics_blueprint`.

Imported on demand: it needs ``prometheus_client`` (the ``metrics`` extra)."""

from __future__ import annotations

from collections.abc import Callable

from flask import Blueprint, Response

try:
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
except ImportError as exc:
    raise ImportError(
        "metrics_blueprint needs prometheus_client: pip install 'dcm-sync[metrics]'") from exc

from dcm_sync import DCMError, DistributedConnectionManager
from dcm_sync.prometheus import DCMCollector

__all__ = ["make_metrics_blueprint"]


def make_metrics_blueprint(get_manager: Callable[[], DistributedConnectionManager]) -> Blueprint:
    """A blueprint serving the collector of ``get_manager()`` (called at each scrape, so the
    manager is made in the serving process) from its own registry, not the global one."""
    registry = CollectorRegistry()
    registry.register(DCMCollector(get_manager))  # no describe(): nothing is read here
    bp = Blueprint("dcm_metrics", __name__)

    @bp.get("/metrics")
    def metrics() -> Response:
        try:
            get_manager()
        except DCMError as exc:  # shut down, or could not be made
            return Response(f"{exc}\n", status=503, mimetype="text/plain")
        return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)

    return bp
