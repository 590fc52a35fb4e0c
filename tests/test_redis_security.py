"""Redis transport security: TLS (``rediss://``) verified against a private CA, Redis 6 ACL users
confined to the key prefix, fast and clear failures for a wrong CA or password, and no secret
(client token, Redis password) in Redis or in the logs."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from werkzeug.serving import make_server

from dcm_sync import (
    AuthenticationError,
    BackendAuthenticationError,
    BackendUnavailableError,
    Config,
    ConfigError,
    Emitter,
    create_distributed_connection_manager,
)
from dcm_sync.backends import open_backend
from dcm_sync.backends.redis_keys import KeyLayout
from dcm_sync.config import redact_url
from flask_ext import DistributedWebSockets, WebSocketConnection
from testkit.closing import ws_connect
from testkit.polling import wait_until
from testkit.recording import RecordingSocket, connect
from testkit.redis_server import RedisServer, free_port
from testkit.tls import Certs, TLSRedisServer, make_certs
from tests.helpers.acl import BY_CATEGORY, EXACT
from tests.helpers.managers import FAST, Managers

MakeUser = Callable[..., tuple[str, str]]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_redis(certs: Certs) -> Iterator[TLSRedisServer]:
    server = TLSRedisServer(certs)
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def acl_user(prefix: str) -> Iterator[MakeUser]:
    """``acl_user(server, rules)`` adds a user limited to the test's prefix: ``(name, password)``."""
    made: list[tuple[redis.Redis, str]] = []

    def make(server: RedisServer, rules: tuple[str, ...] = BY_CATEGORY) -> tuple[str, str]:
        name, password = f"dcm-{uuid.uuid4().hex[:8]}", f"pw-{uuid.uuid4().hex}"
        admin = server.client()
        admin.execute_command("ACL", "SETUSER", name, "reset", "on", f">{password}",
                              f"~{prefix}*", f"&{prefix}*", *rules)
        made.append((admin, name))
        return name, password

    yield make
    for admin, name in made:
        admin.execute_command("ACL", "DELUSER", name)
        admin.close()


def with_user(url: str, name: str, password: str) -> str:
    return url.replace("://", f"://{name}:{password}@", 1)


def denials(admin: redis.Redis, user: str) -> list[Any]:
    """The ACL LOG entries (commands, keys or channels refused) of ``user``."""
    return [e for e in admin.acl_log() if e.get("username") == user]


def prefix_keys(admin: redis.Redis, prefix: str) -> set[bytes]:
    return set(admin.scan_iter(match=prefix + "*"))


# --------------------------------------------------------------------------- the acceptance flow
@pytest.mark.parametrize("transport", ["tls", "acl-exact-commands", "tls+acl"])
def test_acceptance_flow(transport: str, request: pytest.FixtureRequest, prefix: str,
                         certs: Certs, acl_user: MakeUser) -> None:
    tls = "tls" in transport
    server: RedisServer = request.getfixturevalue("tls_redis" if tls else "redis_server")
    url, ca = server.url, certs.ca if tls else None
    user = None
    if "acl" in transport:
        user, password = acl_user(server, EXACT if "exact" in transport else BY_CATEGORY)
        url = with_user(url, user, password)
    admin = server.client()
    managers = Managers(prefix, redis_url=url, redis_ca_file=ca)
    try:
        a, b = managers(), managers()
        ca_id, wa = connect(a, "alice", "lobby")
        cb, wb = connect(b, "bob", "lobby")
        a.broadcast_to_room("lobby", {"text": "hello"})  # across servers
        wait_until(lambda: {"text": "hello"} in wb.messages())
        assert b.send_to_connection(ca_id, {"text": "direct"}) is True
        wait_until(lambda: {"text": "direct"} in wa.messages())
        with Emitter(url, key_prefix=prefix, ca_file=ca) as emitter:
            emitter.broadcast_to_room("lobby", {"text": "from a script"})
            assert emitter.send_to_connection(cb, {"text": "to bob"}) is True
            assert emitter.get_distributed_stats().active_servers == 2
        wait_until(lambda: {"text": "from a script"} in wa.messages()
                   and {"text": "to bob"} in wb.messages())
        stats = a.get_distributed_stats()
        assert (stats.active_servers, stats.total_connections, stats.total_rooms) == (2, 2, 1)
        b.abandon()  # failure detection and cleanup
        notice = wait_until(lambda: wa.of_type("user-disconnected"), timeout=10)[0]
        assert (notice["connectionId"], notice["reason"]) == (cb, "server-failure")
        wait_until(lambda: a.get_distributed_stats().total_connections == 1, timeout=5)
        a.shutdown()
        # nothing left once the cleanup lock (PX heartbeat_ttl) expires
        wait_until(lambda: prefix_keys(admin, prefix) == set(), timeout=5)
        if user is not None:
            assert denials(admin, user) == []  # the library never needed more than it has
            _assert_confined(url, ca, prefix, admin, user)
    finally:
        managers.shutdown_all()
        admin.close()


