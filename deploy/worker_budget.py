"""A cap on the sandbox workers alive at once when many simulated sites share one machine.

Every clinical node keeps one sandbox worker per job alive for the job's lifetime (torch
imported once per job, clinical_node/sandbox/executor.py), which costs about 220 MB of
private memory per site. On a hospital's own machine that is one worker; a simulation of 100
sites in one process would hold 100 of them. This ClientApp mod releases the worker of another
site when more than ``max_live`` are alive. The Grid visits the sites in the same order every
pass (train, then evaluate), so the site used most recently is the one needed furthest in the
future: evicting it (MRU) keeps ``max_live - 1`` workers useful per pass, where LRU would
restart every one.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable, Mod

from paroma.jobspec import JobSpec, JobSpecError


def worker_budget_mod(sites: Sequence[str], max_live: int) -> Mod:
    """A mod for a ClientApp serving ``sites`` by partition id (as build_client_app does)."""
    if max_live < 1:
        raise ValueError(f"max_live must be >= 1, got {max_live}")
    live: OrderedDict[str, str] = OrderedDict()  # site folder -> job sha256, most recent last
    lock = threading.Lock()

    def mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
        from clinical_node.runtime import open_node

        reply = call_next(message, context)
        config = message.content.config_records.get("config")
        partition = int(context.node_config.get("partition-id", -1))
        if config is None or "job" not in config or not 0 <= partition < len(sites):
            return reply
        try:
            job = JobSpec.from_json(str(config["job"]))
        except JobSpecError:
            return reply
        site = sites[partition]
        evict: list[tuple[str, str]] = []
        with lock:
            previous = next(reversed(live), None) if live else None
            live[site] = job.sha256
            live.move_to_end(site)
            if len(live) > max_live and previous is not None and previous != site:
                evict.append((previous, live.pop(previous)))
        for folder, sha in evict:
            open_node(folder).executor.release(sha)
        return reply

    return mod
