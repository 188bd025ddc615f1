"""Process hygiene: whatever stops the CLI, nothing it started outlives it.

`genpi internalize` without PREFECT_API_URL starts a temporary Prefect server (genpi/temporary_server.py) and,
in the train stage, a trainer process. The long test stops a real CLI while both are running, in each way a
CLI dies: SIGKILL of the process alone, SIGTERM, Ctrl-C (SIGINT to the process alone, the harder case than a
terminal's SIGINT to the whole group) and its parent dying (the shell that runs it in a terminal is killed,
so the kernel hangs the terminal up). It records every process of the CLI's tree before the stop and lists
which are still alive afterwards; the list must be empty. The fast test does the same for the temporary
server alone under a SIGKILLed Python process.
"""

from __future__ import annotations

import fcntl
import os
import pty
import signal
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest

from tests.reliability import kill_harness as kh

GONE_WITHIN_S = 20.0  # after the CLI is gone: PDEATHSIG is immediate; a SIGTERMed server takes ~2 s
TRAINER = "genpi_core.train.job"
SERVER = "prefect.server.api.server:create_app"


def _proc_table() -> dict[int, tuple[int, str, str]]:
    """pid -> (ppid, start time, command line) of every live, non-zombie process."""
    return {pid: (ppid, started, cmd) for pid, (ppid, _, started, cmd) in kh.process_table().items()}


def descendants(root: int) -> dict[int, tuple[str, str]]:
    """Every live process below ``root``: pid -> (start time, command line); the start time tells a pid that
    was reused apart from the original."""
    table = _proc_table()
    found: dict[int, tuple[str, str]] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, started, cmd) in table.items():
            if ppid == parent and pid not in found:
                found[pid] = (started, cmd)
                frontier.append(pid)
    return found


def still_alive(recorded: dict[int, tuple[str, str]]) -> list[str]:
    table = _proc_table()
    return [cmd for pid, (started, cmd) in recorded.items() if pid in table and table[pid][1] == started]


