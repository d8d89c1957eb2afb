"""The patients' consent dashboard end to end in real headless Chromium (Debian's chromium
and chromium-driver, driven by Selenium) against a real node service over a UCI site: sign
in with the keyboard, withdraw health research and see the next round's cohort shrink (the
site's protection layer decides it), a study's request arrives live and accepting it counts
again, the page lists the job that used the data, and erasure lists the trained models.

Set PAROMA_SCREENSHOT (a folder, or a file whose folder is used, e.g. docs/) to keep
docs/patient-dashboard.png, -request.png, -consents.png and -erasure.png there.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_support import headless_chromium, require_chromium
from conftest import LiveServer
from dashboard_support import enrolment_code
from fastapi import FastAPI

from clinical_node.service import create_app
from clinical_node.site import Site
from paroma.demo import DEMO_ORGANIZATION, demo_job
from protection_layer import ProtectionLayer

SITE = "cleveland"
CHOLESTEROL = "http://loinc.org|2093-3"

pytestmark = pytest.mark.slow

require_chromium()

from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    with headless_chromium(tmp_path / "chromium-profile", "1200,1500") as driver:
        yield driver


def text(driver: WebDriver, css: str) -> str:
    value = driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';", css
    )
    return str(value)


def click(driver: WebDriver, css: str) -> None:
    """Click, finding the element again if a redraw replaced it in between."""
    WebDriverWait(driver, 15, ignored_exceptions=[StaleElementReferenceException]).until(
        lambda d: d.find_element(By.CSS_SELECTOR, css).click() or True
    )


def wait_for(driver: WebDriver, css: str, message: str) -> None:
    WebDriverWait(driver, 15).until(lambda d: d.find_elements(By.CSS_SELECTOR, css), message=message)


def shoot(driver: WebDriver, tmp_path: Path, name: str, css: str | None = None) -> None:
    driver.execute_script(
        "const e = arguments[0] && document.querySelector(arguments[0]);"
        "if (e) e.scrollIntoView(); else window.scrollTo(0, 0);",
        css,
    )
    shot = tmp_path / name
    assert driver.save_screenshot(str(shot))
    if target := os.environ.get("PAROMA_SCREENSHOT"):
        folder = Path(target) if Path(target).is_dir() else Path(target).parent
        shutil.copyfile(shot, folder / name)


def cholesterol_of(layer: ProtectionLayer, patient: str) -> set[tuple[str, str]]:
    found = layer.site.fhir.search("Observation", patient=patient, count=100).resources
    return {("Observation", r["id"]) for r in found if r["code"]["coding"][0]["code"] == "2093-3"}


def permitted(layer: ProtectionLayer) -> list[str]:
    """The job's next-round cohort at the site, as its protection layer decides it."""
    return layer.decide_cohort(demo_job(2)).permitted


def test_sign_in_revoke_accept_a_request_and_erase_in_a_real_browser(
    browser: WebDriver, uci_sites: Path, tmp_path: Path
) -> None:
    site = Site.open(uci_sites / SITE)
    app = create_app(site)
    layer: ProtectionLayer = app.state.protection
    job = demo_job(2)
    patient = next(p for p in permitted(layer) if cholesterol_of(layer, p))
    for server_round in (1, 2):  # a job has used the data (as the node records it)
        layer.view.decision_for_round(job, server_round)
    code = enrolment_code(site.root, patient)
    with LiveServer(app) as live:
        try:
            drive(browser, live.url, app, layer, patient, code, tmp_path)
        finally:
            # Close the page's event stream first, or the server waits for it when it stops.
            browser.get("about:blank")
    layer.close()
    site.close()


