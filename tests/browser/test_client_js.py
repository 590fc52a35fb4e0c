"""The browser client (flask_ext/static/client.js, served at /dcm/client.js) in headless
Chromium against the chat app: it connects, holds what is sent while it reconnects, comes back
after its server restarts (SIGTERM: 1001), and never retries after a refused token (4401)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.browser.chat_app import ChatApp
from tests.browser.driver import wait_until_seen

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

pytestmark = pytest.mark.timeout(90)

#: Loads the module and records what the client reports, on window.seen.
START = """
const [token, done] = [arguments[0], arguments[arguments.length - 1]];
import("/dcm/client.js").then(({ connect }) => {
  window.seen = { states: [], messages: [], sockets: 0 };
  const Native = window.WebSocket;
  window.WebSocket = class extends Native {  // counts the sockets the client opens
    constructor(...args) { super(...args); window.seen.sockets += 1; }
  };
  window.c = connect("/ws", { token, minDelay: 100, maxDelay: 400 });
  window.c.on("state", (s) => window.seen.states.push(s));
  window.c.on("message", (m) => window.seen.messages.push(m));
  done(true);
}).catch((err) => done(String(err)));
"""


def wait_for(driver: WebDriver, what: str, condition: Callable[[WebDriver], Any]) -> Any:
    return wait_until_seen(driver, what, condition, lambda d: f"seen={seen(d)!r}")


def seen(driver: WebDriver) -> dict[str, Any]:
    return driver.execute_script("return window.seen;")  # type: ignore[no-any-return]


def messages_of(driver: WebDriver, kind: str) -> list[dict[str, Any]]:
    return [m for m in seen(driver)["messages"] if isinstance(m, dict) and m.get("type") == kind]


@pytest.fixture
def app(tmp_path: Path) -> Iterator[ChatApp]:
    made = [ChatApp("client-app", None, "t:", tmp_path)]  # memory://: one process
    try:
        made[0].wait_ready()
        yield made[0]
    finally:
        for a in made:
            a.stop()


def test_the_client_reconnects_after_a_restart_and_sends_what_it_held(
        browser: WebDriver, app: ChatApp, tmp_path: Path) -> None:
    driver = browser
    driver.get(app.url)
    assert driver.execute_async_script(START, "alice") is True
    wait_for(driver, "the client open", lambda d: seen(d)["states"] == ["connecting", "open"])
    welcome = wait_for(driver, "the welcome", lambda d: messages_of(d, "welcome"))[0]
    assert welcome["user"] == "alice"
    driver.execute_script('window.c.send({op: "join", room: "lobby"});')  # an object: JSON
    wait_for(driver, "the join's reply", lambda d: messages_of(d, "joined"))

    port = app.port
    assert app.stop() is not None  # SIGTERM: the server closes its sockets with 1001, and ends
    wait_for(driver, "reconnecting", lambda d: seen(d)["states"][-1] == "reconnecting")
    driver.execute_script('window.c.send({op: "join", room: "again"});')  # held meanwhile
    again = ChatApp("client-app-2", None, "t:", tmp_path, port=port)  # the same port, new process
    try:
        again.wait_ready()
        wait_for(driver, "open again", lambda d: seen(d)["states"][-1] == "open")
        assert len(messages_of(driver, "welcome")) == 2
        wait_for(driver, "the held join's reply",
                 lambda d: any(m["room"] == "again" for m in messages_of(d, "joined")))
        assert seen(driver)["states"][:2] == ["connecting", "open"]
        assert set(seen(driver)["states"][2:]) == {"reconnecting", "open"}
    finally:
        again.stop()


def test_the_client_never_retries_after_a_policy_close(browser: WebDriver, tmp_path: Path) -> None:
    app = ChatApp("capped-app", None, "t:", tmp_path, DCM_MAX_CONNECTIONS_PER_USER="1")
    try:
        app.wait_ready()
        driver = browser
        driver.get(app.url)
        assert driver.execute_async_script(START, "alice") is True
        wait_for(driver, "the first client open", lambda d: seen(d)["states"][-1:] == ["open"])
        driver.execute_script("""
          window.seen2 = [];
          import("/dcm/client.js").then(({ connect }) => {
            window.c2 = connect("/ws", { token: "alice", minDelay: 100, maxDelay: 400 });
            window.c2.on("state", (s, closed) => window.seen2.push([s, closed ? closed.code : null]));
          });""")
        wait_for(driver, "the second client closed",
                 lambda d: d.execute_script("return window.seen2;")[-1:] == [["closed", 1008]])
        driver.execute_script("return new Promise((ok) => setTimeout(ok, 1000));")  # 10x minDelay
        # the server takes the handshake, then refuses the registration: 1008
        assert driver.execute_script("return window.seen2;") == [["connecting", None],
                                                                  ["open", None],
                                                                  ["closed", 1008]]
        assert seen(driver)["sockets"] == 2  # one each: the second never tried again
        assert seen(driver)["states"][-1] == "open"  # the first is untouched
    finally:
        app.stop()
