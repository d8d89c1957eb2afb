"""The model registry: every finished job's model with its provenance and a model card.

Layout of the registry folder::

    log/audit.log              the registry's history: one signed, hash-chained entry per event
    log/head.json              signed checkpoint of the last entry (as the site audit log)
    keys/registry-ed25519.pem  the registry's Ed25519 signing key (PKCS#8, mode 0600)
    models/<id>/weights.npz    the model's weights (uncompressed .npz, no pickle)
    registry.lock              serialises registrations and transitions across processes

The log is the registry: a ``model-registered`` entry carries the model's provenance and
the sha256 of its weights file, a ``model-state`` entry each lifecycle step. It is written
with the site audit log's construction (:class:`protection_layer.audit.AuditLog`), so an
edited, deleted, inserted or reordered entry, a truncated end and a forged signature are
all found by :meth:`ModelRegistry.verify`, which also re-hashes every weights file.

Writes are crash-safe: the weights file is written to a temporary name, fsynced and
renamed into place before its entry is appended; the entry's single fsynced append is the
commit. A crash before it leaves an unreferenced weights folder (never listed, swept by
the next registration), never an entry without its weights.
"""

from __future__ import annotations

import builtins
import fcntl
import hashlib
import io
import json
import math
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from aggregator.federation import FederationResult
from paroma.jobspec import JobSpec
from protection_layer.audit import AuditError, AuditLog

STATES = ("registered", "validated", "released", "retired")
# Only forward: a model is validated before it is released; any live model can be retired.
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "registered": ("validated", "retired"),
    "validated": ("released", "retired"),
    "released": ("retired",),
    "retired": (),
}
REGISTERED = "model-registered"  # model_id, job_name, owner, created, provenance, weights_sha256
STATE = "model-state"  # model_id, state, previous, by, time
KEY_NAME = "registry-ed25519.pem"
WEIGHTS_NAME = "weights.npz"
_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,120}$")


class RegistryError(Exception):
    """What is wrong: an unknown model, a retired one, a transition not allowed, tampering."""


@dataclass(frozen=True)
class RegisteredModel:
    model_id: str
    job_name: str
    owner: str
    state: str  # registered | validated | released | retired
    created: str
    provenance: dict[str, Any]
    weights_sha256: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity (RFC 8259 §6): such a metric is recorded as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _distinct(values: list[str]) -> list[str]:
    return [v for i, v in enumerate(values) if v and v not in values[:i]]


def build_provenance(job: JobSpec, result: FederationResult) -> dict[str, Any]:
    """Where the model came from: the job as submitted, every site's part and every round."""
    sites: dict[str, dict[str, Any]] = {}
    for rnd in result.rounds:
        for name, site in rnd.sites.items():
            entry = sites.setdefault(
                name,
                {
                    "rounds": [],
                    "cohort": {},
                    "snapshots": [],
                    "policy_versions": [],
                    "isolation_levels": [],
                    "privacy_spent": {},
                    "errors": [],
                    "per_round": [],
                },
            )
            if site.error:
                entry["errors"].append({"round": rnd.server_round, "error": site.error})
            if not site.n_train and not site.cohort:
                continue
            entry["rounds"].append(rnd.server_round)
            # consent can change during a job: each round's cohort and what it was decided on
            entry["per_round"].append(
                {
                    "round": rnd.server_round,
                    "cohort": dict(site.cohort),
                    "snapshot": site.snapshot,
                    "policy_version": site.policy_version,
                    "isolation": site.isolation,
                }
            )
            entry["cohort"] = dict(site.cohort)  # the latest round's cohort sizes
            entry["snapshots"].append(site.snapshot)
            entry["policy_versions"].append(site.policy_version)
            entry["isolation_levels"].append(site.isolation)
            if site.privacy:
                # epsilon and releases accumulate: the latest round's is the job's spend
                entry["privacy_spent"] = dict(site.privacy)
    for entry in sites.values():
        for key in ("snapshots", "policy_versions", "isolation_levels"):
            entry[key] = _distinct(entry[key])
    return _finite(
        {
            "job": {
                "name": job.name,
                "sha256": job.sha256,
                "purpose": job.purpose,
                "organization": job.organization,
                "data": job.feature_spec_ref,
                "spec": job.to_dict(),
            },
            "training_plan": {"reference": job.plan, "sha256": job.plan_sha256},
            "strategy": {"name": job.strategy, "params": dict(job.strategy_params)},
            "rounds": job.rounds,
            "privacy": asdict(job.privacy),
            "status": result.status,
            "admissions": [asdict(a) for a in result.admissions],
            "sites": dict(sorted(sites.items())),
            "metrics": [
                {
                    "round": r.server_round,
                    "seconds": r.seconds,
                    "mean_accuracy": r.mean_accuracy,
                    "train": dict(r.train_metrics),
                    "sites": {
                        name: {
                            "train": dict(s.train),
                            "evaluate": dict(s.evaluate),
                            "n_train": s.n_train,
                            "n_test": s.n_test,
                        }
                        for name, s in r.sites.items()
                    },
                }
                for r in result.rounds
            ],
        }
    )


