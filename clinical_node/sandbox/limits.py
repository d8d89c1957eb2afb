"""How much a sandboxed training plan may use: rlimits, quotas and timeouts.

The numbers are per sandbox worker (one per job at a site). The wall-clock deadline of a
task is not here: it comes with each task, from the site policy and the job.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

MiB = 1024 * 1024
GiB = 1024 * MiB


@dataclass(frozen=True)
class SandboxLimits:
    # RLIMIT_AS: importing torch maps ~0.7 GB; a plan gets the rest.
    address_space_bytes: int = 6 * GiB
    # RLIMIT_NOFILE
    open_files: int = 256
    # RLIMIT_NPROC of the worker's own uid: processes and threads together.
    processes: int = 64
    # RLIMIT_FSIZE: no single file the plan writes may be larger.
    file_size_bytes: int = 256 * MiB
    # Everything in the worker's scratch and output folders together (polled by the node).
    scratch_bytes: int = 1 * GiB
    # RLIMIT_CPU of one task (soft, set before each task); None: the task's wall deadline.
    cpu_seconds_per_task: float | None = None
    # RLIMIT_CPU hard limit over the worker's whole life.
    cpu_seconds_lifetime: int = 24 * 3600
    # Starting a worker (interpreter + torch import) must not take longer.
    start_timeout_s: float = 120.0
    # A worker unused for this long is stopped (its job has probably ended).
    idle_timeout_s: float = 900.0
    # Workers kept alive at once by one node (the least recently used is stopped).
    max_workers: int = 4

    def with_(self, **changes: Any) -> SandboxLimits:
        return replace(self, **changes)

    def rlimits(self) -> dict[str, int]:
        """The worker's hard rlimits, by resource name (the worker applies them to itself)."""
        return {
            "RLIMIT_AS": int(self.address_space_bytes),
            "RLIMIT_NOFILE": int(self.open_files),
            "RLIMIT_NPROC": int(self.processes),
            "RLIMIT_FSIZE": int(self.file_size_bytes),
            "RLIMIT_CPU": int(self.cpu_seconds_lifetime),
            "RLIMIT_CORE": 0,
        }
