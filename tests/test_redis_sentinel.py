"""dcm-sync on a real Sentinel set (master, replica, 3 Sentinels): the master killed under
running managers; and the set secured as production sets run it: a password on the master and
replica, another on the Sentinels (``?sentinel_password=``), and TLS on every link
(``rediss+sentinel://``). The core flow and a master failover work; wrong credentials or an
unknown CA fail at start, at once, saying which; the passwords never show."""

from __future__ import annotations

import gc
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from dcm_sync import BackendAuthenticationError, BackendUnavailableError, Emitter
from dcm_sync.backends.redis_keys import KeyLayout, unpack_record
from testkit.polling import seconds_until, wait_until
from testkit.recording import RecordingSocket
from testkit.redis_server import free_port
from testkit.tls import Certs, make_certs
from testkit.topologies import SentinelTopology
from tests.helpers.managers import SLOW, Managers, counts, delivered, pair

pytestmark = pytest.mark.topology

DATA_PASSWORD = "d@ta:pw/1"      # characters that need percent-encoding in the URL
SENTINEL_PASSWORD = "s3nt!nel&pw"
FAIL_FAST = 10.0  # seconds: a refused start says why at once (redis-py's default backoff took ~50 s)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(Path(tmp_path_factory.mktemp("sentinel-tls")))


def secured(certs: Certs) -> SentinelTopology:
    return SentinelTopology(password=DATA_PASSWORD, sentinel_password=SENTINEL_PASSWORD,
                            certs=certs)


@pytest.fixture(scope="module")
def secured_sentinel(certs: Certs) -> Iterator[SentinelTopology]:
    with secured(certs) as topology:
        yield topology


def test_secured_sentinel_flow_over_tls_with_both_passwords(
        secured_sentinel: SentinelTopology, certs: Certs, prefix: str,
        managers_on: Callable[..., Managers], caplog: pytest.LogCaptureFixture) -> None:
    url = secured_sentinel.url
    assert url.startswith("rediss+sentinel://") and "sentinel_password=" in url
    caplog.set_level(logging.DEBUG)
    a, b, sa, sb, ca, cb = pair(managers_on(url, redis_ca_file=certs.ca, **SLOW), "lobby")
    n = itertools.count(1)
    assert delivered(a, "lobby", cb, sb, next(n)) and delivered(b, "lobby", ca, sa, next(n))
    with Emitter(url, key_prefix=prefix, ca_file=certs.ca) as emitter:
        emitter.broadcast_to_room("lobby", {"text": "from a script"})
        assert emitter.get_distributed_stats().active_servers == 2
    wait_until(lambda: {"text": "from a script"} in sb.messages(), 10)
    assert counts(a) == (2, 1, 2)
    b.abandon()
    wait_until(lambda: sa.of_type("user-disconnected"), 15)
    assert sa.of_type("user-disconnected")[0]["reason"] == "server-failure"
    shown = repr(a.config) + caplog.text
    for secret in (DATA_PASSWORD, SENTINEL_PASSWORD, quote(DATA_PASSWORD, safe=""),
                   quote(SENTINEL_PASSWORD, safe="")):
        assert secret not in shown


@pytest.mark.parametrize(("data", "sentinel", "use_other_ca", "error", "says"), [
    (DATA_PASSWORD, "wrong", False, BackendAuthenticationError, "sentinel_password"),
    (DATA_PASSWORD, None, False, BackendAuthenticationError, "sentinel_password"),
    ("wrong", SENTINEL_PASSWORD, False, BackendAuthenticationError, "invalid username-password"),
    (DATA_PASSWORD, SENTINEL_PASSWORD, True, BackendUnavailableError, "TLS connection"),
])
def test_secured_sentinel_refusals_are_fast_and_say_why(
        secured_sentinel: SentinelTopology, certs: Certs, managers_on: Callable[..., Managers],
        data: str, sentinel: str | None, use_other_ca: bool, error: type[Exception],
        says: str) -> None:
    url = secured_sentinel.url_with(data, sentinel)
    ca = certs.other_ca if use_other_ca else certs.ca
    start = time.monotonic()
    with pytest.raises(error, match=says) as raised:
        managers_on(url, redis_ca_file=ca)()
    assert time.monotonic() - start < FAIL_FAST
    assert SENTINEL_PASSWORD not in str(raised.value) and DATA_PASSWORD not in str(raised.value)


