"""The ``browser`` fixture: a fresh headless Chromium for each test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.browser.driver import open_browser

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    """Headless Debian chromium through chromedriver, with a fresh profile; quit at teardown."""
    yield from open_browser(tmp_path)
