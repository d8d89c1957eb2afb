"""A job's cohort at one instant: every patient's decision and the resources released.

The decider keeps, per job, each patient's decision with the consent version it was
made on and the time window in which it holds (between the consent dates and period
bounds around ``now``). A round re-decides only the patients whose consent version
changed since (the consent store says which), whose window ``now`` has left (an expiry
or a start), or all of them when the policies or the FHIR data changed. Counts, the
released resources and the snapshot are updated for those patients only, so a round in
which little changed costs little. Everything is decided on indexes: consent templates
and the FHIR store's resource index; nothing is decrypted here.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from clinical_node.fhir.store import FhirStore, TokenQuery
from paroma.jobspec import JobSpec

from .consent import ConsentRef, Terms
from .consent_store import ConsentStore
from .decisions import ConsentDecision, JobContext, PatientDecision, ShapeIndex, decide, redact
from .engine import PolicyEngine

Key = tuple[str, str]  # (resource type, id)
_CHANGE_LOG = 1000  # consent-change batches kept for job caches that are behind


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
    token: int = 0  # this patient's share of the snapshot (0 when nothing is released)


@dataclass
class _JobCache:
    policy_version: str
    generation: int
    epoch: int
    last_now: str = ""
    entries: dict[str, _Entry] = field(default_factory=dict)
    decisions: dict[str, PatientDecision] = field(default_factory=dict)
    released: dict[str, tuple[Key, ...]] = field(default_factory=dict)
    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys((d.value for d in ConsentDecision), 0)
    )
    redacted: int = 0
    accumulator: int = 0
    expiries: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class CohortDecision:
    """Who is in a job's cohort at ``now``, and which of their resources it may read.
    Its mappings never change after it is made (later rounds get new ones)."""

    job: str
    now: str
    policy_version: str
    engine: str
    decisions: Mapping[str, PatientDecision]
    released: Mapping[str, tuple[Key, ...]]
    counts: Mapping[str, int]
    redacted: int
    redecided: frozenset[str]
    snapshot: str

    def count(self, decision: ConsentDecision) -> int:
        return self.counts[decision.value]

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


def _token(patient: str, decision: PatientDecision, released: str) -> int:
    line = f"{patient}\t{decision.consent_id}/{decision.consent_version}\t{released}"
    return int.from_bytes(hashlib.sha256(line.encode()).digest()[:16], "big")


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
        self._refs: dict[str, list[ConsentRef]] = {}
        self._versions: dict[str, int] = {}
        self._bounds: dict[str, list[str]] = {}
        self._epoch = 0
        self._changes: list[tuple[int, frozenset[str]]] = []
        self._generation = -1
        self._population: list[str] = []
        self._population_set: frozenset[str] = frozenset()
        self._rows: dict[DataRequest, dict[str, tuple[Key, ...]]] = {}
        self._jobs: dict[tuple[str, DataRequest], _JobCache] = {}
        self._shapes = ShapeIndex()

    # -- keeping up with the stores --------------------------------------------------------

    def _remember(self, patient: str, refs: list[ConsentRef], version: int) -> None:
        self._refs[patient] = refs
        self._versions[patient] = version
        self._bounds[patient] = sorted({b for r in refs for b in r.boundaries()})

    def _sync_consents(self) -> None:
        if self._seq < 0:
            latest = self.consents.last_seq()
            refs = self.consents.current_refs()
            for patient, version in self.consents.patient_versions().items():
                self._remember(patient, refs.get(patient, []), version)
            self._seq = latest
            return
        latest, changed = self.consents.changes_since(self._seq)
        if changed:
            refs = self.consents.current_refs(sorted(changed))
            for patient, version in changed.items():
                self._remember(patient, refs.get(patient, []), version)
            self._epoch += 1
            self._changes.append((self._epoch, frozenset(changed)))
            del self._changes[:-_CHANGE_LOG]
        self._seq = latest

    def _changed_since(self, epoch: int) -> set[str] | None:
        """Patients whose consents changed after ``epoch``; None if that is no longer known."""
        if epoch == self._epoch:
            return set()
        if not self._changes or self._changes[0][0] > epoch + 1:
            return None
        out: set[str] = set()
        for e, patients in self._changes:
            if e > epoch:
                out |= patients
        return out

    def _sync_fhir(self) -> int:
        generation = self.fhir.generation()
        if generation != self._generation:
            self._population = self.fhir.patients()
            self._population_set = frozenset(self._population)
            self._rows.clear()
            self._generation = generation
        return generation

    def _rows_of(self, request: DataRequest) -> dict[str, tuple[Key, ...]]:
        rows = self._rows.get(request)
        if rows is None:
            grouped: dict[str, list[Key]] = {}
            tokens = [TokenQuery(system, code) for system, code in request.codes]
            for rtype in request.classes:
                keys = (
                    self.fhir.keys_of(rtype)
                    if rtype == "Patient"
                    else self.fhir.keys_of(rtype, tokens or None)
                )
                for rid, patient in keys:
                    if patient is not None:
                        grouped.setdefault(patient, []).append((rtype, rid))
            rows = self._rows[request] = {p: tuple(sorted(keys)) for p, keys in grouped.items()}
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
            dirty: set[str] | None = None
            if (
                cache is not None
                and cache.policy_version == engine.policy_version
                and cache.generation == generation
            ):
                dirty = self._dirty(cache, now)
            if dirty is None:
                cache = _JobCache(engine.policy_version, generation, self._epoch)
                dirty = set(self._population)
            else:
                assert cache is not None
            if dirty:
                self._redecide(engine, context, request, sorted(dirty), now, cache)
            cache.epoch = self._epoch
            cache.last_now = now
            self._jobs[cache_key] = cache
            snapshot = hashlib.sha256(
                f"{generation}\t{request}\t{len(cache.released)}\t{cache.accumulator:032x}".encode()
            ).hexdigest()
            return CohortDecision(
                job=job_key,
                now=now,
                policy_version=engine.policy_version,
                engine=engine.name,
                decisions=MappingProxyType(cache.decisions),
                released=MappingProxyType(cache.released),
                counts=MappingProxyType(dict(cache.counts)),
                redacted=cache.redacted,
                redecided=frozenset(dirty),
                snapshot=snapshot,
            )

    def _dirty(self, cache: _JobCache, now: str) -> set[str] | None:
        """The patients to decide again, or None to decide everyone."""
        changed = self._changed_since(cache.epoch)
        if changed is None:
            return None
        dirty = {p for p in changed if p in self._population_set}
        if now < cache.last_now:
            # The clock went back (a replay or a test): check every window.
            dirty |= {
                p
                for p, e in cache.entries.items()
                if (e.valid_from and now < e.valid_from) or (e.valid_until and now >= e.valid_until)
            }
            return dirty
        heap = cache.expiries
        while heap and heap[0][0] <= now:
            until, patient = heapq.heappop(heap)
            entry = cache.entries.get(patient)
            if entry is not None and entry.valid_until == until:
                dirty.add(patient)
        return dirty

    def _redecide(
        self,
        engine: PolicyEngine,
        context: JobContext,
        request: DataRequest,
        patients: Sequence[str],
        now: str,
        cache: _JobCache,
    ) -> None:
        decisions = decide(
            engine,
            context,
            {p: self._refs.get(p, []) for p in patients},
            now,
            by_shape=self.by_shape,
            shapes=self._shapes,
        )
        rows = self._rows_of(request)
        released: dict[str, tuple[Key, ...]] = {}
        redacted: dict[str, int] = {}
        restricted = []
        for p in patients:
            d = decisions[p]
            if d.permitted:
                if d.obligations is not None and d.obligations.restricts:
                    restricted.append(p)
                else:
                    released[p] = rows.get(p, ())
        if restricted:
            released.update(self._redact(engine, decisions, restricted, rows, redacted))
        entries = cache.entries
        new_decisions = dict(cache.decisions)
        new_released = dict(cache.released)
        for p in patients:
            old = entries.get(p)
            if old is not None:
                cache.counts[old.decision.decision.value] -= 1
                cache.redacted -= old.redacted
                cache.accumulator ^= old.token
            d = decisions[p]
            keys = released.get(p, ())
            marker = (
                "all"
                if p not in redacted
                else hashlib.sha256("\n".join(f"{t}/{i}" for t, i in keys).encode()).hexdigest()
            )
            valid_from, valid_until = _window(self._bounds.get(p, []), now)
            entry = _Entry(
                version=self._versions.get(p, 0),
                valid_from=valid_from,
                valid_until=valid_until,
                decision=d,
                released=keys,
                redacted=redacted.get(p, 0),
                token=_token(p, d, marker) if keys else 0,
            )
            entries[p] = entry
            cache.counts[d.decision.value] += 1
            cache.redacted += entry.redacted
            cache.accumulator ^= entry.token
            new_decisions[p] = d
            if keys:
                new_released[p] = keys
            else:
                new_released.pop(p, None)
            if valid_until:
                heapq.heappush(cache.expiries, (valid_until, p))
        cache.decisions = new_decisions
        cache.released = new_released

    def _redact(
        self,
        engine: PolicyEngine,
        decisions: Mapping[str, PatientDecision],
        patients: Sequence[str],
        rows: Mapping[str, tuple[Key, ...]],
        redacted: dict[str, int],
    ) -> dict[str, tuple[Key, ...]]:
        index = {(r.resource_type, r.resource_id): r for r in self.fhir.index_rows(patients=patients)}
        items: list[tuple[Any, Any]] = []
        owners: list[tuple[str, Key]] = []
        for p in patients:
            obligations = decisions[p].obligations
            for key in rows.get(p, ()):
                resource = index.get(key)
                if resource is not None:
                    items.append((obligations, resource))
                    owners.append((p, key))
        verdicts = redact(engine, items)
        kept: dict[str, list[Key]] = {p: [] for p in patients}
        for (p, key), ok in zip(owners, verdicts, strict=True):
            if ok:
                kept[p].append(key)
            else:
                redacted[p] = redacted.get(p, 0) + 1
        return {p: tuple(keys) for p, keys in kept.items()}

    def patient_terms(self, patient: str) -> list[Terms]:
        with self._lock:
            self._sync_consents()
            return [r.terms() for r in self._refs.get(patient, [])]

    def patients_with_consents(self) -> Iterable[str]:
        with self._lock:
            self._sync_consents()
            return list(self._refs)
