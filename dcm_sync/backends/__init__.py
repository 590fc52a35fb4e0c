"""Coordination backends: ``memory://`` (in-process); ``redis://``, ``rediss://``, ``unix://`` and
``redis+sentinel://`` and ``rediss+sentinel://`` (one Redis master); ``redis+cluster://`` and ``rediss+cluster://``."""

from __future__ import annotations

from urllib.parse import urlsplit

from ..config import redact_url
from ..errors import ConfigError
from .base import Backend, ConnectionRecord, RoomChange, Subscription

__all__ = ["Backend", "ConnectionRecord", "RoomChange", "Subscription", "open_backend"]


def open_backend(url: str, key_prefix: str, timeout: float = 2.0,
                 ca_file: str | None = None, count_users: bool = False) -> Backend:
    """The backend for ``url``; only this function picks an implementation.
    ``ca_file``: the CA certificates (PEM) that verify a ``rediss://`` server;
    ``count_users``: see [`Backend.count_users`][dcm_sync.backends.Backend]."""
    backend = _open(url, key_prefix, timeout, ca_file)
    backend.count_users = count_users
    return backend


def _open(url: str, key_prefix: str, timeout: float, ca_file: str | None) -> Backend:
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from .memory import MemoryBackend

        return MemoryBackend(url, key_prefix)
    if scheme in ("redis+cluster", "rediss+cluster"):
        from .redis_cluster import RedisClusterBackend

        return RedisClusterBackend(url, key_prefix, timeout=timeout, ca_file=ca_file)
    if scheme in ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel"):
        from .redis import RedisBackend

        return RedisBackend(url, key_prefix, timeout=timeout, ca_file=ca_file)
    raise ConfigError(f"no backend for URL scheme {scheme!r} in {redact_url(url)!r}")
