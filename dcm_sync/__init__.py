"""dcm_sync: WebSocket connections, rooms and messages shared across server processes.

Redis (or the embedded ``memory://`` backend) holds the shared state and carries messages
between servers. The docs (``docs/``, a MkDocs site) describe the API, the configuration
and the Redis layout.
"""

from __future__ import annotations

from .config import Config
from .emitter import Emitter
from .errors import (
    AuthenticationError,
    BackendAuthenticationError,
    BackendError,
    BackendUnavailableError,
    ConfigError,
    ConnectionLimitError,
    DCMError,
    MessageTooLargeError,
    RequestFailedError,
    ResumeRefusedError,
    UnknownConnectionError,
    UnknownServerError,
)
from .factory import create_distributed_connection_manager
from .history import HistoryEntry
from .local import LocalConnectionManager
from .manager import DistributedConnectionManager
from .models import DistributedStats, RoomMember, ServerInfo

__version__ = "0.1.0"

__all__ = [
    "Config",
    "LocalConnectionManager",
    "DistributedConnectionManager",
    "create_distributed_connection_manager",
    "Emitter",
    "DistributedStats",
    "ServerInfo",
    "RoomMember",
    "HistoryEntry",
    "DCMError",
    "ConfigError",
    "UnknownConnectionError",
    "ConnectionLimitError",
    "MessageTooLargeError",
    "AuthenticationError",
    "UnknownServerError",
    "RequestFailedError",
    "ResumeRefusedError",
    "BackendError",
    "BackendUnavailableError",
    "BackendAuthenticationError",
    "__version__",
]
