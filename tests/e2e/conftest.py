"""Fixtures that start example server processes and clients, and always stop them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from testkit.chat import ChatClient, ChatServer


@pytest.fixture
def launch(tmp_path: Path, prefix: str) -> Iterator[Callable[..., list[ChatServer]]]:
    """``launch(redis_url, count=1)``: start servers in parallel, wait until each answers /stats.
    Every process is killed at teardown; their logs are printed (shown when a test fails)."""
    started: list[ChatServer] = []

    def launch(redis_url: str | None, count: int = 1) -> list[ChatServer]:
        servers = [ChatServer(f"server{len(started) + i}", redis_url, prefix, tmp_path)
                   for i in range(count)]
        started.extend(servers)
        for server in servers:
            server.wait_stats(timeout=30)
        return servers

    yield launch
    for server in started:
        server.kill()
    for server in started:
        print(f"----- {server} exit={server.proc.returncode} -----\n{server.log()}")


@pytest.fixture
def connect() -> Iterator[Callable[[ChatServer, str], ChatClient]]:
    """``connect(server, user)``: a client that has had its welcome; closed at teardown."""
    clients: list[ChatClient] = []

    def connect(server: ChatServer, user: str) -> ChatClient:
        client = ChatClient(server.port, user)
        clients.append(client)
        return client

    yield connect
    for client in clients:
        client.close()
