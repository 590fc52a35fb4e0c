"""From a ``redis_url`` to redis-py clients, with the library's timeouts, retries and TLS rules.

    redis://[user:password@]host:port[/db]        one Redis (also rediss://, unix://)
    redis+sentinel://[user:password@]host:port[,host:port...]/service[/db][?sentinel_password=...]
                                                  (also rediss+sentinel://)
    redis+cluster://[user:password@]host:port[,host:port...]   (also rediss+cluster://)

Every command gets two attempts (the second on a fresh connection, so that a connection left
stale by a restart or a failover costs no error) of ``timeout``/2 each. Subscriber connections
never retry on their own: the listener owns reconnection. With TLS the server's certificate
and name are verified (only ``?ssl_cert_reqs=none`` in a single Redis URL turns that off).
The user and password of a Sentinel URL are those of the Redis master and replicas; the
sentinels' own (their ``requirepass``, or an ACL user) go in the query, ``sentinel_username``
and ``sentinel_password``. ``rediss+sentinel://`` speaks TLS to the sentinels and to the
master and replicas, verifying every certificate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import redis

from ..config import redact_url
from ..errors import ConfigError
from .redis_typed import (
    Retry,
    cluster_client,
    equal_jitter_backoff,
    no_backoff,
    pool_from_url,
    redis_client,
    retry,
    sentinel_discover_master,
    sentinel_pool,
)

__all__ = ["MasterPools", "master_pools", "cluster_clients", "parse_hosts"]

POOL_SIZE = 64  # Redis connections per process for commands (subscribers have their own)
SENTINEL_PORT = 26379
REDIS_PORT = 6379


def _retry() -> Retry:
    return retry(equal_jitter_backoff(cap=0.05, base=0.01), 1)


def _no_retry() -> Retry:
    return retry(no_backoff(), 0, supported_errors=())


def _common(timeout: float, tls: bool, ca_file: str | None) -> dict[str, Any]:
    attempt = timeout / 2
    common: dict[str, Any] = {"socket_timeout": attempt, "socket_connect_timeout": attempt}
    if tls:
        common.update(ssl_cert_reqs="required", ssl_check_hostname=True)
        if ca_file is not None:
            common["ssl_ca_certs"] = ca_file
    return common


def parse_hosts(url: str, default_port: int) -> tuple[list[tuple[str, int]], dict[str, Any], str]:
    """``(hosts, credentials, path)`` of a URL whose netloc lists ``host:port,host:port``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    creds: dict[str, Any] = {}
    if "@" in netloc:
        userinfo, netloc = netloc.rsplit("@", 1)
        user, _, password = userinfo.partition(":")
        if user:
            creds["username"] = unquote(user)
        if password:
            creds["password"] = unquote(password)
    hosts = []
    for item in filter(None, netloc.split(",")):
        if item.startswith("["):  # [::1]:port
            host, _, rest = item[1:].partition("]")
            port_text = rest.lstrip(":")
        else:
            host, _, port_text = item.rpartition(":") if ":" in item else (item, "", "")
        try:
            port = int(port_text) if port_text else default_port
        except ValueError:
            raise ConfigError(f"invalid port {port_text!r} in {redact_url(url)!r}") from None
        if not host or not 0 < port < 65536:
            raise ConfigError(f"invalid host:port {item!r} in {redact_url(url)!r}")
        hosts.append((host, port))
    if not hosts:
        raise ConfigError(f"no host:port in {redact_url(url)!r}")
    return hosts, creds, parts.path


@dataclass
class MasterPools:
    commands: redis.ConnectionPool
    hot: redis.ConnectionPool
    #: a new pool for each subscription: a connection that a failed subscription leaves in an
    #: unknown state is never handed to the next one
    subscriber: Callable[[], redis.ConnectionPool]
    shown_url: str
    #: whether the per-message connection may be held by one client for good; not under
    #: Sentinel, where only a pool checkout asks the sentinels for the current master
    hot_held: bool = True
    #: closes the connections the pools share (to the sentinels), once the pools are closed
    close_shared: Callable[[], None] = lambda: None


def master_pools(url: str, timeout: float, ca_file: str | None) -> MasterPools:
    """The three pools of one Redis master: commands, the per-message connection, subscribers."""
    scheme = urlsplit(url).scheme
    if scheme in ("redis+sentinel", "rediss+sentinel"):
        return _sentinel_pools(url, timeout, ca_file)
    common = _common(timeout, scheme == "rediss", ca_file)
    try:
        # A burst of calls must wait for a pooled connection (up to ``timeout``/2), not
        # fail with "Too many connections" as redis-py's default pool does when full.
        commands = pool_from_url(redis.BlockingConnectionPool, url, max_connections=POOL_SIZE,
                                 timeout=timeout / 2, retry=_retry(), **common)
        hot = pool_from_url(redis.ConnectionPool, url, max_connections=1, retry=_retry(), **common)
    except ValueError as exc:
        raise ConfigError(f"invalid Redis URL {redact_url(url)!r}: {exc}") from exc

    def subscriber() -> redis.ConnectionPool:
        return pool_from_url(redis.ConnectionPool, url, max_connections=1, retry=_no_retry(),
                             **common)

    return MasterPools(commands, hot, subscriber, redact_url(url))


