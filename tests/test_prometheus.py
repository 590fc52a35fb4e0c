"""The Prometheus collector (dcm_sync.prometheus) scraped through a registry of its own."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from dcm_sync import Config, DistributedConnectionManager, create_distributed_connection_manager
from dcm_sync.prometheus import DCMCollector
from testkit.polling import wait_until
from testkit.recording import RecordingSocket, connect
from testkit.redis_server import RedisServer, env_for_subprocess
from tests.helpers.managers import FAST
from tests.helpers.metrics import parse_scrape

Make = Callable[..., DistributedConnectionManager]

COUNTERS = ("reconnects", "probes_failed", "envelopes_dropped", "send_errors",
            "connections_cleaned", "stale_removed", "restores")


def scrape(mgr: DistributedConnectionManager) -> tuple[dict[str, float], dict[str, str]]:
    registry = CollectorRegistry()
    registry.register(DCMCollector(mgr))
    return parse_scrape(generate_latest(registry).decode(), mgr.server_id)


def test_scrape_reports_counters_and_cluster_gauges(make_manager: Make) -> None:
    a, b = make_manager(), make_manager()
    connect(a, "alice", "r", "s")
    connect(b, "bob", "r")
    dead = a.register_connection(RecordingSocket(fail=True), "ghost")
    a.join_room(dead, "r")  # last: its join is told to the others, not to itself
    values, types = scrape(a)
    assert values["dcm_send_errors_total"] == 0
    assert values["dcm_local_connections"] == 2

    a.broadcast_to_room("r", {"n": 1})  # the dead socket's send fails and it is removed
    values, types = scrape(a)
    assert values["dcm_send_errors_total"] == 1
    for key, count in a.metrics().items():
        assert values[f"dcm_{key}_total"] == count
        assert types[f"dcm_{key}"] == "counter"
    assert {f"dcm_{key}" for key in COUNTERS} <= set(types)
    stats = a.get_distributed_stats()
    assert (stats.total_connections, stats.total_rooms, stats.active_servers) == (2, 2, 2)
    assert values["dcm_cluster_connections"] == stats.total_connections
    assert values["dcm_cluster_rooms"] == stats.total_rooms
    assert values["dcm_active_servers"] == stats.active_servers
    assert values["dcm_local_connections"] == len(a.local) == 1
    assert values["dcm_backend_up"] == 1
    assert all(types[g] == "gauge" for g in ("dcm_local_connections", "dcm_backend_up",
                                             "dcm_cluster_connections", "dcm_cluster_rooms",
                                             "dcm_active_servers"))
    other, _ = scrape(b)  # each collector speaks for its own manager
    assert other["dcm_send_errors_total"] == 0 and other["dcm_local_connections"] == 1


def test_new_counters_appear_without_code_changes(make_manager: Make,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    mgr = make_manager()
    real = mgr.metrics
    monkeypatch.setattr(mgr, "metrics", lambda: {**real(), "frames_mangled": 3})
    registry = CollectorRegistry()
    registry.register(DCMCollector(lambda: mgr))  # a callable source is resolved at each scrape
    text = generate_latest(registry).decode()
    values, types = parse_scrape(text, mgr.server_id)
    assert values["dcm_frames_mangled_total"] == 3 and types["dcm_frames_mangled"] == "counter"
    assert "# HELP dcm_frames_mangled_total dcm_sync counter 'frames_mangled'" in text


@pytest.fixture
def on_own_redis(own_redis: RedisServer, prefix: str) -> Iterator[DistributedConnectionManager]:
    settings: dict[str, Any] = dict(redis_url=own_redis.url, key_prefix=prefix, redis_timeout=0.5,
                                    **FAST)
    mgr = create_distributed_connection_manager(None, Config(**settings))
    yield mgr
    mgr.shutdown()


def test_backend_down_drops_cluster_gauges(own_redis: RedisServer,
                                           on_own_redis: DistributedConnectionManager) -> None:
    mgr = on_own_redis
    connect(mgr, "alice", "r")
    own_redis.stop()
    values, _ = scrape(mgr)  # a scrape still answers, without the figures Redis holds
    assert values["dcm_backend_up"] == 0 and values["dcm_local_connections"] == 1
    assert "dcm_cluster_connections" not in values and "dcm_active_servers" not in values
    assert values["dcm_reconnects_total"] == 0
    own_redis.start()  # same port, empty: the manager reconnects and writes its state back
    values = wait_until(lambda: (v := scrape(mgr)[0])["dcm_backend_up"] == 1
                        and v["dcm_reconnects_total"] >= 1 and v, timeout=15)
    assert values["dcm_restores_total"] >= 1
    assert values["dcm_cluster_connections"] == 1 and values["dcm_active_servers"] == 1


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env_for_subprocess(), timeout=60)


def test_importing_the_library_does_not_import_prometheus_client() -> None:
    proc = _run("import sys, flask, dcm_sync, flask_ext\n"
                "sockets = flask_ext.DistributedWebSockets(flask.Flask('x'))\n"
                "assert 'prometheus_client' not in sys.modules, 'imported'\n")
    assert proc.returncode == 0, proc.stderr


def test_missing_prometheus_client_names_the_extra() -> None:
    proc = _run("import sys\n"
                "sys.modules['prometheus_client'] = None\n"
                "try:\n"
                "    import dcm_sync.prometheus\n"
                "except ImportError as exc:\n"
                "    print(exc)\n")
    assert proc.returncode == 0, proc.stderr
    assert "dcm-sync[metrics]" in proc.stdout
