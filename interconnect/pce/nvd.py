"""A client of the NVD CVE API 2.0 (https://nvd.nist.gov/developers/vulnerabilities).

It answers from, in order: a local cache (one JSON file per CVE, written on every fetch), NVD
JSON files shipped with the project or given by the operator (offline), and the NVD API itself
when ``online`` is set. Requests carry the key in the ``apiKey`` header, respect a sliding-window
rate limit (NVD: about 5 requests per 30 s without a key, 50 with one), and page through
``resultsPerPage`` (at most 2,000) / ``startIndex`` until ``totalResults`` is reached. Errors that
NVD's rate limiter gives (403, 429, 503) are retried after a pause.

NVD's terms ask every product that shows its data to carry ``NVD_NOTICE``.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import httpx

from interconnect.pce.cve import Vulnerability, check_cve_id, vulnerability_from_nvd
from interconnect.pce.errors import InvalidRequestError, NvdError, UnknownCveError

NVD_NOTICE = "This product uses data from the NVD API but is not endorsed or certified by the NVD."
NVD_API_URL = "https://services.nvd.nist.gov/rest/json/cves/2.0"
MAX_RESULTS_PER_PAGE = 2_000
# NVD refuses lastMod windows longer than 120 consecutive days.
MAX_WINDOW = timedelta(days=120)
RETRY_STATUSES = (403, 429, 503)


def bundled_nvd_files() -> list[Path]:
    """The NVD answers shipped in ``data/nvd`` (real recordings; see SOURCE.md there)."""
    folder = Path(str(resources.files("interconnect.pce") / "data" / "nvd"))
    return sorted(folder.glob("*.json"))


class RateLimiter:
    """At most ``requests`` calls in any window of ``per_seconds`` (thread-safe)."""

    def __init__(
        self,
        requests: int,
        per_seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if requests < 1 or per_seconds <= 0:
            raise InvalidRequestError(
                "rate limit: expected at least 1 request per positive number of seconds"
            )
        self.requests = requests
        self.per_seconds = per_seconds
        self._clock = clock
        self._sleep = sleep
        self._sent: list[float] = []
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Wait until a request may go out; return how long it waited."""
        waited = 0.0
        with self._lock:
            while True:
                now = self._clock()
                self._sent = [t for t in self._sent if now - t < self.per_seconds]
                if len(self._sent) < self.requests:
                    self._sent.append(now)
                    return waited
                pause = self.per_seconds - (now - self._sent[0])
                self._sleep(pause)
                waited += pause


