"""permessage-deflate in headless Chromium: with ``DCM_COMPRESSION`` on, the browser's own
offer is agreed on, and long messages go both ways compressed (the browser compresses what it
sends, the server what it broadcasts) and arrive whole."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.browser.chat_app import ChatApp

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

pytestmark = pytest.mark.timeout(90)

#: One native WebSocket: join, say a long text, and report the agreed extensions and the echo.
ROUND_TRIP = """
const [text, done] = [arguments[0], arguments[arguments.length - 1]];
const ws = new WebSocket(`ws://${location.host}/ws?token=alice`);
const timer = setTimeout(() => done("no echo within 20 s"), 20000);
ws.onmessage = (event) => {
  const msg = JSON.parse(event.data);
  if (msg.type === "welcome") ws.send(JSON.stringify({op: "join", room: "lobby"}));
  if (msg.type === "joined") ws.send(JSON.stringify({op: "say", room: "lobby", text}));
  if (msg.type === "message") { clearTimeout(timer); done({extensions: ws.extensions, text: msg.text}); }
};
ws.onclose = (event) => done(`closed ${event.code}`);
"""


@pytest.fixture
def app(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ChatApp]:
    made = ChatApp("deflate-app", None, "t:", tmp_path, **request.param)
    try:
        made.wait_ready()
        yield made
    finally:
        made.stop()


@pytest.mark.parametrize(("app", "extensions"), [
    ({"DCM_COMPRESSION": "1"}, "permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
    ({}, ""),
], indirect=["app"], ids=["on", "off"])
def test_browser_agrees_and_reads_compressed_messages(browser: WebDriver, app: ChatApp,
                                                      extensions: str) -> None:
    browser.get(app.url)
    text = "Ünïcödé and JSON-ish text, over and over. " * 40
    got = browser.execute_async_script(ROUND_TRIP, text)
    assert got == {"extensions": extensions, "text": text}
