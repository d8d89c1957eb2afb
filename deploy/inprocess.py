"""An in-process Flower Grid: the ServerApp's messages are handed straight to each site's
ClientApp in the same process, one after the other.

It runs exactly the federation code of the other runtimes (the ServerApp's job loop, the
Flower strategy, the ClientApp and the clinical node) without Ray or a SuperLink, so that
benchmarks can repeat many jobs quickly and deterministically. Deployments use the
SuperLink; the demo uses Flower's simulation runtime.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from aggregator.federation import FederationObserver, FederationResult, run_federation
from clinical_node.client_app import build_client_app
from paroma.jobspec import JobSpec

ERROR_CLIENTAPP_CRASHED = 4299


class InProcessGrid(Grid):
    def __init__(self, client_app: ClientApp, n_nodes: int, run_id: int = 1) -> None:
        self._app = client_app
        self._run = Run.create_empty(run_id)
        self._contexts = {
            node_id: Context(
                run_id, node_id, {"partition-id": i, "num-partitions": n_nodes}, RecordDict(), {}
            )
            for i, node_id in enumerate(range(1, n_nodes + 1))
        }
        self._replies: dict[str, Message] = {}
        self.down: set[int] = set()  # nodes that do not answer (to script failures)

    def take_serverapp_identity(self) -> None:
        """Make this process send as this grid's ServerApp: messages take their run and sender
        from the process's task identity, as in a ServerApp process started by a SuperLink
        (0 is the SuperLink's own node id)."""
        TaskIdentity.run_id = self.run.run_id
        TaskIdentity.node_id = 0
        TaskIdentity.task_id = 1

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return [n for n in self._contexts if n not in self.down]

    def delivers_to(self, node_id: int) -> bool:
        """Whether a message to ``node_id`` reaches its ClientApp."""
        return node_id in self._contexts and node_id not in self.down

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message_id = str(uuid.uuid4())
            message.metadata.__dict__["_message_id"] = message_id
            node_id = message.metadata.dst_node_id
            if not self.delivers_to(node_id):
                # not delivered, and no reply will ever come: no id to wait for
                ids.append("")
                continue
            ids.append(message_id)
            try:
                reply = self._app(message, self._contexts[node_id])
            except Exception as exc:  # a crashing ClientApp is a failed reply, as on a SuperLink
                reply = Message(
                    Error(ERROR_CLIENTAPP_CRASHED, f"ClientApp raised {type(exc).__name__}: {exc}"),
                    reply_to=message,
                )
            self._replies[message_id] = reply
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


def run_inprocess_job(
    job: JobSpec,
    sites: Sequence[Path],
    *,
    observer: FederationObserver | None = None,
    mods: list[Mod] | None = None,
) -> FederationResult:
    """Run ``job`` over the given site folders with an in-process Grid (``mods`` wrap every
    site's ClientApp, e.g. scripted attacks)."""
    grid = InProcessGrid(build_client_app([str(Path(s).resolve()) for s in sites], mods), len(sites))
    grid.take_serverapp_identity()
    return run_federation(grid, job, observer=observer, expected_sites=len(sites), node_wait_s=0)
