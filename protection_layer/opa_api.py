"""OPA's REST API, answered by the embedded regorus engine.

So that the OPA-server path (opa-python-client) runs where no OPA binary can be installed,
the protection layer serves the part of OPA's REST API that path uses, with OPA's
semantics (https://www.openpolicyagent.org/docs/rest-api):

* ``PUT /v1/policies/{id}`` (text/plain Rego): parse and compile with every other module,
  200 ``{}``; a module that does not compile is refused with 400 and OPA's error object,
  and the modules in force stay as they were. ``GET``/``DELETE /v1/policies/{id}``,
  ``GET /v1/policies``.
* ``POST /v1/data/{path}`` with ``{"input": ...}`` and ``GET /v1/data/{path}[?input=…]``:
  200 ``{"result": value}``, or 200 ``{}`` when the document is undefined (no ``result``
  key). ``PUT /v1/data/{path}`` stores a base document (204), ``DELETE`` removes it (204).
* ``POST /v1/query`` (``{"query", "input"}``) and ``GET /v1/query?q=``: the bindings.
* ``GET /health``: 200 ``{}``.

Errors are OPA's ``{"code", "message", "errors"?}`` objects. A policy listing's ``ast``
holds only the package path and the rule names (what opa-python-client reads from it).
Values are returned as OPA returns them: sets as arrays, integral numbers as integers.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from .engine import PolicyCompileError, PolicyError, PolicySet, PolicyUndefined, RegorusEngine

_SEGMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PACKAGE = re.compile(r"^\s*package\s+([A-Za-z0-9_.]+)", re.MULTILINE)
_RULE = re.compile(
    r"^(?:default\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*(?:\(|\[|:=|=|\s+if\b|\s+contains\b|\{)", re.MULTILINE
)
_KEYWORDS = {"package", "import", "default"}


def opa_value(value: Any) -> Any:
    """A regorus value as OPA serialises it."""
    if isinstance(value, set | frozenset):
        return sorted((opa_value(v) for v in value), key=lambda v: json.dumps(v, sort_keys=True))
    if isinstance(value, Mapping):
        return {str(k): opa_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [opa_value(v) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def _error(status: int, code: str, message: str, errors: list[dict[str, Any]] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if errors:
        body["errors"] = errors
    return JSONResponse(body, status_code=status)


def _ast(raw: str) -> dict[str, Any]:
    match = _PACKAGE.search(raw)
    path = [{"type": "var", "value": "data"}] + [
        {"type": "string", "value": part} for part in (match.group(1).split(".") if match else [])
    ]
    names = sorted({m.group(1) for m in _RULE.finditer(raw) if m.group(1) not in _KEYWORDS})
    return {"package": {"path": path}, "rules": [{"head": {"name": n}} for n in names]}


def _json_document(raw: bytes | str, what: str) -> tuple[Any, JSONResponse | None]:
    """The JSON document in a request, or the 400 answer naming what is wrong with it."""
    try:
        value = json.loads(raw)
        # the engine takes JSON text: NaN, Infinity and lone surrogates have no JSON form
        json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and Unicode errors are ValueErrors
        return None, _error(400, "invalid_parameter", f"{what} is not JSON: {exc}")
    return value, None


# regorus refuses a query longer than this; a longer data path is the request's fault
MAX_QUERY_LENGTH = 1000


def _ref(path: str) -> str:
    parts = [p for p in path.split("/") if p]
    return "data" + "".join(f".{p}" if _SEGMENT.match(p) else f"[{json.dumps(p)}]" for p in parts)


class _OpaState:
    def __init__(self, engine: RegorusEngine) -> None:
        self.engine = engine
        self.lock = threading.Lock()
        self.modules: dict[str, str] = {}
        self.data: dict[str, Any] = {}

    def install(self, modules: dict[str, str]) -> None:
        self.engine.load(PolicySet({f"{pid}.rego": raw for pid, raw in modules.items()}))
        self.modules = modules


def create_opa_app(policies: PolicySet | None = None, *, timeout_s: float = 10.0) -> FastAPI:
    """An app answering OPA's REST API; ``policies`` are installed first (ids
    ``paroma/<file name without .rego>``, as OpaServerEngine names them)."""
    engine = RegorusEngine(PolicySet({}), timeout_s=timeout_s)
    state = _OpaState(engine)
    if policies is not None:
        state.install({f"paroma/{name.removesuffix('.rego')}": raw for name, raw in policies.modules.items()})

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        engine.close()

    app = FastAPI(title="PAROMA-MED policy engine (OPA REST API)", version="0.1.0", lifespan=lifespan)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {}

    @app.get("/v1/policies")
    def list_policies() -> dict[str, Any]:
        with state.lock:
            return {
                "result": [
                    {"id": pid, "raw": raw, "ast": _ast(raw)} for pid, raw in sorted(state.modules.items())
                ]
            }

    @app.get("/v1/policies/{policy_id:path}")
    def get_policy(policy_id: str) -> Response:
        if not policy_id:  # opa-python-client lists with a trailing slash
            return JSONResponse(list_policies())
        with state.lock:
            raw = state.modules.get(policy_id)
        if raw is None:
            return _error(404, "resource_not_found", f"storage_not_found_error: policy id {policy_id!r}")
        return JSONResponse({"result": {"id": policy_id, "raw": raw, "ast": _ast(raw)}})

    @app.put("/v1/policies/{policy_id:path}")
    async def put_policy(policy_id: str, request: Request) -> Response:
        try:
            raw = (await request.body()).decode("utf-8")
        except UnicodeDecodeError:
            return _error(400, "invalid_parameter", "the policy module is not UTF-8 text")
        if not raw.strip():
            return _error(400, "invalid_parameter", "empty module")
        with state.lock:
            try:
                state.install({**state.modules, policy_id: raw})
            except PolicyCompileError as exc:
                message = str(exc)
                return _error(
                    400,
                    "invalid_parameter",
                    "error(s) occurred while compiling module(s)",
                    [{"code": "rego_parse_error", "message": message, "location": {"file": policy_id}}],
                )
        return JSONResponse({})

    @app.delete("/v1/policies/{policy_id:path}")
    def delete_policy(policy_id: str) -> Response:
        with state.lock:
            if policy_id not in state.modules:
                return _error(404, "resource_not_found", f"storage_not_found_error: policy id {policy_id!r}")
            remaining = {k: v for k, v in state.modules.items() if k != policy_id}
            try:
                state.install(remaining)
            except PolicyCompileError as exc:
                return _error(400, "invalid_parameter", f"other modules depend on {policy_id}: {exc}")
        return JSONResponse({})

    def evaluate(path: str, input_doc: Any) -> Response:
        reference = _ref(path)
        if len(reference) > MAX_QUERY_LENGTH:
            return _error(
                400, "invalid_parameter", f"the data path is longer than {MAX_QUERY_LENGTH} characters"
            )
        try:
            value = engine.value(reference, input_doc)
        except PolicyUndefined:
            return JSONResponse({})
        except PolicyError as exc:
            return _error(500, "internal_error", str(exc))
        return JSONResponse({"result": opa_value(value)})

    @app.get("/v1/data")
    @app.get("/v1/data/{path:path}")
    def get_data(request: Request, path: str = "") -> Response:
        raw = request.query_params.get("input")
        input_doc = None
        if raw is not None:
            input_doc, refused = _json_document(raw, "input parameter")
            if refused is not None:
                return refused
        return evaluate(path, input_doc)

    @app.post("/v1/data")
    @app.post("/v1/data/{path:path}")
    async def post_data(request: Request, path: str = "") -> Response:
        body = await request.body()
        input_doc = None
        if body.strip():
            document, refused = _json_document(body, "body")
            if refused is not None:
                return refused
            if not isinstance(document, dict):
                return _error(400, "invalid_parameter", 'body must be an object {"input": ...}')
            input_doc = document.get("input")
        return evaluate(path, input_doc)

    @app.put("/v1/data/{path:path}")
    async def put_data(path: str, request: Request) -> Response:
        value, refused = _json_document(await request.body(), "body")
        if refused is not None:
            return refused
        parts = [p for p in path.split("/") if p]
        if not parts:
            return _error(400, "invalid_parameter", "a path under /v1/data is required")
        with state.lock:
            document = json.loads(json.dumps(state.data))
            node = document
            for part in parts[:-1]:
                child = node.get(part)
                if not isinstance(child, dict):
                    child = node[part] = {}
                node = child
            node[parts[-1]] = value
            engine.set_data(document)
            state.data = document
        return Response(status_code=204)

    @app.delete("/v1/data/{path:path}")
    def delete_data(path: str) -> Response:
        parts = [p for p in path.split("/") if p]
        with state.lock:
            document = json.loads(json.dumps(state.data))
            node: Any = document
            for part in parts[:-1]:
                node = node.get(part) if isinstance(node, dict) else None
            if not parts or not isinstance(node, dict) or parts[-1] not in node:
                return _error(404, "resource_not_found", f"storage_not_found_error: {path}: document missing")
            del node[parts[-1]]
            engine.set_data(document)
            state.data = document
        return Response(status_code=204)

    def run_query(query: str, input_doc: Any) -> Response:
        try:
            bindings = engine.query(query, input_doc)
        except PolicyError as exc:
            return _error(400, "invalid_parameter", str(exc))
        return JSONResponse({"result": [opa_value(b) for b in bindings]})

    @app.get("/v1/query")
    def get_query(q: str) -> Response:
        return run_query(q, None)

    @app.post("/v1/query")
    async def post_query(request: Request) -> Response:
        document, refused = _json_document(await request.body(), "body")
        if refused is not None:
            return refused
        if not isinstance(document, dict) or not isinstance(document.get("query"), str):
            return _error(400, "invalid_parameter", 'body must be {"query": "...", "input": ...}')
        return run_query(document["query"], document.get("input"))

    app.state.engine = engine
    return app
