"""The clinical node's Flower ClientApp: a thin adapter from Flower Messages to ClinicalNode.

Which site a ClientApp instance serves: ``site-dir`` in the SuperNode's node config
(deployment), else the ``partition-id``-th site folder under the run config's ``sites-root``
(simulation runtime).
"""

from __future__ import annotations

import os

from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod

from paroma.jobspec import JobSpec, JobSpecError
from paroma.wire import ERROR_ROUND_FAILED, arrays_of, config_int, from_record, to_record

from . import replies
from .node import ClinicalNode, RoundFailure, RoundReport
from .runtime import open_node, site_dirs
from .secure_aggregation import secure_aggregation_mod


def _node_for(context: Context, sites: list[str] | None) -> ClinicalNode:
    site_dir = context.node_config.get("site-dir")
    if not site_dir:
        partition = int(context.node_config.get("partition-id", -1))
        if sites is None:
            root = str(context.run_config.get("sites-root") or os.environ.get("PAROMA_SITES_ROOT", ""))
            sites = [str(p) for p in site_dirs(root)] if root else []
        if not 0 <= partition < len(sites):
            raise RuntimeError(f"no site folder for partition {partition}: {len(sites)} site folders known")
        site_dir = sites[partition]
    return open_node(str(site_dir))


def _job(message: Message) -> JobSpec:
    config = message.content.config_records.get("config") or message.content.config_records.get("job")
    if config is None or "job" not in config:
        raise JobSpecError([("job", "the message carries no job spec")])
    return JobSpec.from_json(str(config["job"]))


def _round(message: Message) -> int:
    return config_int(message.content.config_records.get("config"), "server-round")


def _policy_version(node: ClinicalNode) -> str:
    """The version of the policies the site's protection layer decided with ("" without one)."""
    layer = node.protection
    return str(layer.engine.policy_version) if layer is not None else ""


def _site_record(report: RoundReport, policy_version: str = "") -> ConfigRecord:
    record = ConfigRecord(
        {
            "site-id": report.site_id,
            "isolation": report.isolation,
            "snapshot": report.snapshot,
            "policy-version": policy_version,
            "seconds": float(report.seconds),
        }
    )
    for key, value in report.cohort.items():
        record[f"cohort-{key}"] = int(value)
    for key, number in report.privacy.items():
        record[f"dp-{key.replace('_', '-')}"] = float(number)
    return record


def _error(message: Message, node: ClinicalNode | None, code: int, reason: str) -> Message:
    who = node.site_id if node is not None else "unknown site"
    return Message(Error(code, f"site {who}: {reason}"), reply_to=message)


def _reply_admission(message: Message, node: ClinicalNode, accepted: bool, reason: str) -> Message:
    record = ConfigRecord({"site-id": node.site_id, "accepted": accepted, "reason": reason})
    return Message(RecordDict({"admission": record}), reply_to=message)


def build_client_app(sites: list[str] | None = None, mods: list[Mod] | None = None) -> ClientApp:
    """A ClientApp serving the given site folders by partition id (simulation), or the
    ``site-dir`` node config / ``sites-root`` run config when ``sites`` is None."""
    # Secure aggregation wraps everything else: attacks scripted by ``mods`` and the node's
    # own checks and DP act on the update before it is masked.
    app = ClientApp(mods=[secure_aggregation_mod, *(mods or [])])

    @app.query("admission")
    def admission(message: Message, context: Context) -> Message:
        node = _node_for(context, sites)
        try:
            job = _job(message)
        except JobSpecError as exc:
            return _reply_admission(message, node, False, f"invalid job spec: {exc}")
        decision = node.admit(job)
        return _reply_admission(message, node, decision.accepted, decision.reason)

    @app.train()
    def train(message: Message, context: Context) -> Message:
        node = _node_for(context, sites)
        try:
            # A repeated instruction (the aggregator lost the first answer) gets the same
            # update: no second training, privacy spend or audit entry for the round.
            again = replies.recall(context.state, "train", message)
            if again is not None:
                return Message(again, reply_to=message)
            job = _job(message)
            weights = from_record(arrays_of(message.content))
            report = node.train(job, _round(message), weights)
        except (RoundFailure, JobSpecError, replies.RepeatedRound) as exc:
            return _error(message, node, ERROR_ROUND_FAILED, str(exc))
        assert report.weights is not None
        metrics = MetricRecord({"num-examples": report.num_examples, **report.metrics})
        content = RecordDict(
            {
                "arrays": to_record(report.weights),
                "metrics": metrics,
                "site": _site_record(report, _policy_version(node)),
            }
        )
        replies.remember(context.state, "train", message, content)
        return Message(content, reply_to=message)

    @app.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        node = _node_for(context, sites)
        try:
            again = replies.recall(context.state, "evaluate", message)
            if again is not None:
                return Message(again, reply_to=message)
            job = _job(message)
            weights = from_record(arrays_of(message.content))
            report = node.evaluate(job, _round(message), weights)
        except (RoundFailure, JobSpecError, replies.RepeatedRound) as exc:
            return _error(message, node, ERROR_ROUND_FAILED, str(exc))
        metrics = MetricRecord({"num-examples": report.num_examples, **report.metrics})
        content = RecordDict({"metrics": metrics, "site": _site_record(report, _policy_version(node))})
        replies.remember(context.state, "evaluate", message, content)
        return Message(content, reply_to=message)

    return app


app = build_client_app()
