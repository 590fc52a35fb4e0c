"""A Redis master with a replica, watched by three Sentinels, for tests (see topologies.py).
Optionally secured: a password on the master and replica, another on the Sentinels, and TLS
on every link."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from typing import Any
from urllib.parse import quote

import redis
from redis.sentinel import Sentinel

from testkit.redis_server import RedisServer, free_ports
from testkit.tls import Certs, tls_args
from testkit.topology_base import (
    DEFAULT_TIMEOUT,
    FAST_REPLICATION,
    HOST,
    Topology,
    _error,
    _pairs,
    _require,
    _wait,
    start_together,
)

logger = logging.getLogger(__name__)


class SentinelTopology(Topology):
    """A master, one replica and three Sentinels monitoring them as ``service`` (quorum 2).
    :meth:`start` returns once the replica's link is up and every Sentinel names the master,
    knows the replica and knows the two other Sentinels.

    ``password`` is required by the master and the replica (``requirepass``/``masterauth``; the
    Sentinels know it as ``auth-pass``), ``sentinel_password`` by the Sentinels (which also use
    it among themselves), and with ``certs`` every process speaks TLS only."""

    SENTINELS = 3
    QUORUM = 2

    def __init__(self, service: str = "mymaster", *, down_after_ms: int = 1000,
                 failover_timeout_ms: int = 5000, timeout: float = DEFAULT_TIMEOUT,
                 password: str | None = None, sentinel_password: str | None = None,
                 certs: Certs | None = None) -> None:
        _require("redis-server")
        self.service = service
        self.password, self.sentinel_password, self.certs = password, sentinel_password, certs
        tls: dict[str, Any] = {} if certs is None else {"ssl": True, "ssl_ca_certs": certs.ca}
        self._data_kwargs = {**tls, **({"password": password} if password else {})}
        self._sentinel_kwargs = {**tls, **({"password": sentinel_password} if sentinel_password
                                           else {})}
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.timeout = timeout
        self.dir = tempfile.mkdtemp(prefix="dcm-sentinel-")
        master_port, replica_port, *sentinel_ports = free_ports(2 + self.SENTINELS)
        auth = ("--requirepass", password, "--masterauth", password) if password else ()
        self.data_servers = {
            port: RedisServer(port, extra_args=(*FAST_REPLICATION, *auth, *self._tls(port), *follow),
                              client_kwargs=self._data_kwargs)
            for port, follow in ((master_port, ()),
                                 (replica_port, ("--replicaof", HOST, str(master_port))))
        }
        self.sentinels = [RedisServer(p, extra_args=("--sentinel", *self._tls(p)),
                                      conf_file=self._write_conf(p, master_port),
                                      client_kwargs=self._sentinel_kwargs)
                          for p in sentinel_ports]
        self._master_port = master_port  # as the Sentinels are expected to name it
        self._replica_port = replica_port  # at bring-up
        self._killed_master: tuple[int, float] | None = None

    def _tls(self, port: int) -> tuple[str, ...]:
        return () if self.certs is None else tls_args(self.certs, port)

    def _write_conf(self, port: int, master_port: int) -> str:
        path = os.path.join(self.dir, f"sentinel-{port}.conf")  # Sentinel rewrites it: writable
        with open(path, "w") as f:
            f.write(f"port {port}\n"
                    f"bind {HOST}\n"
                    f"sentinel monitor {self.service} {HOST} {master_port} {self.QUORUM}\n"
                    f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}\n"
                    f"sentinel failover-timeout {self.service} {self.failover_timeout_ms}\n"
                    f"sentinel parallel-syncs {self.service} 1\n")
            if self.password:
                f.write(f"sentinel auth-pass {self.service} \"{self.password}\"\n")
            if self.sentinel_password:
                f.write(f"requirepass \"{self.sentinel_password}\"\n")
        return path

    def __repr__(self) -> str:
        return (f"<SentinelTopology {self.service} data={sorted(self.data_servers)} "
                f"sentinels={self.sentinel_ports}>")

    # ------------------------------------------------------------------ bring-up
    def _bring_up(self) -> None:
        start_together(self.data_servers.values(), self.timeout)
        # Sentinels learn of replicas from the master's INFO, which they ask for every 10 s:
        # they start once the replica is attached, so their first INFO already names it.
        _wait("replica sync", lambda: self._link_problems(self._replica_port), self.timeout)
        start_together(self.sentinels, self.timeout)
        _wait("sentinel bring-up", lambda: self._problems(self._master_port, self._replica_port),
              self.timeout)

    # ------------------------------------------------------------------ observing
    @property
    def sentinel_ports(self) -> list[int]:
        return [s.port for s in self.sentinels]

    @property
    def url(self) -> str:
        """The ``redis+sentinel://`` URL (``rediss+sentinel://`` with TLS), with the passwords."""
        return self.url_with(self.password or None, self.sentinel_password or None)

    def url_with(self, password: str | None, sentinel_password: str | None) -> str:
        """:attr:`url` with other passwords, right or wrong (None: none given)."""
        scheme = "redis+sentinel" if self.certs is None else "rediss+sentinel"
        userinfo = f":{quote(password, safe='')}@" if password is not None else ""
        query = (f"?sentinel_password={quote(sentinel_password, safe='')}"
                 if sentinel_password is not None else "")
        return (f"{scheme}://{userinfo}" + ",".join(f"{HOST}:{p}" for p in self.sentinel_ports)
                + f"/{self.service}{query}")

    def sentinel(self, **kwargs: Any) -> Sentinel:
        """A ``redis.sentinel.Sentinel`` on the three Sentinels (``master_for`` clients get
        the data password; with TLS, pass ``connection_class=SentinelManagedSSLConnection``)."""
        return Sentinel([(HOST, p) for p in self.sentinel_ports],
                        sentinel_kwargs={"socket_timeout": 5, **self._sentinel_kwargs},
                        **{"socket_timeout": 5, **self._data_kwargs, **kwargs})

    def master(self) -> RedisServer:
        """The master as a majority of the Sentinels name it; AssertionError if no majority does."""
        answers: list[int | str] = []
        for sentinel in self.sentinels:
            try:
                with self._probe(sentinel.port) as r:
                    _, port = r.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
                    answers.append(int(port))
            except (redis.RedisError, TypeError, ValueError) as exc:
                answers.append(_error(exc))
        port, votes = Counter(answers).most_common(1)[0]
        if votes < self.QUORUM or port not in self.data_servers:
            raise AssertionError(f"no majority of the Sentinels names a master of ours: {answers}")
        assert isinstance(port, int)
        return self.data_servers[port]

    def client(self, **kwargs: Any) -> redis.Redis:
        """A plain client to the current master."""
        return self.master().client(**kwargs)

    # ------------------------------------------------------------------ acting
    def flushall(self) -> None:
        with self.client() as r:
            r.flushall()

    def kill_master(self) -> RedisServer:
        """SIGKILL the current master; the killed server."""
        master = self.master()
        master.stop()
        self._killed_master = (master.port, time.monotonic())
        logger.info("killed sentinel master %s", master.port)
        return master

    def wait_failover(self, timeout: float | None = None) -> RedisServer:
        """After :meth:`kill_master`: wait until every Sentinel names the replica as master with no
        failover in progress and the replica reports role:master. The new master."""
        if self._killed_master is None:
            raise ValueError("kill_master() first")
        old_port, killed_at = self._killed_master
        (new_port,) = set(self.data_servers) - {old_port}
        _wait(f"failover from {old_port} to {new_port}", lambda: self._problems(new_port, None),
              self.timeout if timeout is None else timeout)
        logger.info("sentinel failover to %s %.2fs after the kill", new_port, time.monotonic() - killed_at)
        return self.data_servers[new_port]

    def stop(self) -> None:
        for server in (*self.data_servers.values(), *self.sentinels):
            server.stop()

    def cleanup(self) -> None:
        for server in (*self.data_servers.values(), *self.sentinels):
            server.cleanup()
        shutil.rmtree(self.dir, ignore_errors=True)

    # ------------------------------------------------------------------ health
    def _probe(self, port: int) -> redis.Redis:
        """A short-lived polling client to one of our processes, with its password and TLS (use
        it in ``with``: tests count Redis's clients)."""
        server = self.data_servers.get(port) or next(s for s in self.sentinels if s.port == port)
        return server.client(decode_responses=True, socket_timeout=2, socket_connect_timeout=2)

    def _link_problems(self, replica_port: int) -> list[str]:
        try:
            with self._probe(replica_port) as r:
                status = r.info("replication").get("master_link_status")
        except redis.RedisError as exc:
            return [f"replica {replica_port}: {_error(exc)}"]
        return [] if status == "up" else [f"replica {replica_port}: master_link_status:{status}"]

    def _problems(self, master_port: int, replica_port: int | None) -> list[str]:
        """What keeps the set from being settled on ``master_port`` (with ``replica_port`` attached
        and known to every Sentinel, unless None): every live Sentinel names it with no failover
        in progress and knows the other Sentinels; it reports role:master."""
        found = self._link_problems(replica_port) if replica_port is not None else []
        try:
            with self._probe(master_port) as r:
                role = r.info("replication")["role"]
            if role != "master":
                found.append(f"{master_port}: role:{role}")
        except redis.RedisError as exc:
            found.append(f"{master_port}: {_error(exc)}")
        for sentinel in self.sentinels:
            if not sentinel.alive:
                continue
            s = sentinel.port
            try:
                with self._probe(s) as r:
                    addr = r.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
                    master = _pairs(r.execute_command("SENTINEL", "MASTER", self.service))
                    replicas = [_pairs(x) for x in r.execute_command("SENTINEL", "REPLICAS", self.service)]
            except redis.RedisError as exc:
                found.append(f"sentinel {s}: {_error(exc)}")
                continue
            if addr != [HOST, str(master_port)]:
                found.append(f"sentinel {s}: names master {addr}, not {master_port}")
            if master["flags"] != "master":
                found.append(f"sentinel {s}: master flags {master['flags']}")
            if int(master["num-other-sentinels"]) != self.SENTINELS - 1:
                found.append(f"sentinel {s}: knows {master['num-other-sentinels']} other sentinels")
            if replica_port is not None:
                known = [x for x in replicas if int(x["port"]) == replica_port]
                if not known or known[0]["flags"] != "slave" or known[0].get("master-link-status") != "ok":
                    found.append(f"sentinel {s}: replica {replica_port} is {known or 'unknown'}")
        return found