def test_an_unreachable_sentinel_listed_first_is_skipped(
        redis_sentinel: SentinelTopology, sentinel_url: str,
        managers_on: Callable[..., Managers]) -> None:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    a = managers_on(sentinel_url.replace("://", f"://{dead},", 1))()
    a.register_connection(RecordingSocket(), "alice")
    assert a.get_distributed_stats().total_connections == 1


def _connections_to(ports: set[int]) -> int:
    """This process's open IPv4 TCP connections to ``ports`` (from /proc: sockets it holds)."""
    held = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            held.add(target[8:-1])
    with open("/proc/net/tcp") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    return sum(1 for r in rows
               if r[9] in held and r[3] == "01" and int(r[2].rsplit(":", 1)[1], 16) in ports)


def test_a_shut_down_manager_and_emitter_leave_no_connection_to_the_sentinels(
        redis_sentinel: SentinelTopology, sentinel_url: str, prefix: str,
        managers_on: Callable[..., Managers]) -> None:
    ports = set(redis_sentinel.sentinel_ports)
    gc.collect()
    before = _connections_to(ports)
    a = managers_on(sentinel_url)()
    a.join_room(a.register_connection(RecordingSocket(), "alice"), "lobby")
    a.broadcast_to_room("lobby", "hi")
    with Emitter(sentinel_url, key_prefix=prefix) as emitter:
        emitter.broadcast_to_room("lobby", "hi")
        assert _connections_to(ports) > before  # they asked the Sentinels for the master
    a.shutdown()
    assert _connections_to(ports) == before  # closed, not left for the garbage collector


def test_secured_sentinel_master_killed_delivery_recovers(
        certs: Certs, managers_on: Callable[..., Managers]) -> None:
    with secured(certs) as topology:
        a, b, sa, sb, ca, cb = pair(managers_on(topology.url, redis_ca_file=certs.ca, **SLOW),
                                    "lobby")
        n = itertools.count(1)
        assert delivered(a, "lobby", cb, sb, next(n))
        old = topology.master()
        topology.kill_master()
        assert topology.wait_failover().port != old.port
        # right after the failover a call may still fail (BackendUnavailableError): poll on
        wait_until(lambda: delivered(a, "lobby", cb, sb, next(n)), 30,
                            "broadcast and direct message reach bob after the failover")
        wait_until(lambda: counts(a) == (2, 1, 2), 15,
                            "stats count both connections, the room and both servers")
        for m in (a, b):
            m.shutdown()


def test_sentinel_master_killed_delivery_and_state_recover(
        fresh_sentinel: SentinelTopology, prefix: str, managers_on: Callable[..., Managers]) -> None:
    a, b, sa, sb, ca, cb = pair(managers_on(fresh_sentinel.url, **SLOW), "lobby")
    n = itertools.count(1)
    assert delivered(a, "lobby", cb, sb, next(n))
    old = fresh_sentinel.master()
    fresh_sentinel.kill_master()
    new = fresh_sentinel.wait_failover()
    assert new.port != old.port
    took = seconds_until(lambda: delivered(a, "lobby", cb, sb, next(n)), 30,
                         "broadcast and direct message reach bob after the failover")
    print(f"sentinel failover: delivery back {took:.2f}s after the new master took over")

    wait_until(lambda: counts(a) == (2, 1, 2), 15,
               "stats count both connections, the room and both servers")
    keys = KeyLayout(prefix)
    with fresh_sentinel.client() as r:  # the new master holds the state
        assert unpack_record(r.hget(keys.connection(cb), cb))[1] == b.server_id  # type: ignore[index]
        assert {x.decode() for x in r.smembers(keys.room("lobby"))} == {ca, cb}