def _npz_bytes(weights: Mapping[str, np.ndarray]) -> bytes:
    arrays: dict[str, np.ndarray] = {}
    for name, value in weights.items():
        array = np.asarray(value)
        if array.dtype.hasobject or array.dtype.kind not in "biuf":
            raise RegistryError(f"weights {name!r}: dtype {array.dtype} cannot be stored without pickle")
        arrays[str(name)] = array
    if not arrays:
        raise RegistryError("the model has no weights")
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ModelRegistry:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.models_dir = self.root / "models"
        self.log = AuditLog(self.root / "log", self.root / "keys" / KEY_NAME)

    # -- writing ---------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.root / "registry.lock", "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _append(self, kind: str, data: Mapping[str, Any]) -> None:
        try:
            self.log.append(kind, data, site="model-registry")
        except AuditError as exc:
            raise RegistryError(f"the registry log cannot be written: {exc}") from exc

    def register(self, job: JobSpec, result: FederationResult, *, owner: str) -> RegisteredModel:
        """Record a completed job's model with its provenance; returns it in state registered."""
        if result.status != "completed":
            raise RegistryError(f"job {job.name!r} did not complete ({result.status}): no model to register")
        if result.weights is None:
            raise RegistryError(f"job {job.name!r} completed without a model")
        if result.job_sha256 != job.sha256:
            raise RegistryError(
                f"the federation result is of job {result.job_sha256[:12]}, not of {job.name!r} ({job.sha256[:12]})"
            )
        if not owner:
            raise RegistryError("owner: required (who registers the model)")
        provenance = build_provenance(job, result)
        blob = _npz_bytes(result.weights)
        weights_sha256 = hashlib.sha256(blob).hexdigest()
        created = _now()
        with self._locked():
            known = {m.model_id for m in self._replay().values()}
            self._sweep(known)
            model_id = self._new_id(job, weights_sha256, created, known)
            folder = self.models_dir / model_id
            folder.mkdir(parents=True, mode=0o700)
            _write_atomic(folder / WEIGHTS_NAME, blob)
            self._append(
                REGISTERED,
                {
                    "model_id": model_id,
                    "job_name": job.name,
                    "owner": owner,
                    "created": created,
                    "provenance": provenance,
                    "weights_sha256": weights_sha256,
                },
            )
        return RegisteredModel(model_id, job.name, owner, "registered", created, provenance, weights_sha256)

    def _new_id(self, job: JobSpec, weights_sha256: str, created: str, known: set[str]) -> str:
        base = re.sub(r"[^A-Za-z0-9_.-]", "-", job.name)[:80] or "model"
        seed = f"{job.sha256}:{weights_sha256}:{created}"
        for salt in range(1000):
            digest = hashlib.sha256(f"{seed}:{salt}".encode()).hexdigest()[:10]
            model_id = f"{base}-{digest}"
            if model_id not in known and not (self.models_dir / model_id).exists():
                return model_id
        raise RegistryError("no free model id")  # pragma: no cover - 1000 sha256 collisions

    def _sweep(self, known: set[str]) -> None:
        """Remove weights folders no entry refers to: left by a registration that crashed
        before its entry was committed."""
        if not self.models_dir.is_dir():
            return
        for folder in self.models_dir.iterdir():
            if folder.is_dir() and folder.name not in known:
                shutil.rmtree(folder, ignore_errors=True)

    def transition(self, model_id: str, state: str, *, by: str) -> RegisteredModel:
        """Move a model one step forward in its lifecycle (or retire it)."""
        if state not in STATES:
            raise RegistryError(f"state {state!r} is not one of {', '.join(STATES)}")
        if not by:
            raise RegistryError("by: required (who changes the model's state)")
        with self._locked():
            model = self.get(model_id)
            if state not in TRANSITIONS[model.state]:
                allowed = " or ".join(TRANSITIONS[model.state]) or "nothing (retired is final)"
                raise RegistryError(
                    f"model {model_id} is {model.state}: it can move to {allowed}, not to {state}"
                )
            self._append(
                STATE,
                {"model_id": model_id, "state": state, "previous": model.state, "by": by, "time": _now()},
            )
        return RegisteredModel(
            model.model_id,
            model.job_name,
            model.owner,
            state,
            model.created,
            model.provenance,
            model.weights_sha256,
        )

    # -- reading ---------------------------------------------------------------------------

    def _replay(self) -> dict[str, RegisteredModel]:
        models: dict[str, RegisteredModel] = {}
        for entry in self.log.entries():
            data = entry.get("data") or {}
            if entry.get("kind") == REGISTERED:
                models[str(data["model_id"])] = RegisteredModel(
                    str(data["model_id"]),
                    str(data["job_name"]),
                    str(data["owner"]),
                    "registered",
                    str(data["created"]),
                    dict(data["provenance"]),
                    str(data["weights_sha256"]),
                )
            elif entry.get("kind") == STATE and str(data.get("model_id")) in models:
                old = models[str(data["model_id"])]
                models[old.model_id] = RegisteredModel(
                    old.model_id,
                    old.job_name,
                    old.owner,
                    str(data["state"]),
                    old.created,
                    old.provenance,
                    old.weights_sha256,
                )
        return models

    def _history(self, model_id: str) -> list[dict[str, Any]]:
        return [
            dict(entry["data"])
            for entry in self.log.entries()
            if entry.get("kind") == STATE and (entry.get("data") or {}).get("model_id") == model_id
        ]

    def get(self, model_id: str) -> RegisteredModel:
        if not _MODEL_ID.match(model_id or ""):
            raise RegistryError(f"model id {model_id!r} is not valid")
        model = self._replay().get(model_id)
        if model is None:
            raise RegistryError(f"no model {model_id!r} in the registry at {self.root}")
        return model

    def list(self, owner: str | None = None) -> builtins.list[RegisteredModel]:
        """The registered models, oldest first; only ``owner``'s when given."""
        return [m for m in self._replay().values() if owner is None or m.owner == owner]

    def pull(self, model_id: str) -> tuple[dict[str, np.ndarray], RegisteredModel]:
        """The model's weights, checked against the sha256 recorded at registration, from
        a registry whose log verifies (fail closed: a tampered history serves nothing)."""
        try:
            checked = self.log.verify()
        except AuditError as exc:
            raise RegistryError(f"the registry log cannot be checked: {exc}") from exc
        if checked.problems:
            raise RegistryError(f"the registry log is tampered, nothing is pulled: {checked.problems[0]}")
        model = self.get(model_id)
        if model.state == "retired":
            raise RegistryError(f"model {model_id} is retired and cannot be pulled")
        path = self.models_dir / model_id / WEIGHTS_NAME
        try:
            blob = path.read_bytes()
        except OSError as exc:
            raise RegistryError(
                f"model {model_id}: its weights file {path} cannot be read: {exc.strerror}"
            ) from exc
        if hashlib.sha256(blob).hexdigest() != model.weights_sha256:
            raise RegistryError(
                f"model {model_id}: its weights file {path} does not match the sha256 recorded at registration (tampered)"
            )
        with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
            weights = {name: npz[name] for name in npz.files}
        return weights, model

    def weights_path(self, model_id: str) -> Path:
        return self.models_dir / self.get(model_id).model_id / WEIGHTS_NAME

    def model_card(self, model_id: str) -> tuple[str, dict[str, Any]]:
        """The model card as (Markdown, JSON), built from the signed log."""
        model = self.get(model_id)
        card = model_card_json(model, self._history(model_id))
        return model_card_markdown(card), card

    def verify(self) -> builtins.list[str]:
        """Every problem found: the log's chain, signatures and end, the lifecycle it
        records, and each model's weights against their recorded sha256. [] when intact."""
        if not self.log.path.exists():
            # a registry that never registered has neither a log nor a key nor weights
            used = self.log.key_path.exists() or self.log.head_path.exists()
            if used or (self.models_dir.is_dir() and any(self.models_dir.iterdir())):
                return [f"the registry log {self.log.path} is missing (deleted)"]
            return []
        try:
            checked = self.log.verify()
        except AuditError as exc:
            return [f"the registry log cannot be checked: {exc}"]
        problems = [f"registry log: {p}" for p in checked.problems]
        states: dict[str, str] = {}
        digests: dict[str, str] = {}
        for entry in self.log.entries():
            data = entry.get("data") or {}
            model_id = str(data.get("model_id", ""))
            if entry.get("kind") == REGISTERED:
                if model_id in states:
                    problems.append(f"model {model_id} is registered twice (seq {entry.get('seq')})")
                states[model_id] = "registered"
                digests[model_id] = str(data.get("weights_sha256", ""))
            elif entry.get("kind") == STATE:
                current = states.get(model_id)
                if current is None:
                    problems.append(f"seq {entry.get('seq')}: state change of unregistered model {model_id}")
                elif str(data.get("state")) not in TRANSITIONS[current]:
                    problems.append(
                        f"seq {entry.get('seq')}: model {model_id} moves from {current} to {data.get('state')}, which the lifecycle does not allow"
                    )
                else:
                    states[model_id] = str(data["state"])
        for model_id, digest in digests.items():
            path = self.models_dir / model_id / WEIGHTS_NAME
            if not path.is_file():
                problems.append(f"model {model_id}: weights file {path} is missing")
            elif _sha256_file(path) != digest:
                problems.append(f"model {model_id}: weights file {path} does not match its recorded sha256")
        return problems


