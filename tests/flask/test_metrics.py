"""``DistributedWebSockets.metrics_blueprint``: GET /metrics through Flask's test client."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from flask import Flask
from prometheus_client import CONTENT_TYPE_LATEST

from flask_ext import DistributedWebSockets
from testkit.recording import RecordingSocket
from tests.helpers.metrics import parse_scrape


def make_app(backend_url: str, prefix: str) -> tuple[Flask, DistributedWebSockets]:
    app = Flask(f"app-{uuid.uuid4().hex[:6]}")
    app.config.update(DCM_REDIS_URL=backend_url, DCM_KEY_PREFIX=prefix)
    sockets = DistributedWebSockets(app)
    app.register_blueprint(sockets.metrics_blueprint, url_prefix="/dcm")
    return app, sockets


@pytest.fixture
def apps() -> Iterator[list[tuple[Flask, DistributedWebSockets]]]:
    made: list[tuple[Flask, DistributedWebSockets]] = []
    yield made
    for _, sockets in made:
        sockets.shutdown()


def test_metrics_endpoint(apps: list[tuple[Flask, DistributedWebSockets]], backend_url: str,
                          prefix: str) -> None:
    app, sockets = make_app(backend_url, prefix)
    apps.append((app, sockets))
    assert not sockets._state().started()  # registering the blueprint starts nothing
    client = app.test_client()

    resp = client.get("/dcm/metrics")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == CONTENT_TYPE_LATEST
    mgr = sockets.manager
    values, types = parse_scrape(resp.get_data(as_text=True), mgr.server_id)
    assert values["dcm_send_errors_total"] == 0 and types["dcm_send_errors"] == "counter"
    assert values["dcm_backend_up"] == 1 and values["dcm_active_servers"] == 1

    dead = mgr.register_connection(RecordingSocket(fail=True), "ghost")
    assert mgr.send_to_connection(dead, "hello") is False  # the send fails: counted, removed
    values, _ = parse_scrape(client.get("/dcm/metrics").get_data(as_text=True), mgr.server_id)
    assert values["dcm_send_errors_total"] == 1
    assert values["dcm_local_connections"] == 0 and values["dcm_cluster_connections"] == 0

    # a second app in the same process has its own registry and manager: no clash
    app2, sockets2 = make_app(backend_url, prefix)
    apps.append((app2, sockets2))
    resp2 = app2.test_client().get("/dcm/metrics")
    values2, _ = parse_scrape(resp2.get_data(as_text=True), sockets2.manager.server_id)
    assert values2["dcm_send_errors_total"] == 0 and values2["dcm_active_servers"] == 2

    sockets.shutdown()
    resp = client.get("/dcm/metrics")
    assert resp.status_code == 503 and b"shut down" in resp.data
