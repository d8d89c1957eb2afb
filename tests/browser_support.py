"""What the browser tests share: Debian's headless Chromium driven through chromedriver."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def require_chromium() -> None:
    """Skip the calling test module when Debian's chromium and chromium-driver are missing."""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip(
            f"Chromium is not installed ({CHROMIUM}, {CHROMEDRIVER}); ./paroma.sh installs chromium and chromium-driver",
            allow_module_level=True,
        )


@contextmanager
def headless_chromium(profile: Path, window: str) -> Iterator[WebDriver]:
    """A fresh headless Chromium with its own profile folder and the given window size
    ("width,height"). The flags keep it from reaching out to the network, which this
    machine's closed network refuses."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--window-size={window}",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
