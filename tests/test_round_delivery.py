"""A site whose answer the SuperLink lost is asked again; it answers with the update it
already computed (no second training or audit entry), and the aggregator counts it once.

The grid is the in-process one with the SuperLink's one behaviour that matters here: a site
that stops reporting heartbeats gets a ``NODE_UNAVAILABLE`` error written in place of its
reply, and the reply it sends later is dropped (the SuperLink keeps one reply per message).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Error, Message, MessageType, RecordDict
from flwr.common.constant import ErrorCode

from aggregator.delivery import send_and_collect
from aggregator.federation import run_federation
from clinical_node import replies
from clinical_node.client_app import build_client_app
from clinical_node.runtime import open_node
from deploy.inprocess import InProcessGrid
from paroma.demo import demo_job
from paroma.wire import config_int, to_record
from protection_layer.audit import AuditLog


class LossyLink(InProcessGrid):
    """Loses the train replies of ``node`` in ``rounds``: the site trains, its reply is
    dropped and the SuperLink answers "Node Unavailable"; the node is back for the next ask."""

    def __init__(self, sites: list[str], node: int, rounds: set[int]) -> None:
        super().__init__(build_client_app(sites), len(sites))
        self.node = node
        self.rounds = set(rounds)
        self.pushed: Counter[tuple[int, str, int]] = Counter()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        batch = list(messages)
        ids = list(super().push_messages(batch))
        for message, message_id in zip(batch, ids, strict=True):
            meta = message.metadata
            server_round = config_int(message.content.config_records.get("config"), "server-round")
            self.pushed[(meta.dst_node_id, meta.message_type, server_round)] += 1
            lost = meta.message_type == MessageType.TRAIN and server_round in self.rounds
            if meta.dst_node_id == self.node and lost:
                self.rounds.discard(server_round)
                self._replies[message_id] = Message(
                    Error(ErrorCode.NODE_UNAVAILABLE, "Error: Node Unavailable"), reply_to=message
                )
        return ids


def _sites(root: Path) -> list[str]:
    return sorted(str(p) for p in root.iterdir() if (p / "site.toml").exists())


def _trained_rounds(site: str, job_sha256: str) -> list[int]:
    return [
        int(e["data"]["round"])
        for e in AuditLog.for_site(site).entries()
        if e.get("kind") == "round"
        and e["data"].get("job") == job_sha256
        and e["data"].get("kind") == "train"
        and e["data"].get("status") == "ok"
    ]


def test_a_lost_update_is_asked_for_again_and_answered_without_training_twice(uci_sites: Path) -> None:
    sites = _sites(uci_sites)[:2]
    job = demo_job(2)
    grid = LossyLink(sites, node=1, rounds={1})
    grid.take_serverapp_identity()
    result = run_federation(grid, job, expected_sites=len(sites), node_wait_s=0)
    assert result.status == "completed", result.reason
    # The site was asked twice for round 1 and counted once, with its update.
    assert grid.pushed[(1, MessageType.TRAIN, 1)] == 2
    assert grid.pushed[(1, MessageType.TRAIN, 2)] == 1
    first = result.rounds[0].sites
    assert len(first) == len(sites)
    # The in-process grid's node n serves the n-th site folder.
    lost_site = open_node(sites[0]).site_id
    assert first[lost_site].n_train > 0 and first[lost_site].error == ""
    # It trained (and audited) round 1 once: the second answer was the update it kept.
    assert _trained_rounds(sites[0], job.sha256) == [1, 2]


def test_a_repeated_instruction_with_another_model_is_refused() -> None:
    job = demo_job(2)

    def instruction(weight: float) -> Message:
        content = RecordDict(
            {
                "arrays": to_record({"w": np.full((1, 3), weight, np.float32)}),
                "config": ConfigRecord({"server-round": 1, "job": job.to_json()}),
            }
        )
        return Message(content, dst_node_id=1, message_type=MessageType.TRAIN)

    state = RecordDict()
    first = instruction(0.0)
    assert replies.recall(state, "train", first) is None
    answer = RecordDict({"arrays": to_record({"w": np.ones((1, 3), np.float32)})})
    replies.remember(state, "train", first, answer)
    again = replies.recall(state, "train", instruction(0.0))
    assert again is not None and np.array_equal(again["arrays"]["w"].numpy(), np.ones((1, 3)))
    with pytest.raises(replies.RepeatedRound, match="round 1 of this job was already answered"):
        replies.recall(state, "train", instruction(0.5))
    # The next round is a new instruction.
    later = instruction(0.0)
    later.content["config"] = ConfigRecord({"server-round": 2, "job": job.to_json()})
    assert replies.recall(state, "train", later) is None


class _SilentGrid(InProcessGrid):
    """Node 2 is reported unavailable and never comes back; node 1 answers."""

    def __init__(self) -> None:
        super().__init__(None, 2)  # type: ignore[arg-type]

    def get_node_ids(self) -> Iterable[int]:
        return [1]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message_id = f"m{len(self._replies) + len(ids)}-{message.metadata.dst_node_id}"
            message.metadata.__dict__["_message_id"] = message_id
            ids.append(message_id)
            if message.metadata.dst_node_id == 2:
                error = Error(ErrorCode.NODE_UNAVAILABLE, "Error: Node Unavailable")
                self._replies[message_id] = Message(error, reply_to=message)
            else:
                self._replies[message_id] = Message(RecordDict(), reply_to=message)
        return ids


def test_an_unavailable_site_is_not_waited_for_once_the_others_answered() -> None:
    grid = _SilentGrid()
    grid.take_serverapp_identity()
    now = [0.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    messages = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.TRAIN) for n in (1, 2)]
    answers = send_and_collect(grid, messages, 60.0, enough=1, clock=lambda: now[0], sleep=sleep)
    assert sorted(answers) == [1, 2]
    assert not answers[1].has_error()
    assert answers[2].has_error() and answers[2].error.code == ErrorCode.NODE_UNAVAILABLE
    assert sleeps == []  # the round went on at once with the site that answered
    # With the job's minimum not reached, the unavailable site is waited for until the timeout.
    messages = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.TRAIN) for n in (1, 2)]
    answers = send_and_collect(grid, messages, 10.0, enough=2, clock=lambda: now[0], sleep=sleep)
    assert sorted(answers) == [1, 2] and answers[2].has_error()
    assert sum(sleeps) >= 10.0
