"""Schemathesis against every service's OpenAPI, each on a real uvicorn server: requests that
fit the schema and requests that do not, on every operation, authenticated as the service's
most privileged caller so the fuzzing reaches the handlers. No answer may be a 5xx, and none
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
from hypothesis.errors import Unsatisfiable
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
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

                @settings(
                    max_examples=EXAMPLES_PER_OPERATION,
                    deadline=None,
                    database=None,
                    derandomize=True,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=list(HealthCheck),
                )
                @given(case=op.as_strategy(generation_mode=mode))
                def fuzz(case: Any) -> None:
                    response = case.call(base_url=live.url, session=session, headers=headers, timeout=20)
                    for problem in _problems(response):
                        failures.append(
                            f"{case.method} {case.formatted_path} -> {problem}: {response.text[:300]!r}"
                        )

                try:
                    fuzz()
                except Unsatisfiable:
                    # an operation without parameters or body has no request outside its schema
                    assert mode is GenerationMode.NEGATIVE, f"{op.method} {op.path}: no valid request"
        assert not failures, "\n".join(sorted(set(failures))[:20])
