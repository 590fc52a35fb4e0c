"""DistributedWebSockets: WebSocket routes on the distributed manager, for Flask apps."""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from flask import Blueprint, Flask, Response, current_app, has_app_context, jsonify, request
from werkzeug.routing.exceptions import WebsocketMismatch

from dcm_sync import (
    AuthenticationError,
    ConnectionLimitError,
    DCMError,
    DistributedConnectionManager,
    DistributedStats,
    HistoryEntry,
    ResumeRefusedError,
    RoomMember,
)
from dcm_sync.requests import RequestHandler

from .cli import make_cli_group
from .connection import WebSocketConnection
from .deflate import ENVIRON_KEY as DEFLATE_KEY
from .deflate import negotiate
from .gate import REFUSE_ORIGIN, REFUSE_TOKEN, extract_token, origin_allowed
from .handshake import HandshakeError
from .limits import CLOSE_TOO_MANY, InboundLimits
from .resume import ResumeRequest, resume_request
from .state import AppState
from .transports import Transport, open_transport

__all__ = ["DistributedWebSockets", "PRECHECK_HEADER", "PRECHECK_KEY"]

logger = logging.getLogger(__name__)

PRECHECK_KEY = "dcm.precheck"          # environ flag set by the project's handler before the handshake
PRECHECK_HEADER = "X-DCM-Precheck"     # "accepted" (ours, allowed) or "pass" (not a dcm route)
_VERDICT_KEY = "dcm.verdict"

View = Callable[..., Any]
Authenticator = Callable[[str | None], str | None]
Verdict = tuple[str, None] | tuple[None, tuple[int, int, str]]


