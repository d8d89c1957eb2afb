"""Secure aggregation (SecAgg+): the aggregator sees only masked updates, yet the unmasked sum
is the FedAvg aggregate; a site that drops mid-round is unmasked around; a site never sends a
secure job's update in the clear; jobs that cannot be aggregated securely are refused."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

from aggregator.federation import initial_weights, run_federation
from aggregator.secure_aggregation import SecAggPlusSettings, run_secure_train_round
from aggregator.strategies import build_strategy
from clinical_node.client_app import build_client_app
from clinical_node.secure_aggregation import (
    ERROR_SECURE_AGGREGATION_REQUIRED,
    secure_aggregation_mod,
    site_weight,
)
from deploy.inprocess import InProcessGrid
from paroma.demo import demo_job
from paroma.jobspec import JobSpec, JobSpecError, parse_job_spec
from paroma.wire import from_record, to_record

pytestmark = pytest.mark.slow


def _job(secure: bool, strategy: dict[str, Any] | None = None) -> JobSpec:
    doc = demo_job(1, seed=42).to_dict()
    doc["privacy"]["secure_aggregation"] = secure
    doc["training"]["local_steps"] = 20
    if strategy is not None:
        doc["strategy"] = strategy
    return parse_job_spec(doc)


class _RecordingGrid(InProcessGrid):
    """The Grid as the aggregator sees it, keeping every reply that reaches the server side."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[Message] = []

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(super().pull_messages(message_ids))
        self.seen.extend(replies)
        return replies


def _clear_updates(store: dict[str, tuple[dict[str, np.ndarray], float]], job: JobSpec) -> Any:
    """A mod inside the site (between secure aggregation and the node): what the site's real
    update is, as only the site knows it."""

    def mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(message, context)
        if message.metadata.message_type == MessageType.TRAIN and not reply.has_error():
            sent = from_record(message.content.array_records["arrays"])
            trained = from_record(reply.content.array_records["arrays"])
            site = str(reply.content.config_records["site"]["site-id"])
            n = int(reply.content.metric_records["metrics"]["num-examples"])  # type: ignore[arg-type]
            store[site] = ({k: trained[k].astype(np.float64) - sent[k] for k in sent}, site_weight(job, n))
        return reply

    return mod


def _drop(site: str) -> Any:
    def mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(message, context)
        if (
            message.metadata.message_type == MessageType.TRAIN
            and not reply.has_error()
            and reply.content.config_records["site"]["site-id"] == site
        ):
            return Message(Error(4201, f"site {site}: lost its connection"), reply_to=message)
        return reply

    return mod


def _run(sites: list[Path], job: JobSpec, mods: list[Any]) -> tuple[_RecordingGrid, Any]:
    grid = _RecordingGrid(build_client_app([str(s) for s in sites], mods), len(sites))
    grid.take_serverapp_identity()
    return grid, run_federation(grid, job, expected_sites=len(sites), node_wait_s=0)


def _all_bytes(message: Message) -> list[bytes]:
    out: list[bytes] = []
    for record in message.content.config_records.values():
        for value in record.values():
            values = value if isinstance(value, list) else [value]
            out.extend(v for v in values if isinstance(v, bytes))
    return out


def _sites(uci_sites: Path) -> list[Path]:
    return sorted(p for p in uci_sites.iterdir() if (p / "site.toml").exists())


def test_aggregator_sees_only_masked_updates_yet_gets_the_fedavg_aggregate(uci_sites: Path) -> None:
    sites = _sites(uci_sites)
    job = _job(secure=True)
    clear: dict[str, tuple[dict[str, np.ndarray], float]] = {}
    grid, result = _run(sites, job, [_clear_updates(clear, job)])
    assert result.status == "completed", result.reason
    assert sorted(clear) == sorted(result.rounds[0].sites) and len(clear) == 4

    # Nothing that reached the aggregator carries an update in the clear: every array record
    # is empty, and the masked vectors look nothing like the sites' quantised updates.
    settings = SecAggPlusSettings()
    masked_vectors = []
    for reply in grid.seen:
        if reply.has_error():
            continue
        assert all(len(record) == 0 for record in reply.content.array_records.values())
        config = reply.content.config_records.get(RECORD_KEY_CONFIGS)
        if config is not None and Key.MASKED_PARAMETERS in config:
            masked_vectors.append(
                np.concatenate([bytes_to_ndarray(b).ravel() for b in config[Key.MASKED_PARAMETERS]])  # type: ignore[union-attr]
            )
        raw = b"".join(_all_bytes(reply))
        for delta, _ in clear.values():
            for value in delta.values():
                assert value.astype(np.float32).tobytes() not in raw
    assert len(masked_vectors) == 4
    level = 2 * settings.clipping_range / settings.quantization_range
    for delta, weight in clear.values():
        flat = np.concatenate([v.ravel() for v in delta.values()])
        ratio = weight / settings.max_weight
        unmasked = np.round((np.clip(flat * ratio, -8, 8) + settings.clipping_range) / level)
        for vector in masked_vectors:
            # masks are uniform in [0, 2**32): far from any site's quantised values
            assert np.median(np.abs(vector[1:].astype(np.float64) - unmasked)) > 1e6

    # The unmasked sum is FedAvg's weighted mean of the real updates.
    start = initial_weights(job)
    total = sum(w for _, w in clear.values())
    assert result.weights is not None
    bound = settings.quantisation_error(4, total)
    for name, value in start.items():
        expected = value + sum(w * d[name] for d, w in clear.values()) / total
        np.testing.assert_allclose(result.weights[name], expected, atol=bound + 1e-6)
        assert not np.allclose(result.weights[name], value)

    # The same job without secure aggregation aggregates to the same model (same seeds).
    plain_grid, plain = _run(sites, _job(secure=False), [])
    assert plain.status == "completed" and plain.weights is not None
    assert any(len(r.content.array_records.get("arrays", {})) > 0 for r in plain_grid.seen)
    for name in start:
        np.testing.assert_allclose(result.weights[name], plain.weights[name], atol=bound + 1e-5)
    assert result.rounds[0].sites["cleveland"].n_train == plain.rounds[0].sites["cleveland"].n_train

    # A site that drops after sharing its keys: the others' shares remove its pairwise masks
    # and the mean is that of the sites that sent a vector.
    clear.clear()
    # the recorder sits outside the drop, so it sees the dropped site's update too
    _, dropped = _run(sites, job, [_drop("switzerland"), _clear_updates(clear, job)])
    assert dropped.status == "completed", dropped.reason
    assert "lost its connection" in dropped.rounds[0].sites["switzerland"].error
    honest = {k: v for k, v in clear.items() if k != "switzerland"}
    total = sum(w for _, w in honest.values())
    assert dropped.weights is not None and len(honest) == 3
    for name, value in start.items():
        expected = value + sum(w * d[name] for d, w in honest.values()) / total
        np.testing.assert_allclose(
            dropped.weights[name], expected, atol=settings.quantisation_error(3, total) + 1e-6
        )