def wait_gone(recorded: dict[int, tuple[str, str]], timeout_s: float) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while (left := still_alive(recorded)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def _wait_for_tree(root: int, proc: subprocess.Popen, log: Path, timeout_s: float = 600) -> dict:
    """Wait until the CLI's tree holds both the temporary server and a trainer; returns the tree."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        tree = descendants(root)
        cmds = [cmd for _, cmd in tree.values()]
        if any(SERVER in c for c in cmds) and any(TRAINER in c for c in cmds):
            return tree
        if proc.poll() is not None:
            raise RuntimeError(f"the CLI exited (rc {proc.returncode}) before training:\n{kh.tail(log)}")
        time.sleep(0.2)
    raise TimeoutError(f"no server + trainer under the CLI within {timeout_s:.0f} s:\n{kh.tail(log)}")


def _as_from_a_terminal() -> None:
    """The signal dispositions of a command typed at a shell: a test run started in the background (a shell's
    `&`, nohup) hands SIGINT/SIGHUP down ignored, and an ignored signal rightly stays ignored."""
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def _cli_args(config: Path, runs: Path) -> list[str]:
    return [str(kh.GENPI), "internalize", str(kh.SPEC), "--config", str(config), "--runs-dir", str(runs)]


def _env(home: Path) -> dict[str, str]:
    env = dict(kh.env(), PREFECT_HOME=str(home))
    env.pop("PREFECT_API_URL", None)
    return env


def _stop_plain(sig: int, config: Path, runs: Path, home: Path, log: Path) -> tuple[dict, int, list[str]]:
    """The CLI in its own session; ``sig`` to the CLI process alone."""
    with open(log, "a") as out:
        proc = subprocess.Popen(
            _cli_args(config, runs), cwd=kh.ROOT, env=_env(home), stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_as_from_a_terminal,
        )  # fmt: skip
    try:
        tree = _wait_for_tree(proc.pid, proc, log)
        tree[proc.pid] = ("", "genpi internalize")
        time.sleep(1.0)
        os.kill(proc.pid, sig)
        code = proc.wait(timeout=120)
        tree.pop(proc.pid)
        return tree, code, wait_gone(tree, GONE_WITHIN_S)
    finally:
        kh.kill_group(proc.pid)
        proc.wait()


def _stop_by_parent_death(config: Path, runs: Path, home: Path, log: Path) -> tuple[dict, int, list[str]]:
    """The CLI run by a shell on a terminal (a pty), as a user's ssh session would; the shell is SIGKILLed, the
    kernel hangs the terminal up (SIGHUP to its foreground process group: the CLI's)."""
    master, slave = pty.openpty()

    def controlling_tty() -> None:
        _as_from_a_terminal()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    command = " ".join(f"'{a}'" for a in _cli_args(config, runs)) + "; sleep 600"
    shell = subprocess.Popen(
        ["bash", "-c", command], cwd=kh.ROOT, env=_env(home), stdin=slave, stdout=slave, stderr=slave,
        start_new_session=True, preexec_fn=controlling_tty,
    )  # fmt: skip
    os.close(slave)

    def drain() -> None:  # a terminal nobody reads would block the CLI's progress bars
        with open(log, "ab") as out:
            while True:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    return
                if not data:
                    return
                out.write(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        tree = _wait_for_tree(shell.pid, shell, log)
        cli = next(pid for pid, (_, cmd) in tree.items() if " internalize " in f" {cmd} " and "bash" not in cmd)
        time.sleep(1.0)
        os.kill(shell.pid, signal.SIGKILL)
        shell.wait()
        deadline = time.monotonic() + 120
        while cli in _proc_table() and time.monotonic() < deadline:
            time.sleep(0.2)
        code = 0 if cli not in _proc_table() else -1
        return tree, code, wait_gone(tree, GONE_WITHIN_S)
    finally:
        kh.kill_group(shell.pid)
        os.close(master)
        reader.join(timeout=5)


@pytest.mark.reliability
def test_nothing_the_cli_started_outlives_it(tmp_path, faults):
    """One run folder for all four stops: the first synthesizes, the others go straight to training (their
    trainer resumes from the last checkpoint), so each case is a server start plus a trainer start."""
    config = tmp_path / "kills.yaml"
    config.write_text(kh.CONFIG_YAML)
    runs, home, log = tmp_path / "runs", tmp_path / "prefect-home", tmp_path / "cli.log"
    cases = [
        ("SIGKILL of the CLI process alone", lambda: _stop_plain(signal.SIGKILL, config, runs, home, log)),
        ("SIGTERM of the CLI", lambda: _stop_plain(signal.SIGTERM, config, runs, home, log)),
        ("Ctrl-C (SIGINT to the CLI process alone)", lambda: _stop_plain(signal.SIGINT, config, runs, home, log)),
        ("its parent shell killed on a terminal (SIGHUP)", lambda: _stop_by_parent_death(config, runs, home, log)),
    ]
    expected_code = {1: 128 + signal.SIGTERM, 2: 128 + signal.SIGINT}
    results = []
    for i, (name, stop) in enumerate(cases):
        with open(log, "a") as f:
            f.write(f"\n===== {name} =====\n")
        tree, code, left = stop()
        kinds = sorted(
            {"server" if SERVER in c else "trainer" if TRAINER in c else c.split()[0] for _, c in tree.values()}
        )
        assert left == [], f"{name}: still running afterwards: {left}\n{kh.tail(log)}"
        if i in expected_code:
            assert code == expected_code[i], f"{name}: exit code {code}\n{kh.tail(log)}"
            assert "finished stages are kept" in kh.tail(log), kh.tail(log)
        results.append((name, len(tree), kinds))
    for name, count, kinds in results:
        faults.add(
            "kill",
            f"process hygiene: {name}",
            f"real `genpi internalize` (temporary Prefect server + trainer running) stopped that way; every "
            f"process of its tree recorded before ({count}: {', '.join(kinds)})",
            1,
            f"0 left running {GONE_WITHIN_S:.0f} s after the CLI was gone",
        )


# ---- default suite: the temporary server alone --------------------------------------------------------

HOLDER = """
import sys, time
from genpi.temporary_server import prefect_api
with prefect_api() as url:
    print(url, flush=True)
    time.sleep(600)
"""


@pytest.mark.server
def test_temporary_server_dies_with_a_sigkilled_process(tmp_path, faults):
    """Prefect's own ephemeral server outlives a SIGKILLed parent; genpi's must not."""
    env = _env(tmp_path / "prefect-home")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER], cwd=kh.ROOT, env=env, stdout=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        url = holder.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        tree = descendants(holder.pid)
        assert any(SERVER in cmd for _, cmd in tree.values()), tree
        holder.kill()
        holder.wait()
        left = wait_gone(tree, GONE_WITHIN_S)
        assert left == [], left
    finally:
        kh.kill_group(holder.pid)
        holder.wait()
    faults.add(
        "kill",
        "SIGKILL of a process holding a temporary Prefect server",
        "python process inside genpi.temporary_server.prefect_api(), kill -9",
        1,
        "server gone (parent-death signal); 0 left running",
    )