class DistributedWebSockets:
    """Flask extension: ``sockets = DistributedWebSockets(app)`` or ``init_app(app)`` later."""

    def __init__(self, app: Flask | None = None) -> None:
        self._routes: list[tuple[str, str, View, dict[str, Any]]] = []
        self._authenticate: Authenticator | None = None
        self._request_handler: RequestHandler | None = None
        self._states: dict[Flask, AppState] = {}
        self._health: Blueprint | None = None
        self._client: Blueprint | None = None
        self._metrics: Blueprint | None = None
        if app is not None:
            self.init_app(app)

    # ----------------------------------------------------------------- setup
    def init_app(self, app: Flask) -> None:
        """Bind to ``app``: reads ``DCM_*`` config (invalid values raise ``ConfigError`` here),
        adds the routes and the ``flask dcm`` commands. Starts nothing: the manager is made on
        first use in the serving process."""
        if "dcm" in app.extensions:
            raise RuntimeError("a DistributedWebSockets extension is already registered on this app")
        app.config.setdefault("DCM_ALLOWED_ORIGINS", None)
        state = AppState(app, on_start=self._on_start)
        app.extensions["dcm"] = self
        self._states[app] = state
        for rule, endpoint, view, options in self._routes:
            self._add_route(app, state, rule, endpoint, view, options)
        app.before_request(self._pass_foreign_precheck)
        app.register_error_handler(WebsocketMismatch, _websocket_mismatch)
        app.cli.add_command(make_cli_group())  # `flask dcm ...`: opens nothing until run

    def authenticate(self, fn: Authenticator) -> Authenticator:
        """Decorator: ``fn(token) -> user id or None``. Token from ``Authorization: Bearer`` or
        ``?token=``; None refuses (HTTP 401 before the handshake, or close code 4401)."""
        self._authenticate = fn
        return fn

    def route(self, rule: str, **options: Any) -> Callable[[View], View]:
        """Decorator for a WebSocket view ``view(conn, **url_args)`` that runs while the socket lives.
        ``binary=True`` accepts binary messages (otherwise they close the socket with 1003).
        ``recovery=True`` speaks the recovery protocol (``docs/protocol.md``): the client gets
        a resume token and positions with each message, and with ``DCM_RECOVERY_WINDOW`` on
        a dropped socket is suspended and can be resumed on any server (``conn.recovered``)."""
        def decorator(view: View) -> View:
            endpoint = options.pop("endpoint", view.__name__)
            self._routes.append((rule, endpoint, view, options))
            for app, state in self._states.items():
                self._add_route(app, state, rule, endpoint, view, options)
            return view
        return decorator

    def _add_route(self, app: Flask, state: AppState, rule: str, endpoint: str, view: View,
                   options: dict[str, Any]) -> None:
        options = dict(options)
        limits = state.limits.for_route(options.pop("binary", False))
        recovery = bool(options.pop("recovery", False))

        def websocket_view(**url_args: Any) -> Response:
            return self._serve(view, url_args, limits, recovery)

        websocket_view.__name__ = endpoint
        app.add_url_rule(rule, endpoint, websocket_view, websocket=True, **options)
        state.endpoints.add(endpoint)

    # ----------------------------------------------------------------- manager
    def _state(self) -> AppState:
        if has_app_context():
            app = current_app._get_current_object()  # type: ignore[attr-defined]
            if app in self._states:
                return self._states[app]
        if len(self._states) == 1:
            return next(iter(self._states.values()))
        raise RuntimeError("no app: call init_app(app); with several apps, use an app context")

    @property
    def manager(self) -> DistributedConnectionManager:
        """This process's manager (made on first use, after any fork)."""
        return self._state().manager()

    def broadcast_to_room(self, room_id: str, message: Any, exclude: Iterable[str] | None = None) -> None:
        """Send ``message`` to every member of the room on every server, less ``exclude``."""
        self.manager.broadcast_to_room(room_id, message, exclude=exclude)

    def send_to_connection(self, connection_id: str, message: Any) -> bool:
        """Send to one connection on any server; False if no server knows it."""
        return self.manager.send_to_connection(connection_id, message)

    def get_room_history(self, room_id: str, limit: int = 50) -> list[HistoryEntry]:
        """[`get_room_history`][dcm_sync.DistributedConnectionManager.get_room_history]."""
        return self.manager.get_room_history(room_id, limit)

    def get_distributed_stats(self) -> DistributedStats:
        """Cluster-wide figures (the manager's)."""
        return self.manager.get_distributed_stats()

    # presence, users and requests: the manager's, under the same names
    def get_room_members(self, room_id: str) -> list[RoomMember]:
        """[`get_room_members`][dcm_sync.DistributedConnectionManager.get_room_members]."""
        return self.manager.get_room_members(room_id)

    def get_room_users(self, room_id: str) -> set[str]:
        """[`get_room_users`][dcm_sync.DistributedConnectionManager.get_room_users]."""
        return self.manager.get_room_users(room_id)

    def get_user_connections(self, user_id: str) -> list[str]:
        """[`get_user_connections`][dcm_sync.DistributedConnectionManager.get_user_connections]."""
        return self.manager.get_user_connections(user_id)

    def send_to_user(self, user_id: str, message: Any) -> int:
        """[`send_to_user`][dcm_sync.DistributedConnectionManager.send_to_user]."""
        return self.manager.send_to_user(user_id, message)

    def disconnect_user(self, user_id: str, code: int = 1000, reason: str = "") -> int:
        """[`disconnect_user`][dcm_sync.DistributedConnectionManager.disconnect_user]."""
        return self.manager.disconnect_user(user_id, code, reason)

    def close_room(self, room_id: str) -> int:
        """[`close_room`][dcm_sync.DistributedConnectionManager.close_room]."""
        return self.manager.close_room(room_id)

    def on_request(self, handler: RequestHandler) -> RequestHandler:
        """Decorator: this server's request handler
        ([`on_request`][dcm_sync.DistributedConnectionManager.on_request]). It starts nothing:
        every app's manager is given it when made (and at once if made already)."""
        if not callable(handler):
            raise TypeError("handler must be callable")
        self._request_handler = handler
        for state in self._states.values():
            if state.started():
                state.manager().on_request(handler)
        return handler

    def _on_start(self, mgr: DistributedConnectionManager) -> None:
        """A new manager (first use in this process): give it what was set before."""
        if self._request_handler is not None:
            mgr.on_request(self._request_handler)

    def request(self, server_id: str, message: Any, timeout: float = 5.0) -> Any:
        """[`request`][dcm_sync.DistributedConnectionManager.request]."""
        return self.manager.request(server_id, message, timeout)

    def survey(self, message: Any, timeout: float = 5.0) -> dict[str, Any]:
        """[`survey`][dcm_sync.DistributedConnectionManager.survey]."""
        return self.manager.survey(message, timeout)

    def shutdown(self) -> None:
        """Shut this process's manager down (also done at exit); later uses raise ``DCMError``."""
        for state in self._states.values():
            state.shutdown()

    @property
    def client_blueprint(self) -> Blueprint:
        """``GET <prefix>/client.js``: the browser client, one dependency-free ES module
        (``import { connect } from "/dcm/client.js"`` with ``url_prefix="/dcm"``): it
        reconnects with exponential backoff and full jitter, holds messages while it does, and
        never retries after a refusal (1008, 4401, 4403). See the docs' Flask page."""
        if self._client is None:
            self._client = Blueprint("dcm_client", __name__, static_folder="static",
                                     static_url_path="/")
        return self._client

    @property
    def health_blueprint(self) -> Blueprint:
        """``GET <prefix>/health``: 200 ``{"ready": true}``, 503 ``{"ready": false}`` when not
        ready. With ``DCM_HEALTH_DETAILS`` on, also ``server_id`` and ``stats`` (the cluster's
        stats, naming every server's host, port and pid: keep that from the public, behind the
        app's own auth or a private listener), and the error when not ready."""
        if self._health is None:
            bp = Blueprint("dcm_health", __name__)

            @bp.get("/health")
            def health() -> tuple[Response, int]:
                details = self._state().health_details
                try:
                    mgr = self.manager
                    ready = mgr.is_ready()
                    stats = dataclasses.asdict(mgr.get_distributed_stats()) if details else None
                except DCMError as exc:
                    return (jsonify(ready=False, error=str(exc)) if details
                            else jsonify(ready=False)), 503
                code = 200 if ready else 503
                if not details:
                    return jsonify(ready=ready), code
                return jsonify(ready=ready, server_id=mgr.server_id, stats=stats), code

            self._health = bp
        return self._health

    @property
    def metrics_blueprint(self) -> Blueprint:
        """``GET <prefix>/metrics``: this process's manager in the Prometheus text format.
        Needs the ``metrics`` extra (``ImportError`` without it)."""
        if self._metrics is None:
            from .metrics import make_metrics_blueprint

            self._metrics = make_metrics_blueprint(lambda: self.manager)
        return self._metrics

    # ----------------------------------------------------------------- serving
    def _judge(self, state: AppState, environ: dict[str, Any]) -> Verdict:
        if not origin_allowed(environ, state.allowed_origins):
            return None, REFUSE_ORIGIN
        if self._authenticate is None:
            return f"anonymous-{uuid.uuid4().hex[:12]}", None
        token = extract_token(environ)
        user_id = self._authenticate(token) if token else None
        if not user_id:
            return None, REFUSE_TOKEN
        return str(user_id), None

    def _pass_foreign_precheck(self) -> Response | None:
        env = request.environ
        if env.get(PRECHECK_KEY) and request.routing_exception is None:
            if request.endpoint not in self._state().endpoints:
                return Response(status=204, headers={PRECHECK_HEADER: "pass"})
        return None

    def _serve(self, view: View, url_args: dict[str, Any], limits: InboundLimits,
               recovery: bool = False) -> Response:
        state = self._state()
        environ = request.environ
        user_id, refusal = environ.get(_VERDICT_KEY) or self._judge(state, environ)
        if environ.get(PRECHECK_KEY):  # asked by the project's handler, before any handshake
            environ[_VERDICT_KEY] = (user_id, refusal)
            if refusal is not None:
                return Response(refusal[2] + "\n", status=refusal[0], mimetype="text/plain")
            if state.compression:  # DCMWebSocketHandler answers it in its 101 (same environ)
                agreed = negotiate(environ.get("HTTP_SEC_WEBSOCKET_EXTENSIONS"))
                if agreed is not None:
                    environ[DEFLATE_KEY] = agreed
            return Response(status=204, headers={PRECHECK_HEADER: "accepted"})
        try:
            transport = open_transport(environ, limits, state.compression)
        except HandshakeError as exc:  # nothing was sent: the server answers this
            return Response(f"{exc}\n", status=400, mimetype="text/plain")
        if refusal is not None or user_id is None:
            code, reason = (refusal or REFUSE_TOKEN)[1:]
            transport.close(code, reason)
            return _finished(transport)
        resume = resume_request(request.args) if recovery else None
        self._run_registered(state.manager(), view, url_args, transport, user_id, recovery,
                             resume)
        return _finished(transport)

    def _run_registered(self, mgr: DistributedConnectionManager, view: View, url_args: dict[str, Any],
                        transport: Transport, user_id: str, recovery: bool = False,
                        resume: ResumeRequest | None = None) -> None:
        recovered: bool | None = None
        try:
            conn_id = None
            if resume is not None:
                try:
                    conn_id, recovered = mgr.resume_connection(transport, user_id, *resume)
                except ResumeRefusedError as exc:
                    logger.info("resume refused for user %r: %s", user_id, exc)
                    recovered = False
            resumed = conn_id is not None
            if conn_id is None:
                conn_id = mgr.register_connection(transport, user_id, recoverable=recovery)
        except ConnectionLimitError:
            if len(mgr.local) < mgr.config.max_connections:  # the user's cap, on all servers
                transport.close(*CLOSE_TOO_MANY)
            else:
                transport.close(1013, "server full")
            return
        except AuthenticationError:
            transport.close(REFUSE_TOKEN[1], REFUSE_TOKEN[2])
            return
        try:
            conn = WebSocketConnection(mgr, conn_id, user_id, transport, recovered, resumed)
            # without url_args, a plain call: a call with ** leaves a C frame on the stack, which
            # gevent keeps a copy of while the view waits for its client (~0.5 KB a socket)
            if url_args:
                view(conn, **url_args)
            else:
                view(conn)
        except Exception:
            logger.exception("WebSocket view %s failed", getattr(view, "__name__", view))
            # through its outbox (never mid-frame), unless it is no longer held here
            if not mgr.close_connection(conn_id, 1011, "internal error"):
                transport.close(1011, "internal error")
        finally:
            try:
                # a client that closed with 1000 or 1001 left; any other end may be a network
                # loss: a recoverable connection is suspended (recovery on)
                left = transport.peer_close_code in (1000, 1001)
                mgr.release_connection(conn_id, transport, suspend=recovery and not left)
            except DCMError as exc:
                if mgr.is_ready():  # after shutdown() the connection is gone already
                    logger.warning("could not remove connection %s: %s", conn_id, exc)
            # the server closes the socket when this returns: let its writer finish first
            # (what was queued, or a slow consumer's close frame), bounded by its grace
            transport.wait_sent()
            transport.close()


def _websocket_mismatch(exc: WebsocketMismatch) -> tuple[str, int, dict[str, str]]:
    if request.environ.get("HTTP_UPGRADE", "").lower() == "websocket":
        text = "This URL does not accept WebSocket connections.\n"
    else:
        text = "This URL accepts WebSocket connections only (a GET with 'Upgrade: websocket').\n"
    return text, 400, {"Content-Type": "text/plain; charset=utf-8"}


class _Finished(Response):
    """The response of a WebSocket view after the socket closed: nothing more may be written."""

    transport_mode = ""

    def __call__(self, environ: Any, start_response: Any) -> Any:
        if self.transport_mode == "werkzeug":
            raise ConnectionError("WebSocket closed")  # Werkzeug's server then writes nothing
        if self.transport_mode == "gunicorn":
            raise StopIteration()
        return []


def _finished(transport: Transport) -> Response:
    resp = _Finished()
    resp.transport_mode = transport.mode
    return resp
