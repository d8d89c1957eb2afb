"""Detached service processes: started with a log file and a pid file, found again by a later
``paroma status`` or ``paroma down``, and stopped with every process they started.

Flower's SuperLink and SuperNode start their SuperExec, ServerApp and ClientApp processes in
sessions of their own (``start_new_session``), so one process group does not hold a service:
stopping walks the process tree from the service's pid (``/proc/<pid>/stat``), signals every
process of it at once and then kills what is left. A pid file records the process's start
time (field 22 of ``/proc/<pid>/stat``) so that a reused pid is never taken for the service.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcessRecord:
    """What a pid file holds about one running service."""

    name: str
    pid: int
    start_ticks: int
    argv: tuple[str, ...]
    log: str

    def to_json(self) -> str:
        return json.dumps(
            {
                "name": self.name,
                "pid": self.pid,
                "start_ticks": self.start_ticks,
                "argv": list(self.argv),
                "log": self.log,
            }
        )


def start_detached(
    name: str,
    argv: Sequence[str],
    *,
    log_path: Path,
    pid_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> ProcessRecord:
    """Start ``argv`` in a session of its own, stdout and stderr appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    pid_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S')} starting {name}: {' '.join(argv)}\n".encode())
        log.flush()
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            close_fds=True,
        )
    record = ProcessRecord(name, process.pid, _start_ticks(process.pid) or 0, tuple(argv), str(log_path))
    tmp = pid_path.with_suffix(".tmp")
    tmp.write_text(record.to_json())
    os.replace(tmp, pid_path)
    # The launcher exits long before the service: nobody waits for this child but init.
    process.returncode = 0
    return record


def read_record(pid_path: Path) -> ProcessRecord | None:
    try:
        data = json.loads(pid_path.read_text())
        return ProcessRecord(
            str(data["name"]),
            int(data["pid"]),
            int(data["start_ticks"]),
            tuple(data["argv"]),
            str(data["log"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_running(record: ProcessRecord) -> bool:
    """The recorded process is alive (not a zombie) and is the one that was started."""
    ticks = _start_ticks(record.pid)
    return ticks is not None and ticks == record.start_ticks and _state(record.pid) not in ("Z", "X")


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (children first found by their parent pid)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[2]), []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def stop(record: ProcessRecord, *, grace_s: float = 5.0) -> bool:
    """Stop the service and everything it started: SIGTERM to the whole tree, SIGKILL to what
    is left after ``grace_s``. Returns whether the service was running."""
    return bool(stop_all([record], grace_s=grace_s))


def stop_all(records: Sequence[ProcessRecord], *, grace_s: float = 5.0) -> list[ProcessRecord]:
    """Stop several services at once (their grace periods overlap); returns those that ran."""
    running = [r for r in records if is_running(r)]
    tree = [p for r in running for p in process_tree(r.pid)]
    _signal_all(tree, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_alive(p) for p in tree):
        time.sleep(0.05)
    # Descendants started after the first walk are found by walking again from the survivors.
    survivors = {q for p in tree if _alive(p) for q in process_tree(p)}
    if survivors:
        _signal_all(sorted(survivors), signal.SIGKILL)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and any(_alive(p) for p in survivors):
            time.sleep(0.05)
    return running


def kill_now(record: ProcessRecord) -> None:
    """SIGKILL the service's whole tree at once (a crash, for fault tests)."""
    if is_running(record):
        _signal_all(process_tree(record.pid), signal.SIGKILL)


def log_tail(path: Path | str, lines: int = 20) -> str:
    try:
        with Path(path).open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 16_384))
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _signal_all(pids: Sequence[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _alive(pid: int) -> bool:
    state = _state(pid)
    return state is not None and state not in ("Z", "X")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after its end,
    # so that field n of proc(5) is index n - 2 here (state 1, ppid 2, starttime 20).
    end = raw.rfind(")")
    return [raw[: end + 1], *raw[end + 2 :].split()]


def _state(pid: int) -> str | None:
    fields = _stat_fields(pid)
    return fields[1] if fields is not None and len(fields) > 2 else None


def _start_ticks(pid: int) -> int | None:
    fields = _stat_fields(pid)
    if fields is None or len(fields) < 21:
        return None
    return int(fields[20])
