"""Policy engines: one interface, two ways to evaluate the same Rego v1 policy files.

* :class:`RegorusEngine` (default): the embedded regorus interpreter, in process, no
  server to start.
* :class:`OpaServerEngine`: an OPA server (or anything answering OPA's REST API, such as
  ``protection_layer.opa_api``) through opa-python-client, configured by URL.

Both load a :class:`PolicySet` atomically: if any module fails to compile, the previous
set stays active and :class:`PolicyCompileError` says why. Both raise
:class:`PolicyError` when they cannot give a decision (engine error, timeout, undefined
result); callers treat that as "no" (fail closed).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import queue
import re
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit
from weakref import WeakSet

DEFAULT_TIMEOUT_S = 10.0
_MODULE_NAME = re.compile(r"^[A-Za-z0-9_-]+\.rego$")
T = TypeVar("T")


class PolicyError(Exception):
    """No decision could be obtained; nothing may be released on it."""


class PolicyCompileError(PolicyError):
    """A policy module does not compile; the previously loaded policies stay active."""


class PolicyUndefined(PolicyError):
    """The policy gave no value for the rule asked (OPA's undefined result)."""


class PolicyTimeout(PolicyError):
    """The decision took longer than the engine's timeout and was discarded."""


def _clean(message: str) -> str:
    """The engine's message without the Rust backtrace regorus may append."""
    return message.split("\nStack backtrace:", 1)[0].strip()


@dataclass(frozen=True)
class PolicySet:
    """Rego modules by file name; the version is the sha256 of their names and texts."""

    modules: Mapping[str, str]

    @property
    def version(self) -> str:
        digest = hashlib.sha256()
        for name in sorted(self.modules):
            digest.update(name.encode() + b"\0" + self.modules[name].encode() + b"\0")
        return digest.hexdigest()

    @classmethod
    def builtin(cls) -> PolicySet:
        folder = resources.files("protection_layer") / "policies"
        return cls(
            {
                p.name: p.read_text()
                for p in sorted(folder.iterdir(), key=lambda p: p.name)
                if p.name.endswith(".rego")
            }
        )

    @classmethod
    def for_site(cls, site_root: Path) -> PolicySet:
        """The built-in policies, each replaced by the site's own file of the same name
        in ``<site>/policies/`` when it has one (a site may also add modules)."""
        modules = dict(cls.builtin().modules)
        folder = Path(site_root) / "policies"
        if folder.is_dir():
            for path in sorted(folder.glob("*.rego")):
                if _MODULE_NAME.match(path.name):
                    modules[path.name] = path.read_text()
        return cls(modules)


class PolicyEngine(Protocol):
    """Evaluates rules of the loaded policy set. ``rule`` is a dotted path under
    ``data`` (``paroma.consent.decisions``)."""

    name: str

    @property
    def policy_version(self) -> str: ...

    def load(self, policies: PolicySet) -> None: ...

    def evaluate(self, rule: str, input_doc: Any) -> Any: ...

    def close(self) -> None: ...


def _check_rule(rule: str) -> None:
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$", rule):
        raise PolicyError(f"{rule!r} is not a rule path such as paroma.consent.decisions")


_LIVE_ENGINES: WeakSet[RegorusEngine] = WeakSet()


@atexit.register
def _close_live_engines() -> None:
    for engine in list(_LIVE_ENGINES):
        engine.close()


class RegorusEngine:
    """The embedded regorus interpreter.

    regorus engines may only be used by the thread that made them (pyo3 "unsendable"),
    so one worker thread owns them and every call is handed to it. The interpreter
    cannot be interrupted: a decision that takes longer than ``timeout_s`` is discarded
    and reported as a timeout.
    """

    name = "regorus"

    def __init__(self, policies: PolicySet | None = None, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self._engine: Any = None
        self._version = ""
        self._policies: PolicySet | None = None
        self._data: dict[str, Any] = {}
        self._tasks: queue.Queue[tuple[Callable[[], Any], Future[Any]] | None] = queue.Queue()
        self._worker = threading.Thread(target=self._serve, name="regorus-engine", daemon=True)
        self._worker.start()
        _LIVE_ENGINES.add(self)
        self.load(policies or PolicySet.builtin())

    def _serve(self) -> None:
        while True:
            task = self._tasks.get()
            if task is None:
                return
            fn, future = task
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            # pyo3 reports a Rust panic as a BaseException; it must not kill the worker.
            except BaseException as exc:
                error = exc if isinstance(exc, PolicyError) else PolicyError(_clean(str(exc)))
                # The traceback's frames may hold a regorus engine, which must not be
                # released by the thread that receives the error.
                error.__traceback__ = error.__context__ = error.__cause__ = None
                future.set_exception(error)

    def _call(self, fn: Callable[[], T], timeout: float | None) -> T:
        if not self._worker.is_alive():
            raise PolicyError("the embedded policy engine is closed")
        future: Future[T] = Future()
        self._tasks.put((fn, future))
        try:
            return future.result(timeout=timeout)
        except TimeoutError as exc:
            future.cancel()
            raise PolicyTimeout(f"no decision within {timeout:.3g} s") from exc

    @property
    def policy_version(self) -> str:
        return self._version

    @property
    def policies(self) -> PolicySet | None:
        return self._policies

    def load(self, policies: PolicySet) -> None:
        def build() -> None:
            import regorus

            engine = regorus.Engine()
            if self._data:
                engine.add_data_json(json.dumps(self._data))
            error = ""
            for name in sorted(policies.modules):
                try:
                    engine.add_policy(name, policies.modules[name])
                except Exception as exc:
                    error = f"{name}: {_clean(str(exc))}"
                    break
            if error:
                del engine
                raise PolicyCompileError(error)
            self._engine = engine
            self._version = policies.version
            self._policies = policies

        self._call(build, None)

    def evaluate(self, rule: str, input_doc: Any) -> Any:
        _check_rule(rule)
        # JSON, not Python objects: regorus' set_input turns Python booleans into numbers.
        payload = json.dumps(input_doc)

        def run() -> Any:
            engine = self._engine
            engine.set_input_json(payload)
            return engine.eval_rule(f"data.{rule}")

        start = time.perf_counter()
        value = self._call(run, self.timeout_s)
        elapsed = time.perf_counter() - start
        if elapsed > self.timeout_s:
            raise PolicyTimeout(
                f"the decision took {elapsed:.3g} s, over the limit of {self.timeout_s:.3g} s"
            )
        if value is None:
            raise PolicyUndefined(f"data.{rule} is undefined for this input")
        return value

    def set_data(self, document: dict[str, Any]) -> None:
        """Replace the base data document (OPA's ``data`` outside the policies)."""

        def run() -> None:
            if self._engine is not None:
                self._engine.clear_data()
                if document:
                    self._engine.add_data_json(json.dumps(document))
            self._data = document

        self._call(run, None)

    def value(self, ref: str, input_doc: Any = None) -> Any:
        """The value of a reference such as ``data.a["b"]``; PolicyUndefined when it has none."""

        payload = json.dumps(input_doc if input_doc is not None else {})

        def run() -> Any:
            engine = self._engine
            engine.set_input_json(payload)
            return engine.eval_query(ref)

        out = self._call(run, self.timeout_s)
        results = out.get("result") or []
        if not results:
            raise PolicyUndefined(f"{ref} is undefined")
        return results[0]["expressions"][0]["value"]

    def query(self, query: str, input_doc: Any) -> list[dict[str, Any]]:
        """An ad-hoc query: the bindings of each result (OPA's Query API)."""

        payload = json.dumps(input_doc if input_doc is not None else {})

        def run() -> Any:
            engine = self._engine
            engine.set_input_json(payload)
            return engine.eval_query(query)

        out = self._call(run, self.timeout_s)
        return [dict(r.get("bindings") or {}) for r in out.get("result", [])]

    def close(self) -> None:
        if self._worker.is_alive():

            def release() -> None:
                # A regorus engine must also be dropped by the thread that made it.
                self._engine = None

            self._call(release, None)
            self._tasks.put(None)
            self._worker.join(timeout=5)


class OpaServerEngine:
    """An OPA server over its REST API (opa-python-client), configured by URL.

    ``load`` compiles the set with the embedded engine first, so a broken module never
    reaches the server; if the server still refuses one, the modules already replaced
    are put back (the previous set stays active).
    """

    name = "opa"

    def __init__(
        self,
        url: str,
        policies: PolicySet | None = None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        token: str | None = None,
        retries: int = 0,
    ) -> None:
        from opa_client import OpaClient

        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PolicyError(f"OPA url {url!r} must be http(s)://host[:port]")
        if parts.path not in ("", "/"):
            raise PolicyError(
                f"OPA url {url!r}: opa-python-client addresses /v1 at the server root; drop the path"
            )
        self.url = url
        self.timeout_s = timeout_s
        self._client = OpaClient(
            host=parts.hostname,
            port=parts.port or (443 if parts.scheme == "https" else 80),
            ssl=parts.scheme == "https",
            token=token,
            retries=retries,
            timeout=timeout_s,
        )
        self._version = ""
        self._policies: PolicySet | None = None
        self.load(policies or PolicySet.builtin())

    @property
    def policy_version(self) -> str:
        return self._version

    @staticmethod
    def _module_id(name: str) -> str:
        return "paroma/" + name.removesuffix(".rego")

    def load(self, policies: PolicySet) -> None:
        import requests
        from opa_client.errors import RegoParseError

        checker = RegorusEngine(policies, timeout_s=self.timeout_s)  # raises PolicyCompileError
        checker.close()
        previous = dict(self._policies.modules) if self._policies else {}
        replaced: list[str] = []
        try:
            for name in sorted(policies.modules):
                self._client.update_policy_from_string(
                    policies.modules[name], self._module_id(name), rego_compat=False
                )
                replaced.append(name)
        except (RegoParseError, requests.RequestException, ValueError) as exc:
            for name in replaced:
                if name in previous:
                    with contextlib.suppress(RegoParseError, requests.RequestException, ValueError):
                        self._client.update_policy_from_string(
                            previous[name], self._module_id(name), rego_compat=False
                        )
            detail = getattr(exc, "message", None) or str(exc)
            raise PolicyCompileError(f"the OPA server refused the policies: {detail}") from exc
        self._version = policies.version
        self._policies = policies

    def evaluate(self, rule: str, input_doc: Any) -> Any:
        import requests

        _check_rule(rule)
        package, _, name = rule.rpartition(".")
        start = time.perf_counter()
        try:
            response = self._client.query_rule(input_data=input_doc, package_path=package, rule_name=name)
        except requests.Timeout as exc:
            raise PolicyTimeout(f"the OPA server gave no decision within {self.timeout_s:.3g} s") from exc
        except requests.HTTPError as exc:
            body = exc.response.text[:500] if exc.response is not None else ""
            raise PolicyError(f"the OPA server answered {exc}: {body}") from exc
        except (requests.RequestException, ValueError) as exc:
            raise PolicyError(f"the OPA server could not be asked: {exc}") from exc
        elapsed = time.perf_counter() - start
        if elapsed > self.timeout_s:
            raise PolicyTimeout(
                f"the decision took {elapsed:.3g} s, over the limit of {self.timeout_s:.3g} s"
            )
        if not isinstance(response, dict) or "result" not in response:
            # OPA REST API: an undefined document is a 200 answer without "result".
            raise PolicyUndefined(f"data.{rule} is undefined for this input")
        return response["result"]

    def close(self) -> None:
        self._client.close_connection()


def open_engine(
    kind: str = "embedded",
    *,
    url: str = "",
    policies: PolicySet | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> PolicyEngine:
    """The engine a site's ``[protection]`` table asks for."""
    if kind == "embedded":
        return RegorusEngine(policies, timeout_s=timeout_s)
    if kind == "opa":
        if not url:
            raise PolicyError("engine 'opa' needs the OPA server's url (protection.opa_url)")
        return OpaServerEngine(url, policies, timeout_s=timeout_s)
    raise PolicyError(f"unknown policy engine {kind!r}; expected embedded or opa")


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
