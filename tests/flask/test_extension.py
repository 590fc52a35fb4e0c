"""The extension inside one process: setup, configuration and plain-HTTP behaviour."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from flask import Flask

from dcm_sync import ConfigError, ConnectionLimitError, DCMError, RoomMember
from flask_ext import DistributedWebSockets, WebSocketConnection
from flask_ext.gate import extract_token, origin_allowed, parse_origins
from testkit.recording import connect


@pytest.fixture
def app() -> Iterator[Flask]:
    app = Flask(__name__)
    app.config["DCM_REDIS_URL"] = f"memory://{uuid.uuid4().hex}"
    yield app
    ext = app.extensions.get("dcm")
    if ext is not None:
        ext.shutdown()


def test_init_app_registers_once_and_config_maps_to_fields(app: Flask) -> None:
    app.config.update(DCM_HEARTBEAT_INTERVAL="0.5", DCM_HEARTBEAT_TTL=2, DCM_KEY_PREFIX="chat:",
                      DCM_MAX_CONNECTIONS=7, DCM_SERVER_PORT=8123, DCM_ALLOWED_ORIGINS="https://a.example")
    sockets = DistributedWebSockets()
    sockets.init_app(app)
    assert app.extensions["dcm"] is sockets
    with pytest.raises(RuntimeError, match="already registered"):
        sockets.init_app(app)
    with pytest.raises(RuntimeError, match="already registered"):
        DistributedWebSockets(app)
    with app.app_context():
        cfg = sockets.manager.config
    assert (cfg.heartbeat_interval, cfg.heartbeat_ttl, cfg.key_prefix) == (0.5, 2.0, "chat:")
    assert (cfg.max_connections, cfg.server_port) == (7, 8123)
    assert cfg.redis_url == app.config["DCM_REDIS_URL"]


@pytest.mark.parametrize("key,value", [("DCM_HEARTBEAT_TTL", "1"), ("DCM_SERVER_PORT", "http"),
                                       ("DCM_NO_SUCH_SETTING", 1), ("DCM_REDIS_URL", "ftp://x")])
def test_bad_config_fails_at_init_app(app: Flask, key: str, value: object) -> None:
    app.config[key] = value
    with pytest.raises(ConfigError):
        DistributedWebSockets(app)
    assert "dcm" not in app.extensions


def test_nothing_starts_until_used(app: Flask) -> None:
    sockets = DistributedWebSockets(app)
    state = sockets._state()
    assert not state.started()
    with app.app_context():
        assert sockets.manager.is_ready()
    assert state.started()
    sockets.shutdown()
    assert not state.started()
    with pytest.raises(DCMError, match="shut down"):
        sockets.broadcast_to_room("r", "after shutdown")  # never a new, forgotten server


def test_routes_declared_before_init_app(app: Flask) -> None:
    sockets = DistributedWebSockets()

    @sockets.route("/ws/<room>")
    def room_socket(conn: WebSocketConnection, room: str) -> None:
        raise AssertionError("not reached by plain HTTP")

    sockets.init_app(app)
    client = app.test_client()
    resp = client.get("/ws/lobby")
    assert resp.status_code == 400
    assert b"WebSocket connections only" in resp.data
    assert [r.rule for r in app.url_map.iter_rules() if r.endpoint == "room_socket"] == ["/ws/<room>"]


def test_health_blueprint_says_ready_alone_unless_details_are_on(app: Flask) -> None:
    sockets = DistributedWebSockets(app)
    app.register_blueprint(sockets.health_blueprint, url_prefix="/dcm")
    resp = app.test_client().get("/dcm/health")
    assert (resp.status_code, resp.get_json()) == (200, {"ready": True})  # no host, pid or port

    detailed = Flask("detailed")
    detailed.config.update(DCM_REDIS_URL=f"memory://{uuid.uuid4().hex}", DCM_HEALTH_DETAILS="yes")
    more = DistributedWebSockets(detailed)
    detailed.register_blueprint(more.health_blueprint, url_prefix="/dcm")
    try:
        body = detailed.test_client().get("/dcm/health").get_json()
        assert body["ready"] is True and body["server_id"]
        assert body["stats"]["active_servers"] == 1
        assert body["stats"]["server_stats"][0]["pid"] > 0
    finally:
        more.shutdown()

    bad = Flask("bad")
    bad.config.update(DCM_REDIS_URL="memory://", DCM_HEALTH_DETAILS="perhaps")
    with pytest.raises(ConfigError, match="DCM_HEALTH_DETAILS"):
        DistributedWebSockets(bad)


def test_compression_setting_must_be_yes_or_no() -> None:
    bad = Flask("bad")
    bad.config.update(DCM_REDIS_URL="memory://", DCM_COMPRESSION="gzip")
    with pytest.raises(ConfigError, match="DCM_COMPRESSION must be true or false"):
        DistributedWebSockets(bad)


def test_passthroughs_without_app_context(app: Flask) -> None:
    sockets = DistributedWebSockets(app)
    assert sockets.send_to_connection("0" * 32, "x") is False
    sockets.broadcast_to_room("empty", {"x": 1})
    assert sockets.get_distributed_stats().active_servers == 1


def test_token_extraction() -> None:
    assert extract_token({"HTTP_AUTHORIZATION": "Bearer abc"}) == "abc"
    assert extract_token({"HTTP_AUTHORIZATION": "bearer  abc "}) == "abc"
    assert extract_token({"QUERY_STRING": "token=t%20x&a=1"}) == "t x"
    assert extract_token({"HTTP_AUTHORIZATION": "Basic zzz", "QUERY_STRING": "token=q"}) == "q"
    assert extract_token({}) is None
    assert extract_token({"QUERY_STRING": "token="}) is None


def test_origin_rules() -> None:
    same = {"HTTP_HOST": "chat.example:8000", "HTTP_ORIGIN": "http://chat.example:8000"}
    other = {"HTTP_HOST": "chat.example:8000", "HTTP_ORIGIN": "https://evil.example"}
    assert origin_allowed(same, None) and not origin_allowed(other, None)
    assert origin_allowed({"HTTP_HOST": "x"}, None)  # no Origin: not a browser
    # same host, other scheme: not the same origin
    tls_page = {"HTTP_HOST": "chat.example:8000", "HTTP_ORIGIN": "https://chat.example:8000"}
    assert not origin_allowed(tls_page, None)
    assert origin_allowed({**tls_page, "wsgi.url_scheme": "https"}, None)
    assert not origin_allowed({**same, "wsgi.url_scheme": "https"}, None)
    allowed = parse_origins("https://evil.example/, https://b.example")
    assert allowed == ("https://evil.example", "https://b.example")
    assert origin_allowed(other, allowed) and not origin_allowed(same, allowed)
    assert origin_allowed(other, parse_origins(["*"]))
    with pytest.raises(TypeError):
        parse_origins([1])  # type: ignore[list-item]


def test_presence_users_and_requests_pass_through_under_the_same_names(app: Flask) -> None:
    app.config.update(DCM_MAX_CONNECTIONS_PER_USER=1, DCM_ROOM_NOTICES="users")
    sockets = DistributedWebSockets(app)

    @sockets.on_request  # before the manager exists: nothing starts here
    def answer(origin: str, message: object) -> object:
        return {"echo": message, "from": origin}

    assert not app.extensions["dcm"]._states[app].started()
    with app.app_context():
        mgr = sockets.manager
        assert (mgr.config.max_connections_per_user, mgr.config.room_notices) == (1, "users")
        cid, ws = connect(mgr, "alice", "lobby")
        with pytest.raises(ConnectionLimitError):  # the core's cap, counted on all servers
            connect(mgr, "alice")
        assert sockets.get_room_members("lobby") == [RoomMember(cid, "alice", mgr.server_id)]
        assert sockets.get_room_users("lobby") == {"alice"}
        assert sockets.get_user_connections("alice") == [cid]
        assert sockets.send_to_user("alice", "hi") == 1 and ws.frames == ["hi"]
        assert sockets.request(mgr.server_id, 7) == {"echo": 7, "from": mgr.server_id}
        assert sockets.survey("x") == {mgr.server_id: {"echo": "x", "from": mgr.server_id}}
        assert sockets.close_room("lobby") == 1 and sockets.get_room_users("lobby") == set()
        assert sockets.disconnect_user("alice", 4000, "bye") == 1 and ws.closed
