"""Serve examples/chat/app.py for the tests: ``python -m tests.flask.serve MODE PORT``.

MODE: ``dcm`` (gevent.pywsgi + the project's DCMWebSocketHandler, as examples/chat/app.py
serves it, with its own SIGTERM handler), ``plain`` (the same, as a new user writes it: no
signal handler of the app's own), ``stock`` (gevent.pywsgi + gevent-websocket's
WebSocketHandler), ``werkzeug`` (Werkzeug's threaded server; the extension does the handshake).
"""

from __future__ import annotations

import sys

MODE, PORT = sys.argv[1], int(sys.argv[2])

if MODE in ("dcm", "plain", "stock"):
    from gevent import monkey

    monkey.patch_all()

import logging  # noqa: E402
import signal  # noqa: E402

from examples.chat.app import app, sockets  # noqa: E402
from examples.chat.app import main as chat_main  # noqa: E402


def main() -> None:
    # an app that logs at INFO, as in production: what the library and the servers log then
    # (access lines included) is in the server's log file
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if MODE == "werkzeug":
        def stop(*args: object) -> None:
            sockets.shutdown()
            raise SystemExit(0)

        signal.signal(signal.SIGTERM, stop)
        app.run(host="127.0.0.1", port=PORT, threaded=True)
        return
    if MODE == "plain":
        from gevent import pywsgi

        from flask_ext.handler import DCMWebSocketHandler

        print(f"chat on http://127.0.0.1:{PORT}/", flush=True)
        pywsgi.WSGIServer(("127.0.0.1", PORT), app, handler_class=DCMWebSocketHandler).serve_forever()
        return
    from geventwebsocket.handler import WebSocketHandler

    chat_main(handler_class=WebSocketHandler if MODE == "stock" else None)


if __name__ == "__main__":
    main()
