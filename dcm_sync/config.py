"""Configuration: the `Config` dataclass, its validation and ``from_env()``."""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from .errors import ConfigError
from .signing import signing_key_bytes

__all__ = ["Config", "AuthenticateFn", "SUPPORTED_SCHEMES", "ROOM_NOTICES", "redact_url"]

AuthenticateFn = Callable[[Any, str], Any]
"""``authenticate(auth_token, user_id)``: a falsy result refuses the connection."""

SUPPORTED_SCHEMES = ("memory", "redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel",
                     "redis+cluster", "rediss+cluster")

#: The short environment names of three Config fields (``DCM_<FIELD>`` wins over them).
_SEED_ENV = {"redis_url": "REDIS_URL", "server_host": "SERVER_HOST", "server_port": "PORT"}
#: Fields that cannot come from text (environment, Flask config strings).
_NOT_FROM_ENV = frozenset({"authenticate"})
#: ``room_notices``: per connection, per user (a user's first join and last leave), or none.
ROOM_NOTICES = ("connections", "users", "off")
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


#: ``Config.connection_ttl``'s default; any other value warns that the setting is ignored
IGNORED_CONNECTION_TTL = 3600.0


@dataclass(frozen=True)
class Config:
    """Settings of one distributed manager. Invalid values raise [`ConfigError`][].

    Times are in seconds (floats; sub-second values work). The docs' Configuration page
    (``docs/configuration.md``) says what each field does and which environment variable sets it.
    """

    redis_url: str = "memory://"
    redis_ca_file: str | None = None
    server_host: str = "127.0.0.1"
    server_port: int = 3000
    server_id: str | None = None
    key_prefix: str = "dcm:"
    heartbeat_interval: float = 30.0
    heartbeat_ttl: float = 90.0
    stale_connection_timeout: float = 1800.0
    cleanup_interval: float = 300.0
    connection_ttl: float = IGNORED_CONNECTION_TTL  # ignored: connection records do not expire
    max_connections: int = 10_000
    max_rooms_per_connection: int = 100
    max_connections_per_user: int = 0
    max_message_bytes: int = 1024 * 1024
    send_queue_max_messages: int = 1000
    send_queue_max_bytes: int = 1024 * 1024
    notify_on_disconnect: bool = True
    room_notices: str = "connections"
    redis_timeout: float = 2.0
    subscribe_timeout: float = 2.0
    probe_interval: float = 5.0
    probe_timeout: float = 2.0
    ping_interval: float = 25.0
    ping_timeout: float = 20.0
    history_rooms: Sequence[str] = ()
    history_size: int = 100
    history_ttl: float = 300.0
    recovery_window: float = 0.0
    mailbox_size: int = 100
    signing_keys: Sequence[str | bytes] = field(default=(), repr=False)
    authenticate: AuthenticateFn | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.repr:  # secrets and callables are checked below, never echoed in an error
                _check_type(f.name, getattr(self, f.name), f.type)
        scheme = urlsplit(self.redis_url).scheme
        if scheme not in SUPPORTED_SCHEMES:
            raise ConfigError(
                f"redis_url {redact_url(self.redis_url)!r}: scheme must be one of "
                f"{', '.join(s + '://' for s in SUPPORTED_SCHEMES)}"
            )
        if self.redis_ca_file is not None:
            if scheme not in ("rediss", "rediss+sentinel", "rediss+cluster"):
                raise ConfigError("redis_ca_file is set but redis_url is not rediss://, "
                                  "rediss+sentinel:// or rediss+cluster://, "
                                  "so the connection to Redis would not use TLS")
            if not (os.path.isfile(self.redis_ca_file) and os.access(self.redis_ca_file, os.R_OK)):
                raise ConfigError(f"redis_ca_file {self.redis_ca_file!r}: no such readable file")
        if not self.server_host:
            raise ConfigError("server_host must not be empty")
        if not 0 <= self.server_port <= 65535:
            raise ConfigError(f"server_port must be in 0..65535, got {self.server_port}")
        if self.server_id is not None and not (0 < len(self.server_id) <= 128):
            raise ConfigError("server_id must be 1..128 characters")
        if not _PREFIX_RE.match(self.key_prefix):
            raise ConfigError(
                f"key_prefix {self.key_prefix!r} must be 1..64 characters of A-Z a-z 0-9 _ . : - "
                "(no braces: they would decide every key's Redis Cluster slot)"
            )
        for name in ("heartbeat_interval", "heartbeat_ttl", "stale_connection_timeout",
                     "cleanup_interval", "connection_ttl", "redis_timeout", "subscribe_timeout",
                     "probe_timeout", "ping_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.send_queue_max_messages < 1 or self.send_queue_max_bytes < 1:
            raise ConfigError("send_queue_max_messages and send_queue_max_bytes must be >= 1")
        if self.ping_interval < 0:
            raise ConfigError(f"ping_interval must be >= 0 (0 turns pings off), "
                              f"got {self.ping_interval!r}")
        if self.probe_interval < 0:
            raise ConfigError(f"probe_interval must be >= 0 (0 turns probes off), "
                              f"got {self.probe_interval!r}")
        if self.heartbeat_ttl <= 2 * self.heartbeat_interval:
            raise ConfigError(
                f"heartbeat_ttl ({self.heartbeat_ttl}) must be more than twice "
                f"heartbeat_interval ({self.heartbeat_interval}), or one late heartbeat "
                "would declare a live server dead"
            )
        if self.connection_ttl != IGNORED_CONNECTION_TTL:
            # a live connection's record lives until it is removed, by its server or by the
            # cleanup of its server's failure: there is nothing left for a TTL to bound
            warnings.warn("connection_ttl is ignored: connection records do not expire",
                          DeprecationWarning, stacklevel=3)
        if self.max_connections < 1:
            raise ConfigError("max_connections must be >= 1")
        if self.max_rooms_per_connection < 0:
            raise ConfigError("max_rooms_per_connection must be >= 0 (0 = no limit)")
        if self.room_notices not in ROOM_NOTICES:
            raise ConfigError(f"room_notices must be one of {', '.join(ROOM_NOTICES)}, "
                              f"not {self.room_notices!r}")
        if self.max_connections_per_user < 0:
            raise ConfigError("max_connections_per_user must be >= 0 (0 = no limit)")
        if self.max_message_bytes < 64:
            raise ConfigError("max_message_bytes must be >= 64")
        if self.authenticate is not None and not callable(self.authenticate):
            raise ConfigError("authenticate must be callable or None")
        object.__setattr__(self, "signing_keys", _signing_keys(self.signing_keys))
        object.__setattr__(self, "history_rooms", _patterns(self.history_rooms))
        if not 1 <= self.history_size <= 100_000:
            raise ConfigError(f"history_size must be in 1..100000, got {self.history_size}")
        if not self.history_ttl > 0:
            raise ConfigError(f"history_ttl must be > 0, got {self.history_ttl!r}")
        if self.recovery_window < 0:
            raise ConfigError(f"recovery_window must be >= 0 (0 turns recovery off), "
                              f"got {self.recovery_window!r}")
        if self.history_rooms and self.history_ttl < self.recovery_window:
            raise ConfigError(
                f"history_ttl ({self.history_ttl}) must be at least recovery_window "
                f"({self.recovery_window}): a history that expires within the window would "
                "lose messages a returning client missed")
        if not 1 <= self.mailbox_size <= 100_000:
            raise ConfigError(f"mailbox_size must be in 1..100000, got {self.mailbox_size}")

    def __repr__(self) -> str:  # the dataclass's, but never with the URL's password
        shown = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.repr}
        shown["redis_url"] = redact_url(self.redis_url)
        return f"Config({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    def replace(self, **overrides: Any) -> Config:
        """A copy with ``overrides`` applied; unknown names raise [`ConfigError`][]."""
        unknown = set(overrides) - set(field_names())
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **overrides)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """Read ``REDIS_URL``, ``SERVER_HOST``, ``PORT`` and ``DCM_<FIELD>`` for the rest.

        ``DCM_REDIS_URL`` etc. are accepted too and win over the short names.
        Keyword ``overrides`` win over the environment.
        """
        env = os.environ if environ is None else environ
        values: dict[str, str] = {}
        for name in field_names():
            if name in _NOT_FROM_ENV:
                continue
            for var in (f"DCM_{name.upper()}", _SEED_ENV.get(name)):
                if var and var in env:
                    values[name] = env[var]
                    break
        return cls.from_mapping(values).replace(**overrides)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], base: Config | None = None) -> Config:
        """``base`` (default: the defaults) with ``{field: value}`` applied; string values are
        parsed as in [`from_env`][]."""
        parsed = {k: parse_value(k, v) if isinstance(v, str) else v for k, v in values.items()}
        return (base or cls()).replace(**parsed)


