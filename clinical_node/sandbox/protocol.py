"""What passes between the node and its sandbox worker, and how the node reads it.

Requests and answers are single JSON lines: the node writes requests on the worker's
stdin; the worker answers on its stdout (the plan's own prints go to the site's sandbox
log). Tensors travel as uncompressed ``.npz`` files: inputs in the worker's read-only input
folder, the update in its output folder.

Everything the worker sends is untrusted: the plan runs in the same process and can forge
any answer. So the node bounds what it reads, parses tensors without pickle and checks
every header before allocating, and never copies text from the worker into a reason that
leaves the site: reasons are chosen from the fixed vocabulary below (a plan could
otherwise spell patient values into an exception message or a tensor name).
"""

from __future__ import annotations

import builtins
import io
import json
import os
import stat
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..training import ExecutorFailure

MAX_ANSWER_BYTES = 1024 * 1024
MAX_TENSORS = 4096

# Exception names the node may repeat in a reason: Python's own, never a plan's class.
BUILTIN_EXCEPTIONS = frozenset(
    name
    for name, value in vars(builtins).items()
    if isinstance(value, type) and issubclass(value, BaseException)
)


class SandboxFailure(ExecutorFailure):
    """A task that failed in the sandbox; ``code`` is one of REASONS' keys."""

    def __init__(self, code: str, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        # Local diagnostics (may hold the plan's own text): for the site's log only.
        self.detail = detail


# The reasons a site may report for a failed task (sent to the aggregator).
REASONS: dict[str, str] = {
    "start": "the sandbox could not start: {why}",
    "deadline": "the training plan ran past its {seconds:g} s deadline; the sandbox was killed",
    "cpu": "the training plan used up its CPU-time limit of {seconds:g} s; the sandbox was killed",
    "memory": "the training plan exceeded the sandbox's memory limit of {mib} MiB",
    "processes": "the training plan tried to start more than the {n} processes the sandbox allows",
    "file-size": "the training plan tried to write a file over the sandbox's limit of {mib} MiB",
    "scratch": "the training plan wrote more than the sandbox's scratch quota of {mib} MiB; the sandbox was killed",
    "network": "the training plan tried to use the network, which the sandbox does not have",
    "filesystem": "the training plan tried to read or write outside its sandbox folders",
    "plan-raised": "the training plan raised {exception} (details in the site's sandbox log)",
    "plan-invalid": "the training plan could not be loaded in the sandbox",
    "crashed": "the sandbox process died ({how})",
    "protocol": "the sandbox answered outside the protocol; it was killed",
    "output": "the sandbox's output is not a valid update: {why}",
}

# Codes the worker may claim for a failure it caught itself (anything else is "protocol").
WORKER_CODES = frozenset(
    {"memory", "processes", "file-size", "scratch", "network", "filesystem", "plan-raised", "plan-invalid"}
)


def failure(code: str, detail: str = "", **values: Any) -> SandboxFailure:
    return SandboxFailure(code, REASONS[code].format(**values), detail)


def encode(message: Mapping[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), allow_nan=True).encode() + b"\n"


def decode_answer(line: bytes) -> dict[str, Any]:
    """One answer line from the worker, as a dict (a "protocol" failure when it is not one)."""
    try:
        value = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise failure("protocol", f"not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise failure("protocol", "not a JSON object")
    return value


def write_arrays(path: os.PathLike[str] | str, arrays: Mapping[str, np.ndarray]) -> None:
    """Write arrays as an uncompressed .npz, atomically (a reader never sees half a file)."""
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "wb") as fh:
        np.savez(fh, allow_pickle=False, **{k: np.ascontiguousarray(v) for k, v in arrays.items()})
    os.replace(tmp, path)


def _member_header_ok(raw: bytes, info: zipfile.ZipInfo, zf: zipfile.ZipFile) -> bool:
    """Whether a .npy member's header declares exactly the bytes it holds, without pickle."""
    with zf.open(info) as fh:
        try:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                return False
        except ValueError:
            return False
        header_end = fh.tell()
    if dtype.hasobject or any(not isinstance(d, int) or d < 0 for d in shape):
        return False
    count = 1
    for d in shape:
        count *= d
    return count * dtype.itemsize == info.file_size - header_end


def read_update(dir_fd: int, name: str, max_bytes: int) -> dict[str, np.ndarray]:
    """Read the update file ``name`` the worker wrote in its output folder (``dir_fd``).

    The folder belongs to the sandbox's uid, so the file may be a symlink, a FIFO or a
    device planted there: it is opened without following links or blocking, and must be
    a regular file within ``max_bytes``. The .npz must be uncompressed (no zip bomb), and
    every member's header must match its size before numpy allocates anything.
    """
    if not name or "/" in name or name.startswith("."):
        raise failure("output", why="the answer names no update file")
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        raise failure("output", str(exc), why="the update file is missing or not a plain file") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise failure("output", why="the update file is not a regular file")
        if info.st_size > max_bytes:
            raise failure("output", why=f"the update file is over the bound of {max_bytes} bytes")
        with os.fdopen(os.dup(fd), "rb") as fh:
            raw = fh.read(max_bytes + 1)
    finally:
        os.close(fd)
    if len(raw) > max_bytes:
        raise failure("output", why=f"the update file is over the bound of {max_bytes} bytes")
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            members = zf.infolist()
            if len(members) > MAX_TENSORS:
                raise failure("output", why=f"the update holds more than {MAX_TENSORS} tensors")
            if sum(m.file_size for m in members) > max_bytes:
                raise failure("output", why=f"the update's tensors exceed the bound of {max_bytes} bytes")
            for member in members:
                if member.compress_type != zipfile.ZIP_STORED or not member.filename.endswith(".npy"):
                    raise failure("output", why="the update file is not an uncompressed .npz")
                if not _member_header_ok(raw, member, zf):
                    raise failure("output", why="a tensor's header does not match its data")
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except SandboxFailure:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise failure("output", repr(exc), why="the update file is not a readable .npz") from exc