SENTINEL_QUERY = ("sentinel_username", "sentinel_password")


def _sentinel_credentials(url: str) -> dict[str, str]:
    """The sentinels' own ``username``/``password`` from a Sentinel URL's query."""
    query = urlsplit(url).query
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True) if query else []
    except ValueError:
        pairs = [("not key=value", "")]  # refused below like any unknown parameter
    found: dict[str, str] = {}
    for key, value in pairs:
        if key not in SENTINEL_QUERY or key.removeprefix("sentinel_") in found:
            raise ConfigError(f"{redact_url(url)!r}: a Sentinel URL's query may only give "
                              f"sentinel_username and sentinel_password, each once")
        found[key.removeprefix("sentinel_")] = value
    return found


def _sentinel_class() -> type:
    from redis.sentinel import MasterNotFoundError, Sentinel

    class ExplainingSentinel(Sentinel):
        """redis-py's Sentinel, whose "no master found" says why in a few words: the sentinels
        refused the credentials (AuthenticationError), could not be reached (the first
        sentinel's error, TLS ones included, as the cause), or name no master."""

        def discover_master(self, service_name: str) -> tuple[str, int]:
            try:
                return sentinel_discover_master(super(), service_name)
            except MasterNotFoundError:
                error = self._why(service_name)
            raise error  # outside the except block: keeps the cause _why gave it

        def _why(self, service_name: str) -> Exception:
            first: Exception | None = None
            for client in self.sentinels:
                try:
                    client.ping()
                except redis.AuthenticationError:
                    return redis.AuthenticationError(
                        "the Sentinels refused their credentials (sentinel_username and "
                        "sentinel_password in the URL's query)")
                except (redis.ConnectionError, redis.TimeoutError) as exc:
                    first = first or exc
                else:
                    return MasterNotFoundError(
                        f"the Sentinels name no healthy master for service {service_name!r}")
            error = redis.ConnectionError(f"no Sentinel answered: {first}")
            error.__cause__ = first  # a TLS error shows as such (see translate_errors)
            return error

    return ExplainingSentinel


def _sentinel_pools(url: str, timeout: float, ca_file: str | None) -> MasterPools:
    from redis.sentinel import SentinelManagedSSLConnection

    hosts, creds, path = parse_hosts(url, SENTINEL_PORT)
    segments = [unquote(s) for s in path.split("/") if s]
    if not 1 <= len(segments) <= 2:
        raise ConfigError(f"{redact_url(url)!r}: the path must be /service_name[/db]")
    service = segments[0]
    try:
        db = int(segments[1]) if len(segments) == 2 else 0
    except ValueError:
        raise ConfigError(f"{redact_url(url)!r}: db must be a number") from None
    tls = urlsplit(url).scheme == "rediss+sentinel"
    common = _common(timeout, tls, ca_file)
    # no retries of their own: discovery moves on to the next sentinel (redis-py's default
    # would back off for seconds on each unreachable one)
    to_sentinels = {**common, **_sentinel_credentials(url), "retry": _no_retry(),
                    **({"ssl": True} if tls else {})}
    sentinel = _sentinel_class()(hosts, sentinel_kwargs=to_sentinels)
    if tls:
        common["connection_class"] = SentinelManagedSSLConnection

    def pool(policy: Retry, **extra: Any) -> redis.ConnectionPool:
        return sentinel_pool(service, sentinel, db=db, retry=policy, **creds, **common, **extra)

    def close_sentinels() -> None:
        for client in sentinel.sentinels:
            client.connection_pool.disconnect()

    return MasterPools(pool(_retry()), pool(_retry(), max_connections=1),
                       lambda: pool(_no_retry(), max_connections=1), redact_url(url),
                       hot_held=False, close_shared=close_sentinels)


def cluster_clients(url: str, timeout: float, ca_file: str | None) -> tuple[Any, Any, Any]:
    """A ``RedisCluster`` for commands; ``node -> Redis`` for one shard's subscriber; and
    ``node -> Redis`` holding one connection to a master for the per-message commands."""
    from redis.cluster import ClusterNode

    hosts, creds, path = parse_hosts(url, REDIS_PORT)
    if path.strip("/") not in ("", "0"):
        raise ConfigError(f"{redact_url(url)!r}: Redis Cluster has database 0 only")
    tls = urlsplit(url).scheme == "rediss+cluster"
    common = {**_common(timeout, tls, ca_file), **creds}
    if tls:
        common["ssl"] = True
    cluster = cluster_client(hosts, retry=_retry(), require_full_coverage=False, **common)

    def subscriber(node: ClusterNode) -> redis.Redis:
        return redis_client(host=node.host, port=node.port, retry=_no_retry(), **common)

    def held(node: ClusterNode) -> redis.Redis:
        return redis_client(host=node.host, port=node.port, retry=_retry(),
                      single_connection_client=True, **common)

    return cluster, subscriber, held
