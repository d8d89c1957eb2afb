"""Schemathesis against every service's OpenAPI, each on a real uvicorn server: requests that
fit the schema and requests that do not, on every operation, authenticated as the service's
most privileged caller so the fuzzing reaches the handlers, then hostile requests no schema
allows (malformed, deeply nested, huge and non-UTF-8 bodies; path traversal, NUL and overlong
path values). No answer may be a 5xx, and none
may carry a stack trace or an exception's repr.

A new service adds one ``FuzzTarget`` line to ``TARGETS``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from conftest import LiveServer
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode

from clinical_node.service import create_app as create_node_app
from clinical_node.site import Site
from interconnect.pce.engine import SecurePathEngine
from interconnect.pce.nvd import NvdClient
from interconnect.pce.scenario import load_scenario
from interconnect.pce.service import create_app as create_pce_app
from protection_layer.opa_api import create_opa_app

# Bounded so that the whole fuzz suite stays well under a minute on two busy cores.
EXAMPLES_PER_OPERATION = 3

# What a leaked Python exception looks like in a body.
STACK_TRACE = re.compile(r"Traceback \(most recent call last\)|File \"[^\"]+\.py\", line \d+|\b\w+Error\(")


@dataclass(frozen=True)
class FuzzTarget:
    name: str
    # yields (ASGI app, request headers) for a fresh service with its state in tmp
    start: Callable[[Path], Any]
    skip_paths: tuple[str, ...] = ()


@contextmanager
def _clinical_node(tmp: Path) -> Iterator[tuple[Any, dict[str, str]]]:
    site = Site.create(tmp / "site", "fuzz-site", "Fuzz Hospital")
    from clinical_node.auth import TokenStore

    token = TokenStore(site.root / "keys" / "api-tokens.json").issue("site-admin", "fuzzer")
    app = create_node_app(site)
    try:
        yield app, {"Authorization": f"Bearer {token}"}
    finally:
        app.state.protection.close()
        site.close()


@contextmanager
def _pce(tmp: Path) -> Iterator[tuple[Any, dict[str, str]]]:
    nvd = NvdClient()
    yield create_pce_app(SecurePathEngine(*load_scenario("demo", nvd)), nvd), {}


@contextmanager
def _opa(tmp: Path) -> Iterator[tuple[Any, dict[str, str]]]:
    yield create_opa_app(), {}


TARGETS = [
    FuzzTarget("fhir-api", _clinical_node),
    # the event stream never ends by design; its answer is checked in test_pce_api.py
    FuzzTarget("secure-traffic-engine", _pce, skip_paths=("/api/events",)),
    FuzzTarget("opa-compatible", _opa),
]


JSON = {"Content-Type": "application/json"}
HOSTILE_BODIES: list[tuple[bytes, dict[str, str]]] = [
    (b"", JSON),
    (b"{", JSON),
    (b"null", JSON),
    (b"[1, 2, 3]", JSON),
    (b'"a string"', JSON),
    (b"1e999999", JSON),
    (b"[" * 5000 + b"]" * 5000, JSON),
    (b'{"resourceType": "Bundle", "type": "transaction", "entry": [null, 1, "x", {"resource": []}]}', JSON),
    (b'{"a": "\ud800"}', JSON),
    (b"\xff\xfe\x00garbage", JSON),
    (b"x" * 300_000, {"Content-Type": "text/plain"}),
    (b"<xml/>", {"Content-Type": "application/xml"}),
]
HOSTILE_SEGMENTS = ["..", "%2e%2e%2f%2e%2e", "%00", "x" * 3000, "%ff%fe", "-1", "1e309", "Patient%2F..%2F.."]


def _hostile_urls(template: str) -> list[str]:
    """The path with every parameter set to one hostile value at a time."""
    if "{" not in template:
        return [template]
    return [re.sub(r"\{[^}]+\}", segment, template) for segment in HOSTILE_SEGMENTS]


def _problems(response: requests.Response) -> list[str]:
    found = []
    if response.status_code >= 500:
        found.append(f"status {response.status_code}")
    if STACK_TRACE.search(response.text):
        found.append("a stack trace in the body")
    return found


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.name)
def test_no_5xx_and_no_stack_trace(target: FuzzTarget, tmp_path: Path) -> None:
    with target.start(tmp_path) as (app, headers), LiveServer(app) as live:
        schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json")
        operations = [r.ok() for r in schema.get_all_operations()]
        operations = [op for op in operations if op.path not in target.skip_paths]
        assert operations, "the schema lists no operation"
        failures: list[str] = []
        session = requests.Session()
        for op in operations:

            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=op.as_strategy(generation_mode=GenerationMode.POSITIVE))
            def fuzz(case: Any) -> None:
                response = case.call(base_url=live.url, session=session, headers=headers, timeout=20)
                for problem in _problems(response):
                    failures.append(
                        f"{case.method} {case.formatted_path} -> {problem}: {response.text[:300]!r}"
                    )

            fuzz()
            # Requests no schema allows (schemathesis's negative mode finds none for free-form
            # string parameters and raw bodies): hostile path values and bodies.
            for url in _hostile_urls(op.path):
                for body in HOSTILE_BODIES if op.method.upper() in ("POST", "PUT", "PATCH") else [None]:
                    # a fresh connection each: a server may close one whose body it refused unread
                    response = requests.request(
                        op.method.upper(),
                        live.url + url,
                        headers={**headers, **(body[1] if body else {}), "Connection": "close"},
                        data=body[0] if body else None,
                        timeout=20,
                    )
                    for problem in _problems(response):
                        failures.append(f"{op.method.upper()} {url} -> {problem}: {response.text[:300]!r}")
        assert not failures, "\n".join(sorted(set(failures))[:20])
