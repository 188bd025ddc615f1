"""A throwaway Linux box for an agent's bash actions: bubblewrap, never the host.

Why bubblewrap: it is the sandbox Flatpak ships, audited and packaged everywhere; a home-made one would not be.
What one sandbox is:
- the host's ``/usr`` read-only (and the /bin, /lib symlinks into it), nothing else of the host: not the
  project, the run folders, the model cache or ``$HOME``;
- private writable copies of ``/etc``, and empty private ``/root``, ``/home``, ``/var``, ``/opt``, ``/srv``,
  ``/tmp``, ``/usr/local`` and ``/mnt``, kept in one host folder for the task's life (files persist between
  commands and across shell restarts);
- every namespace unshared (no network, its own PIDs), ``--clearenv`` with a minimal environment, and
  ``--die-with-parent``;
- run as an unprivileged host uid of its own (no account needed) that appears as root inside, so
  ``RLIMIT_NPROC`` binds (it does not bind host root) and a fork bomb stops at ``max_processes``, without
  touching other sandboxes running beside it; CPU seconds, memory, file size and output are capped too;
- one long-lived bash per task. Each command is written to a file in a read-only control folder and run with
  ``source`` (stdin from /dev/null, so a command cannot eat the protocol), then a marker line with a nonce and
  the exit status ends its output. A command past its timeout, or ``exit``, restarts the shell (files persist).

If bwrap is missing or the kernel refuses namespaces, ``SandboxUnavailable`` says so; nothing ever runs on the
host instead.
"""

from __future__ import annotations

import os
import resource
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from schemas.config import SandboxLimits

TRUNCATE_AT = 800  # AgentBench's cut: longer observations become the first 780 characters plus a note
TRUNCATE_KEEP = 780
TRUNCATE_NOTE = "\n[truncated because the output is too long]"
WRITABLE = ("root", "home", "var", "opt", "srv", "tmp", "mnt", "usr/local")
USR_LOCAL = ("bin", "sbin", "lib", "share", "include", "etc", "src", "games")
SANDBOX_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "USER": "root",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
}


class SandboxUnavailable(RuntimeError):
    """bubblewrap cannot make a sandbox here; the message says why and how to get one."""


@dataclass(frozen=True)
class CommandResult:
    output: str  # stdout and stderr together, as a terminal would show them (not yet truncated)
    exit_code: int | None  # None: timed out, or the shell exited
    timed_out: bool = False


def truncate_observation(text: str) -> str:
    """AgentBench's rule: over 800 characters becomes the first 780 and a note."""
    return text if len(text) <= TRUNCATE_AT else text[:TRUNCATE_KEEP] + TRUNCATE_NOTE


def bwrap_path() -> str:
    path = shutil.which("bwrap")
    if path is None:
        raise SandboxUnavailable(
            "the shell environment needs bubblewrap (bwrap), and it is not installed. Install it with "
            "`apt-get install -y bubblewrap` (Debian/Ubuntu, as root; scripts/setup.sh does this when it can), "
            "`dnf install bubblewrap` or `apk add bubblewrap`. genpi never runs agent commands on the host."
        )
    return path


def namespace_pids(namespace: str) -> list[int]:
    """Host pids of the live processes in a PID namespace (zombies excluded)."""
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if os.readlink(f"/proc/{entry.name}/ns/pid") == namespace and _alive(int(entry.name)):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _alive(pid: int) -> bool:
    """False for a zombie (killed, not yet reaped by its parent namespace's init)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


SANDBOX_UID_BASE = 1_000_000  # unprivileged host uids for sandboxes; no account needs to exist for them


def _sandbox_user() -> tuple[int, int]:
    """A host uid/gid of its own for each sandbox (as root): RLIMIT_NPROC counts per uid, and binds only non-root
    uids, so a shared uid would make sandboxes that run side by side share (and exhaust) one process cap. Not
    root: the caller's own uid (its processes then share the cap)."""
    if os.geteuid() != 0:  # the process cap is then not set: it would count all of the caller's processes
        return os.getuid(), os.getgid()
    uid = SANDBOX_UID_BASE + secrets.randbelow(1_000_000)
    return uid, uid


