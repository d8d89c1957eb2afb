"""How a sandbox worker is started, per backend, weakest guarantee last.

``bubblewrap``: own user, PID, network, IPC, UTS and cgroup namespaces; a filesystem view
built from nothing but the read-only runtime (system libraries, the interpreter, the
virtualenv, the ``clinical_node`` package) and the worker's three folders; no capabilities;
no further user namespaces.

``unshare``: own PID, network (loopback down), IPC, UTS and mount namespaces; the host's
filesystem, with the site's private paths hidden under empty mounts.

``subprocess``: no namespaces of its own (as root, a private mount namespace only to hide
the site's private paths and to reach the runtime, below); host network and PID space.

All three run the worker under rlimits it sets itself before loading plan code. When the
node runs as root every worker also gets a uid of its own, with no supplementary groups
and no capabilities: so RLIMIT_NPROC holds (the kernel never applies it to root), file
permissions keep it out of the site's key and of /etc/shadow, and every process it starts
can be found and killed by uid. The runtime may sit where such a uid cannot reach (a
pyenv interpreter under /root, mode 0700): then, in a private mount namespace, an empty
tmpfs is laid over the unreachable folder with only the runtime bound back into it.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BACKENDS = ("bubblewrap", "unshare", "subprocess")  # strongest first
UID_BASE = int(os.environ.get("PAROMA_SANDBOX_UID_BASE", str(0x70000000)))
# Each node process owns the uids UID_BASE + (pid mod 2**22) * 64 + [0, 64): disjoint between
# processes, and the highest is 0x7fffffff with the default base (no uid above 2**31 - 1,
# which some tools read as negative). A hospital's node needs one per job; 64 lets one
# simulation process hold up to 63 sites' workers at once (deploy/worker_budget.py).
SLOTS_PER_PROCESS = 64
INSIDE = Path("/sandbox")  # where bubblewrap shows the worker its folders


class BackendUnavailable(Exception):
    """A backend that cannot run on this machine; the message says why."""


def _tool(name: str, package: str) -> str:
    path = shutil.which(name, path="/usr/bin:/bin:/usr/sbin:/sbin:" + os.environ.get("PATH", ""))
    if path is None:
        raise BackendUnavailable(f"{name} is not installed (Debian package {package})")
    return path


def is_root() -> bool:
    return os.geteuid() == 0


@dataclass(frozen=True)
class Runtime:
    """What the worker's interpreter needs to see, read-only."""

    python: str
    dirs: tuple[Path, ...]
    files: tuple[Path, ...]

    @classmethod
    def current(cls) -> Runtime:
        import clinical_node

        dirs: list[Path] = [Path(sys.prefix)]
        files: list[Path] = []
        base = Path(sys.base_prefix)
        if base == Path("/usr"):
            files.append(Path(os.path.realpath(sys.executable)))  # the rest is under /usr/lib
        else:
            dirs.append(base)
        package = Path(clinical_node.__file__).resolve().parent
        if not any(package.is_relative_to(d) for d in dirs):
            dirs.append(package)
        return cls(sys.executable, tuple(dirs), tuple(files))


@dataclass(frozen=True)
class Layout:
    """One worker's folders on the host."""

    root: Path

    @property
    def inputs(self) -> Path:
        return self.root / "in"

    @property
    def outputs(self) -> Path:
        return self.root / "out"

    @property
    def scratch(self) -> Path:
        return self.root / "tmp"

    @property
    def stage(self) -> Path:
        return self.root / "stage"

    @property
    def log(self) -> Path:
        return self.root / "sandbox.log"


class UidPool:
    """Sandbox uids for this node process: disjoint from other processes' by pid."""

    def __init__(self) -> None:
        self._used: set[int] = set()
        self._lock = threading.Lock()

    def take(self) -> int:
        base = UID_BASE + (os.getpid() % (1 << 22)) * SLOTS_PER_PROCESS
        with self._lock:
            for slot in range(SLOTS_PER_PROCESS):
                if base + slot not in self._used:
                    self._used.add(base + slot)
                    return base + slot
        raise BackendUnavailable(f"more than {SLOTS_PER_PROCESS} sandboxes at once in one node process")

    def give_back(self, uid: int) -> None:
        with self._lock:
            self._used.discard(uid)


def _reachable_by_others(path: Path) -> bool:
    """Whether a uid that is neither owner nor group can reach ``path`` (search bits)."""
    current = Path("/")
    for part in path.parts[1:]:
        current = current / part
        try:
            mode = current.lstat().st_mode
        except OSError:
            return False
        if not mode & 0o001:
            return False
    return True


