"""Fixtures of the Flask server tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.redis_server import RedisServer
from tests.flask.procs import Servers


@pytest.fixture
def servers(redis_server: RedisServer, prefix: str, tmp_path: Path) -> Iterator[Servers]:
    """Starts this test's servers on the shared Redis; stops them all (and prints their logs) after."""
    made = Servers(redis_server.url, prefix, tmp_path)
    yield made
    made.stop_all()