class Sandbox:
    """One task's box. Use as a context manager: its processes and files go when the block ends.

    ``run(command)`` runs one bash command in the task's long-lived shell and returns its output."""

    def __init__(self, limits: SandboxLimits | None = None, workdir: str | Path | None = None) -> None:
        self.limits = limits or SandboxLimits()
        self.bwrap = bwrap_path()
        self.uid, self.gid = _sandbox_user()
        self.root = Path(tempfile.mkdtemp(prefix="genpi-sandbox-", dir=workdir))
        self.control = self.root / "control"  # command files, bound read-only at /run/genpi
        self._proc: subprocess.Popen | None = None
        self._namespace: str | None = None  # the sandbox's PID namespace, as /proc/<pid>/ns/pid reads
        self._count = 0
        try:
            self._prepare()
            self._start()
        except BaseException:
            self.close()
            raise

    # --- the box ---------------------------------------------------------------------------------
    def _prepare(self) -> None:
        for name in WRITABLE:
            (self.root / "fs" / name).mkdir(parents=True, exist_ok=True)
        for name in USR_LOCAL:  # an empty /usr/local still has its usual folders (`mv tool /usr/local/bin/`)
            (self.root / "fs" / "usr" / "local" / name).mkdir(exist_ok=True)
        etc = self.root / "fs" / "etc"
        shutil.copytree(
            "/etc",
            etc,
            symlinks=True,
            ignore_dangling_symlinks=True,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns("shadow*", "gshadow*", "ssh", "private"),  # no host secrets
        )
        self.control.mkdir()
        os.chmod(self.root, 0o755)
        for path in [self.root / "fs", *(self.root / "fs").rglob("*")]:  # the unprivileged uid owns its box
            try:
                os.lchown(path, self.uid, self.gid)
            except OSError:
                pass
        os.chmod(self.control, 0o755)

    def _argv(self) -> list[str]:
        fs = self.root / "fs"
        argv = [self.bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--clearenv"]
        if self.uid != 0:
            argv += ["--unshare-user", "--uid", "0", "--gid", "0"]
        for key, value in SANDBOX_ENV.items():
            argv += ["--setenv", key, value]
        argv += ["--ro-bind", "/usr", "/usr"]
        for link in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
            if os.path.islink(f"/{link}"):
                argv += ["--symlink", os.readlink(f"/{link}"), f"/{link}"]
        argv += ["--bind", str(fs / "etc"), "/etc"]
        for name in WRITABLE:
            argv += ["--bind", str(fs / name), f"/{name}"]
        argv += ["--proc", "/proc", "--dev", "/dev", "--ro-bind", str(self.control), "/run/genpi"]
        argv += ["--chdir", "/root", "/bin/bash", "--noprofile", "--norc"]
        return argv

    def _limit(self) -> None:  # runs in the child between fork and exec
        lim = self.limits
        resource.setrlimit(resource.RLIMIT_CPU, (lim.cpu_seconds, lim.cpu_seconds))
        resource.setrlimit(resource.RLIMIT_AS, (lim.memory_mb << 20, lim.memory_mb << 20))
        resource.setrlimit(resource.RLIMIT_FSIZE, (lim.file_size_mb << 20, lim.file_size_mb << 20))
        if os.geteuid() == 0:  # the sandbox's own uid: the cap counts only its processes
            resource.setrlimit(resource.RLIMIT_NPROC, (lim.max_processes, lim.max_processes))
            os.setgroups([])
            os.setgid(self.gid)
            os.setuid(self.uid)

    def _spawn(self) -> None:
        self._proc = subprocess.Popen(
            self._argv(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=self._limit,
            start_new_session=True,
        )
        self._namespace = None

    def _start(self) -> None:
        self._spawn()
        probe = self.run("echo ready", timeout_s=20)
        if probe.exit_code != 0 or probe.output.strip() != "ready":
            detail = probe.output.strip()[:300] or "no output"
            self.close()
            raise SandboxUnavailable(
                f"bubblewrap could not start a sandbox here ({detail}). The kernel must allow user and network "
                "namespaces (e.g. sysctl kernel.unprivileged_userns_clone=1, or run in a container started with "
                "--privileged or a seccomp profile that allows unshare). genpi never falls back to the host."
            )

    @property
    def script_timeout_s(self) -> float:
        """Wall clock for set-up and checking scripts (init, checks, reference solutions): at least a minute."""
        return max(60.0, self.limits.command_timeout_s)

    # --- commands --------------------------------------------------------------------------------
    def put_control_file(self, text: str, suffix: str = ".sh") -> str:
        """Write a file the sandbox can read (not write) at /run/genpi/<name>; returns the name."""
        self._count += 1
        name = f"file{self._count}{suffix}"
        (self.control / name).write_text(text)
        os.chmod(self.control / name, 0o644)
        return name

    def run(self, command: str, timeout_s: float | None = None) -> CommandResult:
        """Run one command in the shell; on timeout or ``exit`` the shell restarts and the files stay."""
        note = ""
        if self._proc is None or self._proc.poll() is not None:
            self._restart()
        elif self._saturated():  # a fork bomb or runaway background jobs: a fresh shell, the files stay
            self._restart()
            note = "[the sandbox reached its process limit; its processes were killed and the shell restarted]\n"
        assert self._proc is not None and self._proc.stdin is not None
        name = self.put_control_file(command + "\n")
        marker = f"__genpi_done_{secrets.token_hex(8)}__"
        line = f"source /run/genpi/{name} < /dev/null 2>&1; printf '\\n{marker} %s\\n' \"$?\"\n"
        try:
            self._proc.stdin.write(line.encode())
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self._restart()
            return CommandResult("", None)
        output, code, timed_out = self._read_until(marker, timeout_s or self.limits.command_timeout_s)
        if code is None:
            self._restart()
        return CommandResult(note + output, code, timed_out)

    def _read_until(self, marker: str, timeout_s: float) -> tuple[str, int | None, bool]:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        os.set_blocking(fd, False)
        deadline = time.monotonic() + timeout_s
        buf = bytearray()
        kept = bytearray()
        tag = ("\n" + marker + " ").encode()
        while True:
            idx = buf.find(tag)
            if idx >= 0:
                end = buf.find(b"\n", idx + len(tag))
                if end >= 0:
                    kept += buf[:idx]
                    code = int(buf[idx + len(tag) : end].decode() or 1)
                    return kept[: self.limits.max_output_bytes].decode(errors="replace"), code, False
            if len(buf) > 4 * len(tag) + 65536:  # move what cannot hold the marker's start into the kept output
                cut = len(buf) - len(tag)
                if len(kept) < self.limits.max_output_bytes:
                    kept += buf[:cut]
                del buf[:cut]
            if time.monotonic() > deadline:
                return (kept + buf)[: self.limits.max_output_bytes].decode(errors="replace"), None, True
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                time.sleep(0.01)
                continue
            if not chunk:  # the shell exited (``exit``, or killed by a limit)
                return (kept + buf)[: self.limits.max_output_bytes].decode(errors="replace"), None, False
            buf += chunk

    def _kill(self) -> None:
        """Kill every process in the sandbox's PID namespace, then let bwrap reap them and exit.

        Order matters: killing bwrap first would orphan its child (the namespace's init) to the host's init,
        which may never reap it; killed from the inside, bwrap reaps it and exits, and we reap bwrap."""
        proc, left = self._proc, self.processes()
        self._proc = None
        if proc is None:
            return
        deadline = time.monotonic() + 10
        while left and time.monotonic() < deadline:
            for pid in left:  # the namespace's init first (lowest pid): its death kills the rest
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.02)
            left = [pid for pid in left if _alive(pid)]
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        self._namespace = None
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass

    def _restart(self) -> None:
        self._kill()
        self._spawn()

    def _find_namespace(self) -> str | None:
        """The PID namespace of bwrap's child (bwrap itself stays in the host's)."""
        if self._namespace is None and self._proc is not None:
            try:
                children = Path(f"/proc/{self._proc.pid}/task/{self._proc.pid}/children").read_text().split()
                if children:
                    self._namespace = os.readlink(f"/proc/{children[0]}/ns/pid")
            except OSError:
                pass
        return self._namespace

    @property
    def namespace(self) -> str | None:
        """The sandbox's PID namespace (``pid:[inode]``), None when no shell runs."""
        return self._find_namespace()

    def processes(self) -> list[int]:
        """Host pids of every process inside the sandbox (its PID namespace), background ones included."""
        namespace = self._find_namespace()
        return [] if namespace is None else namespace_pids(namespace)

    def _saturated(self) -> bool:
        return len(self.processes()) >= self.limits.max_processes - 2

    def close(self) -> None:
        self._kill()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