def test_the_exact_commands_clean_up_a_large_dead_server(redis_server: RedisServer, prefix: str,
                                                         acl_user: MakeUser) -> None:
    # thousands of connections: the cleanup then reads and deletes their buckets whole
    user, password = acl_user(redis_server, EXACT)
    url = with_user(redis_server.url, user, password)
    admin = redis_server.client()
    managers = Managers(prefix, redis_url=url, heartbeat_interval=30.0, heartbeat_ttl=90.0)
    try:
        live, dead = managers(), managers()
        _, watcher = connect(live, "watcher", "lobby")
        gone = {connect(dead, f"d{i}", *["lobby"] * (i % 2))[0] for i in range(3_000)}
        dead.abandon()
        live._backend.deregister_server(dead.server_id)
        assert live.handle_server_failure(dead.server_id) == len(gone)
        assert live.get_distributed_stats().total_connections == 1
        assert len(wait_until(lambda: len(n := watcher.of_type("user-disconnected")) == 1_500
                              and n, timeout=10)) == 1_500
        assert denials(admin, user) == []
    finally:
        managers.shutdown_all()
        admin.close()


def _assert_confined(url: str, ca: str | None, prefix: str, admin: redis.Redis, user: str) -> None:
    """As the manager's Redis user: its prefix is writable, nothing else is."""
    extra = {"ssl_ca_certs": ca} if ca else {}
    with redis.Redis.from_url(url, socket_timeout=5, **extra) as r:
        assert r.set(f"{prefix}own", "1") and r.delete(f"{prefix}own") == 1
        with pytest.raises(redis.exceptions.NoPermissionError):
            r.set("other:key", "x")
        with pytest.raises(redis.exceptions.NoPermissionError):
            r.get(f"x{prefix}own")
        with pytest.raises(redis.exceptions.NoPermissionError):
            r.publish("other:channel", "x")
        with pytest.raises(redis.exceptions.NoPermissionError):
            r.flushall()
        with pytest.raises(redis.exceptions.NoPermissionError):
            r.keys("*")
    assert admin.exists("other:key") == 0
    assert len(denials(admin, user)) == 5


# --------------------------------------------------------------------------- TLS failures
@pytest.mark.parametrize("case", ["other-ca", "system-cas", "wrong-host", "plain-text"])
def test_tls_verification_failure_is_fast_and_clear(
        case: str, tls_redis: TLSRedisServer, certs: Certs, prefix: str) -> None:
    url, ca, expect = tls_redis.url, certs.other_ca, "TLS connection to Redis failed"
    if case == "system-cas":
        ca = None
    elif case == "wrong-host":  # the certificate names 127.0.0.1 only
        url, ca = url.replace("127.0.0.1", "localhost"), certs.ca
    elif case == "plain-text":
        url, ca, expect = url.replace("rediss://", "redis://"), None, "Redis unreachable"
    started = time.monotonic()
    with pytest.raises(BackendUnavailableError, match=expect) as info:
        create_distributed_connection_manager(
            None, Config(redis_url=url, redis_ca_file=ca, key_prefix=prefix, redis_timeout=1.0))
    assert time.monotonic() - started < 3
    if case != "plain-text":
        assert "CERTIFICATE_VERIFY_FAILED" in str(info.value)
        assert ("Hostname mismatch" in str(info.value)) == (case == "wrong-host")
    with Emitter(url, key_prefix=prefix, ca_file=ca, timeout=1.0) as emitter:
        with pytest.raises(BackendUnavailableError, match=expect):
            emitter.get_distributed_stats()