class _TamperingGrid(_RecordingGrid):
    """One site's masked vector arrives truncated (a faulty or malicious site)."""

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(super().pull_messages(message_ids))
        for reply in replies:
            config = None if reply.has_error() else reply.content.config_records.get(RECORD_KEY_CONFIGS)
            if reply.metadata.src_node_id == 2 and config is not None and Key.MASKED_PARAMETERS in config:
                config[Key.MASKED_PARAMETERS] = list(config[Key.MASKED_PARAMETERS])[:1]  # type: ignore[arg-type]
        return replies


def test_a_malformed_masked_vector_drops_that_site_not_the_round(uci_sites: Path) -> None:
    sites = _sites(uci_sites)[:3]
    job = _job(secure=True)
    grid = _TamperingGrid(build_client_app([str(s) for s in sites]), len(sites))
    grid.take_serverapp_identity()
    result = run_federation(grid, job, expected_sites=len(sites), node_wait_s=0)
    assert result.status == "completed", result.reason
    errors = {name: s.error for name, s in result.rounds[0].sites.items() if s.error}
    assert len(errors) == 1 and "does not follow SecAgg+" in next(iter(errors.values()))


def _instant_sites(scale_of: dict[int, float]) -> ClientApp:
    """Sites that answer at once with global + scale x 0.01 (no training)."""
    app = ClientApp(mods=[secure_aggregation_mod])

    @app.train()
    def train(message: Message, context: Context) -> Message:
        weights = from_record(message.content.array_records["arrays"])
        scale = scale_of.get(context.node_id, 1.0)
        update = {k: (v + scale * 0.01).astype(v.dtype) for k, v in weights.items()}
        return Message(
            RecordDict(
                {
                    "arrays": to_record(update),
                    "metrics": MetricRecord({"num-examples": 100}),
                    "site": ConfigRecord({"site-id": f"site-{context.node_id}"}),
                }
            ),
            reply_to=message,
        )

    return app


def test_an_update_outside_the_quantisation_range_leaves_the_round_not_corrupts_it() -> None:
    job = _job(secure=True, strategy={"name": "fedavg"})
    grid = InProcessGrid(_instant_sites({3: 1e5}), 4)
    grid.take_serverapp_identity()
    model = {"w": np.zeros(8, dtype=np.float32)}
    strategy = build_strategy("fedavg", {}, 4)
    messages = strategy.configure_train(
        1, to_record(model), ConfigRecord({"job": job.to_json(), "server-round": 1}), grid
    )
    secure = run_secure_train_round(grid, messages, 1, SecAggPlusSettings())
    assert [f.metadata.src_node_id for f in secure.failures] == [3]
    assert "clipping range" in str(secure.failures[0].error.reason)
    np.testing.assert_allclose(
        secure.mean_update["w"], 0.01, atol=SecAggPlusSettings().quantisation_error(3, 300.0)
    )


def test_site_refuses_to_send_a_secure_jobs_update_in_the_clear(uci_sites: Path) -> None:
    sites = _sites(uci_sites)[:1]
    job = _job(secure=True)
    grid = InProcessGrid(build_client_app([str(s) for s in sites]), 1)
    grid.take_serverapp_identity()
    content = RecordDict(
        {
            "arrays": to_record(initial_weights(job)),
            "config": ConfigRecord({"job": job.to_json(), "server-round": 1}),
        }
    )
    [reply] = list(grid.send_and_receive([Message(content, 1, MessageType.TRAIN)]))
    assert reply.has_error()
    assert reply.error.code == ERROR_SECURE_AGGREGATION_REQUIRED
    assert "only masked" in str(reply.error.reason)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"strategy": {"name": "krum"}}, "strategy 'krum' needs each update in the clear"),
        ({"strategy": {"name": "fedmedian"}}, "strategy 'fedmedian'"),
        ({"privacy": {"mode": "server-fixed", "clip_norm": 1.0, "noise_multiplier": 1.0}}, "server-side DP"),
    ],
)
def test_jobs_that_need_clear_updates_refuse_secure_aggregation(
    changes: dict[str, Any], message: str
) -> None:
    doc = demo_job(1).to_dict()
    doc.update({k: v for k, v in changes.items() if k != "privacy"})
    doc["privacy"] = {**doc["privacy"], **changes.get("privacy", {}), "secure_aggregation": True}
    with pytest.raises(JobSpecError, match=r"privacy\.secure_aggregation") as info:
        parse_job_spec(doc)
    assert message in str(info.value)
