"""The `genpi` command line: every command explains itself; bad input exits 2 with the file and field."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import EXAMPLE_SPEC

GENPI = str(Path(sys.executable).with_name("genpi"))
COMMANDS = ["demo", "internalize", "synthesize", "train", "evaluate", "check-spec", "report", "model", "bench"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([GENPI, *args], capture_output=True, text=True, timeout=300)


def test_top_level_help_lists_every_command():
    out = run("--help")
    assert out.returncode == 0
    for command in COMMANDS:
        assert command in out.stdout
    assert "GENPI_CACHE" in out.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_help(command):
    out = run(command, "--help")
    assert out.returncode == 0 and "usage: genpi " + command in out.stdout
    assert len(out.stdout.splitlines()) > 4


def test_check_spec_on_the_example(embedded_model_dir):
    out = run("check-spec", str(EXAMPLE_SPEC))
    assert out.returncode == 0, out.stderr
    assert "name library-desk" in out.stdout and "126 pool inputs, 30 eval inputs" in out.stdout


def test_bad_spec_exits_2_naming_file_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nprompt: {system: hi}\nchecks: [{type: regex, pattern: '(['}]\n")
    out = run("internalize", str(bad), "--runs-dir", str(tmp_path / "runs"), "--no-prefect")
    assert out.returncode == 2
    assert f"{bad}: invalid prompt spec" in out.stderr and "checks[0].pattern" in out.stderr
    assert "Traceback" not in out.stderr


def test_model_installed_answers_without_fetching_and_names_the_known_models(tmp_path, embedded_model_dir):
    import os

    empty = {**os.environ, "GENPI_CACHE": str(tmp_path / "cache")}
    missing = subprocess.run(
        [GENPI, "model", "--installed", "embedded-0.5b"], capture_output=True, text=True, env=empty
    )
    assert missing.returncode == 1 and "embedded-0.5b: not installed" in missing.stdout
    assert not (tmp_path / "cache").exists()  # nothing fetched, nothing converted
    assert run("model", "--installed", "embedded").returncode == 0  # the test session's cache has it
    typo = run("model", "--installed", "embeded")
    assert typo.returncode == 2 and "embedded, embedded-0.5b" in typo.stderr


def test_pure_logic_the_demo_lets_an_installed_05b_write_its_inputs_and_says_so_otherwise():
    from genpi.demo import demo_overrides

    alone, note = demo_overrides("embedded", generator_installed=False)
    assert alone == ["model.name_or_path=embedded"] and "pool" in note and "GENPI_MODELS=embedded-0.5b" in note
    paired, note = demo_overrides("embedded", generator_installed=True)
    assert "synth.generator.model.name_or_path=embedded-0.5b" in paired and "synth.inputs.source=both" in paired
    own, _ = demo_overrides("embedded-0.5b", generator_installed=True)  # its own generator: no second copy
    assert own == ["model.name_or_path=embedded-0.5b", "synth.inputs.source=both"]
    with pytest.raises(ValueError, match="embedded or embedded-0.5b"):
        demo_overrides("gpt-4", generator_installed=True)


def test_bad_override_exits_2():
    out = run("check-spec", str(EXAMPLE_SPEC), "--set", "train.epochz=3")
    assert out.returncode == 2 and "train.epochz" in out.stderr


def test_train_on_a_folder_without_data_exits_2_and_says_what_to_run(tmp_path):
    out = run("train", str(tmp_path))
    assert out.returncode == 2
    assert (
        f"{tmp_path}: not a run folder with a finished dataset stage" in out.stderr and "genpi synthesize" in out.stderr
    )


def test_train_help_lists_the_ablations():
    out = run("train", "--help")
    assert (
        "--variant" in out.stdout
        and "train.prompt_generation=false" in out.stdout
        and "prompt_in_context" in out.stdout
    )


def test_bench_runs_the_named_script_with_its_arguments():
    out = run("bench", "ablations", "--help")  # the script's own help: the arguments reached it
    assert out.returncode == 0 and "usage: ablations.py" in out.stdout and "--variants" in out.stdout
    out = run("bench", "no-such-bench")
    assert out.returncode == 2 and "invalid choice" in out.stderr


def test_server_refuses_a_network_bind_without_auth(monkeypatch, tmp_path):
    from genpi.api_client import AUTH_ENV
    from genpi.service import is_loopback, up

    monkeypatch.delenv(AUTH_ENV, raising=False)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.3.2.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.5") and not is_loopback("genpi.example.com")
    for host in ("0.0.0.0", "192.168.1.20"):
        with pytest.raises(RuntimeError, match=f"refusing to listen on {host} without auth"):
            up(home=tmp_path / "home", host=host, say=lambda *_: None)
    assert not (tmp_path / "home" / "logs").exists() or not any((tmp_path / "home" / "logs").iterdir())


def test_sigterm_and_sighup_stop_the_cli_like_ctrl_c_but_an_ignored_one_stays_ignored():
    """`nohup genpi ...` hands SIGHUP down ignored: the CLI must keep ignoring it (and survive its terminal)."""
    import signal

    from genpi.cli import _raise_stopped, _stop_on_signals

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        previous = _stop_on_signals()
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is _raise_stopped and set(previous) == {signal.SIGTERM}
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
