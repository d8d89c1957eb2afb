"""A job's cohort at one instant: every patient's decision and the resources released.

The decider keeps, per job, each patient's decision with the consent version it was
made on and the time window in which it holds (between the consent dates and period
bounds around ``now``). A round re-decides only the patients whose consent version
changed since (the consent store says which), whose window ``now`` has left (an expiry
or a start), or all of them when the policies or the FHIR data changed. Everything is
decided on indexes: consent terms and the FHIR store's resource index; nothing is
decrypted here.
"""

from __future__ import annotations

import bisect
import hashlib
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from clinical_node.fhir.store import FhirStore, TokenQuery
from paroma.jobspec import JobSpec

from .consent import Terms, time_boundaries
from .consent_store import ConsentStore
from .decisions import ConsentDecision, JobContext, PatientDecision, ShapeIndex, decide, redact
from .engine import PolicyEngine

Key = tuple[str, str]  # (resource type, id)


@dataclass(frozen=True)
class DataRequest:
    """The data a job reads: resource types, and the codes of its non-Patient resources."""

    classes: tuple[str, ...]
    codes: tuple[tuple[str | None, str], ...]

    @classmethod
    def of(cls, job: JobSpec) -> DataRequest:
        spec = job.feature_spec
        return cls(
            tuple(spec.resource_classes()), tuple(sorted(set(spec.codes()), key=lambda c: (c[0] or "", c[1])))
        )


@dataclass
class _Entry:
    version: int
    valid_from: str
    valid_until: str
    decision: PatientDecision
    released: tuple[Key, ...] = ()
    redacted: int = 0
    digest: str = ""

    def holds(self, version: int, now: str) -> bool:
        return (
            self.version == version
            and (not self.valid_from or self.valid_from <= now)
            and (not self.valid_until or now < self.valid_until)
        )


@dataclass
class _JobCache:
    policy_version: str
    generation: int
    entries: dict[str, _Entry] = field(default_factory=dict)


@dataclass(frozen=True)
class CohortDecision:
    """Who is in a job's cohort at ``now``, and which of their resources it may read."""

    job: str
    now: str
    policy_version: str
    engine: str
    decisions: Mapping[str, PatientDecision]
    released: Mapping[str, tuple[Key, ...]]
    redacted: int
    redecided: frozenset[str]
    snapshot: str

    def count(self, decision: ConsentDecision) -> int:
        return sum(1 for d in self.decisions.values() if d.decision is decision)

    @property
    def counts(self) -> dict[str, int]:
        out = dict.fromkeys((d.value for d in ConsentDecision), 0)
        for d in self.decisions.values():
            out[d.decision.value] += 1
        return out

    @property
    def permitted(self) -> list[str]:
        return sorted(p for p, d in self.decisions.items() if d.permitted)

    def patient_set_sha256(self) -> str:
        """sha256 of the permitted patients with the consent (id/version) that permits."""
        digest = hashlib.sha256()
        for patient in self.permitted:
            d = self.decisions[patient]
            digest.update(f"{patient}\t{d.consent_id}/{d.consent_version}\n".encode())
        return digest.hexdigest()

    def resource_keys(self) -> list[Key]:
        return [key for patient in sorted(self.released) for key in self.released[patient]]


def _window(bounds: Sequence[str], now: str) -> tuple[str, str]:
    """The instants around ``now`` between which a decision cannot change by the clock."""
    i = bisect.bisect_right(bounds, now)
    return (bounds[i - 1] if i else ""), (bounds[i] if i < len(bounds) else "")


def _digest(keys: Sequence[Key]) -> str:
    return hashlib.sha256("\n".join(f"{t}/{i}" for t, i in keys).encode()).hexdigest()[:32]