def drive(
    browser: WebDriver,
    url: str,
    app: FastAPI,
    layer: ProtectionLayer,
    patient: str,
    code: str,
    tmp_path: Path,
) -> None:
    job = demo_job(2)
    browser.get(f"{url}/patient/")
    WebDriverWait(browser, 15).until(lambda d: d.find_element(By.ID, "sign-in-view").is_displayed())
    # Keyboard only: the code field has the focus, Enter submits.
    assert browser.switch_to.active_element.get_attribute("id") == "code"
    browser.switch_to.active_element.send_keys("wrong code" + Keys.ENTER)
    WebDriverWait(browser, 10).until(lambda d: "Sign-in failed" in text(d, "#alert"))
    field = browser.find_element(By.ID, "code")
    field.clear()
    field.send_keys(Keys.TAB)
    assert browser.switch_to.active_element.get_attribute("id") == "sign-in"  # focus order: field, button
    field.send_keys(code + Keys.ENTER)
    wait_for(browser, 'article[data-purpose="HRESCH"][data-decision="PERMIT"]', "the dashboard never showed")
    assert patient in text(browser, "#patient-id")
    assert "You allow your data to be used for health research" in text(browser, "#consents")
    # Every control is labelled and every button says what it does.
    unlabelled = browser.execute_script(
        "return [...document.querySelectorAll('input')].filter((i) => !i.labels.length).map((i) => i.id);"
    )
    assert unlabelled == []
    assert browser.execute_script(
        "return [...document.querySelectorAll('button')].every((b) => b.textContent.trim().length > 0);"
    )
    assert browser.find_element(By.ID, "notice").get_attribute("aria-live") == "polite"
    WebDriverWait(browser, 10).until(
        lambda d: (
            job.sha256 in (d.find_element(By.CSS_SELECTOR, "#jobs tbody tr").get_attribute("data-job") or "")
        )
    )
    assert text(browser, f'#jobs tr[data-job="{job.sha256}"] td.rounds') == "1, 2"

    # Keep the cholesterol measurement out of health research: still in the cohort, without it.
    click(browser, 'article[data-purpose="HRESCH"] details.data-choices summary')
    click(browser, f'article[data-purpose="HRESCH"] input[data-value="{CHOLESTEROL}"]')
    click(browser, 'article[data-purpose="HRESCH"] button.grant')
    WebDriverWait(browser, 10).until(lambda d: "keeping out: Cholesterol" in text(d, "#notice"))
    wait_for(
        browser,
        f'article[data-purpose="HRESCH"] input[data-value="{CHOLESTEROL}"]:checked',
        "the choice was not kept",
    )
    assert "except Cholesterol" in text(browser, 'article[data-purpose="HRESCH"] .status')
    decision = layer.decide_cohort(job)
    released = set(decision.released[patient])
    assert patient in decision.permitted and released and not released & cholesterol_of(layer, patient)
    shoot(browser, tmp_path, "patient-dashboard.png")

    # Withdraw health research: the site's next-round cohort is one patient smaller.
    before = permitted(layer)
    assert patient in before
    click(browser, 'article[data-purpose="HRESCH"] button.refuse')
    wait_for(browser, 'article[data-purpose="HRESCH"][data-decision="DENY"]', "the withdrawal never showed")
    WebDriverWait(browser, 10).until(lambda d: "counts from the next training round" in text(d, "#notice"))
    after = permitted(layer)
    assert len(after) == len(before) - 1 and patient not in after

    # A study asks (as a feasibility query would): the request arrives on the open page.
    request_id = app.state.dashboard.requests.add(
        patient,
        "Heart disease risk model",
        "HRESCH",
        DEMO_ORGANIZATION,
        "We would like to include your records.",
    )
    wait_for(browser, f'li.request[data-request="{request_id}"]', "the request was never pushed to the page")
    WebDriverWait(browser, 10).until(
        lambda d: "New request from Heart disease risk model" in text(d, "#notice")
    )
    assert "1 waiting" in text(browser, "#requests-count")
    shoot(browser, tmp_path, "patient-dashboard-request.png")
    click(browser, f'li.request[data-request="{request_id}"] button.accept')
    WebDriverWait(browser, 10).until(lambda d: not d.find_elements(By.CSS_SELECTOR, "li.request"))
    WebDriverWait(browser, 10).until(lambda d: "Accepted: Heart disease risk model" in text(d, "#notice"))
    counted = permitted(layer)
    assert len(counted) == len(before) and patient in counted
    assert layer.decide_cohort(job).decisions[patient].consent_id == f"request-{request_id}"
    WebDriverWait(browser, 10).until(lambda d: "Organization/paroma-research" in text(d, "#consents"))
    assert "You do not allow your data to be used for health research" in text(browser, "#consents")
    shoot(browser, tmp_path, "patient-dashboard-consents.png", "#consents-section")

    # Erasure: refused until confirmed, then the answer lists the model trained with the data.
    click(browser, "#erase")
    WebDriverWait(browser, 10).until(lambda d: "Tick the box" in text(d, "#alert"))
    click(browser, "#erase-confirm")
    click(browser, "#erase")
    wait_for(
        browser, f'#trained-models li[data-job="{job.sha256}"]', "the erasure answer never listed the job"
    )
    assert "rounds 1, 2" in text(browser, "#trained-models")
    assert layer.site.fhir.search(None, patient=patient, count=1000).total == 0
    assert patient not in permitted(layer)
    shoot(browser, tmp_path, "patient-dashboard-erasure.png", "#activity-section")