def test_verification_is_off_only_when_the_url_says_so(tls_redis: TLSRedisServer, prefix: str) -> None:
    mgr = create_distributed_connection_manager(
        None, Config(redis_url=tls_redis.url + "?ssl_cert_reqs=none", key_prefix=prefix, **FAST))
    try:
        assert mgr.get_distributed_stats().active_servers == 1
    finally:
        mgr.shutdown()


# --------------------------------------------------------------------------- credentials
@pytest.mark.parametrize("case", ["wrong-password", "unknown-user"])
def test_wrong_credentials_fail_fast_without_the_password(
        case: str, redis_server: RedisServer, prefix: str, acl_user: MakeUser,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    name, password = acl_user(redis_server)
    wrong = f"wrong-{uuid.uuid4().hex}"
    url = with_user(redis_server.url, name, wrong) if case == "wrong-password" else \
        with_user(redis_server.url, f"nobody-{uuid.uuid4().hex[:6]}", password)
    started = time.monotonic()
    with pytest.raises(BackendAuthenticationError, match="authentication failed") as info:
        create_distributed_connection_manager(
            None, Config(redis_url=url, key_prefix=prefix, redis_timeout=1.0))
    assert time.monotonic() - started < 3
    assert isinstance(info.value, BackendUnavailableError)
    assert not isinstance(info.value, AuthenticationError)  # that one is about client tokens
    with Emitter(url, key_prefix=prefix, timeout=1.0) as emitter:
        with pytest.raises(BackendAuthenticationError):
            emitter.broadcast_to_room("lobby", "x")
    # the health route reports it, without the password
    app = Flask(__name__)
    app.config.update(DCM_REDIS_URL=url, DCM_KEY_PREFIX=prefix, DCM_REDIS_TIMEOUT=1.0,
                      DCM_HEALTH_DETAILS=True)
    sockets = DistributedWebSockets(app)
    app.register_blueprint(sockets.health_blueprint)
    resp = app.test_client().get("/health")
    assert resp.status_code == 503 and "authentication failed" in resp.get_json()["error"]
    shown = "".join(traceback.format_exception(info.value)) + resp.get_data(as_text=True) + caplog.text
    for secret in (wrong, password):
        assert secret not in shown
    sockets.shutdown()


# --------------------------------------------------------------------------- configuration
def test_config_checks_the_ca_file_and_never_shows_the_password(tmp_path: Path, certs: Certs) -> None:
    url = "rediss://dcm:hunter2-secret@127.0.0.1:6380/0"
    cfg = Config(redis_url=url, redis_ca_file=certs.ca)
    assert cfg.redis_url == url  # the value itself is kept as given
    assert "hunter2" not in repr(cfg) and "dcm:***@127.0.0.1:6380" in repr(cfg)
    with pytest.raises(ConfigError, match="redis_ca_file") as missing:
        Config(redis_url=url, redis_ca_file=str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigError, match="not rediss://"):
        Config(redis_url="redis://127.0.0.1:6380/0", redis_ca_file=certs.ca)
    with pytest.raises(ConfigError) as bad_scheme:
        Config(redis_url="http://dcm:hunter2-secret@127.0.0.1/")
    env = {"REDIS_URL": url, "DCM_REDIS_CA_FILE": certs.ca}
    assert Config.from_env(env).redis_ca_file == certs.ca
    assert Config.from_env({**env, "DCM_REDIS_CA_FILE": ""}).redis_ca_file is None
    with pytest.raises(ConfigError) as bad_url:  # redis-py refuses the query when parsing
        open_backend("redis://dcm:hunter2-secret@127.0.0.1:1/0?db=x", "p:")
    backend = open_backend("redis://dcm:hunter2-secret@127.0.0.1:1/0", "p:")
    backend.close()
    for shown in (str(missing.value), str(bad_scheme.value), str(bad_url.value), backend.url):
        assert "hunter2" not in shown
    assert redact_url("redis://:pw@h:1/0") == "redis://:***@h:1/0"
    assert redact_url("unix:///run/redis.sock?db=1&password=pw") == "unix:///run/redis.sock?db=1&password=***"
    assert redact_url("rediss://user@h:1/0?ssl_cert_reqs=none") == "rediss://user@h:1/0?ssl_cert_reqs=none"


# --------------------------------------------------------------------------- secrets
def test_no_secret_reaches_redis_or_the_logs(redis_server: RedisServer, prefix: str,
                                             acl_user: MakeUser, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    name, password = acl_user(redis_server)
    url = with_user(redis_server.url, name, password)
    admin = redis_server.client()
    bus = admin.pubsub()
    bus.psubscribe(f"{prefix}*")  # every message the servers exchange
    good = [f"tok-good-{uuid.uuid4().hex}" for _ in range(3)]
    refused = f"tok-refused-{uuid.uuid4().hex}"
    bearer, query = f"tok-bearer-{uuid.uuid4().hex}", f"tok-query-{uuid.uuid4().hex}"
    managers = Managers(prefix, redis_url=url, authenticate=lambda token, user: token in good)
    try:
        a, b = managers(), managers()
        sockets = [RecordingSocket() for _ in good]
        cids = [mgr.register_connection(ws, f"u{i}", auth_token=token)
                for i, (mgr, ws, token) in enumerate(zip((a, b, b), sockets, good, strict=True))]
        for mgr, cid in zip((a, b, b), cids, strict=True):
            mgr.join_room(cid, "lobby")
        with pytest.raises(AuthenticationError):
            a.register_connection(RecordingSocket(), "eve", auth_token=refused)
        a.broadcast_to_room("lobby", {"text": "hi"})
        assert b.send_to_connection(cids[0], {"text": "direct"})
        wait_until(lambda: all(ws.frames for ws in sockets))
        flask_users = _flask_clients(url, prefix, bearer, query)
        assert flask_users == ["bearer-user", "query-user"]
        b.abandon()
        wait_until(lambda: any(n["reason"] == "server-failure"
                               for n in sockets[0].of_type("user-disconnected")), timeout=10)
        stored = _dump(admin)
        assert KeyLayout(prefix).connection(cids[0]).encode() in stored  # the state is there
        a.shutdown()
        stored += _dump(admin)
    finally:
        managers.shutdown_all()
    published = b""
    while (msg := bus.get_message(timeout=0.2)) is not None:
        published += repr(msg).encode()
    bus.close()
    admin.close()
    assert b"lobby" in published
    logged = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert re.search(r"cleaned \d+ connection\(s\) of failed server", logged)  # logs are captured
    # (an HTTP server's access log may hold a ?token= query string: prefer Authorization: Bearer)
    for secret in (*good, refused, bearer, query, password):
        assert secret.encode() not in stored + published
        assert secret not in logged


def _dump(r: redis.Redis) -> bytes:
    """Every key of every type in Redis, with its value, as bytes."""
    readers: dict[bytes, tuple[str, tuple[Any, ...]]] = {
        b"string": ("get", ()), b"hash": ("hgetall", ()), b"set": ("smembers", ()),
        b"list": ("lrange", (0, -1)), b"zset": ("zrange", (0, -1)), b"stream": ("xrange", ()),
    }
    out = []
    for key in r.scan_iter(count=1000):
        kind = r.type(key)
        method, args = readers.get(kind, ("dump", ()))
        out.append(repr((key, kind, getattr(r, method)(key, *args))).encode() + b"\n")
    return b"".join(out)


def _flask_clients(url: str, prefix: str, bearer: str, query: str) -> list[str]:
    """Open a WebSocket with a Bearer token and one with ``?token=`` on an in-process Flask app
    using the extension: the user ids each one was given."""
    app = Flask(__name__)
    app.config.update(DCM_REDIS_URL=url, DCM_KEY_PREFIX=prefix, DCM_ALLOWED_ORIGINS="*",
                      DCM_HEARTBEAT_INTERVAL=0.1, DCM_HEARTBEAT_TTL=0.5)
    ws_ext = DistributedWebSockets(app)
    users = {bearer: "bearer-user", query: "query-user"}

    @ws_ext.authenticate
    def authenticate(token: str | None) -> str | None:
        return users.get(token or "")

    @ws_ext.route("/ws")
    def chat(conn: WebSocketConnection) -> None:
        conn.join("lobby")
        conn.send({"user": conn.user_id})
        conn.receive(timeout=5)

    port = free_port()
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="test-werkzeug", daemon=True)
    thread.start()
    seen = []
    try:
        for headers, q in (([f"Authorization: Bearer {bearer}"], ""), ([], f"?token={query}")):
            ws = ws_connect(f"ws://127.0.0.1:{port}/ws{q}", header=headers,
                                             timeout=10)
            seen.append(json.loads(ws.recv())["user"])
            ws.close()
    finally:
        ws_ext.shutdown()
        server.shutdown()
        thread.join(5)
    return seen
