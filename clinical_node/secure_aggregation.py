"""The site's side of secure aggregation (SecAgg+, Bell et al. 2020): the update leaves masked.

Flower's ``secaggplus_mod`` runs the protocol's client stages (key agreement, Shamir shares of
the mask seeds, masking, unmasking). It expects the legacy ``fitres.*`` records from the
ClientApp, so ``masked_update_adapter`` sits between it and the node: it turns the node's
reply (already validated and, where the site or job asks, clipped and noised by the node)
into the vector to mask, the update's difference to the global model, weighted as the job's
FedAvg weighs the site. Metrics and the site record travel in the clear as in every round;
the mod empties every array record of the reply, so the update itself never leaves in the
clear.

A job that asks for secure aggregation is never answered with a plain update: a train
message for it without the protocol's records is refused (fail closed), so an aggregator
cannot downgrade the job.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Context, Error, Message, MessageType, MetricRecord
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, RECORD_KEY_STATE
from flwr.compat.common import recorddict_compat as compat

from paroma.jobspec import JobSpec, JobSpecError
from paroma.wire import arrays_of, from_record

ERROR_SECURE_AGGREGATION_REQUIRED = 4203


class SecureAggregationAborted(RuntimeError):
    """The node produced no update for this round; the protocol treats the site as dropped."""


def site_weight(job: JobSpec, num_examples: int) -> float:
    """The site's weight in the job's mean, as ``SizeDampedFedAvg`` weighs it."""
    exponent = float(job.strategy_params.get("weight_exponent", 1.0)) if job.strategy == "fedavg" else 1.0
    return float(num_examples) ** exponent


def _job_of(message: Message) -> JobSpec | None:
    config = message.content.config_records.get("config")
    if config is None or "job" not in config:
        return None
    try:
        return JobSpec.from_json(str(config["job"]))
    except JobSpecError:
        return None


def masked_update_adapter(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Between ``secaggplus_mod`` and the node: the node's reply as the ``fitres`` the mod
    masks (the weighted difference to the global model), metrics and site record kept."""
    reply = call_next(message, context)
    if reply.has_error():
        raise SecureAggregationAborted(reply.error.reason)
    job = _job_of(message)
    if job is None:
        raise SecureAggregationAborted("the train message carries no valid job spec")
    sent = from_record(arrays_of(message.content))
    trained = from_record(arrays_of(reply.content))
    # The server adds the mean difference back to the global model it sent, so the vector
    # to mask is small and SecAgg+'s clipping range bounds the update, not the model.
    delta = [np.asarray(trained[name], dtype=np.float64) - sent[name] for name in sent]
    metrics = reply.content.metric_records["metrics"]
    examples = metrics.get("num-examples", 0)
    weight = site_weight(job, int(examples) if isinstance(examples, int | float) else 0)
    # SecAgg+ quantises weight / max_weight x update within its clipping range: beyond them
    # the sum would wrap or clip silently, so the site leaves the round with the reason.
    protocol = context.state.config_records.get(RECORD_KEY_STATE)
    if protocol is not None:
        max_weight = float(protocol.get("max_weight", 0.0) or 0.0)  # type: ignore[arg-type]
        clipping = float(protocol.get("clipping_range", 0.0) or 0.0)  # type: ignore[arg-type]
        if max_weight > 0 and weight > max_weight:
            raise SecureAggregationAborted(
                f"the site's weight {weight:.0f} is above SecAgg+'s max_weight {max_weight:.0f}"
            )
        largest = max((float(np.max(np.abs(d))) for d in delta if d.size), default=0.0)
        if max_weight > 0 and clipping > 0 and largest * weight / max_weight > clipping:
            raise SecureAggregationAborted(
                f"the site's weighted update leaves SecAgg+'s clipping range +-{clipping:g}"
            )
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(delta), round(weight), {})
    content = compat.fitres_to_recorddict(fitres, keep_input=True)
    # FitRes holds an int; the mod only divides it by max_weight, so the exact weight is kept.
    content.metric_records["fitres.num_examples"] = MetricRecord({"num_examples": weight})
    content.metric_records["metrics"] = metrics
    site = reply.content.config_records.get("site")
    if site is not None:
        content.config_records["site"] = site
    return Message(content, reply_to=message)


def secure_aggregation_mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """A ClientApp mod: train messages of the SecAgg+ protocol go through Flower's
    ``secaggplus_mod``; a plain train message for a job that asks for secure aggregation is
    refused."""
    if message.metadata.message_type != MessageType.TRAIN:
        return call_next(message, context)
    if RECORD_KEY_CONFIGS in message.content.config_records:

        def node(m: Message, c: Context) -> Message:
            return masked_update_adapter(m, c, call_next)

        return secaggplus_mod(message, context, node)
    job = _job_of(message)
    if job is not None and job.privacy.secure_aggregation:
        return Message(
            Error(
                ERROR_SECURE_AGGREGATION_REQUIRED,
                "the job asks for secure aggregation; this site sends its update only masked (SecAgg+)",
            ),
            reply_to=message,
        )
    return call_next(message, context)
