"""Per-app state of the extension: its Config, origin rules, and the lazy per-process manager."""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from flask import Flask

from dcm_sync import (
    Config,
    ConfigError,
    DCMError,
    DistributedConnectionManager,
    create_distributed_connection_manager,
)
from dcm_sync.config import field_names, parse_switch

from .gate import parse_origins
from .limits import InboundLimits, handshake_timeout, setdefault_limits

__all__ = ["AppState", "build_config", "health_details", "compression", "FLASK_ONLY_KEYS"]

logger = logging.getLogger(__name__)

#: seconds the extension's SIGTERM hook (gevent) waits for an app's own handler to act first
SIGTERM_YIELD = 0.1

#: DCM_* keys that belong to the extension, not to dcm_sync.Config.
FLASK_ONLY_KEYS = frozenset({"allowed_origins", "rate_limit", "rate_burst", "rate_limit_action",
                             "handshake_timeout", "health_details", "compression"})


def _switch(app: Flask, key: str) -> bool:
    """A yes/no setting: the app's config, else the environment; default off. ``ConfigError``
    if it is not a yes/no value."""
    raw = app.config.get(key, os.environ.get(key, False))
    if isinstance(raw, bool):
        return raw
    try:
        return parse_switch(str(raw))
    except ValueError:
        raise ConfigError(f"{key} must be true or false, got {raw!r}") from None


def health_details(app: Flask) -> bool:
    """``DCM_HEALTH_DETAILS`` (default off): whether the health route shows this server's id and
    the cluster's stats (every server's host, port and pid) or readiness alone."""
    return _switch(app, "DCM_HEALTH_DETAILS")


def compression(app: Flask) -> bool:
    """``DCM_COMPRESSION`` (default off): whether the handshake agrees on permessage-deflate
    when a client offers it (`flask_ext.deflate`)."""
    return _switch(app, "DCM_COMPRESSION")


def build_config(app: Flask) -> Config:
    """``Config.from_env()`` overlaid with the app's ``DCM_*`` keys; ``ConfigError`` if invalid."""
    values = {k: v for k, v in app.config.get_namespace("DCM_").items()
              if k not in FLASK_ONLY_KEYS and v is not None}
    unknown = set(values) - set(field_names())
    if unknown:
        raise ConfigError("unknown setting(s): " + ", ".join(f"DCM_{k.upper()}" for k in sorted(unknown)))
    return Config.from_mapping(values, base=Config.from_env())


class AppState:
    def __init__(self, app: Flask,
                 on_start: Callable[[DistributedConnectionManager], None] | None = None) -> None:
        self._on_start = on_start
        self.config = build_config(app)
        self.allowed_origins = parse_origins(app.config.get("DCM_ALLOWED_ORIGINS"))
        setdefault_limits(app.config)  # inbound limits: flask_ext.limits
        self.limits = InboundLimits.from_config(app.config, self.config.max_message_bytes)
        handshake_timeout(app.config)  # checked here, read by flask_ext.handler
        self.health_details = health_details(app)
        self.compression = compression(app)
        self.endpoints: set[str] = set()
        self._manager: DistributedConnectionManager | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._hooks_pid = 0
        self._shut_down_pid = 0

    def manager(self) -> DistributedConnectionManager:
        """This process's manager, made on first use (after gunicorn forked its workers)."""
        mgr = self._manager
        if mgr is not None and self._pid == os.getpid():
            return mgr
        if self._shut_down_pid == os.getpid():
            raise DCMError("this process's distributed manager has been shut down")
        with self._lock:
            if self._manager is None or self._pid != os.getpid():
                # A manager inherited through fork belongs to the parent: never reuse it.
                self._manager = create_distributed_connection_manager(None, self.config)
                self._pid = os.getpid()
                self._install_exit_hooks()
                if self._on_start is not None:
                    self._on_start(self._manager)
            return self._manager

    def started(self) -> bool:
        return self._manager is not None and self._pid == os.getpid()

    def shutdown(self) -> None:
        """Shut down this process's manager; later uses in this process raise ``DCMError``."""
        with self._lock:
            mgr, self._manager = self._manager, None
            self._shut_down_pid = os.getpid()
        if mgr is not None and self._pid == os.getpid():
            mgr.shutdown()

    def _install_exit_hooks(self) -> None:
        """At exit, and on SIGTERM when nobody else handles it, shut the manager down: its
        sockets close with 1001 (going away) and the other servers are told at once."""
        if self._hooks_pid == os.getpid():
            return
        self._hooks_pid = os.getpid()
        atexit.register(self.shutdown)
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return  # the server (gunicorn's worker, the app) handles SIGTERM; atexit still runs
        monkey = sys.modules.get("gevent.monkey")
        if monkey is not None and monkey.is_module_patched("socket"):
            # Under gevent the manager is made in a request's greenlet, which is on the main
            # thread whatever threading.current_thread() says. An app's own handler installed
            # with gevent.signal_handler is not visible to signal.getsignal: see _on_gevent_sigterm.
            import gevent

            gevent.signal_handler(signal.SIGTERM, self._on_gevent_sigterm)
            return
        try:
            signal.signal(signal.SIGTERM, self._on_sigterm)
        except ValueError:  # not the main thread: only that one may handle signals
            logger.info("the manager was made off the main thread: SIGTERM is not hooked "
                        "(atexit still shuts it down)")

    def _on_sigterm(self, *args: Any) -> None:
        logger.info("SIGTERM: shutting down the distributed manager")
        try:
            self.shutdown()
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)  # then end as SIGTERM would have

    def _on_gevent_sigterm(self) -> None:
        import gevent

        gevent.sleep(SIGTERM_YIELD)  # an app's own handler runs first, if there is one
        if self._shut_down_pid == os.getpid():
            return  # the app shut it down in its handler: ending the process is the app's call
        self._on_sigterm()