def _blocking_ancestor(path: Path) -> Path | None:
    current = Path("/")
    for part in path.parts[1:]:
        current = current / part
        if not current.lstat().st_mode & 0o001:
            return current
    return None


def _stage_runtime(runtime: Runtime, layout: Layout) -> list[list[str]]:
    """Commands (run as root in a private mount namespace) that make the runtime reachable
    by the sandbox uid where a folder on its path is closed to others."""
    mount, mkdir, touch = _tool("mount", "mount"), _tool("mkdir", "coreutils"), _tool("touch", "coreutils")
    paths = [p for p in (*runtime.dirs, *runtime.files) if not _reachable_by_others(p)]
    if not paths:
        return []
    blocked: dict[Path, list[Path]] = {}
    for path in paths:
        ancestor = _blocking_ancestor(path)
        if ancestor is None or ancestor == path:
            raise BackendUnavailable(f"the runtime folder {path} is not readable by other users")
        if layout.root.is_relative_to(ancestor):
            raise BackendUnavailable(
                f"the sandbox folder {layout.root} lies under {ancestor}, closed to others"
            )
        blocked.setdefault(ancestor, []).append(path)
    commands: list[list[str]] = []
    moves: list[list[str]] = []
    for ancestor, inside in blocked.items():
        for path in inside:
            stage = layout.stage / str(len(commands))
            commands.append([mkdir, "-p", str(stage)] if path.is_dir() else [touch, str(stage)])
            commands.append([mount, "--bind", str(path), str(stage)])
            moves.append([mkdir, "-p", str(path)] if path.is_dir() else [mkdir, "-p", str(path.parent)])
            if not path.is_dir():
                moves.append([touch, str(path)])
            moves.append([mount, "--move", str(stage), str(path)])
            moves.append([mount, "-o", "remount,bind,ro", str(path)])
        commands.append([mount, "-t", "tmpfs", "-o", "mode=0755,size=1m", "paroma-runtime", str(ancestor)])
    return commands + moves


def _hide(paths: Iterable[Path]) -> list[list[str]]:
    """Commands laying an empty, unreadable mount over each private path that a uid other
    than its owner's could read (the others are already closed to the sandbox uid)."""
    mount = _tool("mount", "mount")
    commands = []
    for path in paths:
        if not _reachable_by_others(path.parent) or not path.exists():
            continue
        if not path.stat().st_mode & (0o005 if path.is_dir() else 0o004):
            continue
        if path.is_dir():
            commands.append([mount, "-t", "tmpfs", "-o", "mode=0000,size=4k", "paroma-private", str(path)])
        elif path.exists():
            commands.append([mount, "--bind", "/dev/null", str(path)])
    return commands


def _environment(home: Path) -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "TMPDIR": str(home),
        "LANG": "C.UTF-8",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }


def _worker_argv(runtime: Runtime, config: dict[str, Any]) -> list[str]:
    return [runtime.python, "-I", "-B", "-m", "clinical_node.sandbox.worker", json.dumps(config)]


