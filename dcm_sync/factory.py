"""create_distributed_connection_manager: build, start and return a ready manager."""

from __future__ import annotations

from typing import Any

from .config import Config
from .local import LocalConnectionManager
from .manager import DistributedConnectionManager

__all__ = ["create_distributed_connection_manager"]


def create_distributed_connection_manager(
    local: LocalConnectionManager | None = None,
    config: Config | None = None,
    **overrides: Any,
) -> DistributedConnectionManager:
    """Return a started manager: registered, subscribed, loops running (``is_ready()``).

    Without ``config`` the settings come from [`Config.from_env`][]; keyword ``overrides``
    (``redis_url=...``, ``server_port=...``) are applied on top. Without ``local`` a
    [`LocalConnectionManager`][] of ``config.max_connections`` is made.
    """
    base = config if config is not None else Config.from_env()
    if not isinstance(base, Config):
        raise TypeError(f"config must be a Config, got {type(base).__name__}")
    cfg = base.replace(**overrides) if overrides else base
    if local is None:
        local = LocalConnectionManager(cfg.max_connections)
    elif not isinstance(local, LocalConnectionManager):
        raise TypeError(f"local must be a LocalConnectionManager, got {type(local).__name__}")
    manager = DistributedConnectionManager(local, cfg)
    try:
        manager.start()
    except BaseException:
        manager.shutdown()
        raise
    return manager
