"""A Redis of the test's own, a proxy in front of it, and in-process managers made on either."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from dcm_sync import DistributedConnectionManager
from testkit.proxy import TcpProxy
from testkit.redis_server import RedisServer
from tests.helpers.managers import Managers

Make = Callable[..., DistributedConnectionManager]


@pytest.fixture
def proxy(own_redis: RedisServer) -> Iterator[TcpProxy]:
    """A proxy in front of ``own_redis``; closed (every thread joined) at teardown."""
    with TcpProxy(("127.0.0.1", own_redis.port)) as p:
        yield p
    assert p.threads() == [], "proxy threads left running"


@pytest.fixture
def make(own_redis: RedisServer, proxy: TcpProxy, prefix: str) -> Iterator[Make]:
    """``make(url, **overrides)``: a started manager on ``url`` (the proxy's or Redis's own),
    FAST timings and the test's key prefix; shut down at teardown, before the proxy closes."""
    managers = Managers(prefix)

    def make(url: str, **overrides: Any) -> DistributedConnectionManager:
        return managers(redis_url=url, **overrides)

    yield make
    proxy.resume()
    proxy.restore()
    proxy.latency(0)
    managers.shutdown_all()
