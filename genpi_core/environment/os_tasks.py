"""AgentBench OS tasks in the shell sandbox: load a task file, set a task up, and judge an answer.

The protocol is AgentBench's (src/server/tasks/os_interaction/task.py): init scripts run as separate
processes and must exit 0; ``start`` runs in the agent's own shell (it usually leaves a background job);
``match`` compares the stripped answer; ``check`` scripts each receive the answer and the previous scripts'
outputs as arguments, and every one must exit 0. The sandbox (genpi_core.environment.sandbox) stands in
for AgentBench's docker image.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from genpi_core.environment.sandbox import CommandResult, Sandbox
from genpi_core.trust import beside
from schemas.errors import describe
from schemas.os_tasks import OSTask, Script

MAX_TASK_FILE_BYTES = 8_000_000


class TaskFileError(ValueError):
    """A task file that cannot be used; the message names the file, the task and the field."""


@dataclass(frozen=True)
class LoadedTask:
    """A task with every script file read in (``Script.code`` set), and where it came from."""

    task_id: str  # <file stem>-<index>, as AgentBench indexes them
    task: OSTask
    source: str


def _confined(folder: Path, value: str, where: str) -> Path:
    target = beside(folder, value, where, "the task file's folder", TaskFileError)
    if not target.is_file():
        raise TaskFileError(f"{where}: script {target} not found")
    return target


def _inline(script: Script | None, folder: Path, where: str) -> Script | None:
    if script is None or script.file is None:
        return script
    text = _confined(folder, script.file, where).read_text(encoding="utf-8")
    return Script(language=script.language, code=text)


def _raw_tasks(path: Path) -> list:
    data = path.read_bytes()
    if len(data) > MAX_TASK_FILE_BYTES:
        raise TaskFileError(f"{path}: {len(data)} bytes is over the {MAX_TASK_FILE_BYTES}-byte limit")
    text = data.decode("utf-8")
    try:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TaskFileError(f"{path}: not valid JSON ({exc})") from exc
    if isinstance(raw, dict):
        return [raw]
    if not isinstance(raw, list):
        raise TaskFileError(f"{path}: expected a list of tasks, got {type(raw).__name__}")
    return raw


def load_tasks(path: str | Path, allowed_root: str | Path | None = None) -> list[LoadedTask]:
    """Every task of an AgentBench OS task file, validated, with script files read from beside it.

    ``allowed_root``: when given, the task file itself must sit inside it (paths from API calls)."""
    path = Path(path).resolve()
    if allowed_root is not None and not path.is_relative_to(Path(allowed_root).resolve()):
        raise TaskFileError(f"{path}: task files must sit inside {Path(allowed_root).resolve()}")
    if not path.is_file():
        raise TaskFileError(f"{path}: task file not found")
    raw = _raw_tasks(path)
    folder = path.parent
    loaded = []
    for index, item in enumerate(raw):
        where = f"{path}: task {index}"
        try:
            task = OSTask.model_validate(item)
        except ValidationError as exc:
            raise TaskFileError(describe(where, "AgentBench OS task", exc)) from exc
        ev = task.evaluation
        resolved = task.model_copy(
            update={
                "create": task.create.model_copy(
                    update={"init": [_inline(s, folder, f"{where}: field `create.init`") for s in task.create.scripts]}
                ),
                "start": _inline(task.start, folder, f"{where}: field `start`"),
                "example": _inline(task.example, folder, f"{where}: field `example`"),
                "evaluation": ev.model_copy(
                    update={
                        "check": [_inline(s, folder, f"{where}: field `evaluation.check`") for s in ev.checks]
                        if ev.check is not None
                        else None,
                        "example": _inline(ev.example, folder, f"{where}: field `evaluation.example`"),
                    }
                ),
            }
        )
        loaded.append(LoadedTask(f"{path.stem}-{index}", resolved, str(path)))
    return loaded


# --- running a task ----------------------------------------------------------------------------------


def run_script(box: Sandbox, script: Script, args: Sequence[str] = (), timeout_s: float | None = None) -> CommandResult:
    """Run a script as its own process in the box (not in the agent's shell); stdout only, like AgentBench."""
    assert script.code is not None, "scripts are inlined by load_tasks"
    suffix = ".py" if script.language == "python" else ".sh"
    name = box.put_control_file(script.code, suffix)
    interpreter = "python3" if script.language == "python" else "bash"
    quoted = " ".join(shlex.quote(a) for a in args)
    return box.run(f"( cd /root && {interpreter} /run/genpi/{name} {quoted} 2>/dev/null )", timeout_s=timeout_s)


def prepare(box: Sandbox, task: OSTask) -> str | None:
    """Init scripts, then ``start`` in the agent's shell. None when ready, else why the set-up failed."""
    for i, script in enumerate(task.create.scripts):
        result = run_script(box, script, timeout_s=box.script_timeout_s)
        if result.exit_code != 0:
            return f"init script {i} failed (exit {result.exit_code}): {result.output[-300:]}"
    if task.start is not None:
        assert task.start.code is not None
        result = box.run(task.start.code)
        if result.exit_code != 0:
            return f"start failed (exit {result.exit_code}): {result.output[-300:]}"
    return None


def judge(box: Sandbox, task: OSTask, answer: str | None) -> bool:
    """AgentBench's verdict on an answer (None: the episode gave none, which fails)."""
    if answer is None:
        return False
    ev = task.evaluation
    if ev.match is not None:
        got = answer.strip() if ev.match.strip else answer
        if ev.match.answer is not None:
            return got == ev.match.answer
        return re.search(ev.match.regex or "", got) is not None
    params = [answer]
    for script in ev.checks:
        script = script or ev.example
        assert script is not None
        result = run_script(box, script, params, timeout_s=box.script_timeout_s)
        if result.exit_code != 0:
            return False
        params.append(result.output)
    return True


def reference_answer(box: Sandbox, task: OSTask) -> str | None:
    """What the reference solution says (its stdout), for tasks that have one; None for match-only tasks."""
    script = task.reference
    if script is None:
        return None
    result = run_script(box, script, timeout_s=box.script_timeout_s)
    return result.output if result.exit_code == 0 else None
