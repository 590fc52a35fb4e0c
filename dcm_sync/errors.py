"""The exception tree of dcm_sync.

Every error the library raises on purpose derives from `DCMError`::

    DCMError
     ├── ConfigError (also ValueError)          invalid Config field or override
     ├── UnknownConnectionError (also KeyError)  no such connection on any server
     ├── ConnectionLimitError                   max_connections or max_rooms_per_connection reached
     ├── MessageTooLargeError (also ValueError)  encoded message over max_message_bytes
     ├── AuthenticationError                    Config.authenticate refused a token
     ├── UnknownServerError                     request(): no such live server
     ├── RequestFailedError                     request(): the other server answered with an error
     ├── ResumeRefusedError                     resume_connection(): a token not (or no longer) valid
     └── BackendError                           the coordinator (Redis) failed
          └── BackendUnavailableError           it could not be reached in time
               └── BackendAuthenticationError   it refused the credentials (Redis ACL / password)

Wrong argument types raise the builtin ``TypeError``; malformed ids (empty, too long, or not
valid Unicode text: a lone surrogate) and message text that is not valid Unicode raise
``ValueError``.
"""

from __future__ import annotations

__all__ = [
    "DCMError",
    "ConfigError",
    "UnknownConnectionError",
    "ConnectionLimitError",
    "MessageTooLargeError",
    "AuthenticationError",
    "UnknownServerError",
    "RequestFailedError",
    "BackendError",
    "BackendUnavailableError",
    "BackendAuthenticationError",
]


class DCMError(Exception):
    """Base class of every error raised by dcm_sync."""


class ConfigError(DCMError, ValueError):
    """A configuration value is invalid."""


class UnknownConnectionError(DCMError, KeyError):
    """The connection id is not known on this server nor in the shared state."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else "unknown connection"


class ConnectionLimitError(DCMError):
    """A limit is reached: this process holds ``max_connections`` local connections, or the
    connection is in ``max_rooms_per_connection`` rooms already."""


class MessageTooLargeError(DCMError, ValueError):
    """The encoded message is larger than ``Config.max_message_bytes``."""


class AuthenticationError(DCMError):
    """``Config.authenticate`` refused the connection's token."""


class UnknownServerError(DCMError):
    """No live server has the id a request was sent to."""


class RequestFailedError(DCMError):
    """The server asked answered with an error instead of a reply: its request handler raised
    (the message names the error), it has no handler, or its reply could not be sent (not
    JSON-serializable, or over ``max_message_bytes``)."""


class ResumeRefusedError(DCMError):
    """A resume token that is malformed, unknown, used already or not the user's, or recovery
    is off (``recovery_window`` 0): register the socket as a new connection instead."""


class BackendError(DCMError):
    """The coordination backend answered with an error."""


class BackendUnavailableError(BackendError):
    """The coordination backend could not be reached within the configured time."""


class BackendAuthenticationError(BackendUnavailableError):
    """The coordination backend refused the credentials (wrong Redis user or password).

    Not [`AuthenticationError`][], which is about a client's token."""
