"""The sandbox worker: the process, inside the sandbox, that runs a job's training plan.

Started by the node (``python -I -B -m clinical_node.sandbox.worker CONFIG``) already
inside the namespaces and under the uid its backend gives it. Before any plan code runs it
makes itself harder to misuse: no new privileges, death with its parent, rlimits as hard
limits it cannot raise again, stdout moved off the protocol channel. Then it imports torch
once, says it is ready and serves one task per request line for the job's lifetime.

In ``probe`` mode it only reports what it can see and do (uid, capabilities, network
interfaces, which of the site's private files it can open) and exits: the node checks
that a backend really isolates before trusting it.

This module imports only the standard library at load, so that a probe starts fast.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import resource
import socket
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO

PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
MAX_REQUEST_BYTES = 1024 * 1024

_NETWORK_ERRNOS = {
    errno.ENETUNREACH,
    errno.EHOSTUNREACH,
    errno.ECONNREFUSED,
    errno.EADDRNOTAVAIL,
    errno.ENETDOWN,
}
_FILESYSTEM_ERRNOS = {errno.EACCES, errno.EPERM, errno.ENOENT, errno.EROFS, errno.ENOTDIR, errno.EISDIR}


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def harden(config: dict[str, Any]) -> None:
    """Limits the plan cannot lift: set before any plan code is loaded."""
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    _prctl(PR_SET_PDEATHSIG, 9)
    if os.getppid() == 1 and not config.get("pid_namespace"):
        os._exit(70)  # the node died before the signal was armed
    for name, hard in config["rlimits"].items():
        which = getattr(resource, name)
        soft = hard
        if name == "RLIMIT_NPROC" and os.getuid() != 0:
            # RLIMIT_NPROC counts every process of the uid: when the node cannot give the
            # sandbox its own uid, the limit is on top of what that uid already runs.
            soft = hard = hard + config.get("uid_processes", 0)
        resource.setrlimit(which, (soft, hard))


def classify(exc: BaseException) -> str:
    """The failure code for an exception that escaped the plan."""
    if isinstance(exc, MemoryError):
        return "memory"
    if isinstance(exc, RuntimeError) and "allocate" in str(exc).lower():
        return "memory"  # torch's CPU allocator raises RuntimeError, not MemoryError
    if isinstance(exc, socket.gaierror):
        return "network"
    if isinstance(exc, OSError):
        if exc.errno == errno.EFBIG:
            return "file-size"
        if exc.errno == errno.EAGAIN:
            return "processes"
        if exc.errno == errno.ENOMEM:
            return "memory"
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return "scratch"
        if exc.errno in _NETWORK_ERRNOS:
            return "network"
        if exc.errno in _FILESYSTEM_ERRNOS:
            return "filesystem"
    return "plan-raised"


def probe(config: dict[str, Any]) -> dict[str, Any]:
    status = Path("/proc/self/status").read_text()
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    readable: list[str] = []
    for path in config.get("private", []):
        try:
            if os.path.isdir(path):
                if os.listdir(path):
                    readable.append(path)
            else:
                with open(path, "rb") as fh:
                    if fh.read(1):  # an empty read is the /dev/null laid over a file
                        readable.append(path)
        except OSError:
            pass
    writable_input = True
    try:
        with open(os.path.join(config["in"], ".probe"), "wb"):
            pass
    except OSError:
        writable_input = False
    return {
        "probe": True,
        "uid": os.getuid(),
        "euid": os.geteuid(),
        "pid": os.getpid(),
        "cap_eff": int(fields.get("CapEff", "0").strip(), 16),
        "no_new_privs": fields.get("NoNewPrivs", "0").strip() == "1",
        "interfaces": sorted(name for _, name in socket.if_nameindex()),
        "readable_private": readable,
        "writable_input": writable_input,
    }


class Server:
    def __init__(self, config: dict[str, Any], answers: BinaryIO) -> None:
        import numpy as np

        from ..plans import TrainingPlan
        from ..training import LocalTask, run_task

        self.np = np
        self.TrainingPlan = TrainingPlan
        self.LocalTask = LocalTask
        self.run_task = run_task
        self.config = config
        self.answers = answers
        self.inputs = Path(config["in"])
        self.outputs = Path(config["out"])
        self.pid = os.getpid()
        self._data: dict[str, tuple[Any, Any]] = {}
        import torch  # the ~1 s import a worker exists to pay once

        torch.set_num_threads(1)
        # torch loads much of itself on first use (autograd, optimisers): pay that now, in
        # the start-up, rather than in the first round.
        model = torch.nn.Linear(2, 1)
        torch.optim.SGD(model.parameters(), lr=0.1).step()
        torch.nn.functional.binary_cross_entropy(
            torch.sigmoid(model(torch.zeros(1, 2))), torch.ones(1, 1)
        ).backward()

    def answer(self, message: dict[str, Any]) -> None:
        if os.getpid() != self.pid:
            os._exit(0)  # a process the plan forked must not speak for the worker

        def number(value: Any) -> Any:
            try:
                return float(value)
            except (TypeError, ValueError):
                return f"<{type(value).__name__}>"

        self.answers.write(json.dumps(message, default=number, allow_nan=True).encode() + b"\n")
        self.answers.flush()

    def data(self, name: str) -> tuple[Any, Any]:
        if name not in self._data:
            with self.np.load(self.inputs / name, allow_pickle=False) as npz:
                loaded = (npz["x"], npz["y"])
            # the training and the test set of the current cohort; older ones are gone
            self._data = {**dict(list(self._data.items())[-1:]), name: loaded}
        return self._data[name]

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        x, y = self.data(request["data"])
        with self.np.load(self.inputs / request["weights"], allow_pickle=False) as npz:
            weights = {k: npz[k] for k in npz.files}
        plan = self.TrainingPlan(
            request["plan_name"], self.inputs / request["plan_file"], request["plan_sha256"]
        )
        usage = resource.getrusage(resource.RUSAGE_SELF)
        used = usage.ru_utime + usage.ru_stime
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        soft = int(used + float(request["cpu_seconds"])) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (min(soft, hard), hard))
        start = time.perf_counter()
        result = self.run_task(
            self.LocalTask(
                kind=request["kind"],
                plan=plan,
                n_features=int(request["n_features"]),
                weights=weights,
                hyper=request["hyper"],
                x=x,
                y=y,
            )
        )
        seconds = time.perf_counter() - start
        output = None
        if result.weights is not None:
            output = request["output"]
            target = self.outputs / output
            with open(target, "wb") as fh:
                self.np.savez(fh, allow_pickle=False, **result.weights)
        return {"ok": True, "metrics": result.metrics, "output": output, "seconds": seconds}

    def serve(self, requests: BinaryIO) -> None:
        self.answer({"ready": True, "pid": self.pid, "uid": os.getuid()})
        while True:
            line = requests.readline(MAX_REQUEST_BYTES)
            if not line:
                return
            request = json.loads(line)
            try:
                message = self.handle(request)
            except BaseException as exc:
                code = classify(exc)
                if code == "plan-raised" and "TrainingPlanError" in type(exc).__name__:
                    code = "plan-invalid"
                message = {"ok": False, "code": code, "exception": type(exc).__name__}
                print(f"task {request.get('id')} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            message["id"] = request.get("id")
            self.answer(message)


def main(argv: list[str]) -> int:
    config = json.loads(argv[1])
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # the plan's prints go to the site's sandbox log, never into the answers
    harden(config)
    os.chdir(config["tmp"])
    if config.get("mode") == "probe":
        answers.write(json.dumps(probe(config)).encode() + b"\n")
        answers.flush()
        return 0
    Server(config, answers).serve(sys.stdin.buffer)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
