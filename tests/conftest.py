from __future__ import annotations

import os
import shutil
import signal
import uuid
from collections.abc import Callable, Iterator

import pytest

from dcm_sync import Config, DistributedConnectionManager, create_distributed_connection_manager
from testkit.closing import close_all
from testkit.redis_server import RedisServer
from tests.helpers.managers import STEADY, Managers

# redis_cluster, cluster_url, fresh_cluster, redis_sentinel, sentinel_url, fresh_sentinel
pytest_plugins = ["tests.topology_fixtures"]

IN_CI = os.environ.get("CI", "").lower() == "true"

def pytest_configure(config: pytest.Config) -> None:
    if shutil.which("redis-server") is None:
        msg = "redis-server is required for the tests (apt-get install redis-server)"
        if IN_CI:
            raise pytest.UsageError(msg)


@pytest.fixture(autouse=True)
def _close_what_the_test_opened() -> Iterator[None]:
    yield
    close_all()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis for this test alone: it may be restarted, paused (SIGSTOP) or have its clients
    killed without touching any other test."""
    server = RedisServer()
    server.start()
    yield server
    if server.proc is not None and server.proc.poll() is None:
        server.proc.send_signal(signal.SIGCONT)  # a test that failed while it was paused
    server.cleanup()


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}:"


@pytest.fixture(params=["memory", "redis",
                        pytest.param("cluster", marks=pytest.mark.topology),
                        pytest.param("sentinel", marks=pytest.mark.topology)])
def backend_url(request: pytest.FixtureRequest) -> str:
    """Every backend the core tests run on; each test has its own key prefix, so the shared
    Redis, Cluster and Sentinel set need no flushing between tests."""
    if request.param == "memory":
        return f"memory://{uuid.uuid4().hex}"
    if request.param == "cluster":
        return str(request.getfixturevalue("redis_cluster").url)
    if request.param == "sentinel":
        return str(request.getfixturevalue("redis_sentinel").url)
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url


@pytest.fixture
def make_manager(backend_url: str, prefix: str) -> Iterator[Callable[..., DistributedConnectionManager]]:
    managers = Managers(prefix, redis_url=backend_url)
    yield managers
    managers.shutdown_all()


@pytest.fixture
def redis_pair(redis_server: RedisServer, prefix: str) -> Iterator[list[DistributedConnectionManager]]:
    """Two started managers on the session's Redis with the :data:`STEADY` timings."""
    made = [create_distributed_connection_manager(
        None, Config(redis_url=redis_server.url, key_prefix=prefix, **STEADY)) for _ in range(2)]
    yield made
    for m in made:
        m.shutdown()
