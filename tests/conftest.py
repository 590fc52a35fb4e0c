from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from dcm_sync import Config, DistributedConnectionManager, create_distributed_connection_manager
from tests.helpers.redis_server import RedisServer

IN_CI = os.environ.get("CI", "").lower() == "true"

# Fast timings so that failure detection and cleanup happen within a test.
FAST = dict(heartbeat_interval=0.1, heartbeat_ttl=0.5, cleanup_interval=0.1,
            stale_connection_timeout=60.0)


def pytest_configure(config: pytest.Config) -> None:
    if shutil.which("redis-server") is None:
        msg = "redis-server is required for the tests (apt-get install redis-server)"
        if IN_CI:
            raise pytest.UsageError(msg)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}:"


@pytest.fixture(params=["memory", "redis"])
def backend_url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return f"memory://{uuid.uuid4().hex}"
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url


@pytest.fixture
def make_manager(backend_url: str, prefix: str) -> Iterator[Callable[..., DistributedConnectionManager]]:
    made: list[DistributedConnectionManager] = []

    def make(**overrides: Any) -> DistributedConnectionManager:
        settings: dict[str, Any] = dict(redis_url=backend_url, key_prefix=prefix, **FAST)
        settings.update(overrides)
        mgr = create_distributed_connection_manager(None, Config(**settings))
        made.append(mgr)
        return mgr

    yield make
    for mgr in made:
        mgr.shutdown()
