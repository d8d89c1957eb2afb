"""The Secure Traffic Engine GUI end to end in real headless Chromium (Debian's chromium and
chromium-driver, driven by Selenium): fill the Compute Secure Path form, see the path on the
map, add a critical CVE on a node of the path and see the path move; then a change made
elsewhere reaches the open page through the event stream.

Set PAROMA_SCREENSHOT=docs/secure-traffic-engine.png to keep the screenshot in the docs.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_support import headless_chromium, require_chromium
from conftest import LiveServer

from interconnect.pce.engine import SecurePathEngine
from interconnect.pce.nvd import NvdClient
from interconnect.pce.scenario import load_scenario
from interconnect.pce.service import create_app

pytestmark = pytest.mark.slow

require_chromium()

from selenium.common.exceptions import StaleElementReferenceException, TimeoutException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    with headless_chromium(tmp_path / "chromium-profile", "1440,1100") as driver:
        yield driver


def path_on_map(driver: WebDriver) -> str | None:
    # In one script: the map is redrawn on every event, so an element found by one WebDriver
    # call may be gone by the next.
    nodes = driver.execute_script(
        "const p = document.getElementById('selected-path'); return p ? p.getAttribute('data-nodes') : null;"
    )
    return None if nodes is None else str(nodes)


def text(driver: WebDriver, css: str) -> str:
    """An element's text, read in one script (the page redraws on every event)."""
    value = driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';", css
    )
    return str(value)


def click(driver: WebDriver, css: str) -> None:
    """Click, finding the element again if a redraw replaced it in between."""
    WebDriverWait(driver, 10, ignored_exceptions=[StaleElementReferenceException]).until(
        lambda d: d.find_element(By.CSS_SELECTOR, css).click() or True
    )


def wait_for_path(driver: WebDriver, nodes: str) -> None:
    try:
        WebDriverWait(driver, 15).until(lambda d: path_on_map(d) == nodes)
    except TimeoutException:
        raise AssertionError(
            f"the map never showed the path {nodes!r}; it shows {path_on_map(driver)!r}"
        ) from None


def test_compute_see_the_path_add_a_cve_see_it_move(browser: WebDriver, tmp_path: Path) -> None:
    nvd = NvdClient()
    engine = SecurePathEngine(*load_scenario("demo", nvd))
    with LiveServer(create_app(engine, nvd)) as live:
        try:
            drive(browser, live.url, engine, tmp_path)
        finally:
            # Close the page's event stream first, or the server waits for it when it stops.
            browser.get("about:blank")


def drive(browser: WebDriver, url: str, engine: SecurePathEngine, tmp_path: Path) -> None:
    browser.get(url)
    WebDriverWait(browser, 15).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#nodes g.node")) == 15)
    assert browser.find_element(By.ID, "live").get_attribute("class") is not None

    # The seed's form: Path Name, Source, Destination, Bandwidth, Max Delay, Threshold; Search.
    browser.find_element(By.ID, "open-compute").click()
    browser.find_element(By.ID, "path-name").send_keys("cleveland-uplink")
    Select(browser.find_element(By.ID, "source-node")).select_by_visible_text("ACCESS 1")
    Select(browser.find_element(By.ID, "destination-node")).select_by_visible_text("ACCESS 4")
    for field, value in (("bandwidth", "100"), ("max-delay", "20000"), ("min-security", "50")):
        box = browser.find_element(By.ID, field)
        box.clear()
        box.send_keys(value)
    browser.find_element(By.ID, "search").click()

    first = "access-1 router-1 router-5 router-4 access-4"
    wait_for_path(browser, first)
    assert engine.path("cleveland-uplink").route is not None
    on_path = browser.execute_script(
        "return [...document.querySelectorAll('#nodes g.on-path')].map((g) => g.dataset.id);"
    )
    assert set(on_path) == set(first.split())

    # A critical CVE (CVSS 9.9, a D-Link router command injection) on ROUTER 5, from its panel.
    click(browser, '#nodes g.node[data-id="router-5"]')
    WebDriverWait(browser, 10).until(lambda d: "ROUTER 5" in text(d, "#node-panel"))
    assert "not endorsed or certified by the NVD" in text(browser, "#node-panel")
    WebDriverWait(browser, 10, ignored_exceptions=[StaleElementReferenceException]).until(
        lambda d: d.find_element(By.ID, "cve-id").send_keys("CVE-2022-36786") or True
    )
    click(browser, "#add-cve")

    moved = "access-1 router-1 router-2 router-3 router-4 access-4"
    wait_for_path(browser, moved)
    WebDriverWait(browser, 10).until(lambda d: "CVE-2022-36786" in text(d, "#node-panel"))
    assert "9.9 Critical" in text(browser, "#node-panel")
    assert text(browser, "#node-si") == "65.01"
    WebDriverWait(browser, 10).until(
        lambda d: "moved" in text(d, "#event-log"), message="no 'moved' entry in the event log"
    )
    shot = tmp_path / "secure-traffic-engine.png"
    assert browser.save_screenshot(str(shot))
    if target := os.environ.get("PAROMA_SCREENSHOT"):
        shutil.copyfile(shot, target)

    # A change made outside the page (router-3 fails) reaches it through the event stream.
    engine.set_node_state("router-3", False)
    wait_for_path(browser, first)
    assert browser.find_elements(By.CSS_SELECTOR, '#nodes g.node.down[data-id="router-3"]')

    # The Paths view lists it, with its details; Delete removes it.
    click(browser, "#tab-paths")
    row = text(browser, '#paths-table tr[data-name="cleveland-uplink"]')
    assert "ROUTER 5" in row and "active" in row
    click(browser, '#paths-table tr[data-name="cleveland-uplink"] button.delete-path')
    WebDriverWait(browser, 10).until(lambda d: not d.find_elements(By.CSS_SELECTOR, "#paths-table tbody tr"))
    assert engine.paths() == []
