"""The node's side of the sandbox: starting workers, handing them tasks, enforcing limits.

One worker per job is kept alive for the job's lifetime (importing torch costs about a
second; a round should not). Each task still has its own wall-clock deadline and CPU
limit; a worker that fails in any way is killed with every process it started, its
folders are wiped, and the next task starts a fresh one. The scratch and output folders
are wiped after every task.

Which backend: :meth:`SandboxExecutor.strongest` probes them strongest first and keeps
the first whose probe worker proves the isolation it promises. When none does, the node
gets an executor with isolation ``unavailable``, which every admission policy refuses and
which runs nothing: a sandbox that cannot start releases nothing.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import logging
import os
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..training import ExecutorFailure, LocalResult, LocalTask
from . import backends
from .backends import BACKENDS, BackendUnavailable, Layout, Runtime, UidPool
from .limits import MiB, SandboxLimits
from .protocol import (
    BUILTIN_EXCEPTIONS,
    MAX_ANSWER_BYTES,
    WORKER_CODES,
    SandboxFailure,
    decode_answer,
    encode,
    failure,
    read_update,
    write_arrays,
)

log = logging.getLogger("paroma.sandbox")

UNAVAILABLE = "unavailable"
_PREFIX = "paroma-sandbox-"
_POLL_S = 0.1
_SCRATCH_EVERY_S = 0.2
_UIDS = UidPool()
# Workers are started from one long-lived thread: the kernel's parent-death signal,
# which takes a worker down with the node, fires when the *thread* that forked it ends.
_LAUNCHER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="paroma-sandbox-launcher")


def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, real uid) of every live process on the host (zombies, already
    dead and waiting for their parent to reap them, are left out)."""
    table: dict[int, tuple[int, int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status") as fh:
                ppid = uid = -1
                for line in fh:
                    if line.startswith("State:") and line.split()[1] in ("Z", "X"):
                        break
                    if line.startswith("PPid:"):
                        ppid = int(line.split()[1])
                    elif line.startswith("Uid:"):
                        uid = int(line.split()[1])
                        break
            if uid >= 0:
                table[int(entry.name)] = (ppid, uid)
        except (OSError, ValueError, IndexError):
            continue
    return table


def _tree(root: int, uid: int | None) -> set[int]:
    """The processes started from ``root`` (by parentage), plus every process of ``uid``:
    those that left the tree (double fork, setsid) keep the sandbox's uid."""
    table = _proc_table()
    found = {root} if root in table else set()
    changed = True
    while changed:
        changed = False
        for pid, (ppid, _) in table.items():
            if ppid in found and pid not in found:
                found.add(pid)
                changed = True
    if uid is not None:
        found |= {pid for pid, (_, owner) in table.items() if owner == uid}
    return found


def _kill(pids: Iterable[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def kill_uid(uid: int) -> None:
    """Kill every process of a sandbox uid until none is left (a fork bomb keeps forking
    until it meets RLIMIT_NPROC, so this ends)."""
    for _ in range(200):
        pids = [pid for pid, (_, owner) in _proc_table().items() if owner == uid]
        if not pids:
            return
        _kill(pids)
        time.sleep(0.01)


def _usage(folders: Sequence[Path]) -> int:
    """Bytes on disk in the folders (blocks, so sparse files count as what they use)."""
    total = 0
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
            for name in (*dirnames, *filenames):
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def _empty(folder: Path) -> None:
    """Remove everything inside ``folder`` (symlink-safe: rmtree never follows links)."""
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(folder):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def sweep_stale_folders(base: Path | None = None) -> int:
    """Delete the folders of workers whose node process is gone (killed before it could
    wipe them: their inputs are patient tensors). Returns how many were deleted."""
    removed = 0
    for entry in Path(base or tempfile.gettempdir()).glob(f"{_PREFIX}*-*"):
        pid = entry.name[len(_PREFIX) :].split("-", 1)[0]
        if not pid.isdigit() or entry.is_symlink() or not entry.is_dir():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(entry, ignore_errors=True)
            removed += 1
        except PermissionError:
            continue
    return removed


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


@dataclass
class ProbeResult:
    backend: str
    ok: bool
    reason: str
    seconds: float
    facts: dict[str, Any] = field(default_factory=dict)


class _Worker:
    """One sandboxed worker process and its folders."""

    def __init__(
        self,
        backend: str,
        limits: SandboxLimits,
        runtime: Runtime,
        private: Sequence[Path],
        base: Path | None,
    ) -> None:
        self.backend = backend
        self.limits = limits
        self.runtime = runtime
        self.private = list(private)
        self.uid = _UIDS.take() if backends.is_root() else None
        self.layout = Layout(Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=base)))
        self.process: subprocess.Popen[bytes] | None = None
        self.baseline: set[int] = set()
        self.last_used = time.monotonic()
        self.lock = threading.Lock()
        self._buffer = b""
        self._next_id = 0
        self._prepare_folders()

    # -- folders --------------------------------------------------------------------------

    def _prepare_folders(self) -> None:
        layout = self.layout
        for folder in (layout.inputs, layout.outputs, layout.scratch, layout.stage):
            folder.mkdir(mode=0o700)
        if self.uid is not None:
            # root: group of the sandbox uid may enter and read inputs; only the sandbox
            # uid writes its output and scratch; nobody else gets in at all.
            os.chown(layout.root, 0, self.uid)
            layout.root.chmod(0o750)
            os.chown(layout.inputs, 0, self.uid)
            layout.inputs.chmod(0o750)
            for folder in (layout.outputs, layout.scratch):
                os.chown(folder, self.uid, self.uid)

    def wipe(self) -> None:
        _empty(self.layout.outputs)
        _empty(self.layout.scratch)

    # -- process --------------------------------------------------------------------------

    def _spawn(self, config: dict[str, Any]) -> None:
        rlimits = self.limits.rlimits()
        config = {**config, "rlimits": rlimits}
        if self.uid is None:
            config["uid_processes"] = sum(1 for _, (_, u) in _proc_table().items() if u == os.getuid())
        launch = backends.launch(self.backend, self.runtime, self.layout, self.uid, self.private, config)
        if self.uid is not None:
            kill_uid(self.uid)  # nothing left over from an earlier holder of this uid
        log_fd = os.open(self.layout.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            self.process = _LAUNCHER.submit(
                subprocess.Popen,
                launch.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log_fd,
                env=launch.env,
                cwd=self.layout.scratch,
                start_new_session=True,
                close_fds=True,
            ).result()
        except OSError as exc:
            raise failure("start", str(exc), why=f"{launch.argv[0]}: {exc.strerror}") from exc
        finally:
            os.close(log_fd)

    def _read_line(self, deadline: float, *, task_timeout: float | None) -> bytes:
        """The next answer line; enforces the deadline and the scratch quota meanwhile."""
        assert self.process is not None and self.process.stdout is not None
        fd = self.process.stdout.fileno()
        next_scratch_check = 0.0
        while b"\n" not in self._buffer:
            now = time.monotonic()
            if now >= deadline:
                self.kill()
                if task_timeout is None:
                    raise failure(
                        "start", why=f"the worker did not start within {self.limits.start_timeout_s:g} s"
                    )
                raise failure("deadline", seconds=round(task_timeout, 1))
            if task_timeout is not None and now >= next_scratch_check:
                next_scratch_check = now + _SCRATCH_EVERY_S
                if _usage([self.layout.outputs, self.layout.scratch]) > self.limits.scratch_bytes:
                    self.kill()
                    raise failure("scratch", mib=self.limits.scratch_bytes // MiB)
            ready, _, _ = select.select([fd], [], [], min(_POLL_S, deadline - now))
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                raise self._died(task_timeout)
            self._buffer += chunk
            if len(self._buffer) > MAX_ANSWER_BYTES:
                self.kill()
                raise failure("protocol", "answer too long")
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def _died(self, task_timeout: float | None) -> SandboxFailure:
        assert self.process is not None
        try:
            code = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        detail = self.log_tail()
        self.kill()
        if task_timeout is None:
            return failure(
                "start", detail, why=f"the worker exited during start-up (status {code}); {detail[-300:]}"
            )
        number = -code if code is not None and code < 0 else (code - 128 if code and code > 128 else 0)
        if number == signal.SIGXCPU:
            seconds = self.limits.cpu_seconds_per_task or task_timeout
            return failure("cpu", detail, seconds=round(seconds, 1))
        if number == signal.SIGXFSZ:
            return failure("file-size", detail, mib=self.limits.file_size_bytes // MiB)
        if number:
            return failure("crashed", detail, how=f"killed by {_signal_name(number)}")
        return failure("crashed", detail, how=f"exit status {code}")

    def log_tail(self, size: int = 4000) -> str:
        try:
            with open(self.layout.log, "rb") as fh:
                fh.seek(max(0, os.fstat(fh.fileno()).st_size - size))
                return fh.read().decode(errors="replace")
        except OSError:
            return ""

    def start(self, mode: str = "serve", private_probe: Sequence[str] = ()) -> dict[str, Any]:
        config: dict[str, Any] = {"mode": mode}
        if mode == "probe":
            config["private"] = list(private_probe)
        self._spawn(config)
        line = self._read_line(time.monotonic() + self.limits.start_timeout_s, task_timeout=None)
        facts = decode_answer(line)
        if mode == "serve":
            if facts.get("ready") is not True:
                self.kill()
                raise failure("start", why="the worker did not report ready")
            assert self.process is not None
            self.baseline = _tree(self.process.pid, self.uid)
        return facts

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        process = self.process
        if process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            _kill(_tree(process.pid, self.uid))
        if self.uid is not None:
            kill_uid(self.uid)
        if process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
            for stream in (process.stdin, process.stdout):
                with contextlib.suppress(OSError):
                    if stream is not None:
                        stream.close()

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.layout.root, ignore_errors=True)
        if self.uid is not None:
            _UIDS.give_back(self.uid)

    # -- tasks ----------------------------------------------------------------------------

    def _input(self, name: str, write: Any) -> str:
        path = self.layout.inputs / name
        if not path.exists():
            write(path)
            path.chmod(0o644)
        return name

    def run(self, task: LocalTask, timeout: float) -> LocalResult:
        assert self.process is not None and self.process.stdin is not None
        self._next_id += 1
        task_id = self._next_id
        started = time.perf_counter()
        plan_file = self._input(
            f"plan-{task.plan.sha256}.py", lambda p: p.write_bytes(task.plan.path.read_bytes())
        )
        x = np.ascontiguousarray(task.x, dtype=np.float32)
        y = np.ascontiguousarray(task.y, dtype=np.float32)
        digest = hashlib.sha256(x.tobytes() + repr(x.shape).encode() + y.tobytes()).hexdigest()[:24]
        data_file = self._input(f"data-{digest}.npz", lambda p: write_arrays(p, {"x": x, "y": y}))
        for old in sorted(self.layout.inputs.glob("data-*.npz"), key=lambda p: p.stat().st_mtime)[:-2]:
            old.unlink()
        for old in self.layout.inputs.glob("weights-*.npz"):
            old.unlink()
        weights_file = self._input(f"weights-{task_id}.npz", lambda p: write_arrays(p, task.weights))
        cpu = self.limits.cpu_seconds_per_task or timeout
        request = {
            "id": task_id,
            "kind": task.kind,
            "plan_name": task.plan.name,
            "plan_file": plan_file,
            "plan_sha256": task.plan.sha256,
            "n_features": task.n_features,
            "hyper": task.hyper,
            "data": data_file,
            "weights": weights_file,
            "output": f"update-{task_id}.npz",
            "cpu_seconds": cpu,
        }
        handed_over = time.perf_counter()
        try:
            self.process.stdin.write(encode(request))
            self.process.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise self._died(timeout) from exc
        answer = decode_answer(self._read_line(time.monotonic() + timeout, task_timeout=timeout))
        answered = time.perf_counter()
        if answer.get("id") != task_id:
            raise failure("protocol", "answer to another request")
        if answer.get("ok") is not True:
            code = answer.get("code")
            if code not in WORKER_CODES:
                raise failure("protocol", f"unknown failure code {code!r}")
            detail = self.log_tail()
            if code == "plan-raised":
                name = answer.get("exception")
                shown = name if isinstance(name, str) and name in BUILTIN_EXCEPTIONS else "an exception"
                raise failure("plan-raised", detail, exception=shown)
            values = {
                "memory": {"mib": self.limits.address_space_bytes // MiB},
                "processes": {"n": self.limits.processes},
                "file-size": {"mib": self.limits.file_size_bytes // MiB},
                "scratch": {"mib": self.limits.scratch_bytes // MiB},
            }.get(str(code), {})
            raise failure(str(code), detail, **values)
        metrics = answer.get("metrics")
        if not isinstance(metrics, dict):
            raise failure("protocol", "metrics are not an object")
        weights = None
        if task.kind == "train":
            bound = sum(a.nbytes for a in task.weights.values()) + 1024 * (len(task.weights) + 1) + 65536
            dir_fd = os.open(self.layout.outputs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                weights = read_update(dir_fd, str(answer.get("output") or ""), bound)
            finally:
                os.close(dir_fd)
        finished = time.perf_counter()
        strays = _tree(self.process.pid, self.uid) - self.baseline
        if strays:
            log.warning("sandbox: killing %d process(es) the plan left behind", len(strays))
            _kill(strays)
        self.last_used = time.monotonic()
        seconds = answer.get("seconds")
        plan_seconds = float(seconds) if isinstance(seconds, int | float) else float("nan")
        return LocalResult(
            weights,
            dict(metrics),
            isolation=self.backend,
            timings={
                "handover_s": handed_over - started,
                "answer_s": answered - handed_over,
                "plan_s": plan_seconds,
                "collect_s": finished - answered,
            },
        )


class SandboxExecutor:
    """Runs every task of a job in that job's sandbox worker (TrainingExecutor)."""

    def __init__(
        self,
        backend: str,
        *,
        limits: SandboxLimits | None = None,
        private_paths: Sequence[Path | str] = (),
        workdir: Path | None = None,
        runtime: Runtime | None = None,
        probe: ProbeResult | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown sandbox backend {backend!r}; expected one of {', '.join(BACKENDS)}")
        self.backend = backend
        self.isolation = backend
        self.limits = limits or SandboxLimits()
        self.private_paths = [Path(p).resolve() for p in private_paths]
        self.workdir = workdir
        self.runtime = runtime or Runtime.current()
        self.probe_result = probe
        self._workers: OrderedDict[str, _Worker] = OrderedDict()
        self._lock = threading.Lock()
        self.last_failure: SandboxFailure | None = None
        sweep_stale_folders(workdir)
        atexit.register(self.close)

    # -- probing --------------------------------------------------------------------------

    @classmethod
    def probe(
        cls,
        backend: str,
        *,
        private_paths: Sequence[Path | str] = (),
        limits: SandboxLimits | None = None,
        runtime: Runtime | None = None,
    ) -> ProbeResult:
        """Start a probe worker in ``backend`` and check it is isolated as promised."""
        start = time.perf_counter()
        limits = (limits or SandboxLimits()).with_(start_timeout_s=30.0)
        private = [Path(p).resolve() for p in private_paths]
        try:
            worker = _Worker(backend, limits, runtime or Runtime.current(), private, None)
        except (OSError, BackendUnavailable) as exc:
            return ProbeResult(backend, False, str(exc), time.perf_counter() - start)
        try:
            facts = worker.start("probe", _probe_targets(private))
            problem = _check_probe(backend, facts, worker.uid)
        except BackendUnavailable as exc:
            return ProbeResult(backend, False, str(exc), time.perf_counter() - start)
        except SandboxFailure as exc:
            return ProbeResult(backend, False, exc.reason, time.perf_counter() - start)
        finally:
            worker.close()
        seconds = time.perf_counter() - start
        return ProbeResult(backend, problem is None, problem or "isolated", seconds, facts)

    @classmethod
    def strongest(
        cls,
        *,
        private_paths: Sequence[Path | str] = (),
        limits: SandboxLimits | None = None,
        backends_to_try: Sequence[str] = BACKENDS,
        workdir: Path | None = None,
    ) -> SandboxExecutor | UnavailableExecutor:
        """The strongest backend whose probe passes; an UnavailableExecutor if none does."""
        runtime = Runtime.current()
        failures = []
        for backend in backends_to_try:
            result = cls.probe(backend, private_paths=private_paths, limits=limits, runtime=runtime)
            if result.ok:
                log.info("sandbox: %s (probe %.2f s)", backend, result.seconds)
                return cls(
                    backend,
                    limits=limits,
                    private_paths=private_paths,
                    workdir=workdir,
                    runtime=runtime,
                    probe=result,
                )
            failures.append(f"{backend}: {result.reason}")
            log.warning("sandbox backend %s unusable: %s", backend, result.reason)
        return UnavailableExecutor("; ".join(failures))

    # -- tasks ----------------------------------------------------------------------------

    def _evict_idle(self) -> list[_Worker]:
        now = time.monotonic()
        gone = [k for k, w in self._workers.items() if now - w.last_used > self.limits.idle_timeout_s]
        while len(self._workers) - len(gone) >= self.limits.max_workers:
            oldest = next(k for k in self._workers if k not in gone)
            gone.append(oldest)
        return [self._workers.pop(k) for k in gone]

    def _worker(self, key: str) -> _Worker:
        with self._lock:
            worker = self._workers.get(key)
            if worker is not None:
                self._workers.move_to_end(key)
                return worker
            stale = self._evict_idle()
            worker = _Worker(self.backend, self.limits, self.runtime, self.private_paths, self.workdir)
            self._workers[key] = worker
        for old in stale:
            old.close()
        return worker

    def _discard(self, key: str, worker: _Worker) -> None:
        with self._lock:
            if self._workers.get(key) is worker:
                del self._workers[key]
        worker.close()

    def run(self, task: LocalTask) -> LocalResult:
        key = task.job_id or task.plan.sha256
        worker = self._worker(key)
        with worker.lock:
            try:
                start_s = 0.0
                if not worker.alive():
                    if worker.process is not None:
                        worker.kill()
                    began = time.perf_counter()
                    worker.start()
                    start_s = time.perf_counter() - began
                result = worker.run(task, float(task.timeout_s))
                result.timings["start_s"] = start_s
                return result
            except SandboxFailure as exc:
                self.last_failure = exc
                log.warning("sandbox task failed (%s): %s\n%s", exc.code, exc.reason, exc.detail[-2000:])
                self._discard(key, worker)
                raise
            except BackendUnavailable as exc:
                self._discard(key, worker)
                raise failure("start", why=str(exc)) from exc
            except OSError as exc:
                self._discard(key, worker)
                raise failure(
                    "start", repr(exc), why=f"the node could not prepare the sandbox: {exc}"
                ) from exc
            finally:
                worker.wipe()

    def release(self, job_id: str) -> None:
        """The job is over at this site: stop its worker and delete its folders."""
        with self._lock:
            worker = self._workers.pop(job_id, None)
        if worker is not None:
            worker.close()

    def close(self) -> None:
        with self._lock:
            workers = list(self._workers.values())
            self._workers.clear()
        for worker in workers:
            worker.close()


class UnavailableExecutor:
    """What a node gets when no sandbox backend works: it admits nothing and runs nothing."""

    isolation = UNAVAILABLE

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def run(self, task: LocalTask) -> LocalResult:
        raise ExecutorFailure(f"no sandbox can run here, so nothing is released ({self.reason})")

    def release(self, job_id: str) -> None:
        pass


def _probe_targets(private: Sequence[Path]) -> list[str]:
    """The files a probe tries to read: each private path, what lies in it (two levels
    deep, a few dozen at most) and /etc/shadow."""
    targets: list[str] = ["/etc/shadow"]
    for path in private:
        targets.append(str(path))
        if path.is_dir():
            for child in sorted(path.iterdir())[:24]:
                targets.append(str(child))
                if child.is_dir():
                    targets.extend(str(c) for c in sorted(child.iterdir())[:8])
    return targets


def _check_probe(backend: str, facts: dict[str, Any], uid: int | None) -> str | None:
    """Why a probe worker is not isolated as its backend promises (None when it is)."""
    if facts.get("probe") is not True:
        return "the probe did not answer"
    if uid is not None and (facts.get("uid") != uid or facts.get("euid") != uid):
        return f"the worker runs as uid {facts.get('uid')}, not the sandbox uid {uid}"
    if facts.get("cap_eff") != 0:
        return "the worker still holds capabilities"
    if facts.get("no_new_privs") is not True:
        return "the worker may gain privileges (no_new_privs is not set)"
    if facts.get("readable_private"):
        return f"the worker can read {', '.join(map(str, facts['readable_private']))}"
    if facts.get("writable_input") and (uid is not None or backend == "bubblewrap"):
        return "the worker can write into its input folder"
    if backend in ("bubblewrap", "unshare"):
        interfaces = set(facts.get("interfaces") or [])
        if interfaces - {"lo"}:
            return f"the worker sees network interfaces {', '.join(sorted(interfaces - {'lo'}))}"
        if not isinstance(facts.get("pid"), int) or facts["pid"] > 2:
            return "the worker is not in a PID namespace of its own"
    return None
