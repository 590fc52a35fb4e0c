"""The redis-py calls whose type annotations differ between its releases, typed here once.

redis-py's annotations still move from release to release: a call unannotated in one is
annotated in the next (``Redis.pubsub``, ``Sentinel.discover_master``), a parameter narrows
(``PubSub.get_message(timeout=...)`` lost ``None`` from its annotation in 8.2, though ``None``
still means "wait until something comes"), a class is abstract to mypy in one release
(``RedisCluster`` in 5.0) and a constructor returns ``Any`` in another (``Redis`` in 6.0).
Each such call goes through this module: redis-py is seen as ``Any`` for that one call, and
what comes back gets a type of the library's own. So ``mypy --strict`` gives the same answer
whichever redis-py in the supported range is installed, and no ``type: ignore`` comment
becomes "unused" when the next release adds an annotation.

The rest of the backends use redis-py's own annotations where every supported release agrees
(``redis.Redis``, ``redis.ConnectionPool``, the exception classes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import redis
from redis import backoff as _backoff
from redis import retry as _retry

__all__ = ["Backoff", "PubSub", "Retry", "redis_client", "equal_jitter_backoff", "no_backoff", "retry",
           "pool_from_url", "sentinel_pool", "sentinel_discover_master", "cluster_client",
           "pubsub", "evalsha", "close"]

Retry = _retry.Retry


class Backoff(Protocol):
    """What the library asks of a redis-py backoff."""

    def compute(self, failures: int) -> float: ...


class PubSub(Protocol):
    """What the library asks of a redis-py ``PubSub``."""

    def subscribe(self, *channels: str) -> object: ...
    def unsubscribe(self, *channels: str) -> object: ...
    def ssubscribe(self, *channels: str) -> object: ...
    def sunsubscribe(self, *channels: str) -> object: ...
    def reset(self) -> None: ...

    def get_message(self, ignore_subscribe_messages: bool = False,
                    timeout: float | None = 0.0) -> dict[str, Any] | None:
        """The next message or subscription reply; ``timeout=None`` waits until one comes."""
        ...


def _as_any(value: object) -> Any:
    return value


def equal_jitter_backoff(cap: float, base: float) -> Backoff:
    made: Backoff = _as_any(_backoff.EqualJitterBackoff)(cap=cap, base=base)
    return made


def no_backoff() -> Backoff:
    made: Backoff = _as_any(_backoff.NoBackoff)()
    return made


def retry(backoff: Backoff, retries: int,
          supported_errors: tuple[type[Exception], ...] | None = None) -> Retry:
    """redis-py's ``Retry``; ``supported_errors`` as redis-py's default when ``None``."""
    extra = {} if supported_errors is None else {"supported_errors": supported_errors}
    made: Retry = _as_any(Retry)(backoff, retries, **extra)
    return made


def redis_client(**settings: Any) -> redis.Redis:
    """``redis.Redis(**settings)`` (its constructor is seen as returning ``Any`` by 6.0's
    annotations)."""
    made: redis.Redis = redis.Redis(**settings)
    return made


def pool_from_url(pool_class: type[redis.ConnectionPool], url: str,
                  **settings: Any) -> redis.ConnectionPool:
    """``pool_class.from_url(url, **settings)``; raises ``ValueError`` for a malformed URL."""
    made: redis.ConnectionPool = _as_any(pool_class).from_url(url, **settings)
    return made


def sentinel_pool(service: str, sentinel: object, **settings: Any) -> redis.ConnectionPool:
    """A ``SentinelConnectionPool``: connections to the master that ``sentinel`` names."""
    from redis.sentinel import SentinelConnectionPool

    made: redis.ConnectionPool = _as_any(SentinelConnectionPool)(service, sentinel, **settings)
    return made


def sentinel_discover_master(parent: object, service: str) -> tuple[str, int]:
    """``Sentinel.discover_master`` called on ``parent`` (a subclass's ``super()``)."""
    host, port = _as_any(parent).discover_master(service)
    return str(host), int(port)


def cluster_client(hosts: list[tuple[str, int]], **settings: Any) -> Any:
    """A ``RedisCluster`` that starts from ``hosts``. Typed ``Any``: the backend calls it with
    ``target_nodes=`` and reads its node map, which its annotations do not describe alike in
    every release."""
    from redis.cluster import ClusterNode, RedisCluster

    nodes = [_as_any(ClusterNode)(host, port) for host, port in hosts]
    return _as_any(RedisCluster)(startup_nodes=nodes, **settings)


def pubsub(client: redis.Redis) -> PubSub:
    """``client.pubsub()``, on a connection of its own from the client's pool."""
    made: PubSub = _as_any(client).pubsub()
    return made


def evalsha(client: redis.Redis, sha: str, keys: Sequence[str], args: Sequence[object]) -> Any:
    """``EVALSHA sha len(keys) *keys *args`` on ``client``: the script's reply, as Redis gives it."""
    return _as_any(client).evalsha(sha, len(keys), *keys, *args)


def close(client: redis.Redis) -> None:
    """``client.close()``: gives back (or closes) the client's connection."""
    _as_any(client).close()
