"""Reading a deployment's Redis for capacity figures: one server for ``redis://``, every master
for ``redis+cluster://`` (figures added up). Used by ``python -m benchmarks.capacity``.

Keys are found with ``SCAN`` under the key prefix and classified by the word after it
(``connections``, ``rooms``, ``servers``, ``server-connections``, ``index``, ``lock``), so the
figures do not depend on the rest of a key's layout (hash tags such as ``connections:{1234}...``
or ``index:rooms:{r3f}`` classify the same way).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import redis

__all__ = ["RedisNodes", "KeyInfo", "key_class", "used_memory", "is_cluster_url"]

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")
_CHUNK = 1000
_SIZE = {"set": "scard", "hash": "hlen", "zset": "zcard", "list": "llen"}


def is_cluster_url(url: str) -> bool:
    return urlsplit(url).scheme in CLUSTER_SCHEMES


def key_class(key: str, prefix: str) -> str:
    """The kind of a key under ``prefix``: the word after it, and for ``index`` the index's name
    (``index:rooms``, ``index:servers``) without any hash tag."""
    word, _, rest = key[len(prefix):].partition(":")
    if word == "index":
        return "index:" + re.split(r"[:{]", rest, maxsplit=1)[0]
    return word


def used_memory(info: Mapping[str, Any]) -> int:
    """``used_memory`` less ``mem_clients_normal`` of an ``INFO memory`` reply (client buffers,
    which Redis grows and shrinks on its own: tens of KB of noise per client between two reads)."""
    return int(info["used_memory"]) - int(info.get("mem_clients_normal", 0))


@dataclass(frozen=True)
class KeyInfo:
    key: str
    kind: str        # key_class()
    bytes: int       # MEMORY USAGE key SAMPLES 0
    encoding: str    # OBJECT ENCODING
    members: int     # SCARD / HLEN (0 for other types)


def _add(total: dict[str, Any], part: dict[str, Any]) -> None:
    """Add ``part``'s numbers into ``total`` (nested dicts such as commandstats' too)."""
    for k, v in part.items():
        if isinstance(v, dict):
            _add(total.setdefault(k, {}), v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            total[k] = total.get(k, 0) + v
        else:
            total.setdefault(k, v)


class RedisNodes:
    """The Redis servers holding a deployment's data, read directly (never through the library)."""

    def __init__(self, url: str) -> None:
        self.cluster = is_cluster_url(url)
        self.nodes: list[redis.Redis] = _masters(url) if self.cluster else [redis.Redis.from_url(url)]

    # -- figures, added up over the nodes
    def info(self, section: str) -> dict[str, Any]:
        total: dict[str, Any] = {}
        for node in self.nodes:
            _add(total, node.info(section))
        return total

    def version(self) -> str:
        return str(self.nodes[0].info("server")["redis_version"])

    # -- keys
    def holding(self, key: str) -> redis.Redis | None:
        """The node where ``key`` exists (in a cluster, the masters not serving its slot answer
        MOVED), or None."""
        for node in self.nodes:
            try:
                if node.exists(key):
                    return node
            except redis.exceptions.MovedError:
                continue
        return None

    def scan(self, prefix: str) -> Iterator[tuple[redis.Redis, str]]:
        """Every key under ``prefix``, with the node holding it."""
        pattern = _GLOB_SPECIAL.sub(r"\\\1", prefix) + "*"
        for node in self.nodes:
            for key in node.scan_iter(match=pattern, count=_CHUNK):
                yield node, key.decode() if isinstance(key, bytes) else str(key)

    def describe(self, prefix: str) -> list[KeyInfo]:
        """MEMORY USAGE (exact: SAMPLES 0), encoding and size of every key under ``prefix``."""
        by_node: dict[int, tuple[redis.Redis, list[str]]] = {}
        for node, key in self.scan(prefix):
            by_node.setdefault(id(node), (node, []))[1].append(key)
        out = []
        for node, keys in by_node.values():
            for start in range(0, len(keys), _CHUNK):
                chunk = keys[start:start + _CHUNK]
                pipe = node.pipeline(transaction=False)
                for key in chunk:
                    pipe.memory_usage(key, samples=0)
                    pipe.object("encoding", key)
                    pipe.type(key)
                res = pipe.execute()
                rows = [(key, int(res[3 * i] or 0), _str(res[3 * i + 1] or ""), _str(res[3 * i + 2]))
                        for i, key in enumerate(chunk)]
                sizes = node.pipeline(transaction=False)
                for key, _, _, kind in rows:
                    if kind in _SIZE:
                        getattr(sizes, _SIZE[kind])(key)
                counts = iter(sizes.execute())
                out.extend(KeyInfo(key, key_class(key, prefix), size, encoding,
                                   int(next(counts)) if kind in _SIZE else 0)
                           for key, size, encoding, kind in rows)
        return out

    def delete_prefix(self, prefix: str) -> int:
        """UNLINK every key under ``prefix`` (for a Redis that is not ours to flush)."""
        count = 0
        batch: dict[int, tuple[redis.Redis, list[str]]] = {}
        for node, key in self.scan(prefix):
            batch.setdefault(id(node), (node, []))[1].append(key)
        for node, keys in batch.values():
            for start in range(0, len(keys), _CHUNK):
                pipe = node.pipeline(transaction=False)
                for key in keys[start:start + _CHUNK]:  # one key per command: cluster-safe
                    pipe.unlink(key)
                count += sum(pipe.execute())
        return count

    def flushall(self) -> None:
        for node in self.nodes:
            node.flushall()

    def close(self) -> None:
        for node in self.nodes:
            node.close()


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _masters(url: str) -> list[redis.Redis]:
    """Every master of the cluster at ``url`` (``redis+cluster://[user:pass@]host:port[,...]``),
    as the library's own Cluster client sees them."""
    from dcm_sync.backends.redis_urls import cluster_clients

    cluster, node_client, _ = cluster_clients(url, 10.0, None)
    try:
        masters = [node_client(node) for node in cluster.get_primaries()]
    finally:
        cluster.close()
    if not masters:
        raise RuntimeError(f"no master found in the cluster at {urlsplit(url).netloc}")
    return masters
