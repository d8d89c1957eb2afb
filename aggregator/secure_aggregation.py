"""The aggregator's side of secure aggregation (SecAgg+, Bell et al. 2020) on the Message API.

A job with ``[privacy] secure_aggregation = true`` trains each round through the protocol's
four stages, every one a round trip of train messages to the participating sites:

0. setup: the protocol's parameters out, each site's two public keys back;
1. share keys: each site gets its neighbours' public keys and returns its Shamir shares of
   its private mask seed and first secret key, encrypted for each neighbour;
2. collect masked vectors: the shares are forwarded with the global model and the job; each
   site trains, and returns its weighted update difference quantised and masked (pairwise
   masks that cancel in the sum, plus a private mask);
3. unmask: the sites still present return the shares that let the aggregator remove the
   private masks of the sites that sent a vector and the pairwise masks of those that dropped.

Only the sum is ever unmasked. The site side is Flower's ``secaggplus_mod``
(``clinical_node.secure_aggregation``); this module restates the server stages of Flower's
``SecAggPlusWorkflow`` with Flower's own primitives, because that workflow drives a legacy
``Strategy`` through a ``LegacyContext`` while the aggregator runs Message-API strategies.
The unmasked weighted mean is handed to the job's strategy as one reply, so FedAvg returns
it unchanged and the server optimisers (FedAvgM, FedAdam, FedYogi, FedAdagrad) apply their
step to it.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import cast

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
from flwr.common.secure_aggregation.ndarrays_arithmetic import (
    factor_extract,
    get_parameters_shape,
    parameters_addition,
    parameters_mod,
    parameters_subtraction,
)
from flwr.common.secure_aggregation.quantization import dequantize
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

from paroma.wire import from_record, to_record

ERROR_MALFORMED_REPLY = 4210


class SecureAggregationFailed(RuntimeError):
    """Too few sites stayed in the protocol to unmask the sum; the reason says at which stage."""


@dataclass(frozen=True)
class SecAggPlusSettings:
    """The protocol's parameters (Flower's ``SecAggPlusWorkflow`` names and defaults).

    ``num_shares`` and ``reconstruction_threshold`` as fractions: of the sites, and of the
    shares. ``clipping_range`` bounds each coordinate of the update difference before
    quantisation into ``quantization_range`` levels; ``max_weight`` bounds a site's weight.
    """

    num_shares: float = 1.0
    reconstruction_threshold: float = 0.67
    clipping_range: float = 8.0
    quantization_range: int = 2**22
    modulus_range: int = 2**32
    max_weight: float = 1000.0

    def shares_and_threshold(self, n_sites: int) -> tuple[int, int]:
        shares = round(self.num_shares * n_sites)
        if shares < n_sites and shares % 2 == 0:
            shares += 1
        if shares <= 2:
            shares = n_sites
        return shares, max(round(self.reconstruction_threshold * shares), 2)

    def quantisation_error(self, n_sites: int, total_weight: float) -> float:
        """An upper bound on a coordinate's error in the unmasked weighted mean: each site
        rounds its weighted value stochastically (less than a level) and its weight to a level, the
        mean divides by the total weight."""
        level = 2 * self.clipping_range / self.quantization_range
        return 2 * n_sites * level * self.max_weight / max(total_weight, 1e-12)


@dataclass
class _State:
    sampled: list[int]
    threshold: int
    neighbours: dict[int, set[int]]
    active: set[int]
    originals: dict[int, Message] = field(default_factory=dict)
    public_keys: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    failures: list[Message] = field(default_factory=list)

    def malformed(self, reply: Message, stage: str) -> None:
        """A site whose answer does not follow the protocol leaves it, as a failed site."""
        node_id = reply.metadata.src_node_id
        self.active.discard(node_id)
        self.failures.append(
            Message(
                Error(ERROR_MALFORMED_REPLY, f"the site's {stage} answer does not follow SecAgg+"),
                reply_to=self.originals[node_id],
            )
        )


@dataclass
class SecureRound:
    """A round trained through SecAgg+: the sites' replies (metrics and site record, no
    arrays), the failed replies, and the unmasked weighted mean of the update differences."""

    replies: list[Message]
    failures: list[Message]
    mean_update: dict[str, np.ndarray]
    total_weight: float


def _message(node_id: int, server_round: int, content: RecordDict) -> Message:
    return Message(content, dst_node_id=node_id, message_type=MessageType.TRAIN, group_id=str(server_round))


def _exchange(
    grid: Grid, state: _State, server_round: int, contents: Mapping[int, RecordDict], timeout: float | None
) -> list[Message]:
    replies = list(
        grid.send_and_receive(
            [_message(n, server_round, contents[n]) for n in sorted(contents)], timeout=timeout
        )
    )
    ok = [r for r in replies if not r.has_error()]
    state.failures.extend(r for r in replies if r.has_error())
    state.active = {r.metadata.src_node_id for r in ok} & state.active
    return [r for r in ok if r.metadata.src_node_id in state.active]


def _check_threshold(state: _State, stage: str) -> None:
    for node_id in state.sampled:
        if len(state.neighbours[node_id] & state.active) < state.threshold:
            raise SecureAggregationFailed(
                f"secure aggregation stopped at {stage}: {len(state.active)} of {len(state.sampled)} "
                f"sites left, each site needs {state.threshold} of its neighbours to unmask the sum"
            )


def run_secure_train_round(
    grid: Grid,
    train_messages: Iterable[Message],
    server_round: int,
    settings: SecAggPlusSettings,
    timeout: float | None = None,
) -> SecureRound:
    """Train one round through SecAgg+ on the sites ``train_messages`` (the strategy's
    configured train messages: global model and job) are addressed to."""
    originals = {m.metadata.dst_node_id: m for m in train_messages}
    instructions = {node_id: m.content for node_id, m in originals.items()}
    sampled = list(instructions)
    if len(sampled) < 2:
        raise SecureAggregationFailed("secure aggregation needs at least two sites")
    shares, threshold = settings.shares_and_threshold(len(sampled))
    order = sampled[:]
    random.SystemRandom().shuffle(order)
    half = shares >> 1
    neighbours = {
        nid: {order[(i + k) % len(order)] for k in range(-half, half + 1)} for i, nid in enumerate(order)
    }
    state = _State(sampled, threshold, neighbours, set(sampled), originals)

    # Stage 0: setup.
    # One record per site: a site's mod consumes the stage key of the record it receives.
    def setup(nid: int) -> RecordDict:
        record = ConfigRecord(
            {
                Key.STAGE: Stage.SETUP,
                Key.SAMPLE_NUMBER: len(sampled),
                Key.SHARE_NUMBER: shares,
                Key.THRESHOLD: threshold,
                Key.CLIPPING_RANGE: float(settings.clipping_range),
                Key.TARGET_RANGE: int(settings.quantization_range),
                Key.MOD_RANGE: int(settings.modulus_range),
                Key.MAX_WEIGHT: float(settings.max_weight),
            }
        )
        return RecordDict({RECORD_KEY_CONFIGS: record})

    replies = _exchange(grid, state, server_round, {n: setup(n) for n in sampled}, timeout)
    for reply in replies:
        keys: Mapping[str, object] = reply.content.config_records.get(RECORD_KEY_CONFIGS) or {}
        pk1, pk2 = keys.get(Key.PUBLIC_KEY_1), keys.get(Key.PUBLIC_KEY_2)
        if not isinstance(pk1, bytes) or not isinstance(pk2, bytes):
            state.malformed(reply, "setup")
            continue
        state.public_keys[reply.metadata.src_node_id] = (pk1, pk2)
    _check_threshold(state, "setup")

    # Stage 1: share keys.
    def share_keys(nid: int) -> RecordDict:
        record = ConfigRecord(
            {str(other): list(state.public_keys[other]) for other in state.neighbours[nid] & state.active}
        )
        record[Key.STAGE] = Stage.SHARE_KEYS
        return RecordDict({RECORD_KEY_CONFIGS: record})

    replies = _exchange(grid, state, server_round, {n: share_keys(n) for n in sorted(state.active)}, timeout)
    forward: dict[int, tuple[list[int], list[bytes]]] = {n: ([], []) for n in state.active}
    for reply in replies:
        src = reply.metadata.src_node_id
        try:
            record = reply.content.config_records[RECORD_KEY_CONFIGS]
            pairs = list(
                zip(
                    cast(list[int], record[Key.DESTINATION_LIST]),
                    cast(list[bytes], record[Key.CIPHERTEXT_LIST]),
                    strict=True,
                )
            )
        except (KeyError, TypeError, ValueError):
            state.malformed(reply, "key sharing")
            continue
        for dst, ciphertext in pairs:
            if dst in forward and isinstance(ciphertext, bytes):
                forward[dst][0].append(src)
                forward[dst][1].append(ciphertext)
    _check_threshold(state, "key sharing")

    # Stage 2: collect masked vectors (the sites train here).
    def collect(nid: int) -> RecordDict:
        content = RecordDict(dict(instructions[nid].items()))
        srcs, ciphertexts = forward[nid]
        content.config_records[RECORD_KEY_CONFIGS] = ConfigRecord(
            {Key.STAGE: Stage.COLLECT_MASKED_VECTORS, Key.CIPHERTEXT_LIST: ciphertexts, Key.SOURCE_LIST: srcs}
        )
        return content

    replies = _exchange(grid, state, server_round, {n: collect(n) for n in sorted(state.active)}, timeout)
    masked: list[np.ndarray] | None = None
    site_replies: list[Message] = []
    total_weight = 0.0
    # the weight factor first, then one vector per tensor of the global model
    expected = [(1,)] + [
        tuple(a.shape) for a in next(iter(instructions.values())).array_records["arrays"].values()
    ]
    for reply in replies:
        try:
            record = reply.content.config_records[RECORD_KEY_CONFIGS]
            vector = [bytes_to_ndarray(b) for b in cast(list[bytes], record[Key.MASKED_PARAMETERS])]
            weight = float(cast(float, reply.content.metric_records["fitres.num_examples"]["num_examples"]))
            kept = _site_reply(reply)
        except (KeyError, TypeError, ValueError):
            state.malformed(reply, "masked-vector")
            continue
        if [tuple(v.shape) for v in vector] != expected or not 0.0 <= weight <= settings.max_weight:
            state.malformed(reply, "masked-vector")
            continue
        masked = vector if masked is None else parameters_addition(masked, vector)
        total_weight += weight
        site_replies.append(kept)
    _check_threshold(state, "masked-vector collection")
    assert masked is not None
    masked = parameters_mod(masked, settings.modulus_range)
    sent_vectors = set(state.active)

    # Stage 3: unmask.
    dead = set(sampled) - sent_vectors

    def unmask(nid: int) -> RecordDict:
        record = ConfigRecord(
            {
                Key.STAGE: Stage.UNMASK,
                Key.ACTIVE_NODE_ID_LIST: sorted(state.neighbours[nid] & sent_vectors),
                Key.DEAD_NODE_ID_LIST: sorted(state.neighbours[nid] & dead),
            }
        )
        return RecordDict({RECORD_KEY_CONFIGS: record})

    replies = _exchange(grid, state, server_round, {n: unmask(n) for n in sorted(state.active)}, timeout)
    collected: dict[int, list[bytes]] = {n: [] for n in sampled}
    for reply in replies:
        try:
            record = reply.content.config_records[RECORD_KEY_CONFIGS]
            owned = list(
                zip(
                    cast(list[int], record[Key.NODE_ID_LIST]),
                    cast(list[bytes], record[Key.SHARE_LIST]),
                    strict=True,
                )
            )
        except (KeyError, TypeError, ValueError):
            continue  # its shares are missing; the threshold decides whether the sum can be unmasked
        for owner, share in owned:
            if owner in collected and isinstance(share, bytes):
                collected[owner].append(share)
    shapes = get_parameters_shape(masked)
    for nid, share_list in collected.items():
        if len(share_list) < threshold:
            raise SecureAggregationFailed(
                f"secure aggregation stopped at unmasking: {len(share_list)} shares of a site's secret "
                f"came back, {threshold} needed"
            )
        try:
            secret = combine_shares(share_list)
        except ValueError as exc:
            raise SecureAggregationFailed(
                f"secure aggregation stopped at unmasking: a secret's shares do not combine ({exc})"
            ) from None
        if nid in sent_vectors:
            masked = parameters_subtraction(masked, pseudo_rand_gen(secret, settings.modulus_range, shapes))
            continue
        # A site that dropped after sharing keys: rebuild its pairwise masks from its secret key.
        for other in state.neighbours[nid] - {nid}:
            if other not in sent_vectors:
                continue
            shared = generate_shared_key(
                bytes_to_private_key(secret), bytes_to_public_key(state.public_keys[other][0])
            )
            mask = pseudo_rand_gen(shared, settings.modulus_range, shapes)
            # The dropped site would have added (nid > other) or subtracted this mask and the
            # other site did the opposite, so the other site's share is left in the sum.
            masked = (
                parameters_addition(masked, mask) if nid > other else parameters_subtraction(masked, mask)
            )
    summed = parameters_mod(masked, settings.modulus_range)
    q_total_ratio, quantised = factor_extract(summed)
    aggregated = dequantize(quantised, settings.clipping_range, settings.quantization_range)
    offset = -(len(sent_vectors) - 1) * settings.clipping_range
    scale = settings.quantization_range / q_total_ratio
    mean = [(vector + offset) * scale for vector in aggregated]
    names = list(next(iter(instructions.values())).array_records["arrays"].keys())
    return SecureRound(
        site_replies,
        state.failures,
        dict(zip(names, mean, strict=True)),
        total_weight,
    )


def _site_reply(reply: Message) -> Message:
    """What the round's bookkeeping keeps of a site's reply: metrics and site record (the
    protocol's records, and the emptied array records, are dropped)."""
    content = RecordDict({"metrics": reply.content.metric_records["metrics"]})
    site = reply.content.config_records.get("site")
    if site is not None:
        content.config_records["site"] = site
    kept = copy.copy(reply)
    kept.content = content
    return kept


def aggregate_secure_round(
    strategy: Strategy, server_round: int, global_arrays: ArrayRecord, secure: SecureRound
) -> tuple[ArrayRecord | None, MetricRecord | None]:
    """The job strategy's aggregate of a secure round: the unmasked mean handed to it as
    the only reply, with the sites' train metrics averaged as the strategy averages them."""
    model = from_record(global_arrays)
    averaged = {name: (model[name] + secure.mean_update[name]).astype(model[name].dtype) for name in model}
    metrics = MetricRecord({"num-examples": float(secure.total_weight)})
    aggregate_metrics = getattr(strategy, "train_metrics_aggr_fn", None)
    if secure.replies and aggregate_metrics is not None:
        contents = [r.content for r in secure.replies]
        metrics = MetricRecord(dict(aggregate_metrics(contents, "num-examples").items()))
        metrics["num-examples"] = float(secure.total_weight)
    one = Message(
        RecordDict({"arrays": to_record(averaged), "metrics": metrics}),
        dst_node_id=0,
        message_type=MessageType.TRAIN,
    )
    return strategy.aggregate_train(server_round, [one])
