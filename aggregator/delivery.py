"""Getting one reply per site for a round's instructions, across transport faults.

Flower's SuperLink answers an instruction whose destination stopped reporting heartbeats with
a ``NODE_UNAVAILABLE`` error in place of the site's reply, and the instruction is gone (a site
that left mid-round, or whose path was down for longer than its heartbeat patience). When
such a site is back (it reports heartbeats again) while the round still runs, the same
instruction is sent to it once more: the site answers a repeated instruction for a job and
round with the update it already computed, if it did (``clinical_node.replies``), so a site
is never trained twice for a round and its update is counted at most once.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable

from flwr.app import Message
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

POLL_S = 1.0
MAX_RESENDS = 2


def is_node_unavailable(reply: Message) -> bool:
    return reply.has_error() and reply.error.code == ErrorCode.NODE_UNAVAILABLE


def again(instruction: Message) -> Message:
    """The same instruction as a new message (a message id is used once)."""
    metadata = instruction.metadata
    return Message(
        instruction.content,
        metadata.dst_node_id,
        metadata.message_type,
        group_id=metadata.group_id,
    )


def send_and_collect(
    grid: Grid,
    instructions: Iterable[Message],
    timeout: float,
    *,
    enough: int = 0,
    poll_s: float = POLL_S,
    max_resends: int = MAX_RESENDS,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[int, Message]:
    """Node id -> its reply, for every node that answered within ``timeout`` seconds.

    An error reply is an answer, except ``NODE_UNAVAILABLE``: that node is asked again as soon
    as it is back (at most ``max_resends`` times). Once no instruction is outstanding and at
    least ``enough`` nodes returned a result, nodes still away are not waited for: the round
    goes on with the others. One reply per node: the first that is not an
    unavailability."""
    deadline = clock() + timeout
    originals = {m.metadata.dst_node_id: m for m in instructions}
    pending: dict[str, int] = {}
    answers: dict[int, Message] = {}
    unavailable: dict[int, Message] = {}
    resends: Counter[int] = Counter()

    def push(batch: list[Message]) -> None:
        if not batch:
            return
        ids = list(grid.push_messages(batch))
        for message, message_id in zip(batch, ids, strict=True):
            if message_id:
                pending[message_id] = message.metadata.dst_node_id

    def results() -> int:
        return sum(1 for reply in answers.values() if not reply.has_error())

    push(list(originals.values()))
    while pending or unavailable:
        if pending:
            for reply in grid.pull_messages(list(pending)):
                node_id = pending.pop(reply.metadata.reply_to_message_id, None)
                if node_id is None or node_id in answers:
                    continue
                if is_node_unavailable(reply) and resends[node_id] < max_resends:
                    unavailable[node_id] = reply
                else:
                    answers[node_id] = reply
        if clock() >= deadline:
            break
        if unavailable:
            live = set(grid.get_node_ids())
            back = [n for n in unavailable if n in live]
            for node_id in back:
                del unavailable[node_id]
                resends[node_id] += 1
            push([again(originals[n]) for n in back])
        if not pending and results() >= enough:
            break
        sleep(poll_s)
    for node_id, reply in unavailable.items():
        answers.setdefault(node_id, reply)
    return answers
