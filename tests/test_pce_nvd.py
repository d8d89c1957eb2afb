"""The NVD CVE API 2.0 client against a real local HTTP server that answers from the recorded
NVD responses (cveId look-ups, lastMod windows, resultsPerPage/startIndex paging), the way the
NVD API does; no internet."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import LiveServer
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from interconnect.pce.errors import InvalidRequestError, NvdError, UnknownCveError
from interconnect.pce.nvd import MAX_RESULTS_PER_PAGE, NvdClient, RateLimiter, bundled_nvd_files, records_in

RECORDING = next(p for p in bundled_nvd_files() if p.name == "cves-2023.json")
ALL = records_in(json.loads(RECORDING.read_text()), RECORDING.name)
# NVD's longest window, 120 days: 181 of the recording's 200 records were last modified in it.
WINDOW_START = datetime(2022, 11, 17, tzinfo=UTC)
WINDOW_END = WINDOW_START + timedelta(days=120)
IN_WINDOW = {r["id"] for r in ALL if r["lastModified"] < "2023-03-17"}


@dataclass
class Seen:
    params: dict[str, str]
    api_key: str | None
    at: float


@dataclass
class FakeNvd:
    """What the server saw, and how it should misbehave."""

    seen: list[Seen] = field(default_factory=list)
    refuse_first: int = 0
    garbage: bool = False


def nvd_app(state: FakeNvd) -> FastAPI:
    app = FastAPI()

    @app.get("/rest/json/cves/2.0", response_model=None)
    def cves(request: Request) -> JSONResponse | PlainTextResponse:
        params = dict(request.query_params)
        state.seen.append(Seen(params, request.headers.get("apiKey"), time.monotonic()))
        if state.refuse_first > 0:
            state.refuse_first -= 1
            return JSONResponse({}, status_code=429, headers={"Retry-After": "0"})
        if state.garbage:
            return PlainTextResponse("<html>maintenance</html>")
        records = ALL
        if "cveId" in params:
            records = [r for r in records if r["id"] == params["cveId"]]
        if "lastModStartDate" in params:
            start = datetime.fromisoformat(params["lastModStartDate"])
            end = datetime.fromisoformat(params["lastModEndDate"])
            records = [
                r
                for r in records
                if start <= datetime.fromisoformat(r["lastModified"]).replace(tzinfo=UTC) <= end
            ]
        per_page = min(int(params.get("resultsPerPage", MAX_RESULTS_PER_PAGE)), MAX_RESULTS_PER_PAGE)
        index = int(params.get("startIndex", 0))
        page = records[index : index + per_page]
        return JSONResponse(
            {
                "resultsPerPage": len(page),
                "startIndex": index,
                "totalResults": len(records),
                "format": "NVD_CVE",
                "version": "2.0",
                "timestamp": "2023-07-18T06:46:32.267",
                "vulnerabilities": [{"cve": r} for r in page],
            }
        )

    return app


@pytest.fixture
def nvd() -> Iterator[tuple[FakeNvd, str]]:
    state = FakeNvd()
    with LiveServer(nvd_app(state)) as live:
        yield state, f"{live.url}/rest/json/cves/2.0"


def client(url: str, tmp: Path | None = None, **kw: object) -> NvdClient:
    options: dict = {"rate_limit": (100, 1.0), "retry_pause": 0.0} | kw
    return NvdClient(base_url=url, online=True, cache_dir=tmp, offline_files=[], **options)


def test_lookup_by_id_sends_the_key_and_fills_the_cache(nvd: tuple[FakeNvd, str], tmp_path: Path) -> None:
    state, url = nvd
    with client(url, tmp_path, api_key="secret-key") as nvd_client:
        first = nvd_client.lookup("CVE-2022-36786")
        again = nvd_client.lookup("cve-2022-36786")
    assert first == again and first.base_score == 9.9 and first.source == "NVD"
    assert len(state.seen) == 1  # the second answer came from the cache
    assert state.seen[0].params == {"cveId": "CVE-2022-36786"}
    assert state.seen[0].api_key == "secret-key"
    assert json.loads((tmp_path / "CVE-2022-36786.json").read_text())["id"] == "CVE-2022-36786"
    # A new client with the same cache, offline, still knows it.
    assert NvdClient(cache_dir=tmp_path, offline_files=[]).lookup("CVE-2022-36786") == first


def test_unknown_cve_online_and_offline(nvd: tuple[FakeNvd, str]) -> None:
    _, url = nvd
    with pytest.raises(UnknownCveError, match="NVD does not know CVE-2099-0001"):
        client(url).lookup("CVE-2099-0001")
    with pytest.raises(UnknownCveError, match="not in the local NVD data"):
        NvdClient(offline_files=[]).lookup("CVE-2022-36786")


def test_last_modified_window_pages_through_all_results(nvd: tuple[FakeNvd, str], tmp_path: Path) -> None:
    state, url = nvd
    with client(url, tmp_path, results_per_page=60, api_key="k") as nvd_client:
        records = list(nvd_client.modified_between(WINDOW_START, WINDOW_END))
    assert len(records) == 181 and {r["id"] for r in records} == IN_WINDOW
    assert [s.params["startIndex"] for s in state.seen] == ["0", "60", "120", "180"]
    assert all(s.params["resultsPerPage"] == "60" and s.api_key == "k" for s in state.seen)
    assert state.seen[0].params["lastModStartDate"] == "2022-11-17T00:00:00.000+00:00"
    assert state.seen[0].params["lastModEndDate"] == "2023-03-17T00:00:00.000+00:00"
    assert len(list(tmp_path.glob("CVE-*.json"))) == 181


def test_a_narrow_window_returns_only_what_changed_in_it(nvd: tuple[FakeNvd, str]) -> None:
    _, url = nvd
    start = datetime(2022, 11, 21, 12, 0, tzinfo=UTC)
    end = datetime(2022, 11, 21, 13, 0, tzinfo=UTC)
    got = {r["id"] for r in client(url).modified_between(start, end)}
    expected = {r["id"] for r in ALL if "2022-11-21T12:00" <= r["lastModified"] <= "2022-11-21T13:00"}
    assert got == expected and 0 < len(got) < len(ALL)
    # The same window offline, from the shipped files.
    assert {r["id"] for r in NvdClient().modified_between(start, end)} == expected


def test_rate_limit_spaces_the_requests(nvd: tuple[FakeNvd, str]) -> None:
    state, url = nvd
    window = 0.4
    with client(url, results_per_page=40, rate_limit=(2, window)) as nvd_client:
        assert len(list(nvd_client.modified_between(WINDOW_START, WINDOW_END))) == 181
    times = [s.at for s in state.seen]
    assert len(times) == 5
    # Never more than 2 requests in any 0.4 s window.
    assert all(later - earlier >= window * 0.95 for earlier, later in zip(times, times[2:], strict=False))


def test_rate_limiter_counts_a_sliding_window() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    limiter = RateLimiter(5, 30.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(5):
        assert limiter.acquire() == 0.0
    now[0] = 10.0
    assert limiter.acquire() == pytest.approx(20.0)  # NVD without a key: 5 per 30 s
    assert slept == [pytest.approx(20.0)]


def test_refusals_are_retried_then_reported(nvd: tuple[FakeNvd, str]) -> None:
    state, url = nvd
    state.refuse_first = 2
    assert client(url, retries=3).lookup("CVE-2022-44006").base_score == 9.8
    assert len(state.seen) == 3
    state.seen.clear()
    state.refuse_first = 10
    with pytest.raises(NvdError, match=r"kept refusing \(429\) after 2 attempts"):
        client(url, retries=1).lookup("CVE-2022-44006")


def test_an_answer_that_is_not_nvd_json_is_an_error(nvd: tuple[FakeNvd, str]) -> None:
    state, url = nvd
    state.garbage = True
    with pytest.raises(NvdError, match="not JSON"):
        client(url).lookup("CVE-2022-44006")


def test_unreachable_api_is_named() -> None:
    with pytest.raises(NvdError, match=r"NVD API unreachable at http://127\.0\.0\.1:9/"):
        NvdClient(base_url="http://127.0.0.1:9/", online=True, offline_files=[]).lookup("CVE-2022-44006")


def test_window_and_page_size_limits() -> None:
    start = datetime(2022, 1, 1, tzinfo=UTC)
    with pytest.raises(InvalidRequestError, match="at most 120 days"):
        list(NvdClient().modified_between(start, start + timedelta(days=121)))
    with pytest.raises(InvalidRequestError, match="before lastModStartDate"):
        list(NvdClient().modified_between(start, start - timedelta(days=1)))
    with pytest.raises(InvalidRequestError, match="resultsPerPage"):
        NvdClient(results_per_page=2001)


def test_shipped_files_work_offline() -> None:
    offline = NvdClient()
    assert offline.lookup("CVE-2023-0001").base_score == 6.7  # cves-CVE-2023-0001.json
    assert offline.lookup("CVE-2022-44006").base_score == 9.8  # a single {"cve": ...} record
    assert offline.requests_sent == 0
