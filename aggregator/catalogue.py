"""The federation's data catalogue: every site's published DCAT catalogue, gathered.

The sites publish on their own schedules (``clinical_node.catalogue``); the aggregator
asks each for what it last published (``GET /federation/catalog``), keeps the answers for
a while, and reports a site that does not answer as such. The result is one
``dcat:Catalog`` whose ``dcat:catalog`` are the sites' catalogues, and a flat list of
rows (site, resource type, code, display, patients, resources, years) for a table.
:func:`build_catalogue_router` serves it as JSON for the aggregator's services.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter

from .sites import SiteEndpoint, ask_sites

CONTEXT = {
    "dcat": "http://www.w3.org/ns/dcat#",
    "dct": "http://purl.org/dc/terms/",
    "foaf": "http://xmlns.com/foaf/0.1/",
    "paroma": "https://paroma-med.eu/ns/catalogue#",
}


@dataclass
class FederationCatalogue:
    catalogues: dict[str, dict[str, Any]]  # site id -> its dcat:Catalog
    failed: dict[str, str]  # site id -> why it is missing

    def to_dict(self) -> dict[str, Any]:
        return {
            "@context": CONTEXT,
            "@type": "dcat:Catalog",
            "dct:title": "Data held across the federation",
            "dcat:catalog": [self.catalogues[s] for s in sorted(self.catalogues)],
            "paroma:unavailable": [{"site": s, "reason": r} for s, r in sorted(self.failed.items())],
        }

    def rows(self) -> list[dict[str, Any]]:
        """One row per site, resource type and code (a type's own row has code "")."""
        out: list[dict[str, Any]] = []
        for site in sorted(self.catalogues):
            catalogue = self.catalogues[site]
            for dataset in catalogue.get("dcat:dataset") or []:
                rtype = str(dataset.get("dct:type", ""))
                out.append(_row(site, rtype, "", "", "", dataset, catalogue))
                for code in dataset.get("paroma:codes") or []:
                    out.append(
                        _row(
                            site,
                            rtype,
                            str(code.get("paroma:system", "")),
                            str(code.get("paroma:code", "")),
                            str(code.get("paroma:display", "")),
                            code,
                            catalogue,
                        )
                    )
        return out


def _row(
    site: str,
    rtype: str,
    system: str,
    code: str,
    display: str,
    item: Mapping[str, Any],
    catalogue: Mapping[str, Any],
) -> dict[str, Any]:
    temporal = item.get("dct:temporal") or {}
    years = f"{temporal['dcat:startDate']}-{temporal['dcat:endDate']}" if temporal else ""
    return {
        "site": site,
        "resource_type": rtype,
        "system": system,
        "code": code,
        "display": display,
        "patients": item.get("paroma:patients"),
        "resources": item.get("paroma:resources"),
        "years": years,
        "published": catalogue.get("dct:issued", ""),
    }


def _valid(body: Mapping[str, Any]) -> str:
    if body.get("@type") != "dcat:Catalog" or not isinstance(body.get("dcat:dataset"), list):
        return "the answer is not a dcat:Catalog with datasets"
    return ""


def gather_catalogues(sites: Sequence[SiteEndpoint], *, timeout: float = 30.0) -> FederationCatalogue:
    catalogues: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    for reply in ask_sites(list(sites), "GET", "/federation/catalog", timeout=timeout):
        problem = reply.error or (_valid(reply.body) if reply.body is not None else "no answer")
        if problem:
            failed[reply.site_id] = problem
        elif reply.body is not None:
            catalogues[reply.site_id] = reply.body
    return FederationCatalogue(catalogues, failed)


class CatalogueCache:
    """The gathered catalogue, asked of the sites again at most every ``max_age_s``
    (they publish in batches; asking more often only loads them)."""

    def __init__(
        self,
        sites: Callable[[], Sequence[SiteEndpoint]],
        *,
        max_age_s: float = 300.0,
        timeout: float = 30.0,
    ) -> None:
        self.sites = sites
        self.max_age_s = max_age_s
        self.timeout = timeout
        self._lock = threading.Lock()
        self._value: FederationCatalogue | None = None
        self._at = 0.0

    def get(self, *, refresh: bool = False) -> FederationCatalogue:
        with self._lock:
            fresh = self._value is not None and time.monotonic() - self._at < self.max_age_s
            if refresh or not fresh:
                self._value = gather_catalogues(self.sites(), timeout=self.timeout)
                self._at = time.monotonic()
            assert self._value is not None
            return self._value


def build_catalogue_router(
    sites: Callable[[], Sequence[SiteEndpoint]],
    *,
    dependencies: Sequence[Any] = (),
    max_age_s: float = 300.0,
    prefix: str = "/api/catalog",
) -> APIRouter:
    """``GET {prefix}``: the federation's catalogue (JSON-LD); ``GET {prefix}/rows``: its
    flat rows. ``dependencies``: the including service's authentication (``Depends(...)``)."""
    cache = CatalogueCache(sites, max_age_s=max_age_s)
    router = APIRouter(prefix=prefix, tags=["catalogue"], dependencies=list(dependencies))

    @router.get("")
    def catalogue(refresh: bool = False) -> dict[str, Any]:
        return cache.get(refresh=refresh).to_dict()

    @router.get("/rows")
    def rows(refresh: bool = False) -> dict[str, Any]:
        gathered = cache.get(refresh=refresh)
        return {"rows": gathered.rows(), "unavailable": gathered.failed}

    return router
