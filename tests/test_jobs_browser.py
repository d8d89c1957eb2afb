"""The data scientists' page in real headless Chromium (Debian's chromium and chromium-driver,
driven by Selenium) against a live job service: sign in with a token, see only one's own
jobs, open a completed job (accuracy and loss per round drawn per site, both sites admitted,
the model card) and a refused one (every site's reason).

Set PAROMA_SCREENSHOT=docs/job-service.png to keep a screenshot in the docs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_support import headless_chromium, require_chromium
from conftest import JobServiceFixture

pytestmark = pytest.mark.slow

require_chromium()

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    with headless_chromium(tmp_path / "chromium-profile", "1500,1300") as driver:
        yield driver


def page(driver: WebDriver, script: str, *args: object) -> object:
    """Read the page in one script: it redraws every 1.5 s."""
    return driver.execute_script(script, *args)


def sign_in(driver: WebDriver, token: str, subject: str) -> None:
    field = driver.find_element(By.ID, "token")
    field.clear()
    field.send_keys(token)
    driver.find_element(By.ID, "sign-in").click()
    WebDriverWait(driver, 30).until(
        lambda d: page(d, "return document.getElementById('whoami').dataset.subject") == subject
    )


def listed_jobs(driver: WebDriver) -> list[str]:
    return list(
        page(driver, "return [...document.querySelectorAll('#jobs tbody tr')].map(r => r.dataset.job)")  # type: ignore[arg-type]
    )


def open_job(driver: WebDriver, job_id: str, state: str) -> None:
    WebDriverWait(driver, 30).until(lambda d: job_id in listed_jobs(d))
    page(driver, "document.querySelector(`#jobs tr[data-job='${arguments[0]}']`).click()", job_id)
    WebDriverWait(driver, 30).until(
        lambda d: (
            page(d, "const e = document.getElementById('detail'); return [e.dataset.job, e.dataset.state]")
            == [job_id, state]
        )
    )


def points(driver: WebDriver, chart: str) -> dict[str, list[list[float]]]:
    raw = page(
        driver,
        """const out = {};
        for (const c of document.querySelectorAll(`#${arguments[0]} circle.point`)) {
          (out[c.dataset.series] = out[c.dataset.series] || []).push([+c.dataset.round, +c.dataset.value]);
        }
        return JSON.stringify(out);""",
        chart,
    )
    return dict(json.loads(str(raw)))


def sites_table(driver: WebDriver) -> list[list[str]]:
    raw = page(
        driver,
        "return JSON.stringify([...document.querySelectorAll('#sites tbody tr')]"
        ".map(r => [...r.cells].map(c => c.innerText.trim())))",
    )
    return list(json.loads(str(raw)))


def test_jobs_page(browser: WebDriver, job_service: JobServiceFixture, alice_jobs: dict[str, dict]) -> None:
    good, refused = alice_jobs["completed"], alice_jobs["refused"]
    browser.get(job_service.url + "/")
    assert browser.title == "PAROMA-MED · Jobs"

    # a wrong token is refused with the service's words
    browser.find_element(By.ID, "token").send_keys("not-a-token")
    browser.find_element(By.ID, "sign-in").click()
    WebDriverWait(browser, 30).until(
        lambda d: "401" in str(page(d, "return document.getElementById('error').innerText"))
    )

    # bob sees none of alice's jobs
    sign_in(browser, job_service.tokens["bob"], "bob")
    assert good["id"] not in listed_jobs(browser) and refused["id"] not in listed_jobs(browser)
    browser.find_element(By.ID, "sign-out").click()

    sign_in(browser, job_service.tokens["alice"], "alice")
    open_job(browser, good["id"], "completed")
    assert sites_table(browser) == [
        ["cleveland", "admitted", "admitted"],
        ["hungarian", "admitted", "admitted"],
    ]
    for chart, metric in (("accuracy-chart", "accuracy"), ("loss-chart", "loss")):
        drawn = points(browser, chart)
        assert set(drawn) == {"cleveland", "hungarian", "mean"}
        for site in ("cleveland", "hungarian"):
            expected = [[r["round"], r["sites"][site]["evaluate"][metric]] for r in good["rounds"]]
            assert [r for r, _ in drawn[site]] == [r for r, _ in expected]
            assert [v for _, v in drawn[site]] == pytest.approx([v for _, v in expected])
        assert [r for r, _ in drawn["mean"]] == [1, 2]
    WebDriverWait(browser, 30).until(
        lambda d: page(d, "return document.getElementById('model-card').dataset.model") == good["model_id"]
    )
    card = str(page(browser, "return document.getElementById('model-card').innerText"))
    assert f"Model card: {good['model_id']}" in card
    assert "aafa44dc53b4effcb546fd09b8eec463ee07be910b4a0d09adcd2a41aa7da713" in card  # the plan's sha256
    assert "round 2 completed" in str(page(browser, "return document.getElementById('log').innerText"))
    if os.environ.get("PAROMA_SCREENSHOT"):
        browser.save_screenshot(os.environ["PAROMA_SCREENSHOT"])

    open_job(browser, refused["id"], "failed")
    rows = sites_table(browser)
    assert [r[:2] for r in rows] == [["cleveland", "refused"], ["hungarian", "refused"]]
    assert all("purpose CLINTRCH is not admitted at this site" in r[2] for r in rows)
    reason = str(page(browser, "return document.getElementById('detail-reason').innerText"))
    assert "0 of 2 sites admitted the job, 2 needed" in reason
    card = str(page(browser, "return document.getElementById('model-card').innerText"))
    assert "appears when the job completes" in card
    assert points(browser, "accuracy-chart") == {}
