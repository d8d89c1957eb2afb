"""Feature extraction from a site's FHIR store to tensors, declared by a feature spec.

A :class:`FeatureSpec` says which codes become which columns (numeric, boolean or one-hot),
what to do when a value is missing, how the site splits its cohort into train and test, and
how it normalises (with the site's own training statistics only: nothing about other sites
is needed or used). FLamby's Fed-Heart-Disease features are one such spec
(``clinical_node/specs/flamby_heart_disease.toml``).

The extractor only ever sees the resources it is given by the caller: on a clinical node,
that is the protection layer's consent-filtered view of the store.
"""

from __future__ import annotations

import hashlib
import math
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

ENCODINGS = ("numeric", "boolean", "onehot")
SOURCES = ("observation", "patient.gender", "patient.age")
SPLITS = ("stratified", "hash")


class FeatureSpecError(ValueError):
    """A feature spec that cannot be used; the message names the field."""


@dataclass(frozen=True)
class Feature:
    name: str
    source: str = "observation"
    system: str | None = None
    code: str | None = None
    encoding: str = "numeric"
    categories: tuple[str, ...] = ()
    drop_first: bool = False
    true_values: tuple[str, ...] = ("true", "male")
    # "drop": the patient leaves the cohort; "mean": train mean; a number: that value.
    missing: str | float = "drop"
    # Value used when the Observation exists but records dataAbsentReason (None: treat as missing).
    absent_value: float | None = None

    def columns(self) -> list[str]:
        if self.encoding != "onehot":
            return [self.name]
        cats = self.categories[1:] if self.drop_first else self.categories
        return [f"{self.name}={c}" for c in cats]


@dataclass(frozen=True)
class Label:
    system: str | None
    code: str
    rule: str = "gt"  # gt | ge | eq | in
    threshold: float = 0.0
    values: tuple[str, ...] = ()

    def positive(self, value: Any) -> bool:
        if self.rule == "in":
            return str(value) in self.values
        number = float(value)
        if self.rule == "gt":
            return number > self.threshold
        if self.rule == "ge":
            return number >= self.threshold
        return number == self.threshold


@dataclass(frozen=True)
class Split:
    method: str = "hash"
    test_fraction: float = 0.34
    seed: int = 43


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    features: tuple[Feature, ...]
    label: Label
    normalization: str = "zscore"
    split: Split = field(default_factory=Split)
    reference_date: str | None = None  # for patient.age; default: the observation dates

    def columns(self) -> list[str]:
        return [c for f in self.features for c in f.columns()]

    @property
    def n_features(self) -> int:
        return len(self.columns())

    def codes(self) -> list[tuple[str | None, str]]:
        found = [(f.system, f.code) for f in self.features if f.source == "observation" and f.code]
        return [*found, (self.label.system, self.label.code)]

    def resource_classes(self) -> tuple[str, ...]:
        return ("Patient", "Observation")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSpec:
        return _parse_spec(data)

    @classmethod
    def from_toml(cls, path: Path) -> FeatureSpec:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise FeatureSpecError(f"{path}: {exc}") from exc
        return _parse_spec(data)

    def to_dict(self) -> dict[str, Any]:
        def feature(f: Feature) -> dict[str, Any]:
            out: dict[str, Any] = {"name": f.name, "source": f.source, "encoding": f.encoding}
            if f.code:
                out["code"] = f"{f.system}|{f.code}" if f.system else f.code
            # what the spec said travels whole (sites parse it again), defaults stay implicit
            if f.categories:
                out["categories"] = list(f.categories)
            if f.categories or f.drop_first:
                out["drop_first"] = f.drop_first
            if f.encoding == "boolean" or f.true_values != ("true", "male"):
                out["true_values"] = list(f.true_values)
            out["missing"] = f.missing
            if f.absent_value is not None:
                out["absent_value"] = f.absent_value
            return out

        label = self.label
        return {
            "name": self.name,
            "features": [feature(f) for f in self.features],
            "label": {
                "code": f"{label.system}|{label.code}" if label.system else label.code,
                "rule": label.rule,
                "threshold": label.threshold,
                "values": list(label.values),
            },
            "normalization": self.normalization,
            "split": {
                "method": self.split.method,
                "test_fraction": self.split.test_fraction,
                "seed": self.split.seed,
            },
        }