def model_card_json(model: RegisteredModel, history: list[dict[str, Any]]) -> dict[str, Any]:
    p = model.provenance
    final = p["metrics"][-1] if p.get("metrics") else {}
    return {
        "model_id": model.model_id,
        "job_name": model.job_name,
        "owner": model.owner,
        "state": model.state,
        "created": model.created,
        "weights_sha256": model.weights_sha256,
        "intended_use": {
            "purpose": p["job"]["purpose"],
            "organization": p["job"]["organization"],
            "data": p["job"]["data"],
        },
        "training": {
            "job_sha256": p["job"]["sha256"],
            "training_plan": p["training_plan"],
            "strategy": p["strategy"],
            "rounds": p["rounds"],
            "privacy": p["privacy"],
        },
        "sites": p["sites"],
        "admissions": p["admissions"],
        "final_round": final,
        "metrics": p["metrics"],
        "lifecycle": [{"state": "registered", "by": model.owner, "time": model.created}]
        + [{"state": h["state"], "by": h["by"], "time": h["time"]} for h in history],
    }


def _number(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def model_card_markdown(card: Mapping[str, Any]) -> str:
    train = card["training"]
    use = card["intended_use"]
    lines = [
        f"# Model card: {card['model_id']}",
        "",
        f"- Job: `{card['job_name']}` (spec sha256 `{train['job_sha256']}`)",
        f"- Owner: {card['owner']}; state: **{card['state']}**; registered {card['created']}",
        f"- Weights: `weights.npz`, sha256 `{card['weights_sha256']}`",
        "",
        "## Intended use",
        "",
        f"Purpose of use `{use['purpose']}` (v3-ActReason) for {use['organization']}, on the data of feature spec `{use['data']}`.",
        "",
        "## Training",
        "",
        f"- Training plan `{train['training_plan']['reference']}`, sha256 `{train['training_plan']['sha256']}`",
        f"- Strategy {train['strategy']['name']} {json.dumps(train['strategy']['params'], sort_keys=True)}, {train['rounds']} rounds",
        f"- Privacy: {json.dumps(train['privacy'], sort_keys=True)}",
        "",
        "## Sites",
        "",
        "| site | admitted | cohort (permit / usable / train / test) | isolation | policy version | consent snapshot | epsilon |",
        "|---|---|---|---|---|---|---|",
    ]
    admitted = {a["site_id"]: a for a in card["admissions"]}
    for name in sorted(set(admitted) | set(card["sites"])):
        site = card["sites"].get(name, {})
        adm = admitted.get(name)
        cohort = site.get("cohort", {})
        sizes = " / ".join(str(cohort.get(k, "-")) for k in ("permit", "usable", "train", "test"))
        verdict = "yes" if adm and adm["accepted"] else f"no: {adm['reason']}" if adm else "?"
        snaps = ", ".join(f"`{s[:12]}`" for s in site.get("snapshots", []))
        versions = ", ".join(f"`{v[:12]}`" for v in site.get("policy_versions", []))
        eps = _number(site.get("privacy_spent", {}).get("epsilon")) if site.get("privacy_spent") else "-"
        lines.append(
            f"| {name} | {verdict} | {sizes} | {', '.join(site.get('isolation_levels', []))} | {versions} | {snaps} | {eps} |"
        )
    lines += ["", "## Metrics per round", "", "| round | mean accuracy | sites |", "|---|---|---|"]
    for rnd in card["metrics"]:
        per_site = ", ".join(
            f"{n}: acc {_number(s['evaluate'].get('accuracy'))}, loss {_number(s['evaluate'].get('loss'))}"
            for n, s in rnd["sites"].items()
        )
        lines.append(f"| {rnd['round']} | {_number(rnd['mean_accuracy'])} | {per_site} |")
    lines += ["", "## Lifecycle", ""]
    lines += [f"- {h['time']}: {h['state']} by {h['by']}" for h in card["lifecycle"]]
    return "\n".join(lines) + "\n"
