from __future__ import annotations

from pathlib import Path

import pytest

from dcm_sync import Config, ConfigError, create_distributed_connection_manager


def test_defaults_use_embedded_backend() -> None:
    cfg = Config()
    assert cfg.redis_url == "memory://"
    assert cfg.key_prefix == "dcm:"
    assert (cfg.heartbeat_interval, cfg.heartbeat_ttl) == (30.0, 90.0)
    assert cfg.max_message_bytes == 1024 * 1024
    assert cfg.notify_on_disconnect is True


def test_from_env_reads_seed_variables_and_dcm_fields() -> None:
    env = {"REDIS_URL": "redis://127.0.0.1:7000/2", "SERVER_HOST": "10.0.0.5", "PORT": "3001",
           "DCM_HEARTBEAT_INTERVAL": "0.5", "DCM_HEARTBEAT_TTL": "2", "DCM_KEY_PREFIX": "app:",
           "DCM_NOTIFY_ON_DISCONNECT": "false", "DCM_MAX_CONNECTIONS": "50_000",
           "DCM_MAX_ROOMS_PER_CONNECTION": "128"}
    cfg = Config.from_env(env)
    assert cfg.redis_url == "redis://127.0.0.1:7000/2"
    assert cfg.server_host == "10.0.0.5" and cfg.server_port == 3001
    assert cfg.heartbeat_interval == 0.5 and cfg.heartbeat_ttl == 2.0
    assert cfg.key_prefix == "app:" and cfg.notify_on_disconnect is False
    assert cfg.max_connections == 50_000
    assert cfg.max_rooms_per_connection == 128 and Config().max_rooms_per_connection == 100


def test_from_env_dcm_name_wins_and_overrides_win() -> None:
    env = {"REDIS_URL": "redis://127.0.0.1:1/0", "DCM_REDIS_URL": "redis://127.0.0.1:2/0"}
    assert Config.from_env(env).redis_url == "redis://127.0.0.1:2/0"
    assert Config.from_env(env, redis_url="memory://x").redis_url == "memory://x"


def test_from_env_empty_is_memory() -> None:
    assert Config.from_env({}).redis_url == "memory://"


@pytest.mark.parametrize("kwargs", [
    dict(heartbeat_interval=30.0, heartbeat_ttl=60.0),       # ttl must exceed 2 x interval
    dict(heartbeat_interval=0.0),
    dict(heartbeat_interval=-1.0),
    dict(redis_url="http://127.0.0.1"),
    dict(server_port=70000),
    dict(key_prefix=""),
    dict(key_prefix="has space"),
    dict(key_prefix="app{1}:"),  # braces would put every key in one Cluster slot
    dict(redis_url="redis+sentinel://127.0.0.1:26379/mymaster", redis_ca_file="/etc/hostname"),
    dict(max_connections=0),
    dict(max_rooms_per_connection=-1),
    dict(max_message_bytes=10),
    dict(server_port="3000"),
    dict(notify_on_disconnect="yes"),
    dict(server_id=""),
    dict(authenticate="not callable"),
])
def test_invalid_settings_raise_config_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        Config(**kwargs)  # type: ignore[arg-type]


def test_config_error_is_value_error() -> None:
    with pytest.raises(ValueError, match="heartbeat_ttl"):
        Config(heartbeat_interval=1, heartbeat_ttl=2)


def test_bad_env_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="heartbeat_interval"):
        Config.from_env({"DCM_HEARTBEAT_INTERVAL": "soon"})


def test_sub_second_timings_are_valid() -> None:
    cfg = Config(heartbeat_interval=0.05, heartbeat_ttl=0.2, cleanup_interval=0.05)
    assert cfg.heartbeat_ttl == 0.2


def test_connection_ttl_is_ignored_with_a_warning() -> None:
    # connection records do not expire (their server's sets bound their life)
    with pytest.warns(DeprecationWarning, match="connection_ttl is ignored"):
        Config(connection_ttl=60.0)
    Config.from_env({})  # the default warns nothing (warnings are errors in the tests)


def test_factory_accepts_keyword_overrides() -> None:
    mgr = create_distributed_connection_manager(None, redis_url="memory://overrides",
                                                server_port=4321, server_host="10.1.2.3")
    try:
        assert mgr.is_ready()
        assert mgr.config.server_port == 4321
        [info] = mgr.get_active_servers()
        assert (info.host, info.port) == ("10.1.2.3", 4321)
    finally:
        mgr.shutdown()


def test_factory_rejects_unknown_override() -> None:
    with pytest.raises(ConfigError, match="unknown setting"):
        create_distributed_connection_manager(None, Config(), heartbeat=3)


@pytest.mark.parametrize(("url", "message"), [
    ("redis+sentinel://127.0.0.1:26379", "the path must be /service_name"),
    ("redis+sentinel://127.0.0.1:26379/mymaster/x", "db must be a number"),
    ("redis+sentinel://127.0.0.1:notaport/mymaster", "invalid port"),
    ("redis+sentinel://127.0.0.1:26379/mymaster?password=x", "sentinel_username and sentinel_password"),
    ("redis+sentinel://127.0.0.1:26379/mymaster?sentinel_password=a&sentinel_password=b",
     "each once"),
    ("redis+sentinel://127.0.0.1:26379/mymaster?sentinel_password", "each once"),
    ("redis+cluster://127.0.0.1:7000/3", "database 0 only"),
    ("redis+cluster://", "no host:port"),
])
def test_bad_sentinel_and_cluster_urls_say_what_is_wrong(url: str, message: str) -> None:
    # well-formed scheme, wrong shape: refused when the manager connects, before any I/O
    with pytest.raises(ConfigError, match=message):
        create_distributed_connection_manager(redis_url=url, server_port=1)


def test_sentinel_and_cluster_urls_are_valid_settings(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    Config(redis_url="redis+sentinel://a:26379,b:26379/mymaster/2")
    Config(redis_url="redis+cluster://a:7000,b:7001")
    Config(redis_url="rediss+cluster://u:p@a:7000", redis_ca_file=str(ca))
    Config(redis_url="rediss+sentinel://a:26379/mymaster?sentinel_password=s", redis_ca_file=str(ca))
    with pytest.raises(ConfigError, match="not rediss"):
        Config(redis_url="redis+cluster://a:7000", redis_ca_file=str(ca))