def _token(text: Any, where: str) -> tuple[str | None, str]:
    if not isinstance(text, str) or not text.strip():
        raise FeatureSpecError(f"{where}: expected a code as 'system|code' or 'code'")
    if "|" in text:
        system, code = text.split("|", 1)
        if not code:
            raise FeatureSpecError(f"{where}: {text!r} has no code after '|'")
        return (system or None), code
    return None, text


def _strings(raw: Mapping[str, Any], key: str, default: tuple[str, ...], where: str) -> tuple[str, ...]:
    value = raw.get(key, default)
    if not isinstance(value, list | tuple) or any(isinstance(v, dict | list | tuple) for v in value):
        raise FeatureSpecError(f"{where}.{key}: expected a list of values, got {value!r}")
    return tuple(str(v) for v in value)


def _parse_spec(data: Mapping[str, Any]) -> FeatureSpec:
    if not isinstance(data, Mapping):
        raise FeatureSpecError("feature spec: expected a table")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise FeatureSpecError("feature spec: 'name' is required")
    raw_features = data.get("features")
    if not isinstance(raw_features, list) or not raw_features:
        raise FeatureSpecError("feature spec: 'features' must be a non-empty list")
    features: list[Feature] = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_features):
        where = f"features[{i}]"
        if not isinstance(raw, Mapping):
            raise FeatureSpecError(f"{where}: expected a table")
        fname = raw.get("name")
        if not isinstance(fname, str) or not fname:
            raise FeatureSpecError(f"{where}.name: required")
        if fname in seen:
            raise FeatureSpecError(f"{where}.name: {fname!r} is used twice")
        seen.add(fname)
        source = raw.get("source", "observation")
        if source not in SOURCES:
            raise FeatureSpecError(f"{where}.source: {source!r} is not one of {', '.join(SOURCES)}")
        system = code = None
        if source == "observation":
            system, code = _token(raw.get("code"), f"{where}.code")
        encoding = raw.get("encoding", "numeric")
        if encoding not in ENCODINGS:
            raise FeatureSpecError(f"{where}.encoding: {encoding!r} is not one of {', '.join(ENCODINGS)}")
        categories = _strings(raw, "categories", (), where)
        if encoding == "onehot" and len(categories) < 2:
            raise FeatureSpecError(f"{where}.categories: a one-hot feature needs at least 2 categories")
        missing = raw.get("missing", "drop")
        if (
            not (missing in ("drop", "mean") or isinstance(missing, int | float))
            or isinstance(missing, bool)
            or (isinstance(missing, float) and not math.isfinite(missing))
        ):
            raise FeatureSpecError(f"{where}.missing: expected 'drop', 'mean' or a number, got {missing!r}")
        if encoding == "onehot" and missing == "mean":
            raise FeatureSpecError(f"{where}.missing: 'mean' is not defined for a one-hot feature")
        absent = raw.get("absent_value")
        if absent is not None and (
            isinstance(absent, bool) or not isinstance(absent, int | float) or not math.isfinite(absent)
        ):
            raise FeatureSpecError(f"{where}.absent_value: expected a finite number")
        features.append(
            Feature(
                name=fname,
                source=source,
                system=system,
                code=code,
                encoding=encoding,
                categories=categories,
                drop_first=bool(raw.get("drop_first", False)),
                true_values=_strings(raw, "true_values", ("true", "male"), where),
                missing=missing if isinstance(missing, str) else float(missing),
                absent_value=None if absent is None else float(absent),
            )
        )
    raw_label = data.get("label")
    if not isinstance(raw_label, Mapping):
        raise FeatureSpecError("label: required table")
    lsystem, lcode = _token(raw_label.get("code"), "label.code")
    rule = raw_label.get("rule", "gt")
    if rule not in ("gt", "ge", "eq", "in"):
        raise FeatureSpecError(f"label.rule: {rule!r} is not one of gt, ge, eq, in")
    threshold = raw_label.get("threshold", 0)
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        raise FeatureSpecError("label.threshold: expected a number")
    label = Label(lsystem, lcode, rule, float(threshold), tuple(str(v) for v in raw_label.get("values", ())))
    normalization = data.get("normalization", "zscore")
    if normalization not in ("zscore", "none"):
        raise FeatureSpecError(f"normalization: {normalization!r} is not one of zscore, none")
    raw_split = data.get("split", {})
    if not isinstance(raw_split, Mapping):
        raise FeatureSpecError("split: expected a table")
    method = raw_split.get("method", "hash")
    if method not in SPLITS:
        raise FeatureSpecError(f"split.method: {method!r} is not one of {', '.join(SPLITS)}")
    fraction = raw_split.get("test_fraction", 0.34)
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction < 1:
        raise FeatureSpecError(f"split.test_fraction: expected a number in (0, 1), got {fraction!r}")
    seed = raw_split.get("seed", 43)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise FeatureSpecError("split.seed: expected an integer")
    return FeatureSpec(
        name=name,
        features=tuple(features),
        label=label,
        normalization=normalization,
        split=Split(method, float(fraction), seed),
        reference_date=data.get("reference_date"),
    )


