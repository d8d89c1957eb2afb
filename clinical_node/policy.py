"""A site's policy settings (the ``[policy]`` table of ``site.toml``).

These are the hospital's own choices that the admission policy (Rego) and the node enforce:
which purposes of use and which requesting organisations it admits, the smallest cohort it
will train on, the minimum sandbox isolation, the privacy it demands of every update, the
small-count threshold of feasibility answers, and the longest a round may run. Anything not
set takes the strictest sensible default: no purpose and no organisation is admitted until
the site lists them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ISOLATION_LEVELS = ("none", "subprocess", "unshare", "bubblewrap")  # weakest to strongest


class PolicyError(ValueError):
    """A [policy] table that cannot be used; the message names the field."""


def isolation_rank(level: str) -> int:
    return ISOLATION_LEVELS.index(level) if level in ISOLATION_LEVELS else -1


@dataclass(frozen=True)
class SitePolicy:
    purposes: tuple[str, ...] = ()
    organizations: tuple[str, ...] = ()
    min_cohort: int = 10
    min_isolation: str = "subprocess"
    require_dp: bool = False
    dp_clip_norm: float = 1.0
    dp_noise_multiplier: float = 0.0
    small_count_threshold: int = 5
    max_round_seconds: float = 900.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_input(self) -> dict[str, Any]:
        """The policy as the admission policy's ``data.site`` document."""
        return {
            "purposes": list(self.purposes),
            "organizations": list(self.organizations),
            "min_cohort": self.min_cohort,
            "min_isolation": self.min_isolation,
            "require_dp": self.require_dp,
            "dp_clip_norm": self.dp_clip_norm,
            "dp_noise_multiplier": self.dp_noise_multiplier,
            "small_count_threshold": self.small_count_threshold,
            "max_round_seconds": self.max_round_seconds,
        }

    def to_toml(self) -> str:
        def strings(values: tuple[str, ...]) -> str:
            return "[" + ", ".join('"' + v.replace('"', '\\"') + '"' for v in values) + "]"

        return (
            "[policy]\n"
            f"purposes = {strings(self.purposes)}\n"
            f"organizations = {strings(self.organizations)}\n"
            f"min_cohort = {self.min_cohort}\n"
            f'min_isolation = "{self.min_isolation}"\n'
            f"require_dp = {'true' if self.require_dp else 'false'}\n"
            f"dp_clip_norm = {self.dp_clip_norm}\n"
            f"dp_noise_multiplier = {self.dp_noise_multiplier}\n"
            f"small_count_threshold = {self.small_count_threshold}\n"
            f"max_round_seconds = {self.max_round_seconds}\n"
        )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> SitePolicy:
        data = dict(data or {})
        problems: list[str] = []

        def strings(key: str) -> tuple[str, ...]:
            value = data.pop(key, [])
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                problems.append(f"policy.{key}: expected a list of non-empty strings")
                return ()
            return tuple(value)

        def number(key: str, default: float, lo: float, hi: float, integer: bool = False) -> Any:
            value = data.pop(key, default)
            ok = isinstance(value, int) if integer else isinstance(value, int | float)
            if isinstance(value, bool) or not ok or not lo <= value <= hi:
                problems.append(
                    f"policy.{key}: expected {'an integer' if integer else 'a number'} in [{lo}, {hi}]"
                )
                return default
            return value

        purposes = strings("purposes")
        organizations = strings("organizations")
        min_cohort = number("min_cohort", 10, 1, 10**9, integer=True)
        min_isolation = data.pop("min_isolation", "subprocess")
        if min_isolation not in ISOLATION_LEVELS:
            problems.append(
                f"policy.min_isolation: {min_isolation!r} is not one of {', '.join(ISOLATION_LEVELS)}"
            )
            min_isolation = "bubblewrap"
        require_dp = data.pop("require_dp", False)
        if not isinstance(require_dp, bool):
            problems.append("policy.require_dp: expected true or false")
            require_dp = True
        policy = cls(
            purposes=purposes,
            organizations=organizations,
            min_cohort=min_cohort,
            min_isolation=str(min_isolation),
            require_dp=require_dp,
            dp_clip_norm=float(number("dp_clip_norm", 1.0, 1e-6, 1e6)),
            dp_noise_multiplier=float(number("dp_noise_multiplier", 0.0, 0.0, 1e3)),
            small_count_threshold=number("small_count_threshold", 5, 1, 10**6, integer=True),
            max_round_seconds=float(number("max_round_seconds", 900.0, 1.0, 7 * 24 * 3600.0)),
            extra=data,
        )
        if problems:
            raise PolicyError("; ".join(problems))
        return policy
