"""A site's data catalogue: what it holds, for data scientists to browse before they ask.

Described with W3C DCAT 3 terms as JSON-LD: one ``dcat:Catalog`` per site, one
``dcat:Dataset`` per FHIR resource type with its ``dcat:Distribution`` (the site's FHIR
API, ``dct:conformsTo`` FHIR R4), its ``dct:temporal`` range in years and, per code, the number
of resources and of patients with its display text. Everything is read from the store's
index (one resource per code is decrypted, for its display); no value of any resource
is published. Counts below the site's ``small_count_threshold`` k are ``"<k"``, and a
code's date range is only published with a count of at least k.

The :class:`CataloguePublisher` rebuilds it in batches: at most every
``[catalogue] interval_minutes`` of ``site.toml`` (default 60), and only when the store
changed since; between rebuilds the published catalogue (``catalogue/catalogue.json``,
written atomically) is served as it is, with its ``dct:issued`` time. The node's service
runs it on schedule (:meth:`CataloguePublisher.start`), so a catalogue is ready before
anyone asks.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from .fhir.store import IndexedResource
from .site import Site

CONTEXT = {
    "dcat": "http://www.w3.org/ns/dcat#",
    "dct": "http://purl.org/dc/terms/",
    "foaf": "http://xmlns.com/foaf/0.1/",
    "paroma": "https://paroma-med.eu/ns/catalogue#",
}
FHIR_R4 = "http://hl7.org/fhir/R4"
FILE = Path("catalogue") / "catalogue.json"
DEFAULT_INTERVAL_MINUTES = 60.0
log = logging.getLogger("paroma.catalogue")


class CatalogueError(ValueError):
    """A [catalogue] setting that cannot be used, or an unreadable published catalogue."""


@dataclass
class _Tally:
    resources: int = 0
    patients: set[str] = field(default_factory=set)
    start: str = ""
    end: str = ""
    sample: tuple[str, str] | None = None  # one resource, for the code's display

    def add(self, row: IndexedResource) -> None:
        self.resources += 1
        if row.patient:
            self.patients.add(row.patient)
        first = row.date_start or row.date_end or ""
        last = row.date_end or row.date_start or ""
        if first and (not self.start or first < self.start):
            self.start = first
        if last and last > self.end:
            self.end = last
        if self.sample is None:
            self.sample = (row.resource_type, row.resource_id)


def _count(n: int, k: int) -> int | str:
    return n if n >= k else f"<{k}"


def _temporal(rtype: str, tally: _Tally, k: int) -> dict[str, str] | None:
    # Years only: the first and last dates are single patients' (a visit, a birth); a
    # Patient's date is its birth date, which is no period the data covers.
    if rtype == "Patient" or len(tally.patients) < k or not tally.start:
        return None
    return {"@type": "dct:PeriodOfTime", "dcat:startDate": tally.start[:4], "dcat:endDate": tally.end[:4]}


def _display(resource: Mapping[str, Any], system: str, code: str) -> str:
    concept = resource.get("code")
    if not isinstance(concept, Mapping):
        return ""
    for coding in concept.get("coding") or []:
        if (
            isinstance(coding, Mapping)
            and coding.get("code") == code
            and (coding.get("system") or "") == system
        ):
            return str(coding.get("display") or concept.get("text") or "")
    return str(concept.get("text") or "")


def build_catalogue(
    site_id: str,
    name: str,
    rows: Iterable[IndexedResource],
    k: int,
    published: str,
    read: Callable[[list[tuple[str, str]]], list[dict[str, Any]]],
) -> dict[str, Any]:
    """The catalogue of the resources in ``rows`` (the store's index); ``read`` fetches
    the given resources (for the codes' display text)."""
    by_type: dict[str, _Tally] = {}
    by_code: dict[tuple[str, str, str], _Tally] = {}
    for row in rows:
        by_type.setdefault(row.resource_type, _Tally()).add(row)
        for system, code in set(row.codes):
            by_code.setdefault((row.resource_type, system or "", code), _Tally()).add(row)
    samples = [t.sample for t in by_code.values() if t.sample is not None]
    bodies = {(r.get("resourceType"), r.get("id")): r for r in read(samples)} if samples else {}
    datasets = []
    for rtype in sorted(by_type):
        tally = by_type[rtype]
        codes = []
        for (ctype, system, code), ct in sorted(by_code.items()):
            if ctype != rtype:
                continue
            body = bodies.get(ct.sample) if ct.sample else None
            entry: dict[str, Any] = {
                "paroma:system": system,
                "paroma:code": code,
                "paroma:display": _display(body, system, code) if body else "",
                "paroma:resources": _count(ct.resources, k),
                "paroma:patients": _count(len(ct.patients), k),
            }
            temporal = _temporal(rtype, ct, k)
            if temporal:
                entry["dct:temporal"] = temporal
            codes.append(entry)
        dataset: dict[str, Any] = {
            "@type": "dcat:Dataset",
            "dct:identifier": f"{site_id}/{rtype}",
            "dct:title": f"{rtype} resources at {name}",
            "dct:type": rtype,
            "paroma:resources": _count(tally.resources, k),
            "paroma:patients": _count(len(tally.patients), k),
            "paroma:codes": codes,
            "dcat:distribution": [
                {
                    "@type": "dcat:Distribution",
                    "dct:title": f"{rtype} through the site's FHIR API (consent enforced; role site-admin)",
                    "dcat:accessURL": f"/fhir/{rtype}",
                    "dcat:mediaType": "application/fhir+json",
                    "dct:conformsTo": FHIR_R4,
                }
            ],
        }
        temporal = _temporal(rtype, tally, k)
        if temporal:
            dataset["dct:temporal"] = temporal
        datasets.append(dataset)
    return {
        "@context": CONTEXT,
        "@type": "dcat:Catalog",
        "dct:identifier": site_id,
        "dct:title": f"Data held by {name}",
        "dct:publisher": {"@type": "foaf:Organization", "foaf:name": name, "dct:identifier": site_id},
        "dct:issued": published,
        "paroma:smallCountThreshold": k,
        "dcat:dataset": datasets,
    }


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def interval_of(site: Site) -> timedelta:
    table = site.settings.get("catalogue") or {}
    minutes = table.get("interval_minutes", DEFAULT_INTERVAL_MINUTES) if isinstance(table, Mapping) else None
    if isinstance(minutes, bool) or not isinstance(minutes, int | float) or not 0 <= minutes <= 7 * 24 * 60:
        raise CatalogueError(
            f"catalogue.interval_minutes in {site.root / 'site.toml'}: expected minutes in [0, 10080], got {minutes!r}"
        )
    return timedelta(minutes=float(minutes))


class CataloguePublisher:
    """Keeps a site's published catalogue at most ``interval`` old when the data changed."""

    def __init__(
        self, site: Site, *, interval: timedelta | None = None, clock: Callable[[], datetime] | None = None
    ) -> None:
        self.site = site
        self.interval = interval if interval is not None else interval_of(site)
        self.clock = clock or (lambda: datetime.now(UTC))
        self.path = site.root / FILE
        self._lock = threading.Lock()
        self.rebuilds = 0

    def _load(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError):
            return None  # a damaged file is rebuilt, never served
        return data if isinstance(data, dict) and "dct:issued" in data else None

    def publish(self) -> dict[str, Any]:
        """Rebuild and publish now."""
        with self._lock:
            return self._publish()

    def _publish(self) -> dict[str, Any]:
        fhir = self.site.fhir
        generation = fhir.generation()
        catalogue = build_catalogue(
            self.site.site_id,
            self.site.identity.name,
            fhir.index_rows(),
            int(self.site.policy.small_count_threshold),
            _iso(self.clock()),
            fhir.read_many,
        )
        stored = {**catalogue, "paroma:storeGeneration": generation}
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as handle:
            json.dump(stored, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        self.rebuilds += 1
        return stored

    def start(self, check_every_s: float | None = None) -> threading.Event:
        """Publish on schedule in a background thread: every ``check_every_s`` (default:
        a tenth of the interval, between 1 s and 60 s) rebuild if due. Set the returned
        event to stop it."""
        every = (
            check_every_s
            if check_every_s is not None
            else min(60.0, max(1.0, self.interval.total_seconds() / 10))
        )
        stop = threading.Event()

        def run() -> None:
            while not stop.wait(every):
                try:
                    self.current()
                except Exception:  # a failed rebuild is retried at the next check
                    log.exception("site %s: the catalogue could not be published", self.site.site_id)

        threading.Thread(target=run, name=f"catalogue-{self.site.site_id}", daemon=True).start()
        return stop

    def current(self) -> dict[str, Any]:
        """The published catalogue, rebuilt first when it is due: none yet, or at least
        ``interval`` old and the store changed since."""
        with self._lock:
            published = self._load()
            if published is None:
                published = self._publish()
            else:
                issued = datetime.fromisoformat(str(published["dct:issued"]).replace("Z", "+00:00"))
                due = self.clock() - issued >= self.interval
                if due and published.get("paroma:storeGeneration") != self.site.fhir.generation():
                    published = self._publish()
        return {k: v for k, v in published.items() if k != "paroma:storeGeneration"}