# -- extraction -----------------------------------------------------------------------------

_ABSENT = object()  # the observation exists and records a dataAbsentReason


@dataclass
class SiteDataset:
    """A site's tensors for one job: train and test matrices, normalised with train stats."""

    columns: list[str]
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    train_patients: list[str]
    test_patients: list[str]
    candidates: int  # patients offered to the extractor
    complete: int  # of them, with every required value
    mean: np.ndarray
    std: np.ndarray

    @property
    def n_train(self) -> int:
        return len(self.y_train)

    @property
    def n_test(self) -> int:
        return len(self.y_test)


def _observation_value(obs: Mapping[str, Any]) -> Any:
    if "dataAbsentReason" in obs:
        return _ABSENT
    if "valueQuantity" in obs:
        return obs["valueQuantity"].get("value")
    if "valueBoolean" in obs:
        return "true" if obs["valueBoolean"] else "false"
    if "valueInteger" in obs:
        return obs["valueInteger"]
    if "valueCodeableConcept" in obs:
        codings = obs["valueCodeableConcept"].get("coding") or []
        return codings[0].get("code") if codings else None
    if "valueString" in obs:
        return obs["valueString"]
    return None


def _matches(coding_holder: Mapping[str, Any], system: str | None, code: str) -> bool:
    for coding in (coding_holder.get("code") or {}).get("coding", []) or []:
        if coding.get("code") == code and (system is None or coding.get("system") == system):
            return True
    return False


def _age(birth: str, at: str) -> float:
    b = date.fromisoformat(birth[:10]) if len(birth) >= 10 else date(int(birth[:4]), 7, 1)
    a = date.fromisoformat(at[:10])
    return float(a.year - b.year - ((a.month, a.day) < (b.month, b.day)))


