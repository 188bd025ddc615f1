"""The shell sandbox against hostile commands: the host, the project and this test run must survive each one,
and no process may outlive its sandbox. Real bubblewrap (CI installs it; elsewhere the module skips and says why)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from genpi_core.environment.sandbox import (
    TRUNCATE_NOTE,
    Sandbox,
    SandboxLimits,
    SandboxUnavailable,
    namespace_pids,
    truncate_observation,
)
from tests.conftest import require_sandbox

ROOT = Path(__file__).resolve().parents[4]

require_sandbox(module=True)


@pytest.fixture
def box():
    namespaces = []
    with Sandbox(SandboxLimits(command_timeout_s=3, max_processes=48)) as sandbox:
        original_run = sandbox.run

        def run(command, timeout_s=None):  # remember every shell's namespace (a restart makes a new one)
            namespaces.append(sandbox.namespace)
            result = original_run(command, timeout_s)
            namespaces.append(sandbox.namespace)
            return result

        sandbox.run = run
        yield sandbox
    for namespace in {n for n in namespaces if n}:
        assert namespace_pids(namespace) == [], f"a process outlived its sandbox ({namespace})"
    assert not sandbox.root.exists()


def test_state_persists_between_commands_and_across_a_restart(box):
    assert box.run("cd /tmp && echo hi > a.txt && pwd").output == "/tmp\n"
    assert box.run("cat a.txt").output == "hi\n"  # same shell: the cwd stayed
    assert box.run("exit 3").exit_code is None  # the shell is gone...
    assert box.run("cat /tmp/a.txt").output == "hi\n"  # ...a fresh one sees the same files


def test_looks_like_root_in_an_empty_box_without_the_host(box):
    out = box.run("id -u; ls /; ls /work /root/.cache " + str(ROOT) + " 2>&1 | wc -l").output.split("\n")
    assert out[0] == "0"
    assert "proc" in out and "work" not in out
    assert box.run(f"ls {ROOT} 2>&1").exit_code != 0
    assert box.run(f"cat {Path.home()}/.bashrc 2>&1").exit_code != 0
    assert box.run("test -e /etc/shadow").exit_code != 0  # the private /etc copy leaves host secrets out
    names = set(box.run("env | cut -d= -f1").output.split())
    assert names <= {"HOME", "LANG", "OLDPWD", "PATH", "PWD", "SHLVL", "TERM", "USER", "_"}  # --clearenv


def test_no_network(box):
    result = box.run("getent hosts pypi.org || echo no-dns; (exec 3<>/dev/tcp/1.1.1.1/80) 2>&1 || echo no-tcp")
    assert "no-dns" in result.output and "no-tcp" in result.output


def test_rm_rf_root_leaves_the_host_alone(box, tmp_path):
    canary = tmp_path / "canary.txt"
    canary.write_text("still here")
    box.run("rm -rf --no-preserve-root / 2>/dev/null; true")
    assert canary.read_text() == "still here"
    assert (ROOT / "pyproject.toml").is_file() and Path("/usr/bin/env").exists()
    assert box.run("touch /usr/x 2>&1").exit_code != 0  # /usr is read-only inside too


def test_fork_bomb_is_capped_and_the_next_command_gets_a_fresh_shell(box):
    box.run(":(){ :|:& };:")
    time.sleep(1)
    assert len(box.processes()) <= box.limits.max_processes + 2
    result = box.run("echo alive")
    assert "alive" in result.output and result.exit_code == 0


def test_a_command_past_its_timeout_is_killed_with_its_children(box):
    started = time.monotonic()
    result = box.run("sleep 10000")
    assert result.timed_out and result.exit_code is None and time.monotonic() - started < 6
    box.run("setsid sleep 10000 & nohup sleep 10000 >/dev/null 2>&1 &")
    assert box.run("echo ok").output == "ok\n"


def test_a_command_cannot_read_the_protocol_from_stdin(box):
    assert box.run("read line; echo got=$line").output == "got=\n"


def test_huge_output_is_bounded_and_observations_cut_like_agentbench():
    with Sandbox(SandboxLimits(command_timeout_s=5, max_output_bytes=10_000)) as box:
        out = box.run("yes | head -c 5000000").output
        assert len(out) <= 10_000
    assert truncate_observation("a" * 800) == "a" * 800
    assert truncate_observation("a" * 801) == "a" * 780 + TRUNCATE_NOTE


def test_missing_bwrap_is_a_clear_error_and_nothing_runs(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(SandboxUnavailable, match="apt-get install -y bubblewrap"):
        Sandbox()


def test_sandboxes_side_by_side_have_their_own_process_caps():
    """Task evaluation keeps one sandbox per task open at once: 25 of them must start, and a fork bomb in one
    must not starve the others (each runs as its own unprivileged host uid)."""
    boxes = []
    try:
        for _ in range(25):
            boxes.append(Sandbox(SandboxLimits(command_timeout_s=5, max_processes=32)))
        assert len({b.uid for b in boxes}) == 25
        boxes[0].run(":(){ :|:& };:")
        time.sleep(1)
        assert boxes[1].run("echo fine").output == "fine\n"
        assert all(b.run("echo $((6*7))").output == "42\n" for b in boxes[2:])
    finally:
        for b in boxes:
            b.close()
