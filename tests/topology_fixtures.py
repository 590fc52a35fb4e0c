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


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[ClusterTopology]:
    """3 masters with a replica each, for the whole session: never kill its nodes (use
    ``fresh_cluster``); ask for ``cluster_url`` to start from an empty cluster."""
    yield from _started(ClusterTopology)


@pytest.fixture
def cluster_url(redis_cluster: ClusterTopology) -> str:
    """The shared cluster's ``redis+cluster://`` URL, every master flushed first."""
    redis_cluster.flushall()
    return redis_cluster.url


@pytest.fixture
def fresh_cluster() -> Iterator[ClusterTopology]:
    """A cluster for this test alone: it may kill and restart nodes."""
    yield from _started(ClusterTopology)


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[SentinelTopology]:
    """A master, a replica and 3 Sentinels for the whole session: never kill its master (use
    ``fresh_sentinel``); ask for ``sentinel_url`` to start from an empty master."""
    yield from _started(SentinelTopology)


@pytest.fixture
def sentinel_url(redis_sentinel: SentinelTopology) -> str:
    """The shared Sentinel set's ``redis+sentinel://`` URL, the master flushed first."""
    redis_sentinel.flushall()
    return redis_sentinel.url


@pytest.fixture
def fresh_sentinel() -> Iterator[SentinelTopology]:
    """A Sentinel set for this test alone: it may kill the master."""
    yield from _started(SentinelTopology)


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