def redact_url(url: str) -> str:
    """``url`` for messages and logs: its password (``user:PASSWORD@``, ``?password=``) as ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    userinfo, at, hostport = parts.netloc.rpartition("@")
    netloc = f"{userinfo.split(':', 1)[0]}:***@{hostport}" if at and ":" in userinfo else None
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    hidden = [(k, "***" if "password" in k.lower() else v) for k, v in pairs]
    if netloc is None and hidden == pairs:
        return url
    query = urlencode(hidden, safe="*/") if hidden != pairs else parts.query
    return f"{parts.scheme}://{netloc or parts.netloc}{parts.path}" + (f"?{query}" if query else "")


def field_names() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(Config))


def _field_type(name: str) -> str:
    for f in dataclasses.fields(Config):
        if f.name == name:
            return str(f.type)
    raise ConfigError(f"unknown setting {name!r}")


def parse_switch(text: str) -> bool:
    """A yes/no setting's text: ``1 true yes on`` or ``0 false no off`` and empty (any case);
    ``ValueError`` otherwise."""
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError(text)


def parse_value(name: str, text: str) -> Any:
    """Parse the text form of field ``name`` (from the environment or a config file)."""
    kind = _field_type(name)
    text = text.strip()
    if kind.startswith("Sequence["):  # comma-separated
        return tuple(part.strip() for part in text.split(",") if part.strip())
    try:
        if kind.startswith("bool"):
            return parse_switch(text)
        if kind.startswith("int"):
            return int(text.replace("_", ""))
        if kind.startswith("float"):
            return float(text)
    except ValueError:
        raise ConfigError(f"{name}: cannot read {text!r} as {kind}") from None
    if kind == "str | None" and text == "":
        return None
    return text


def _check_type(name: str, value: Any, kind: Any) -> None:
    kind = str(kind)
    optional = kind.endswith("| None")
    if value is None:
        if optional:
            return
        raise ConfigError(f"{name} must not be None")
    base = kind.split("|")[0].strip()
    ok = {
        "str": isinstance(value, str),
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
    }.get(base, True)
    if not ok:
        raise ConfigError(f"{name} must be {base}, got {type(value).__name__} {value!r}")


def _patterns(patterns: object) -> tuple[str, ...]:
    """``history_rooms`` as a tuple of non-empty glob patterns."""
    if isinstance(patterns, str) or not isinstance(patterns, (list, tuple)):
        raise ConfigError("history_rooms must be a list or tuple of glob patterns "
                          f"(\"chat-*\"), got {type(patterns).__name__}")
    for p in patterns:
        if not isinstance(p, str) or not p:
            raise ConfigError(f"history_rooms: each pattern must be a non-empty string, got {p!r}")
    return tuple(patterns)


def _signing_keys(keys: object) -> tuple[str | bytes, ...]:
    """``keys`` as a tuple of str/bytes, each long enough; the keys never appear in errors."""
    if isinstance(keys, (str, bytes, bytearray, memoryview)) or not isinstance(keys, (list, tuple)):
        raise ConfigError(f"signing_keys must be a list or tuple of keys, got {type(keys).__name__}")
    out: list[str | bytes] = []
    for i, key in enumerate(keys):
        try:
            raw = signing_key_bytes(key)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"signing_keys[{i}]: {exc}") from None
        out.append(key if isinstance(key, str) else raw)
    return tuple(out)
