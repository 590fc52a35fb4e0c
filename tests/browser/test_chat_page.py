"""The chat page in a real browser: two tabs on two chat app processes that share one Redis.

Needs Debian's ``chromium`` and ``chromedriver`` (``apt-get install chromium chromium-driver``) and
``selenium``; without them the test is skipped, or fails when ``CI=true``. Selenium is always given
the driver's path, so Selenium Manager never runs (nothing is downloaded).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from testkit.redis_server import RedisServer
from tests.browser.chat_app import ChatApp
from tests.browser.driver import wait_until_seen

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

CONNECTED = re.compile(r"^Connected as (?P<user>\S+) to server (?P<server>\S+?)\.$")

pytestmark = pytest.mark.timeout(90)


# ---------------------------------------------------------------------------------------- fixtures
@pytest.fixture
def chat_apps(redis_server: RedisServer, prefix: str, tmp_path: Path) -> Iterator[list[ChatApp]]:
    """Two chat app processes on one Redis, both ready; stopped (SIGTERM, then SIGKILL) at teardown."""
    apps: list[ChatApp] = []
    try:
        for name in ("app-a", "app-b"):  # both start before either is waited for
            apps.append(ChatApp(name, redis_server.url, prefix, tmp_path))
        for app in apps:
            app.wait_ready()
        yield apps
    finally:
        for app in apps:
            code = app.stop()
            print(f"----- {app} exit={code} -----\n{app.log()}")


# ---------------------------------------------------------------------------------------- page
def log_lines(driver: WebDriver) -> list[str]:
    return driver.execute_script(  # type: ignore[no-any-return]
        "return Array.from(document.querySelectorAll('#log div'), d => d.textContent);")


def status(driver: WebDriver) -> str:
    return driver.execute_script("return document.getElementById('status').textContent;")  # type: ignore[no-any-return]


def wait_for(driver: WebDriver, what: str, condition: Callable[[WebDriver], Any]) -> Any:
    """``condition``'s first truthy value; AssertionError showing the page's status and log if none."""
    return wait_until_seen(driver, what, condition,
                           lambda d: f"status={status(d)!r} log={log_lines(d)!r}")


def wait_log(driver: WebDriver, line: str) -> None:
    wait_for(driver, f"log line {line!r}", lambda d: line in log_lines(d))


def join(driver: WebDriver, name: str, room: str) -> str:
    """Fill the form, press Join, wait for the welcome and our own join notice; the server id."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "name").send_keys(name)
    room_box = driver.find_element(By.ID, "room")
    room_box.clear()
    room_box.send_keys(room)
    driver.find_element(By.CSS_SELECTOR, "#login button").click()
    match = wait_for(driver, f"'Connected as {name}'",
                     lambda d: (m := CONNECTED.match(status(d))) and m["user"] == name and m)
    wait_log(driver, f"{name} joined {room}")  # the join went through Redis and back
    return str(match["server"])


def people(driver: WebDriver) -> list[str]:
    return driver.execute_script(  # type: ignore[no-any-return]
        "return Array.from(document.querySelectorAll('#people li'), li => li.textContent);")


def wait_people(driver: WebDriver, names: list[str]) -> None:
    wait_for(driver, f"the people {names}", lambda d: people(d) == names)


def say(driver: WebDriver, text: str) -> None:
    from selenium.webdriver.common.by import By

    wait_for(driver, "an enabled message box", lambda d: d.find_element(By.ID, "text").is_enabled())
    driver.find_element(By.ID, "text").send_keys(text)
    driver.find_element(By.ID, "send").click()


# ---------------------------------------------------------------------------------------- test
def test_two_tabs_on_two_servers_chat_and_see_departures(browser: WebDriver, chat_apps: list[ChatApp],
                                                         tmp_path: Path) -> None:
    app_a, app_b = chat_apps
    driver = browser

    tab1 = driver.current_window_handle
    driver.get(app_a.url)
    server1 = join(driver, "alice", "lobby")
    wait_people(driver, ["alice"])

    driver.switch_to.new_window("tab")
    tab2 = driver.current_window_handle
    driver.get(app_b.url)
    server2 = join(driver, "bob", "lobby")

    assert server1 != server2, "both tabs were served by the same server"
    assert (server1, server2) == (app_a.server_id, app_b.server_id)

    wait_people(driver, ["alice", "bob"])  # the list bob's page got on joining

    driver.switch_to.window(tab1)
    wait_log(driver, "bob joined lobby")  # B's broadcast reached a socket on A
    wait_people(driver, ["alice", "bob"])  # from alice's list and bob's user-joined
    text = f"hello from tab 1 ({uuid.uuid4().hex[:8]})"
    say(driver, text)
    wait_log(driver, f"alice: {text}")

    driver.switch_to.window(tab2)
    wait_log(driver, f"alice: {text}")  # A's broadcast reached a socket on B
    assert log_lines(driver).count(f"alice: {text}") == 1
    shot = tmp_path / "tab2.png"
    assert driver.save_screenshot(str(shot))
    png = shot.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000, f"bad screenshot ({len(png)} bytes)"

    # Closing the tab closes its socket. (Navigating away would not, yet: Chromium keeps the page,
    # socket open, in its back/forward cache, and the page does not close it on "pagehide".)
    driver.close()
    driver.switch_to.window(tab1)
    wait_log(driver, "bob left lobby (removed)")
    wait_people(driver, ["alice"])  # bob's last tab out: user-disconnected
    assert "Connected as alice" in status(driver)  # alice's own socket is untouched


def test_the_page_reconnects_and_joins_again_after_its_server_restarts(
        browser: WebDriver, tmp_path: Path) -> None:
    app = ChatApp("solo", None, "t:", tmp_path)  # memory://: the restart forgets everything
    try:
        app.wait_ready()
        driver = browser
        driver.get(app.url)
        join(driver, "alice", "lobby")
        wait_people(driver, ["alice"])
        port = app.stop() is not None and app.port  # SIGTERM: its sockets close with 1001
        wait_for(driver, "'Reconnecting…'", lambda d: status(d) == "Reconnecting…")
        app = ChatApp("solo-again", None, "t:", tmp_path, port=port)
        app.wait_ready()
        wait_for(driver, "connected again", lambda d: CONNECTED.match(status(d)))
        wait_for(driver, "the second join", lambda d: log_lines(d).count("alice joined lobby") == 2)
        wait_people(driver, ["alice"])  # the page joined its room again
    finally:
        app.stop()