def _raw_rows(spec: FeatureSpec, resources: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per patient: feature name -> raw value (None when missing, _ABSENT when absent), plus
    '__label__'. With several observations of one code, the most recent wins."""
    patients: dict[str, Mapping[str, Any]] = {}
    observations: dict[str, list[Mapping[str, Any]]] = {}
    for res in resources:
        if res.get("resourceType") == "Patient":
            patients[str(res["id"])] = res
        elif res.get("resourceType") == "Observation" and res.get("status") not in (
            "entered-in-error",
            "cancelled",
        ):
            ref = (res.get("subject") or {}).get("reference", "")
            if ref.startswith("Patient/"):
                observations.setdefault(ref[8:], []).append(res)
    rows: dict[str, dict[str, Any]] = {}
    for pid, patient in patients.items():
        obs = sorted(observations.get(pid, []), key=lambda o: str(o.get("effectiveDateTime", "")))
        row: dict[str, Any] = {}
        dates = [str(o["effectiveDateTime"]) for o in obs if o.get("effectiveDateTime")]
        for feature in spec.features:
            if feature.source == "patient.gender":
                row[feature.name] = patient.get("gender")
            elif feature.source == "patient.age":
                at = spec.reference_date or (dates[-1] if dates else None)
                row[feature.name] = (
                    _age(patient["birthDate"], at) if patient.get("birthDate") and at else None
                )
            else:
                value = None
                for o in obs:
                    if _matches(o, feature.system, feature.code or ""):
                        value = _observation_value(o)
                row[feature.name] = value
        label = None
        for o in obs:
            if _matches(o, spec.label.system, spec.label.code):
                label = _observation_value(o)
        row["__label__"] = None if label is _ABSENT else label
        rows[pid] = row
    return rows


def _encode(feature: Feature, value: Any) -> list[float] | None:
    """Columns of one value, or None when it is missing."""
    if value is _ABSENT:
        if feature.absent_value is None:
            return None
        return [feature.absent_value] * len(feature.columns())
    if value is None:
        return None
    if feature.encoding == "numeric":
        return [float(value)]
    if feature.encoding == "boolean":
        return [1.0 if str(value).lower() in feature.true_values else 0.0]
    text = str(value)
    if text.endswith(".0"):
        text = text[:-2]
    if text not in feature.categories:
        return None
    cats = feature.categories[1:] if feature.drop_first else feature.categories
    return [1.0 if text == c else 0.0 for c in cats]


def split_indices(pids: list[str], labels: np.ndarray, split: Split) -> tuple[np.ndarray, np.ndarray]:
    """Train and test row indices.

    ``stratified`` is scikit-learn's ``train_test_split(train_size=1-f, test_size=f,
    random_state=seed, stratify=labels)`` over the rows in patient-id order, stratified only
    when both classes have more than 2 rows: exactly FLamby's Fed-Heart-Disease split.
    ``hash`` puts a patient in test when a hash of (seed, patient id) falls under the test
    fraction: a patient keeps its side whoever else joins or leaves the cohort.
    """
    n = len(pids)
    if split.method == "hash":
        test = np.array(
            [
                int(hashlib.sha256(f"{split.seed}:{pid}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
                < split.test_fraction
                for pid in pids
            ],
            dtype=bool,
        )
        return np.flatnonzero(~test), np.flatnonzero(test)
    from sklearn.model_selection import train_test_split

    if n < 2:
        return np.arange(n), np.arange(0)
    values, counts = np.unique(labels, return_counts=True)
    stratify = labels if len(values) > 1 and all(c > 2 for c in counts) else None
    train, test = train_test_split(
        np.arange(n),
        test_size=1.0 - (1.0 - split.test_fraction),
        train_size=1.0 - split.test_fraction,
        random_state=split.seed,
        shuffle=True,
        stratify=stratify,
    )
    return np.sort(train), np.sort(test)


def extract(spec: FeatureSpec, resources: Iterable[Mapping[str, Any]]) -> SiteDataset:
    """Turn the given Patient and Observation resources into a normalised SiteDataset."""
    rows = _raw_rows(spec, resources)
    pids: list[str] = []
    matrix: list[list[float | None]] = []
    labels: list[float] = []
    for pid in sorted(rows):
        row = rows[pid]
        if row["__label__"] is None:
            continue
        encoded: list[float | None] = []
        complete = True
        for feature in spec.features:
            cols = _encode(feature, row[feature.name])
            if cols is None:
                if feature.missing == "drop":
                    complete = False
                    break
                if feature.missing == "mean":
                    encoded += [None] * len(feature.columns())
                else:
                    encoded += [float(feature.missing)] * len(feature.columns())
            else:
                encoded += cols
        if not complete:
            continue
        pids.append(pid)
        matrix.append(encoded)
        labels.append(1.0 if spec.label.positive(row["__label__"]) else 0.0)

    n_cols = spec.n_features
    x = np.array(matrix, dtype=np.float64).reshape(len(matrix), n_cols)  # None -> nan
    y = np.array(labels, dtype=np.float32)
    train_idx, test_idx = split_indices(pids, y, spec.split)
    x_train, x_test = x[train_idx], x[test_idx]
    if np.isnan(x).any():  # "mean" imputation with the site's own train means
        means = np.nanmean(x_train, axis=0) if len(x_train) else np.zeros(n_cols)
        means = np.where(np.isnan(means), 0.0, means)
        x_train = np.where(np.isnan(x_train), means, x_train)
        x_test = np.where(np.isnan(x_test), means, x_test)
    if spec.normalization == "zscore" and len(x_train) > 1:
        mean = x_train.mean(axis=0)
        std = x_train.std(axis=0, ddof=1)  # unbiased, as torch.std
    else:
        mean, std = np.zeros(n_cols), np.ones(n_cols)
    eps = 1e-9
    return SiteDataset(
        columns=spec.columns(),
        x_train=((x_train - mean) / (std + eps)).astype(np.float32),
        y_train=y[train_idx],
        x_test=((x_test - mean) / (std + eps)).astype(np.float32),
        y_test=y[test_idx],
        train_patients=[pids[i] for i in train_idx],
        test_patients=[pids[i] for i in test_idx],
        candidates=len(rows),
        complete=len(pids),
        mean=mean.astype(np.float32),
        std=std.astype(np.float32),
    )
