"""The training sandbox: every local training and evaluation of a job runs in a worker
process the node starts, isolated (namespaces, a minimal read-only filesystem view, a uid
of its own, no capabilities, no network) and limited (rlimits, scratch quota, a wall-clock
deadline per task), never in the node's own process.

``SandboxExecutor.strongest()`` probes the backends (bubblewrap, unshare, subprocess) and
keeps the strongest that proves its isolation; the level it achieved is the executor's
``isolation``, reported with every round and checked by site admission.
"""

from .backends import BACKENDS, BackendUnavailable, Runtime
from .executor import UNAVAILABLE, ProbeResult, SandboxExecutor, UnavailableExecutor, kill_uid
from .limits import SandboxLimits
from .protocol import REASONS, SandboxFailure

__all__ = [
    "BACKENDS",
    "REASONS",
    "UNAVAILABLE",
    "BackendUnavailable",
    "ProbeResult",
    "Runtime",
    "SandboxExecutor",
    "SandboxFailure",
    "SandboxLimits",
    "UnavailableExecutor",
    "kill_uid",
]
