"""Aggregation strategies of a job: Flower's message-API strategies, configured from the spec.

Every strategy samples all participating sites each round (cross-silo federated learning:
few sites, all of them take part), so its minimums equal the number of sites admitted.

A job asking for server-side differential privacy (``privacy.mode`` "server-fixed" or
"server-adaptive") gets its strategy wrapped in Flower's central-DP wrappers: the
aggregator clips each site's update and adds Gaussian noise to the aggregate. Site-side DP
("site", the default) is applied by each clinical node itself (``clinical_node.privacy``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import (
    Bulyan,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
    Strategy,
)
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from paroma.jobspec import PrivacySettings


class StrategyError(ValueError):
    """A strategy name or parameter that cannot be used."""


class SizeDampedFedAvg(FedAvg):
    """FedAvg whose site weights are ``n_c ** weight_exponent`` instead of ``n_c``.

    An exponent below 1 gives small sites more say than their sample count: with sites as
    unequal as the heart-disease hospitals (199 to 30 training records, 44 % to 100 %
    prevalence) the shared intercept is then not pulled towards the largest site only.
    ``weight_exponent = 1`` is Flower's FedAvg exactly, 0 the unweighted mean.
    """

    def __init__(self, *, weight_exponent: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= weight_exponent <= 1.0:
            raise StrategyError(f"weight_exponent {weight_exponent} is outside [0, 1]")
        self.weight_exponent = weight_exponent

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid:
            return None, None
        contents = []
        for reply in valid:
            metrics = MetricRecord(dict(reply.content.metric_records["metrics"].items()))
            examples = metrics[self.weighted_by_key]
            assert isinstance(examples, int | float)
            metrics[self.weighted_by_key] = float(examples) ** self.weight_exponent
            arrays = reply.content.array_records[self.arrayrecord_key]
            contents.append(RecordDict({self.arrayrecord_key: arrays, "metrics": metrics}))
        return (
            aggregate_arrayrecords(contents, self.weighted_by_key),
            self.train_metrics_aggr_fn(contents, self.weighted_by_key),
        )


def _fedopt(cls: type[Any]) -> Callable[..., Strategy]:
    def make(common: dict[str, Any], p: Mapping[str, float]) -> Strategy:
        kwargs: dict[str, Any] = {k: float(p[k]) for k in ("eta", "eta_l", "tau") if k in p}
        if cls is not FedAdagrad:
            kwargs.update({k: float(p[k]) for k in ("beta_1", "beta_2") if k in p})
        strategy: Strategy = cls(**common, **kwargs)
        return strategy

    return make


_BUILDERS: dict[str, Callable[[dict[str, Any], Mapping[str, float]], Strategy]] = {
    "fedavg": lambda c, p: SizeDampedFedAvg(**c, weight_exponent=float(p.get("weight_exponent", 1.0))),
    "fedprox": lambda c, p: FedProx(**c, proximal_mu=float(p.get("proximal_mu", 0.01))),
    "fedadam": _fedopt(FedAdam),
    "fedyogi": _fedopt(FedYogi),
    "fedadagrad": _fedopt(FedAdagrad),
    "fedavgm": lambda c, p: FedAvgM(
        **c,
        server_learning_rate=float(p.get("server_learning_rate", 1.0)),
        server_momentum=float(p.get("server_momentum", 0.9)),
    ),
    "krum": lambda c, p: Krum(**c, num_malicious_nodes=int(p.get("num_malicious_nodes", 1))),
    "multikrum": lambda c, p: MultiKrum(
        **c,
        num_malicious_nodes=int(p.get("num_malicious_nodes", 1)),
        num_nodes_to_select=int(p.get("num_nodes_to_select", 2)),
    ),
    "fedmedian": lambda c, p: FedMedian(**c),
    "fedtrimmedavg": lambda c, p: FedTrimmedAvg(**c, beta=float(p.get("beta", 0.25))),
    "bulyan": lambda c, p: Bulyan(**c, num_malicious_nodes=int(p.get("num_malicious_nodes", 1))),
}

STRATEGY_NAMES = tuple(_BUILDERS)


def with_server_dp(strategy: Strategy, privacy: PrivacySettings, n_sites: int) -> Strategy:
    """``strategy`` wrapped in Flower's server-side DP wrapper that ``privacy.mode`` asks for
    (unchanged for site-side DP)."""
    if privacy.mode == "server-fixed":
        return DifferentialPrivacyServerSideFixedClipping(
            strategy, privacy.noise_multiplier, privacy.clip_norm, n_sites
        )
    if privacy.mode == "server-adaptive":
        return DifferentialPrivacyServerSideAdaptiveClipping(
            strategy,
            privacy.noise_multiplier,
            n_sites,
            initial_clipping_norm=privacy.clip_norm if privacy.clip_norm > 0 else 0.1,
            # Flower's default (sites/20) is too little noise on the clipped count for a
            # handful of sites; it must exceed half the noise multiplier (Andrew et al. 2021).
            clipped_count_stddev=max(n_sites / 20, privacy.noise_multiplier),
        )
    return strategy


def build_strategy(
    name: str,
    params: Mapping[str, float],
    n_sites: int,
    *,
    privacy: PrivacySettings | None = None,
    min_sites: int | None = None,
) -> Strategy:
    """A Flower strategy that trains and evaluates on all ``n_sites`` each round, wrapped
    for server-side DP when ``privacy`` asks for it. A round waits for at least ``min_sites``
    connected sites (default: all of them), so a site that is gone does not stall the job."""
    builder = _BUILDERS.get(name)
    if builder is None:
        raise StrategyError(f"unknown strategy {name!r}; expected one of {', '.join(_BUILDERS)}")
    if n_sites < 1:
        raise StrategyError("a strategy needs at least one site")
    common: dict[str, Any] = {
        "fraction_train": 1.0,
        "fraction_evaluate": 1.0,
        "min_train_nodes": min_sites or n_sites,
        "min_evaluate_nodes": min_sites or n_sites,
        "min_available_nodes": min_sites or n_sites,
    }
    try:
        strategy = builder(common, params)
        return with_server_dp(strategy, privacy, n_sites) if privacy is not None else strategy
    except (TypeError, ValueError) as exc:
        raise StrategyError(f"strategy {name}: {exc}") from exc
