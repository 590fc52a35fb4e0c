"""Nothing lost across a server's death or restart: the chat page in headless Chromium, behind a
round-robin TCP balancer in front of two chat app processes on one Redis. Another client floods
the page's room with 200 numbered messages; the page's server is SIGKILLed (or restarted with
SIGTERM) in the middle. The page resumes on the other server and shows all 200, once each and
in order, and the room hears no departure."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from dcm_sync import Emitter
from testkit.balancer import RoundRobinProxy
from testkit.polling import wait_until
from testkit.redis_server import RedisServer
from tests.browser.chat_app import ChatApp
from tests.browser.driver import wait_until_seen

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

pytestmark = pytest.mark.timeout(120)

CONNECTED = re.compile(r"^Connected as alice to server (?P<server>\S+?)\.$")
FLOOD = 200


class Client:
    """A chat client on the plain route (``/ws``) over websocket-client, straight to one
    server (not through the balancer)."""

    def __init__(self, port: int, name: str, room: str) -> None:
        import websocket

        self.ws = websocket.create_connection(f"ws://127.0.0.1:{port}/ws?token={name}",
                                              timeout=5, skip_utf8_validation=True)
        self.got: list[dict[str, Any]] = []
        self.say({"op": "join", "room": room})
        self.read_until(lambda m: m.get("type") == "people")

    def say(self, message: dict[str, Any]) -> None:
        self.ws.send(json.dumps(message))

    def read_until(self, done: Any, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(done(m) for m in self.got):
            assert time.monotonic() < deadline, f"not seen; got {self.got[-5:]!r}"
            self.got.append(json.loads(self.ws.recv()))

    def close(self) -> None:
        self.ws.close()


@pytest.fixture
def balanced(redis_server: RedisServer, prefix: str,
             tmp_path: Path) -> Iterator[tuple[list[ChatApp], RoundRobinProxy]]:
    """Two chat apps (no inbound rate limit: the flood is one client) behind a balancer."""
    apps: list[ChatApp] = []
    proxy = None
    try:
        for name in ("app-a", "app-b"):
            apps.append(ChatApp(name, redis_server.url, prefix, tmp_path, DCM_RATE_LIMIT="0"))
        for app in apps:
            app.wait_ready()
        proxy = RoundRobinProxy([("127.0.0.1", app.port) for app in apps])
        yield apps, proxy
    finally:
        if proxy is not None:
            proxy.close()
        for app in apps:
            code = app.stop()
            print(f"----- {app} exit={code} -----\n{app.log()}")


def page_state(driver: WebDriver) -> dict[str, Any]:
    return driver.execute_script(  # type: ignore[no-any-return]
        "return {status: document.getElementById('status').textContent,"
        " log: Array.from(document.querySelectorAll('#log div'), d => d.textContent)};")


def wait_for(driver: WebDriver, what: str, condition: Any) -> Any:
    return wait_until_seen(driver, what, condition, lambda d: f"page={page_state(d)!r}")


@pytest.mark.parametrize("fault", ["SIGKILL", "SIGTERM"])
def test_the_page_gets_every_message_once_in_order_across_its_servers_end(
        browser: WebDriver, balanced: tuple[list[ChatApp], RoundRobinProxy], fault: str,
        redis_server: RedisServer, prefix: str) -> None:
    apps, proxy = balanced
    driver = browser
    driver.get(proxy.url())
    driver.find_element("id", "name").clear()
    driver.find_element("id", "name").send_keys("alice")
    driver.find_element("id", "room").clear()
    driver.find_element("id", "room").send_keys("lobby")
    driver.find_element("css selector", "#login button").click()
    found = wait_for(driver, "connected", lambda d: CONNECTED.match(page_state(d)["status"]))
    victim = next(a for a in apps if a.server_id == found["server"])
    survivor = next(a for a in apps if a is not victim)
    wait_for(driver, "the join", lambda d: "alice joined lobby" in page_state(d)["log"])

    witness = Client(survivor.port, "wendy", "lobby")
    flooder = Client(survivor.port, "flood", "lobby")
    try:
        for n in range(1, FLOOD + 1):
            flooder.say({"op": "say", "room": "lobby", "text": str(n)})
            if n == FLOOD // 2 and fault == "SIGKILL":
                victim.kill()
            elif n == FLOOD // 2:
                victim.stop()  # SIGTERM: it closes its sockets with 1001 and ends
            time.sleep(0.005)
        want = [f"flood: {n}" for n in range(1, FLOOD + 1)]
        wait_for(driver, "all 200 messages",
                 lambda d: [x for x in page_state(d)["log"] if x.startswith("flood: ")] == want)
        state = page_state(driver)
        assert CONNECTED.match(state["status"])["server"] == survivor.server_id  # type: ignore[index]
        assert not any("may be missing" in line for line in state["log"])
        # the room heard no departure, also once the survivor found the victim gone
        with Emitter(redis_server.url, key_prefix=prefix) as emitter:
            wait_until(lambda: [s.server_id for s in emitter.get_distributed_stats().server_stats]
                       == [survivor.server_id], timeout=15)
            wait_until(lambda: victim.server_id not in {
                m.server_id for m in emitter.get_room_members("lobby")}, timeout=15)
        flooder.say({"op": "say", "room": "lobby", "text": "marker"})
        witness.read_until(lambda m: m.get("text") == "marker")
        departures = [m for m in witness.got
                      if m.get("type") in ("user-left", "user-disconnected")]
        assert departures == []
        assert [m["text"] for m in witness.got if m.get("from") == "flood"] == [
            str(n) for n in range(1, FLOOD + 1)] + ["marker"]
        wait_for(driver, "the marker", lambda d: "flood: marker" in page_state(d)["log"])
        assert [x for x in page_state(driver)["log"] if x.startswith("flood: ")] == want + [
            "flood: marker"]
    finally:
        witness.close()
        flooder.close()
