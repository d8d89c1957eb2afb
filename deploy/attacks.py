"""Scripted attacks for simulations: a site whose updates are poisoned.

A researcher's scenario may make a site malicious from some round on. The attack is a Flower
ClientApp mod, so it acts where a compromised site would: on the update the site sends,
after the node's own checks. It needs the global model the site received to know the
site's honest delta = update - global.

* ``sign-flip``: sends global - scale * delta (gradient-ascent direction, amplified);
* ``scale``: sends global + scale * delta (model-replacement style boosting);
* ``noise``: sends global + delta + N(0, noise_std^2) per coordinate.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from flwr.app import Context, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable, Mod

from paroma.wire import arrays_of, from_record, to_record

ATTACK_KINDS = ("sign-flip", "scale", "noise")


class AttackError(ValueError):
    pass


@dataclass(frozen=True)
class Poisoning:
    site: str
    kind: str = "sign-flip"
    scale: float = 10.0
    noise_std: float = 1.0
    from_round: int = 1

    def __post_init__(self) -> None:
        if self.kind not in ATTACK_KINDS:
            raise AttackError(f"attack kind {self.kind!r} is not one of {', '.join(ATTACK_KINDS)}")
        if self.scale <= 0 or self.noise_std < 0 or self.from_round < 1:
            raise AttackError("attack scale must be > 0, noise_std >= 0 and from_round >= 1")

    def apply(
        self, sent: dict[str, np.ndarray], honest: dict[str, np.ndarray], seed: int
    ) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        out = {}
        for name, value in honest.items():
            delta = value - sent[name]
            if self.kind == "sign-flip":
                poisoned = sent[name] - self.scale * delta
            elif self.kind == "scale":
                poisoned = sent[name] + self.scale * delta
            else:
                poisoned = value + rng.normal(0.0, self.noise_std, size=value.shape)
            out[name] = poisoned.astype(value.dtype)
        return out


def poisoning_mod(attacks: Iterable[Poisoning]) -> Mod:
    """A ClientApp mod that poisons the train replies of the attacking sites."""
    by_site = {a.site: a for a in attacks}

    def mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(message, context)
        if message.metadata.message_type != MessageType.TRAIN or reply.has_error():
            return reply
        site = reply.content.config_records.get("site")
        attack = by_site.get(str(site.get("site-id", ""))) if site is not None else None
        config = message.content.config_records.get("config")
        server_round = int(config.get("server-round", 0)) if config is not None else 0  # type: ignore[arg-type]
        if attack is None or server_round < attack.from_round:
            return reply
        sent = from_record(arrays_of(message.content))
        honest = from_record(arrays_of(reply.content))
        reply.content["arrays"] = to_record(attack.apply(sent, honest, seed=server_round))
        return reply

    return mod
