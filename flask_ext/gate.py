"""Who may open a WebSocket: the token it presents and the page it comes from.

Pure functions on the WSGI environ, so the same rules run before the handshake (in the
project's handler) and after it (under the stock gevent-websocket handler).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["extract_token", "origin_allowed", "parse_origins", "redact_tokens", "REFUSE_TOKEN",
           "REFUSE_ORIGIN"]

# (HTTP status before the handshake, WebSocket close code after it, reason)
REFUSE_TOKEN = (401, 4401, "authentication required")
REFUSE_ORIGIN = (403, 4403, "origin not allowed")


def extract_token(environ: Mapping[str, Any]) -> str | None:
    """The token from ``Authorization: Bearer ...`` or, failing that, ``?token=...``."""
    auth = str(environ.get("HTTP_AUTHORIZATION", ""))
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    values = parse_qs(str(environ.get("QUERY_STRING", ""))).get("token")
    return values[0] if values and values[0] else None


_TOKEN_PARAM = re.compile(r"(^|[?&;])((?:[^=&;?\s]*token[^=&;?\s]*|resume)=)[^&;\s]*",
                          re.IGNORECASE)


def redact_tokens(text: str) -> str:
    """``text`` (a request line, a URL, a query string) with the value of every query
    parameter whose name contains ``token`` (``token``, ``access_token``), and of ``resume``
    (a resume token), replaced by ``[redacted]``: what may go to an access log."""
    low = text.lower()
    return _TOKEN_PARAM.sub(r"\1\2[redacted]", text) if "token" in low or "resume" in low else text


def parse_origins(value: str | Iterable[str] | None) -> tuple[str, ...] | None:
    """``DCM_ALLOWED_ORIGINS``: None (same origin only), ``"*"``, or origins as a list or a
    comma-separated string (``"https://a.example, https://b.example"``)."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    cleaned = []
    for item in items:
        if not isinstance(item, str):
            raise TypeError("DCM_ALLOWED_ORIGINS entries must be str")
        item = item.strip().rstrip("/").lower()
        if item:
            cleaned.append(item)
    return tuple(cleaned)


def origin_allowed(environ: Mapping[str, Any], allowed: tuple[str, ...] | None) -> bool:
    """A request without ``Origin`` (not a browser) is allowed. A browser's ``Origin`` must be
    in ``allowed``; with ``allowed`` None it must be the request's own origin: its ``Host`` and
    its scheme (``wsgi.url_scheme``: a page on ``https://host`` may not open a socket on
    ``http://host``, nor the other way round). Behind a proxy that ends TLS, let the app see the
    client's scheme (werkzeug's ``ProxyFix(x_proto=1)``) or list the origin."""
    origin = str(environ.get("HTTP_ORIGIN", "")).strip().rstrip("/").lower()
    if not origin:
        return True
    if allowed is None:
        host = str(environ.get("HTTP_HOST", "")).lower()
        scheme = str(environ.get("wsgi.url_scheme", "http")).lower()
        parts = urlsplit(origin)
        return bool(host) and parts.netloc == host and parts.scheme == scheme
    return "*" in allowed or origin in allowed