def _drop_to(uid: int, *, bounding: bool) -> list[str]:
    argv = [_tool("setpriv", "util-linux"), f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    if bounding:
        argv += ["--no-new-privs", "--bounding-set=-all", "--inh-caps=-all"]
    return [*argv, "--"]


def _as_root_script(prepare: list[list[str]], final: list[str]) -> list[str]:
    """``sh -c`` running the preparation commands (stopping at the first that fails), then
    exec'ing the final command in place of the shell."""
    script = "set -eu\n" + "".join(shlex.join(c) + "\n" for c in prepare) + "exec " + shlex.join(final)
    return [_tool("sh", "dash"), "-c", script]


@dataclass(frozen=True)
class Launch:
    argv: list[str]
    env: dict[str, str]
    config: dict[str, Any]


def _bwrap_binds(runtime: Runtime, layout: Layout, private: Sequence[Path]) -> list[str]:
    args = ["--ro-bind", "/usr/lib", "/usr/lib", "--ro-bind-try", "/usr/lib64", "/usr/lib64"]
    for top in ("/lib", "/lib64", "/lib32", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    args += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    # Libraries that ignore TMPDIR write to /tmp: inside, that is the scratch folder too. It is
    # bound before the runtime, so that a runtime living under /tmp (a project cloned there)
    # is mounted on top of it rather than hidden by it.
    args += ["--bind", str(layout.scratch), "/tmp"]  # noqa: S108
    for path in (*runtime.dirs, *runtime.files):
        args += ["--ro-bind", str(path), str(path)]
    args += ["--proc", "/proc"]
    # Four device nodes, no writable /dev (a tmpfs there would be storage outside every quota).
    for device in ("null", "zero", "random", "urandom"):
        args += ["--dev-bind", f"/dev/{device}", f"/dev/{device}"]
    args += ["--ro-bind", str(layout.inputs), str(INSIDE / "in")]
    args += ["--bind", str(layout.outputs), str(INSIDE / "out")]
    args += ["--bind", str(layout.scratch), str(INSIDE / "tmp")]
    bound = [*runtime.dirs, *runtime.files]
    for path in private:
        # Only what lies inside a bound folder is visible at all; hide that too.
        if any(path.is_relative_to(b) for b in bound):
            args += ["--tmpfs", str(path)] if path.is_dir() else ["--ro-bind", "/dev/null", str(path)]
    # The root itself is a tmpfs in RAM: read-only, so only out/ and tmp/ can be written.
    return [*args, "--remount-ro", "/"]


def launch(
    backend: str,
    runtime: Runtime,
    layout: Layout,
    uid: int | None,
    private: Sequence[Path],
    config: dict[str, Any],
) -> Launch:
    """The command that starts a worker in ``backend`` (BackendUnavailable if it cannot)."""
    root = is_root()
    if root and uid is None:
        raise BackendUnavailable("as root the sandbox needs a uid of its own")
    if backend == "bubblewrap":
        bwrap = _tool("bwrap", "bubblewrap")
        inside = {**config, "in": str(INSIDE / "in"), "out": str(INSIDE / "out"), "tmp": str(INSIDE / "tmp")}
        inside["pid_namespace"] = True
        env = _environment(INSIDE / "tmp")
        own = uid if uid is not None else os.getuid()
        argv = [bwrap, "--unshare-all", "--unshare-user", "--uid", str(own), "--gid", str(own)]
        argv += ["--disable-userns", "--cap-drop", "ALL", "--die-with-parent", "--new-session"]
        argv += ["--hostname", "paroma-sandbox", "--clearenv"]
        for key, value in env.items():
            argv += ["--setenv", key, value]
        argv += _bwrap_binds(runtime, layout, private)
        argv += ["--chdir", str(INSIDE / "tmp"), *_worker_argv(runtime, inside)]
        if root:
            assert uid is not None
            prepare = _stage_runtime(runtime, layout)
            argv = [
                _tool("unshare", "util-linux"),
                "--mount",
                "--propagation",
                "private",
                "--",
                *_as_root_script(prepare, [*_drop_to(uid, bounding=False), *argv]),
            ]
        return Launch(argv, env, inside)
    config = {**config, "in": str(layout.inputs), "out": str(layout.outputs), "tmp": str(layout.scratch)}
    env = _environment(layout.scratch)
    worker = _worker_argv(runtime, {**config, "pid_namespace": backend == "unshare"})
    unshare = _tool("unshare", "util-linux")
    namespaces = ["--net", "--pid", "--ipc", "--uts", "--fork", "--kill-child", "--mount-proc"]
    if backend == "unshare":
        config["pid_namespace"] = True
        if not root:
            argv = [unshare, "--user", "--map-current-user", "--mount", *namespaces, "--", *worker]
            return Launch(argv, env, config)
        assert uid is not None
        prepare = _stage_runtime(runtime, layout) + _hide(private)
        argv = [_tool("setpriv", "util-linux"), "--pdeathsig=KILL", "--", unshare, "--mount"]
        argv += ["--propagation", "private", *namespaces, "--"]
        argv += _as_root_script(prepare, [*_drop_to(uid, bounding=True), *worker])
        return Launch(argv, env, config)
    if backend == "subprocess":
        if not root:
            return Launch(worker, env, config)
        assert uid is not None
        prepare = _stage_runtime(runtime, layout) + _hide(private)
        if not prepare:
            # nothing to hide or reach: no namespace at all (works without CAP_SYS_ADMIN,
            # as in a default container)
            return Launch([*_drop_to(uid, bounding=True), *worker], env, config)
        argv = [unshare, "--mount", "--propagation", "private", "--"]
        argv += _as_root_script(prepare, [*_drop_to(uid, bounding=True), *worker])
        return Launch(argv, env, config)
    raise BackendUnavailable(f"unknown sandbox backend {backend!r}; expected one of {', '.join(BACKENDS)}")
