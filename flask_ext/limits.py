"""What a client may send: inbound limits, their ``DCM_*`` settings, and the close codes.

Each limit is a Flask config key (read from the environment variable of the same name when the
app's config lacks it); inbound size reuses the core ``DCM_MAX_MESSAGE_BYTES``. A socket that
breaks a limit is closed with the code below, except that ``DCM_RATE_LIMIT_ACTION = "drop"``
drops what is over the rate limit instead (and counts it).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, replace
from typing import Any

from dcm_sync import ConfigError

__all__ = ["InboundLimits", "InboundGuard", "Violation", "setdefault_limits",
           "CLOSE_PROTOCOL", "CLOSE_BINARY", "CLOSE_INVALID_UTF8", "CLOSE_BAD_DEFLATE", "CLOSE_POLICY_RATE",
           "CLOSE_TOO_BIG", "CLOSE_TOO_MANY", "CLOSE_INCOMPLETE"]

logger = logging.getLogger(__name__)

# (close code, reason)
CLOSE_PROTOCOL = (1002, "protocol error")
CLOSE_BINARY = (1003, "binary messages not accepted")
CLOSE_INVALID_UTF8 = (1007, "invalid UTF-8")
CLOSE_BAD_DEFLATE = (1007, "invalid compressed data")
CLOSE_POLICY_RATE = (1008, "rate limit")
CLOSE_TOO_MANY = (1008, "too many connections")
CLOSE_INCOMPLETE = (1008, "message not completed in time")
CLOSE_TOO_BIG = (1009, "message too big")

DEFAULTS: dict[str, Any] = {
    "DCM_RATE_LIMIT": 50.0,               # messages per second per socket; 0 = no limit
    "DCM_RATE_BURST": 100,                # messages a socket may send at once before the rate applies
    "DCM_RATE_LIMIT_ACTION": "close",     # "close" (1008) or "drop"
    "DCM_HANDSHAKE_TIMEOUT": 10.0,        # seconds to send the request line and headers; 0 = none
}
"""The inbound-limit keys of the app's config and their defaults: ``setdefault_limits`` gives
each missing key its environment variable of the same name, or this default, at ``init_app``."""
ACTIONS = ("close", "drop")


class Violation(Exception):
    """A client broke an inbound rule: its socket is closed with ``code`` and ``reason``."""

    def __init__(self, close: tuple[int, str], detail: str = "") -> None:
        super().__init__(detail or close[1])
        self.code, self.reason = close


@dataclass(frozen=True)
class InboundLimits:
    """The inbound rules of one route (see `DEFAULTS`)."""

    max_message_bytes: int = 1024 * 1024
    rate_limit: float = 50.0
    rate_burst: int = 100
    rate_limit_action: str = "close"
    binary: bool = False                  # a route's option: accept binary messages

    @classmethod
    def from_config(cls, config: Mapping[str, Any], max_message_bytes: int) -> InboundLimits:
        """From an app's config (after `setdefault_limits`); ``ConfigError`` if invalid."""
        rate = _number(config, "DCM_RATE_LIMIT", float)
        burst = _number(config, "DCM_RATE_BURST", int)
        action = str(config.get("DCM_RATE_LIMIT_ACTION", "close")).strip().lower()
        if rate < 0:
            raise ConfigError("DCM_RATE_LIMIT must be >= 0 (0 turns it off)")
        if rate > 0 and burst < 1:
            raise ConfigError("DCM_RATE_BURST must be >= 1")
        if action not in ACTIONS:
            raise ConfigError(f"DCM_RATE_LIMIT_ACTION must be one of {', '.join(ACTIONS)}")
        return cls(max_message_bytes, rate, burst, action)

    def for_route(self, binary: bool) -> InboundLimits:
        return replace(self, binary=bool(binary))


def setdefault_limits(config: MutableMapping[str, Any], environ: Mapping[str, str] | None = None) -> None:
    """Give each key of `DEFAULTS` missing from ``config`` its environment value or default."""
    env = os.environ if environ is None else environ
    for key, default in DEFAULTS.items():
        config.setdefault(key, env.get(key, default))


def handshake_timeout(config: Mapping[str, Any]) -> float | None:
    """``DCM_HANDSHAKE_TIMEOUT`` in seconds, None when 0 (no limit)."""
    value: float = _number(config, "DCM_HANDSHAKE_TIMEOUT", float)
    if value < 0:
        raise ConfigError("DCM_HANDSHAKE_TIMEOUT must be >= 0 (0 = no limit)")
    return value or None


def _number(config: Mapping[str, Any], key: str, kind: type[int] | type[float]) -> Any:
    raw = config.get(key, DEFAULTS[key])
    if isinstance(raw, bool):
        raise ConfigError(f"{key} must be a number, got {raw!r}")
    try:
        return kind(raw.strip().replace("_", "") if isinstance(raw, str) else raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key} must be a number, got {raw!r}") from exc


class InboundGuard:
    """One socket's side of `InboundLimits`: a token bucket (``rate_limit`` tokens a
    second, at most ``rate_burst``), and the count of what was dropped."""

    def __init__(self, limits: InboundLimits) -> None:
        self.limits = limits
        self.dropped = 0
        self._tokens = float(limits.rate_burst)
        self._last = time.monotonic()

    def admit(self) -> bool:
        """Take a token: True if there was one; False (drop it) or `Violation` (close) if not."""
        rate = self.limits.rate_limit
        if rate <= 0:
            return True
        now = time.monotonic()
        self._tokens = min(float(self.limits.rate_burst), self._tokens + (now - self._last) * rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        if self.limits.rate_limit_action == "close":
            raise Violation(CLOSE_POLICY_RATE)
        if not self.dropped:
            logger.info("a client is over the rate limit (%s/s): dropping its excess messages", rate)
        self.dropped += 1
        return False

    def check_kind(self, message: str | bytes) -> None:
        """`Violation` (1003) for a binary message on a text-only route."""
        if isinstance(message, (bytes, bytearray)) and not self.limits.binary:
            raise Violation(CLOSE_BINARY)
