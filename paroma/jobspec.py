"""The job spec: what a data scientist asks the federation to do.

It is the contract between the aggregator (which runs the job) and every clinical node
(which admits it or not, and trains on what consent allows). Written as TOML by people,
carried as canonical JSON between services; its sha256 identifies it in audit logs and
model provenance. Parsing lists every problem with its field, not only the first.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

from clinical_node.features import FeatureSpec, FeatureSpecError

STRATEGIES = (
    "fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad", "fedavgm",
    "krum", "multikrum", "fedmedian", "fedtrimmedavg", "bulyan", "filteredfedavg",
)  # fmt: skip
BUILTIN_FEATURE_SPECS = {"flamby-heart-disease": "flamby_heart_disease.toml"}
# v3-ActReason purposes of use relevant to secondary use of health data.
PURPOSES = (
    "HRESCH",
    "CLINTRCH",
    "CLINTRL",
    "HPAYMT",
    "PUBHLTH",
    "TREAT",
    "HOPERAT",
    "HQUALIMP",
    "METAMGT",
)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class JobSpecError(ValueError):
    """An invalid job spec; ``problems`` lists every (field, message)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{f}: {m}" for f, m in problems))


@dataclass(frozen=True)
class TrainingSettings:
    lr: float = 0.01
    local_steps: int = 100
    batch_size: int = 4
    optimizer: str = "sgd"
    momentum: float = 0.0
    weight_decay: float = 0.0
    lr_decay: float = 1.0  # the learning rate is multiplied by this each round
    hidden: int = 16


PRIVACY_MODES = ("site", "server-fixed", "server-adaptive")
# Strategies whose aggregate is a weighted mean of the updates: a SecAgg+ sum can serve them.
SECURE_AGGREGATION_STRATEGIES = ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad")


@dataclass(frozen=True)
class PrivacySettings:
    """Differential privacy of each update and secure aggregation. ``mode`` "site": every
    site clips its update to ``clip_norm`` and adds Gaussian noise itself; "server-fixed" /
    "server-adaptive": the aggregator does, with Flower's server-side DP wrappers (fixed
    clipping norm, or adaptive starting from it). ``clip_norm`` 0 means no clipping is
    asked by the job (a site's policy may still demand it)."""

    clip_norm: float = 0.0
    noise_multiplier: float = 0.0
    delta: float = 1e-5
    secure_aggregation: bool = False
    mode: str = "site"


@dataclass(frozen=True)
class JobSpec:
    name: str
    purpose: str
    organization: str
    feature_spec: FeatureSpec
    feature_spec_ref: str
    plan: str
    plan_sha256: str
    strategy: str = "fedavg"
    strategy_params: dict[str, float] = field(default_factory=dict)
    rounds: int = 3
    min_sites: int = 2
    training: TrainingSettings = field(default_factory=TrainingSettings)
    privacy: PrivacySettings = field(default_factory=PrivacySettings)
    round_timeout_s: float = 600.0
    deadline: str | None = None
    seed: int = 42

    # -- serialisation ----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "purpose": self.purpose,
            "organization": self.organization,
            "rounds": self.rounds,
            "min_sites": self.min_sites,
            "seed": self.seed,
            "data": {"spec": self.feature_spec_ref, "features": self.feature_spec.to_dict()},
            "plan": {"reference": self.plan, "sha256": self.plan_sha256},
            "strategy": {"name": self.strategy, "params": dict(self.strategy_params)},
            "training": asdict(self.training),
            "privacy": asdict(self.privacy),
            "deadline": {"round_timeout_s": self.round_timeout_s, "at": self.deadline},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def hyper(self, server_round: int, site_seed: int = 0) -> dict[str, Any]:
        """Local-training hyper-parameters for one round at one site."""
        out: dict[str, Any] = asdict(self.training)
        out["seed"] = self.seed * 100_003 + server_round * 1_009 + site_seed
        out["stream_seed"] = self.seed * 100_003 + site_seed
        out["round"] = server_round
        out["proximal_mu"] = float(self.strategy_params.get("proximal_mu", 0.0))
        return out

    @classmethod
    def from_json(cls, text: str) -> JobSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise JobSpecError([("(document)", f"not valid JSON: {exc}")]) from exc
        return parse_job_spec(data)

    @classmethod
    def from_toml(cls, path: Path) -> JobSpec:
        try:
            data = tomllib.loads(Path(path).read_text())
        except OSError as exc:
            raise JobSpecError([("(file)", f"{path}: {exc.strerror}")]) from exc
        except UnicodeDecodeError as exc:
            raise JobSpecError(
                [("(file)", f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})")]
            ) from exc
        except tomllib.TOMLDecodeError as exc:
            raise JobSpecError([("(file)", f"{path}: not valid TOML: {exc}")]) from exc
        return parse_job_spec(data, base=Path(path).parent)


