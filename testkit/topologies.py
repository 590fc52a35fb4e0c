"""Real Redis topologies for tests: a Redis Cluster (masters, each with replicas) and a master with
a replica watched by three Sentinels. Every process is a Debian ``redis-server`` on free loopback
ports (never the shared 6379), in-memory, its files in temporary directories.

Bring-up and failover waits poll every :data:`POLL_INTERVAL` until the topology is in the state a
test needs, never sleeping a guessed time; a wait that times out raises AssertionError saying
what was still wrong. Both topologies are context managers: ``with ClusterTopology() as cluster:``
starts it and always removes every process and file.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.cluster import ClusterNode as RedisClusterNode
from redis.crc import key_slot

from testkit.redis_server import RedisServer, free_ports
from testkit.sentinel_topology import SentinelTopology
from testkit.topology_base import (
    CLUSTER_SLOTS_COUNT,
    DEFAULT_TIMEOUT,
    FAST_REPLICATION,
    HOST,
    POLL_INTERVAL,
    SlotRange,
    Topology,
    _error,
    _parse_info_text,
    _probe,
    _require,
    _wait,
    start_together,
)

__all__ = ["ClusterNode", "ClusterTopology", "SentinelTopology", "POLL_INTERVAL"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterNode:
    """One cluster node as seen when the snapshot was taken (see :attr:`ClusterTopology.nodes`)."""

    port: int
    node_id: str
    role: str  # "master" or "replica"
    master_id: str | None  # the master a replica follows; None for a master
    alive: bool  # its process was running
    server: RedisServer = field(repr=False, compare=False)  # its process

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def client(self, **kwargs: Any) -> redis.Redis:
        """A plain (non-cluster) client to this node alone (use it in ``with``: tests count
        Redis's clients)."""
        return self.server.client(**kwargs)


class ClusterTopology(Topology):
    """``masters`` masters with ``replicas_per_master`` replicas each, made with
    ``redis-cli --cluster create``. :meth:`start` returns once every node says ``cluster_state:ok``,
    all agree on the slot map and every replica's link to its master is up."""

    REQUIRES = ("redis-server", "redis-cli")

    def __init__(self, masters: int = 3, replicas_per_master: int = 1, *, node_timeout_ms: int = 1000,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        if masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters")
        self.redis_cli = _require("redis-cli")
        self.masters_count = masters
        self.replicas_per_master = replicas_per_master
        self.node_timeout_ms = node_timeout_ms
        self.timeout = timeout
        self.dir = tempfile.mkdtemp(prefix="dcm-cluster-")
        self.servers: dict[int, RedisServer] = {}
        for port in free_ports(masters * (1 + replicas_per_master), cluster_bus=True):
            self.servers[port] = RedisServer(port, extra_args=(
                "--cluster-enabled", "yes",
                "--cluster-config-file", os.path.join(self.dir, f"nodes-{port}.conf"),
                "--cluster-node-timeout", str(node_timeout_ms),
                "--cluster-replica-validity-factor", "0",  # a replica may always fail over
                *FAST_REPLICATION,
            ))
        self._ids: dict[int, str] = {}
        self._known: dict[int, tuple[str, str | None]] = {}  # port -> last seen (role, master_id)
        self._seeds: list[int] = []
        self._killed: dict[str, tuple[list[tuple[int, int]], list[int], float]] = {}

    def __repr__(self) -> str:
        return f"<ClusterTopology ports={sorted(self.servers)}>"

    # ------------------------------------------------------------------ bring-up
    def _bring_up(self) -> None:
        start_together(self.servers.values(), self.timeout)
        self._create()
        for port in self.servers:
            with _probe(port) as r:
                self._ids[port] = r.execute_command("CLUSTER", "MYID")
        _wait("cluster bring-up", lambda: self._problems(expect_shape=True), self.timeout)
        self._seeds = sorted(node.port for node in self.masters())

    def _create(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("REDISCLI_")}
        argv = [self.redis_cli, "--cluster", "create", *(f"{HOST}:{p}" for p in self.servers),
                "--cluster-replicas", str(self.replicas_per_master), "--cluster-yes"]
        done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=self.timeout * 2)
        if done.returncode != 0 or "[OK] All 16384 slots covered" not in done.stdout:
            raise RuntimeError(f"redis-cli --cluster create failed ({done.returncode}):\n"
                               f"{done.stdout}\n{done.stderr}")

    # ------------------------------------------------------------------ observing
    @property
    def url(self) -> str:
        """``redis+cluster://`` with the masters at bring-up as seeds (fixed for the topology's life:
        a client given a dead seed goes on to the next)."""
        return "redis+cluster://" + ",".join(f"{HOST}:{p}" for p in self._seeds)

    @property
    def nodes(self) -> list[ClusterNode]:
        """Every node, by port: a live node's role as it reports it now, a dead one's as last seen."""
        return [self._snapshot(port) for port in sorted(self.servers)]

    def node(self, port: int) -> ClusterNode:
        """Node ``port`` as :attr:`nodes` would show it (asking only that node)."""
        if port not in self.servers:
            raise LookupError(f"no node on port {port} in {self!r}")
        return self._snapshot(port)

    def _snapshot(self, port: int) -> ClusterNode:
        server = self.servers[port]
        if server.alive:
            try:
                with _probe(port) as r:
                    info = r.info("replication")
            except redis.RedisError:
                pass  # e.g. still loading after a restart: keep the last known role
            else:
                if info["role"] == "master":
                    self._known[port] = ("master", None)
                else:
                    self._known[port] = ("replica", self._ids.get(int(info["master_port"])))
        return ClusterNode(port, self._ids[port], *self._known.get(port, ("unknown", None)),
                           alive=server.alive, server=server)

    def masters(self) -> list[ClusterNode]:
        """The live masters."""
        return [n for n in self.nodes if n.alive and n.role == "master"]

    def replicas_of(self, master: ClusterNode) -> list[ClusterNode]:
        """The live replicas following ``master``."""
        return [n for n in self.nodes if n.alive and n.role == "replica" and n.master_id == master.node_id]

    def replica_of(self, master: ClusterNode) -> ClusterNode:
        """A live replica of ``master`` (the first by port); LookupError if it has none."""
        replicas = self.replicas_of(master)
        if not replicas:
            raise LookupError(f"{master} has no live replica; nodes: {self.nodes}")
        return replicas[0]

    def slot_map(self, port: int | None = None) -> tuple[SlotRange, ...]:
        """``CLUSTER SLOTS`` as node ``port`` (default: any live node) answers it, normalised."""
        with _probe(port if port is not None else self._any_live()) as r:
            return self._normalise(r.execute_command("CLUSTER", "SLOTS"))

    @staticmethod
    def keyslot(key: str) -> int:
        """The slot of ``key`` (hash tags included), computed as Redis does: no round trip."""
        return key_slot(key.encode())

    def master_port_for(self, key: str, slot_map: tuple[SlotRange, ...] | None = None) -> int:
        """The port of the master serving ``key``'s slot per ``slot_map`` (default: one
        ``CLUSTER SLOTS`` now): pass a map taken once to look up many keys without a round trip."""
        shards = self.slot_map() if slot_map is None else slot_map
        slot = self.keyslot(key)
        for first, last, master_port, _ in shards:
            if first <= slot <= last:
                return master_port
        raise LookupError(f"slot {slot} of {key!r} is served by no node in {shards}")

    def master_for_key(self, key: str) -> ClusterNode:
        """The master serving ``key``'s slot, per ``CLUSTER SLOTS`` now (asking only it for its role)."""
        return self.node(self.master_port_for(key))

    def client(self, **kwargs: Any) -> redis.RedisCluster:
        """A ``redis.RedisCluster`` on the seeds of :attr:`url`."""
        seeds = [RedisClusterNode(HOST, p) for p in self._seeds]
        return redis.RedisCluster(startup_nodes=seeds, **{"socket_timeout": 5, **kwargs})

    def describe(self) -> str:
        """One line per node: port, id, process state, role and cluster state (for failure messages)."""
        lines = []
        for node in self.nodes:
            state = "dead"
            if node.alive:
                try:
                    with _probe(node.port) as r:
                        state = _parse_info_text(r.execute_command("CLUSTER", "INFO"))["cluster_state"]
                except redis.RedisError as exc:
                    state = _error(exc)
            follows = f" of {node.master_id[:8]}" if node.master_id else ""
            lines.append(f"{node.port} {node.node_id[:8]} {node.role}{follows}: {state}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ acting
    def flushall(self) -> None:
        """FLUSHALL on every live master (the replicas follow)."""
        for node in self.masters():
            with node.client() as r:
                r.flushall()

    def kill(self, node: ClusterNode | int) -> None:
        """SIGKILL a node. A master's slots and replicas are noted first, for :meth:`wait_failover`."""
        port = node if isinstance(node, int) else node.port
        current = self.node(port)
        if current.role == "master":
            ranges = [(first, last) for first, last, owner, _ in self.slot_map() if owner == port]
            candidates = [n.port for n in self.replicas_of(current)]
            self._killed[current.node_id] = (ranges, candidates, time.monotonic())
        self.servers[port].stop()
        logger.info("killed cluster node %s (%s)", port, current.role)

    def move_slot_of(self, key: str, target: ClusterNode) -> None:
        """Migrate the slot of ``key`` (and its keys) to master ``target``, the way
        ``redis-cli --cluster reshard`` does, and wait until every live node agrees."""
        slot = self.keyslot(key)
        source = self.master_for_key(key)
        if source.port == target.port:
            raise ValueError(f"slot {slot} is on {target} already")
        with target.client() as t, source.client() as s:
            t.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
            s.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id)
            while keys := s.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
                s.execute_command("MIGRATE", HOST, target.port, "", 0, 5000, "KEYS", *keys)
        for node in [target, source, *(m for m in self.masters() if m.port not in
                                        (target.port, source.port))]:
            with node.client() as r:
                r.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target.node_id)

        def problems() -> list[str]:
            wrong = []
            for node in self.nodes:
                if not node.alive:
                    continue
                owner = [m for first, last, m, _ in self.slot_map(node.port) if first <= slot <= last]
                if owner != [target.port]:
                    wrong.append(f"node {node.port} says slot {slot} is on {owner}")
            return wrong

        _wait(f"slot {slot} moved to {target.port}", problems, self.timeout)

    def wait_failover(self, old_master: ClusterNode, timeout: float | None = None) -> ClusterNode:
        """Wait until a replica of ``old_master`` (killed with :meth:`kill`) reports role master and
        serves all its slots, every live node says ``cluster_state:ok`` and all agree on the slot
        map, every live replica's link is up. The new master."""
        if old_master.node_id not in self._killed:
            raise ValueError(f"{old_master} was not killed as a master with kill()")
        ranges, candidates, killed_at = self._killed[old_master.node_id]
        if not candidates:
            raise ValueError(f"{old_master} had no replica to fail over to")
        promoted: list[int] = []

        def problems() -> list[str]:
            found = self._problems(expect_shape=False)
            if found:
                return found
            owners = {owner for first, last, owner, _ in self.slot_map() for a, b in ranges
                      if first <= a and b <= last}
            if len(owners) != 1 or not owners <= set(candidates):
                return [f"slots {ranges} of {old_master.port} are served by {owners}, "
                        f"not by one of its replicas {candidates}"]
            (owner,) = owners
            with _probe(owner) as r:
                role = r.info("replication")["role"]
            if role != "master":
                return [f"{owner} serves {old_master.port}'s slots but reports role:{role}"]
            promoted[:] = [owner]
            return []

        _wait(f"failover of {old_master.port}", problems, self.timeout if timeout is None else timeout)
        logger.info("cluster node %s took over from %s %.2fs after the kill", promoted[0], old_master.port,
                    time.monotonic() - killed_at)
        return self.node(promoted[0])

    def restart(self, node: ClusterNode | int) -> ClusterNode:
        """Start a killed node again on its port with its nodes.conf (so with its node id, but no
        data), and wait until the cluster is healthy again with it."""
        port = node if isinstance(node, int) else node.port
        self.servers[port].start(self.timeout)
        _wait(f"restart of {port}", lambda: self._problems(expect_shape=False, require=[port]), self.timeout)
        return self.node(port)

    def restart_all(self) -> None:
        """Start every killed node again (each with its nodes.conf, no data) and wait until the
        cluster is healthy: a whole cluster back from an outage, its slots empty."""
        for server in self.servers.values():
            if not server.alive:
                server.start(self.timeout)
        _wait("restart of every node", lambda: self._problems(expect_shape=False), self.timeout)

    def stop(self) -> None:
        """SIGKILL every process."""
        for server in self.servers.values():
            server.stop()

    def cleanup(self) -> None:
        """Kill every process and remove every temporary directory."""
        for server in self.servers.values():
            server.cleanup()
        shutil.rmtree(self.dir, ignore_errors=True)

    # ------------------------------------------------------------------ health
    def _any_live(self) -> int:
        for port, server in self.servers.items():
            if server.alive:
                return port
        raise RuntimeError(f"no live node in {self!r}")

    @staticmethod
    def _normalise(reply: list[Any]) -> tuple[SlotRange, ...]:
        shards = []
        for entry in reply:
            first, last, master, *replicas = entry
            shards.append((int(first), int(last), int(master[1]), tuple(sorted(int(r[1]) for r in replicas))))
        return tuple(sorted(shards))

    def _problems(self, *, expect_shape: bool, require: Iterable[int] = ()) -> list[str]:
        """What keeps the cluster from being healthy (nothing when it is): every live node says
        ``cluster_state:ok``, all answer the same ``CLUSTER SLOTS`` covering every slot and naming no
        dead node (and the nodes in ``require``), every live replica's link is up. With
        ``expect_shape``, also the configured number of masters and of replicas each."""
        found: list[str] = []
        maps: dict[int, tuple[SlotRange, ...]] = {}
        for port, server in self.servers.items():
            if not server.alive:
                continue
            try:
                with _probe(port) as r:
                    state = _parse_info_text(r.execute_command("CLUSTER", "INFO")).get("cluster_state")
                    if state != "ok":
                        found.append(f"{port}: cluster_state:{state}")
                    maps[port] = self._normalise(r.execute_command("CLUSTER", "SLOTS"))
                    info = r.info("replication")
                    if info["role"] != "master" and info.get("master_link_status") != "up":
                        found.append(f"{port}: replica of {info.get('master_port')} with "
                                     f"master_link_status:{info.get('master_link_status')}")
            except redis.RedisError as exc:
                found.append(f"{port}: {_error(exc)}")
        if not maps:
            return found + ["no live node answers"]
        distinct = Counter(maps.values())
        if len(distinct) > 1:
            return found + [f"nodes disagree on the slot map: {maps}"]
        (slot_map,) = distinct
        covered = sum(last - first + 1 for first, last, _, _ in slot_map)
        if covered != CLUSTER_SLOTS_COUNT:
            found.append(f"{covered} of {CLUSTER_SLOTS_COUNT} slots covered: {slot_map}")
        listed = {p for _, _, master, replicas in slot_map for p in (master, *replicas)}
        dead = {p for p in listed if p not in self.servers or not self.servers[p].alive}
        if dead:
            found.append(f"slot map names dead or unknown nodes {sorted(dead)}: {slot_map}")
        missing = set(require) - listed
        if missing:
            found.append(f"slot map does not name {sorted(missing)} yet: {slot_map}")
        if expect_shape:
            shards = {(master, replicas) for _, _, master, replicas in slot_map}
            if len(shards) != self.masters_count or any(
                    len(replicas) != self.replicas_per_master for _, replicas in shards):
                found.append(f"expected {self.masters_count} masters with {self.replicas_per_master} "
                             f"replica(s) each: {slot_map}")
        return found