class NvdCache:
    """One ``<CVE id>.json`` file per CVE record, as NVD sent it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def get(self, cve_id: str) -> dict[str, Any] | None:
        path = self.folder / f"{cve_id}.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError):
            return None  # a damaged entry is fetched again
        return data if isinstance(data, dict) else None

    def put(self, record: Mapping[str, Any]) -> None:
        cve_id = check_cve_id(record.get("id"))
        self.folder.mkdir(parents=True, exist_ok=True)
        # Written whole or not at all: a concurrent reader never sees half a file.
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".tmp-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(record, out)
        os.replace(tmp, self.folder / f"{cve_id}.json")


def records_in(document: object, source: str) -> list[dict[str, Any]]:
    """The CVE records of an NVD JSON document: an API 2.0 answer or a single ``{"cve": ...}``."""
    if not isinstance(document, dict):
        raise NvdError(f"{source}: expected an NVD JSON object, got {type(document).__name__}")
    if "vulnerabilities" in document:
        items = document["vulnerabilities"]
        if not isinstance(items, list):
            raise NvdError(f"{source}: 'vulnerabilities' is not a list")
    elif "cve" in document:
        items = [document]
    else:
        raise NvdError(f"{source}: neither an NVD CVE API 2.0 answer nor a CVE record")
    records = []
    for i, item in enumerate(items):
        cve = item.get("cve") if isinstance(item, dict) else None
        if not isinstance(cve, dict) or not isinstance(cve.get("id"), str):
            raise NvdError(f"{source}: vulnerabilities[{i}] has no cve.id")
        records.append(cve)
    return records


class OfflineNvd:
    """NVD records read from JSON files, indexed by CVE id."""

    def __init__(self, files: Iterable[Path] = ()) -> None:
        self.records: dict[str, dict[str, Any]] = {}
        for path in files:
            try:
                document = json.loads(Path(path).read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise NvdError(f"{path}: cannot read NVD JSON: {exc}") from None
            for record in records_in(document, str(path)):
                self.records[record["id"].upper()] = record

    def get(self, cve_id: str) -> dict[str, Any] | None:
        return self.records.get(cve_id)

    def modified_between(self, start: datetime, end: datetime) -> list[dict[str, Any]]:
        out = []
        for record in self.records.values():
            stamp = _nvd_time(record.get("lastModified"))
            if stamp is not None and start <= stamp <= end:
                out.append(record)
        return sorted(out, key=lambda r: (str(r.get("lastModified")), r["id"]))


class NvdClient:
    """Look CVEs up (``lookup`` is the engine's CVE source) and list recently modified ones."""

    def __init__(
        self,
        *,
        base_url: str = NVD_API_URL,
        api_key: str | None = None,
        online: bool = False,
        cache_dir: Path | None = None,
        offline_files: Iterable[Path] | None = None,
        rate_limit: tuple[int, float] | None = None,
        results_per_page: int = MAX_RESULTS_PER_PAGE,
        timeout: float = 30.0,
        retries: int = 3,
        retry_pause: float = 6.0,
    ) -> None:
        if not 1 <= results_per_page <= MAX_RESULTS_PER_PAGE:
            raise InvalidRequestError(
                f"resultsPerPage: {results_per_page} is out of range (1 to {MAX_RESULTS_PER_PAGE})"
            )
        self.base_url = base_url
        self.api_key = api_key or None
        self.online = online
        self.cache = NvdCache(cache_dir) if cache_dir is not None else None
        self.offline = OfflineNvd(bundled_nvd_files() if offline_files is None else offline_files)
        requests, seconds = rate_limit or ((50, 30.0) if self.api_key else (5, 30.0))
        self.limiter = RateLimiter(requests, seconds)
        self.results_per_page = results_per_page
        self.retries = retries
        self.retry_pause = retry_pause
        headers = {"User-Agent": "paroma-med-pce"}
        if self.api_key:
            headers["apiKey"] = self.api_key
        self._http = httpx.Client(timeout=timeout, headers=headers)
        self.requests_sent = 0

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> NvdClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def record(self, cve_id: str) -> dict[str, Any]:
        """The NVD record of a CVE (cache, then local files, then the API when online)."""
        cve_id = check_cve_id(cve_id)
        if self.cache is not None and (cached := self.cache.get(cve_id)) is not None:
            return cached
        if (local := self.offline.get(cve_id)) is not None:
            return local
        if not self.online:
            raise UnknownCveError(
                f"{cve_id} is not in the local NVD data (offline: give its CVSS vector to add it by hand, "
                "or allow NVD look-ups)"
            )
        records = records_in(self._get({"cveId": cve_id}), f"NVD answer for {cve_id}")
        match = [r for r in records if r["id"].upper() == cve_id]
        if not match:
            raise UnknownCveError(f"NVD does not know {cve_id}")
        if self.cache is not None:
            self.cache.put(match[0])
        return match[0]

    def lookup(self, cve_id: str) -> Vulnerability:
        """The CVE as a vulnerability, scored by its preferred CVSS v3.x metric (Primary v3.1 first)."""
        return vulnerability_from_nvd(self.record(cve_id))

    def modified_between(self, start: datetime, end: datetime) -> Iterator[dict[str, Any]]:
        """Every CVE record last modified in [start, end], page after page (cached as it comes)."""
        start, end = _aware(start), _aware(end)
        if end < start:
            raise InvalidRequestError("lastModEndDate is before lastModStartDate")
        if end - start > MAX_WINDOW:
            raise InvalidRequestError(f"NVD accepts last-modified windows of at most {MAX_WINDOW.days} days")
        if not self.online:
            yield from self.offline.modified_between(start, end)
            return
        index = 0
        while True:
            page = self._get(
                {
                    "lastModStartDate": _nvd_param(start),
                    "lastModEndDate": _nvd_param(end),
                    "resultsPerPage": str(self.results_per_page),
                    "startIndex": str(index),
                }
            )
            records = records_in(page, f"NVD page at startIndex {index}")
            for record in records:
                if self.cache is not None:
                    self.cache.put(record)
                yield record
            total = page.get("totalResults")
            if not isinstance(total, int):
                raise NvdError(f"NVD page at startIndex {index} has no totalResults")
            index += len(records)
            if not records or index >= total:
                return

    def _get(self, params: dict[str, str]) -> dict[str, Any]:
        for attempt in range(self.retries + 1):
            self.limiter.acquire()
            self.requests_sent += 1
            try:
                response = self._http.get(self.base_url, params=params)
            except httpx.HTTPError as exc:
                raise NvdError(f"NVD API unreachable at {self.base_url}: {exc}") from None
            if response.status_code in RETRY_STATUSES:
                if attempt < self.retries:
                    time.sleep(_retry_after(response, self.retry_pause))
                    continue
                raise NvdError(
                    f"NVD API kept refusing ({response.status_code}) after {self.retries + 1} attempts "
                    "(rate limit? an API key raises it)"
                )
            if response.status_code != 200:
                message = response.headers.get("message", "") or response.text[:200]
                raise NvdError(f"NVD API answered {response.status_code}: {message}".rstrip(": "))
            try:
                body = response.json()
            except ValueError:
                raise NvdError("NVD API answered something that is not JSON") from None
            if not isinstance(body, dict):
                raise NvdError("NVD API answered JSON that is not an object")
            return body
        raise AssertionError("unreachable: the last attempt returns or raises")


def _retry_after(response: httpx.Response, default: float) -> float:
    try:
        return max(0.0, min(60.0, float(response.headers.get("Retry-After", default))))
    except ValueError:
        return default


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _nvd_param(moment: datetime) -> str:
    """NVD's extended ISO-8601 form with milliseconds and offset, e.g. 2022-11-20T00:00:00.000+00:00."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}+00:00"


def _nvd_time(value: object) -> datetime | None:
    """NVD record timestamps are UTC without an offset (``2022-11-20T14:02:24.783``)."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return _aware(parsed)
