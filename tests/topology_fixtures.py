"""Fixtures for the tests marked ``topology``: a Redis Cluster and a Sentinel set shared by the
session (flushed before each test that asks for its URL), and fresh ones, for a test alone, for the
tests that kill nodes. Loaded as a plugin by tests/conftest.py."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from testkit.topologies import ClusterTopology, SentinelTopology
from testkit.topology_base import Topology
from tests.helpers.managers import Managers

T = TypeVar("T", bound=Topology)


def _started(kind: type[T]) -> Iterator[T]:
    """A started topology of ``kind`` until the fixture ends (every process and file removed)."""
    for binary in kind.REQUIRES:
        if shutil.which(binary) is None:
            pytest.fail(f"{binary} is not installed (Debian: apt-get install redis-server redis-tools)")
    with kind() as topology:
        yield topology


def _fixtures(kind: type[T], name: str, what: str) -> tuple[Any, Any, Any]:
    """The three fixtures of one topology ``kind``:

    - ``redis_<name>``: ``what``, started once for the whole session. Never kill its nodes;
    - ``<name>_url``: the shared one's URL, its data flushed first (a test starts empty);
    - ``fresh_<name>``: one for this test alone, which it may kill and restart nodes of.
    """

    @pytest.fixture(scope="session", name=f"redis_{name}")
    def shared() -> Iterator[T]:
        yield from _started(kind)

    @pytest.fixture(name=f"{name}_url")
    def url(request: pytest.FixtureRequest) -> str:
        topology: T = request.getfixturevalue(f"redis_{name}")
        topology.flushall()
        return topology.url

    @pytest.fixture(name=f"fresh_{name}")
    def fresh() -> Iterator[T]:
        yield from _started(kind)

    for fixture in (shared, url, fresh):
        fixture.__doc__ = f"{what}: see :func:`_fixtures`."
    return shared, url, fresh


redis_cluster, cluster_url, fresh_cluster = _fixtures(
    ClusterTopology, "cluster", "3 Redis Cluster masters with a replica each")
redis_sentinel, sentinel_url, fresh_sentinel = _fixtures(
    SentinelTopology, "sentinel", "a Redis master, a replica and 3 Sentinels")


@pytest.fixture
def managers_on(prefix: str) -> Iterator[Callable[..., Managers]]:
    """``managers_on(url, **settings)``: a :class:`Managers` factory on ``url``; every manager
    made is shut down at the end of the test."""
    made: list[Managers] = []

    def make(url: str, **settings: Any) -> Managers:
        m = Managers(prefix, redis_url=url, **settings)
        made.append(m)
        return m

    yield make
    for m in made:
        m.shutdown_all()
