"""The protection layer's OPA REST API, exercised with opa-python-client on a live server:
OPA's semantics for policies, data, undefined documents and errors; and the OPA-server
engine loading a policy set atomically."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from conftest import LiveServer
from opa_client import OpaClient
from opa_client.errors import PolicyNotFoundError, RegoParseError

from protection_layer.engine import OpaServerEngine, PolicyCompileError, PolicySet
from protection_layer.opa_api import create_opa_app

EXAMPLE = """package opa.examples

import rego.v1

default allow_request := false

allow_request if input.example.flag == true

limit := data.config.limit

ids contains id if {
	some id in input.ids
	id > 1
}

maybe if input.example.flag == true
"""


@pytest.fixture
def server() -> Iterator[LiveServer]:
    with LiveServer(create_opa_app()) as live:
        yield live


@pytest.fixture
def client(server: LiveServer) -> Iterator[OpaClient]:
    made = OpaClient(host="127.0.0.1", port=server.port, timeout=5)
    yield made
    made.close_connection()


def test_policies_are_put_listed_read_and_deleted(client: OpaClient) -> None:
    assert client.check_health()
    assert client.update_policy_from_string(EXAMPLE, "example", rego_compat=False)
    assert client.get_policies_list() == ["example"]
    info = client.get_policies_info()["example"]
    assert info["path"].endswith("/v1/data/opa/examples")
    assert {"allow_request", "limit", "ids", "maybe"} <= {r.rsplit("/", 1)[1] for r in info["rules"]}
    assert client.get_policy("example")["result"]["raw"] == EXAMPLE
    assert client.delete_policy("example")
    with pytest.raises(PolicyNotFoundError):
        client.get_policy("example")


def test_a_module_that_does_not_compile_is_refused_and_the_previous_stays(client: OpaClient) -> None:
    client.update_policy_from_string(EXAMPLE, "example", rego_compat=False)
    with pytest.raises(RegoParseError) as caught:
        client.update_policy_from_string(
            "package opa.examples\nallow_request if {", "example", rego_compat=False
        )
    assert caught.value.errors[0]["location"]["file"] == "example"
    assert client.get_policy("example")["result"]["raw"] == EXAMPLE
    assert client.query_rule({"example": {"flag": True}}, "opa.examples", "allow_request") == {"result": True}


def test_data_api_semantics(client: OpaClient, server: LiveServer) -> None:
    client.update_policy_from_string(EXAMPLE, "example", rego_compat=False)
    assert client.query_rule({"example": {"flag": True}}, "opa.examples", "allow_request") == {"result": True}
    assert client.query_rule({"example": {"flag": False}}, "opa.examples", "allow_request") == {
        "result": False
    }
    # An undefined document is a 200 answer without "result" (OPA REST API, Data API).
    assert client.query_rule({"example": {"flag": False}}, "opa.examples", "maybe") == {}
    response = httpx.post(f"{server.url}/v1/data/opa/examples/maybe", json={"input": {}})
    assert response.status_code == 200 and response.json() == {}
    with pytest.raises(PolicyNotFoundError):
        client.get_data("opa/examples/maybe")
    # Sets come back as arrays, integral numbers as integers.
    assert client.query_rule({"ids": [1, 2, 3]}, "opa.examples", "ids") == {"result": [2, 3]}
    got = httpx.get(
        f"{server.url}/v1/data/opa/examples/allow_request", params={"input": '{"example": {"flag": true}}'}
    )
    assert got.json() == {"result": True}
    assert httpx.get(f"{server.url}/v1/data/x", params={"input": "{nope"}).status_code == 400
    assert httpx.post(f"{server.url}/v1/data/x", content=b"[1]").json()["code"] == "invalid_parameter"


def test_base_documents_are_stored_read_and_deleted(client: OpaClient) -> None:
    client.update_policy_from_string(EXAMPLE, "example", rego_compat=False)
    assert client.update_or_create_data({"limit": 7}, "config")
    assert client.get_data("config") == {"result": {"limit": 7}}
    assert client.query_rule({}, "opa.examples", "limit") == {"result": 7}
    assert client.delete_data("config")
    assert client.query_rule({}, "opa.examples", "limit") == {}


def test_ad_hoc_queries(client: OpaClient) -> None:
    client.update_policy_from_string(EXAMPLE, "example", rego_compat=False)
    assert client.ad_hoc_query("x := data.opa.examples.allow_request", {"example": {"flag": True}}) == {
        "result": [{"x": True}]
    }


def test_the_opa_engine_loads_a_policy_set_atomically(server: LiveServer) -> None:
    engine = OpaServerEngine(server.url)
    try:
        active = engine.policy_version
        modules = dict(PolicySet.builtin().modules)
        modules["redaction.rego"] = modules["redaction.rego"].replace(
            "released[key] := true if {", "released[key] := true if {{"
        )
        with pytest.raises(PolicyCompileError, match=r"redaction\.rego"):
            engine.load(PolicySet(modules))
        assert engine.policy_version == active
        served = OpaClient(host="127.0.0.1", port=server.port).get_policy("paroma/redaction")["result"]["raw"]
        assert served == PolicySet.builtin().modules["redaction.rego"]
        assert engine.evaluate("paroma.admission.decision", {})["accepted"] is False
    finally:
        engine.close()