def builtin_feature_spec(name: str) -> FeatureSpec:
    path = resources.files("clinical_node.specs") / BUILTIN_FEATURE_SPECS[name]
    return FeatureSpec.from_toml(Path(str(path)))


def parse_job_spec(data: Any, base: Path | None = None) -> JobSpec:
    """Validate a job spec document (TOML or JSON form) and list every problem."""
    from clinical_node.plans import BUILTIN_PLANS, TrainingPlan, TrainingPlanError

    problems: list[tuple[str, str]] = []
    if not isinstance(data, Mapping):
        raise JobSpecError([("(document)", "expected a table")])

    def need_str(key: str, pattern: re.Pattern[str] | None = None) -> str:
        value = data.get(key)
        if not isinstance(value, str) or not value:
            problems.append((key, "required text"))
            return ""
        if pattern and not pattern.match(value):
            problems.append((key, f"{value!r} is not valid"))
        return value

    def number(table: Mapping[str, Any], key: str, where: str, default: float, lo: float, hi: float) -> float:
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append((f"{where}{key}", f"expected a number, got {value!r}"))
            return default
        if not lo <= float(value) <= hi:
            problems.append((f"{where}{key}", f"{value} is outside [{lo}, {hi}]"))
        return float(value)

    def integer(table: Mapping[str, Any], key: str, where: str, default: int, lo: int, hi: int) -> int:
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append((f"{where}{key}", f"expected an integer, got {value!r}"))
            return default
        if not lo <= value <= hi:
            problems.append((f"{where}{key}", f"{value} is outside [{lo}, {hi}]"))
        return value

    def table(key: str) -> Mapping[str, Any]:
        value = data.get(key, {})
        if not isinstance(value, Mapping):
            problems.append((key, "expected a table"))
            return {}
        return value

    name = need_str("name", _NAME)
    purpose = need_str("purpose")
    if purpose and purpose not in PURPOSES:
        problems.append(
            ("purpose", f"{purpose!r} is not a known v3-ActReason purpose ({', '.join(PURPOSES)})")
        )
    organization = need_str("organization")
    rounds = integer(data, "rounds", "", 3, 1, 10_000)
    min_sites = integer(data, "min_sites", "", 2, 1, 10_000)
    seed = integer(data, "seed", "", 42, 0, 2**31 - 1)

    # data: a built-in feature spec by name, or an inline one
    feature_spec: FeatureSpec | None = None
    feature_ref = ""
    data_table = table("data")
    spec_value = data_table.get("spec")
    if isinstance(data_table.get("features"), Mapping):
        try:
            feature_spec = FeatureSpec.from_dict(data_table["features"])
            feature_ref = str(spec_value or feature_spec.name)
        except FeatureSpecError as exc:
            problems.append(("data.features", str(exc)))
    elif isinstance(spec_value, str) and spec_value in BUILTIN_FEATURE_SPECS:
        feature_spec = builtin_feature_spec(spec_value)
        feature_ref = spec_value
    elif isinstance(spec_value, str) and spec_value.endswith(".toml"):
        path = (base or Path.cwd()) / spec_value
        try:
            feature_spec = FeatureSpec.from_toml(path)
            feature_ref = spec_value
        except FeatureSpecError as exc:
            problems.append(("data.spec", str(exc)))
    else:
        problems.append(
            (
                "data.spec",
                f"expected a built-in feature spec ({', '.join(BUILTIN_FEATURE_SPECS)}), a .toml "
                "file, or an inline [data.features] table",
            )
        )

    plan_table = table("plan")
    plan_ref = plan_table.get("reference")
    plan_sha = plan_table.get("sha256")
    if not isinstance(plan_ref, str) or not plan_ref:
        problems.append(
            ("plan.reference", f"required: a built-in plan ({', '.join(BUILTIN_PLANS)}) or a file")
        )
        plan_ref = ""
    if plan_sha is None and plan_ref:
        try:
            path_ref = plan_ref if plan_ref in BUILTIN_PLANS else str((base or Path.cwd()) / plan_ref)
            plan_sha = TrainingPlan.resolve(path_ref).sha256
        except TrainingPlanError as exc:
            problems.append(("plan.reference", str(exc)))
    if not isinstance(plan_sha, str) or not _SHA256.match(plan_sha or ""):
        if plan_sha is not None:
            problems.append(("plan.sha256", "expected 64 lowercase hex digits"))
        plan_sha = ""

    strategy_table = table("strategy")
    strategy = strategy_table.get("name", "fedavg")
    if strategy not in STRATEGIES:
        problems.append(("strategy.name", f"{strategy!r} is not one of {', '.join(STRATEGIES)}"))
    params_raw = strategy_table.get("params", {})
    params: dict[str, float] = {}
    if not isinstance(params_raw, Mapping):
        problems.append(("strategy.params", "expected a table"))
    else:
        for key, value in params_raw.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                problems.append((f"strategy.params.{key}", f"expected a number, got {value!r}"))
            else:
                params[str(key)] = float(value)

    tr = table("training")
    optimizer = tr.get("optimizer", "sgd")
    if optimizer not in ("sgd", "adam"):
        problems.append(("training.optimizer", f"{optimizer!r} is not one of sgd, adam"))
    training = TrainingSettings(
        lr=number(tr, "lr", "training.", 0.01, 1e-8, 10.0),
        local_steps=integer(tr, "local_steps", "training.", 100, 1, 1_000_000),
        batch_size=integer(tr, "batch_size", "training.", 4, 1, 1_000_000),
        optimizer=str(optimizer),
        momentum=number(tr, "momentum", "training.", 0.0, 0.0, 0.999),
        weight_decay=number(tr, "weight_decay", "training.", 0.0, 0.0, 100.0),
        lr_decay=number(tr, "lr_decay", "training.", 1.0, 0.01, 1.0),
        hidden=integer(tr, "hidden", "training.", 16, 1, 4096),
    )
    pv = table("privacy")
    secure = pv.get("secure_aggregation", False)
    if not isinstance(secure, bool):
        problems.append(("privacy.secure_aggregation", "expected true or false"))
        secure = False
    mode = pv.get("mode", "site")
    if mode not in PRIVACY_MODES:
        problems.append(("privacy.mode", f"{mode!r} is not one of {', '.join(PRIVACY_MODES)}"))
        mode = "site"
    privacy = PrivacySettings(
        clip_norm=number(pv, "clip_norm", "privacy.", 0.0, 0.0, 1e6),
        noise_multiplier=number(pv, "noise_multiplier", "privacy.", 0.0, 0.0, 1e3),
        delta=number(pv, "delta", "privacy.", 1e-5, 1e-12, 0.1),
        secure_aggregation=secure,
        mode=str(mode),
    )
    if secure and mode != "site":
        problems.append(
            ("privacy.secure_aggregation", f"server-side DP ({mode}) needs each update in the clear")
        )
    if secure and strategy not in SECURE_AGGREGATION_STRATEGIES:
        problems.append(
            (
                "privacy.secure_aggregation",
                f"strategy {strategy!r} needs each update in the clear; secure aggregation works with "
                f"{', '.join(SECURE_AGGREGATION_STRATEGIES)}",
            )
        )
    if mode != "site" and privacy.noise_multiplier <= 0:
        problems.append(("privacy.noise_multiplier", f"server-side DP ({mode}) needs a noise multiplier > 0"))
    if mode == "server-fixed" and privacy.clip_norm <= 0:
        problems.append(("privacy.clip_norm", "server-side DP with fixed clipping needs a clip_norm > 0"))
    dl = table("deadline")
    round_timeout = number(dl, "round_timeout_s", "deadline.", 600.0, 1.0, 7 * 24 * 3600.0)
    deadline_at = dl.get("at")
    if deadline_at is not None:
        if isinstance(deadline_at, datetime):
            deadline_at = deadline_at.isoformat()
        try:
            datetime.fromisoformat(str(deadline_at))
        except ValueError:
            problems.append(("deadline.at", f"{deadline_at!r} is not an ISO-8601 date-time"))
        deadline_at = str(deadline_at)

    if problems or feature_spec is None:
        raise JobSpecError(problems or [("data", "no feature spec")])
    return JobSpec(
        name=name,
        purpose=purpose,
        organization=organization,
        feature_spec=feature_spec,
        feature_spec_ref=feature_ref,
        plan=plan_ref,
        plan_sha256=plan_sha,
        strategy=str(strategy),
        strategy_params=params,
        rounds=rounds,
        min_sites=min_sites,
        training=training,
        privacy=privacy,
        round_timeout_s=round_timeout,
        deadline=deadline_at,
        seed=seed,
    )
