"""What travels in Flower Messages between the aggregator and the clinical nodes.

Train and evaluate messages carry ``arrays`` (the global model, named tensors) and ``config``
(``server-round`` and ``job``: the job spec as canonical JSON). Replies carry ``arrays``
(train only), ``metrics`` (with ``num-examples``) and ``site`` (which site, the isolation its
sandbox achieved, its cohort counts). The admission query carries ``job`` and is answered
with ``admission`` (site-id, accepted, reason). A failed round is a Flower Error reply whose
reason starts with ``site <id>:``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

ADMISSION_QUERY = "query.admission"
ERROR_ROUND_FAILED = 4201


def to_record(weights: Mapping[str, np.ndarray]) -> ArrayRecord:
    record = ArrayRecord()
    for name, value in weights.items():
        record[name] = Array(np.ascontiguousarray(value))
    return record


def from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {name: array.numpy() for name, array in record.items()}


def arrays_of(content: RecordDict, key: str = "arrays") -> ArrayRecord:
    record = content.array_records.get(key)
    if record is None:
        raise KeyError(f"the message has no {key!r} arrays")
    return record


def numbers_of(record: MetricRecord | ConfigRecord) -> dict[str, float]:
    """The scalar numbers of a record (lists and text are left out)."""
    return {k: float(v) for k, v in record.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def config_int(record: ConfigRecord | None, key: str, default: int = 0) -> int:
    value = record.get(key, default) if record is not None else default
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else default