class CohortDecider:
    """Thread-safe; one per site and process."""

    def __init__(
        self,
        fhir: FhirStore,
        consents: ConsentStore,
        engine_of: Callable[[], PolicyEngine],
        *,
        by_shape: bool = True,
    ) -> None:
        self.fhir = fhir
        self.consents = consents
        self.engine_of = engine_of
        self.by_shape = by_shape
        self._lock = threading.Lock()
        self._seq = -1
        self._terms: dict[str, list[Terms]] = {}
        self._versions: dict[str, int] = {}
        self._bounds: dict[str, list[str]] = {}
        self._generation = -1
        self._population: list[str] = []
        self._rows: dict[DataRequest, dict[str, list[Key]]] = {}
        self._jobs: dict[tuple[str, DataRequest], _JobCache] = {}
        self._shapes = ShapeIndex()

    # -- keeping up with the stores --------------------------------------------------------

    def _remember(self, patient: str, terms: list[Terms], version: int) -> None:
        self._terms[patient] = terms
        self._versions[patient] = version
        self._bounds[patient] = sorted({b for t in terms for b in time_boundaries(t)})

    def _sync_consents(self) -> None:
        if self._seq < 0:
            latest = self.consents.last_seq()
            terms = self.consents.current_terms()
            versions = self.consents.patient_versions()
            for patient, version in versions.items():
                self._remember(patient, terms.get(patient, []), version)
            self._seq = latest
            return
        latest, changed = self.consents.changes_since(self._seq)
        if changed:
            terms = self.consents.current_terms(sorted(changed))
            for patient, version in changed.items():
                self._remember(patient, terms.get(patient, []), version)
        self._seq = latest

    def _sync_fhir(self) -> int:
        generation = self.fhir.generation()
        if generation != self._generation:
            self._population = self.fhir.patients()
            self._rows.clear()
            self._generation = generation
        return generation

    def _rows_of(self, request: DataRequest) -> dict[str, list[Key]]:
        rows = self._rows.get(request)
        if rows is None:
            rows = {}
            tokens = [TokenQuery(system, code) for system, code in request.codes]
            for rtype in request.classes:
                keys = (
                    self.fhir.keys_of(rtype)
                    if rtype == "Patient"
                    else self.fhir.keys_of(rtype, tokens or None)
                )
                for rid, patient in keys:
                    if patient is not None:
                        rows.setdefault(patient, []).append((rtype, rid))
            for keys_of_patient in rows.values():
                keys_of_patient.sort()
            self._rows[request] = rows
        return rows

    # -- deciding --------------------------------------------------------------------------

    def decide(self, job: JobSpec, now: str) -> CohortDecision:
        return self.decide_for(job.sha256, JobContext.of(job), DataRequest.of(job), now)

    def decide_for(self, job_key: str, context: JobContext, request: DataRequest, now: str) -> CohortDecision:
        engine = self.engine_of()
        with self._lock:
            self._sync_consents()
            generation = self._sync_fhir()
            cache_key = (f"{job_key}:{context}", request)
            cache = self._jobs.get(cache_key)
            if (
                cache is None
                or cache.policy_version != engine.policy_version
                or cache.generation != generation
            ):
                cache = self._jobs[cache_key] = _JobCache(engine.policy_version, generation)
            entries = cache.entries
            dirty = [
                p
                for p in self._population
                if (entry := entries.get(p)) is None or not entry.holds(self._versions.get(p, 0), now)
            ]
            if dirty:
                self._redecide(engine, context, request, dirty, now, entries)
            population = self._population
            decisions = {p: entries[p].decision for p in population}
            released = {p: entries[p].released for p in population if entries[p].released}
            redacted = sum(entries[p].redacted for p in population)
            snapshot = hashlib.sha256()
            for p in sorted(released):
                e = entries[p]
                snapshot.update(
                    f"{p}\t{e.decision.consent_id}/{e.decision.consent_version}\t{e.digest}\n".encode()
                )
            return CohortDecision(
                job=job_key,
                now=now,
                policy_version=engine.policy_version,
                engine=engine.name,
                decisions=decisions,
                released=released,
                redacted=redacted,
                redecided=frozenset(dirty),
                snapshot=snapshot.hexdigest(),
            )

    def _redecide(
        self,
        engine: PolicyEngine,
        context: JobContext,
        request: DataRequest,
        patients: Sequence[str],
        now: str,
        entries: dict[str, _Entry],
    ) -> None:
        decisions = decide(
            engine,
            context,
            {p: self._terms.get(p, []) for p in patients},
            now,
            by_shape=self.by_shape,
            shapes=self._shapes,
        )
        rows = self._rows_of(request)
        restricted = [
            p
            for p in patients
            if decisions[p].permitted
            and decisions[p].obligations is not None
            and decisions[p].obligations.restricts  # type: ignore[union-attr]
        ]
        released: dict[str, list[Key]] = {
            p: list(rows.get(p, ())) for p in patients if decisions[p].permitted
        }
        redacted: dict[str, int] = {}
        if restricted:
            index = {(r.resource_type, r.resource_id): r for r in self.fhir.index_rows(patients=restricted)}
            items: list[tuple[Any, Any]] = []
            owners: list[tuple[str, Key]] = []
            for p in restricted:
                obligations = decisions[p].obligations
                for key in rows.get(p, ()):
                    resource = index.get(key)
                    if resource is not None:
                        items.append((obligations, resource))
                        owners.append((p, key))
            verdicts = redact(engine, items)
            for p in restricted:
                released[p] = []
            for (p, key), ok in zip(owners, verdicts, strict=True):
                if ok:
                    released[p].append(key)
                else:
                    redacted[p] = redacted.get(p, 0) + 1
        for p in patients:
            valid_from, valid_until = _window(self._bounds.get(p, []), now)
            keys = tuple(released.get(p, ()))
            entries[p] = _Entry(
                version=self._versions.get(p, 0),
                valid_from=valid_from,
                valid_until=valid_until,
                decision=decisions[p],
                released=keys,
                redacted=redacted.get(p, 0),
                digest=_digest(keys) if keys else "",
            )

    def patient_terms(self, patient: str) -> list[Terms]:
        with self._lock:
            self._sync_consents()
            return list(self._terms.get(patient, []))
