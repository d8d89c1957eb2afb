"""A site answers a repeated instruction with the reply it already gave.

The aggregator asks a site again for a round when the SuperLink lost the site's answer (the
site left mid-round and came back, ``aggregator/delivery.py``). The site must not train,
spend privacy budget or audit the round twice: the last successful reply of each kind (train,
evaluate) is kept in the node's Flower context state with what it answered, the job, the
round and a digest of the instruction (job spec, round, global model). The same instruction
gets the same reply; another instruction for a round already answered is refused (fail
closed: two updates of one round on different models would release more than one).
"""

from __future__ import annotations

import hashlib

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from paroma.wire import config_int

PREFIX = "paroma-reply"


class RepeatedRound(Exception):
    """An instruction for a job and round this site already answered, with another model."""


def _job_of(message: Message) -> str:
    record = message.content.config_records.get("config") or message.content.config_records.get("job")
    return str(record.get("job", "")) if record is not None else ""


def instruction_digest(message: Message) -> str:
    """SHA-256 over what the site computes from: job spec, round and the global model."""
    digest = hashlib.sha256()
    digest.update(_job_of(message).encode())
    digest.update(str(config_int(message.content.config_records.get("config"), "server-round")).encode())
    for key in sorted(message.content.array_records):
        for name, array in sorted(message.content.array_records[key].items()):
            digest.update(f"{key}/{name}/{array.dtype}/{list(array.shape)}".encode())
            digest.update(array.data)
    return digest.hexdigest()


def _round_key(message: Message) -> tuple[str, int]:
    job = hashlib.sha256(_job_of(message).encode()).hexdigest()
    return job, config_int(message.content.config_records.get("config"), "server-round")


def recall(state: RecordDict, kind: str, message: Message) -> RecordDict | None:
    """The reply this site gave to this instruction, if it gave one; raises RepeatedRound for
    a different instruction of a job and round it already answered."""
    meta = state.config_records.get(f"{PREFIX}-{kind}")
    if meta is None:
        return None
    job, server_round = _round_key(message)
    if meta.get("job") != job or meta.get("round") != server_round:
        return None
    if meta.get("instruction") != instruction_digest(message):
        raise RepeatedRound(
            f"round {server_round} of this job was already answered ({kind}) for another global model"
        )
    reply = RecordDict()
    for name in ("arrays", "metrics", "site"):
        stored = state.get(f"{PREFIX}-{kind}-{name}")
        if stored is not None:
            reply[name] = stored
    return reply


def remember(state: RecordDict, kind: str, message: Message, reply: RecordDict) -> None:
    """Keep ``reply`` as this site's answer to ``message`` (replacing the previous round's)."""
    job, server_round = _round_key(message)
    for name in ("arrays", "metrics", "site"):
        key = f"{PREFIX}-{kind}-{name}"
        if key in state:
            del state[key]
        record = reply.get(name)
        if isinstance(record, ArrayRecord | MetricRecord | ConfigRecord):
            state[key] = record
    state[f"{PREFIX}-{kind}"] = ConfigRecord(
        {"job": job, "round": server_round, "instruction": instruction_digest(message)}
    )
