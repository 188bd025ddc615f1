"""The reliability suite's shared recorder: every fault a test injects is counted, and the counts of the
last run become docs/reliability.md's table (``python bench/reliability_report.py``).

A test takes the ``faults`` fixture and calls ``faults.add(category, fault, injection, count, detail)``
once per kind of fault it injected. Whether the row passed is the test's own outcome, so a row can
never say "pass" for a test that failed. Records go to ``$GENPI_RELIABILITY_OUT`` (JSON) when set,
which ``scripts/test.sh`` leaves unset: ordinary runs write nothing into the repository.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest


@dataclass
class FaultRecord:
    category: (
        str  # "kill", "server", "corrupt file", "bad input", "hostile generation", "disk", "concurrency", "security"
    )
    fault: str  # what went wrong, e.g. "SIGKILL during training"
    injection: str  # how it was made to happen, e.g. "kill -9 of `genpi internalize` 2-9 s after train/ appears"
    count: int  # how many times it was injected in this test
    detail: str = ""  # what the test checked/measured, e.g. "re-run completed; 0 rows lost"
    test: str = ""
    outcome: str = "not run"
    seconds: float = 0.0


@dataclass
class FaultRecorder:
    records: list[FaultRecord] = field(default_factory=list)

    def add(self, category: str, fault: str, injection: str, count: int, detail: str = "") -> None:
        self.records.append(FaultRecord(category, fault, injection, count, detail))


_ALL: list[FaultRecord] = []
_RECORDERS: dict[str, FaultRecorder] = {}


@pytest.fixture
def faults(request) -> FaultRecorder:
    recorder = FaultRecorder()
    _RECORDERS[request.node.nodeid] = recorder
    return recorder


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    recorder = _RECORDERS.get(item.nodeid)
    if recorder is None or report.when != "call" and not report.failed:
        return
    for record in recorder.records:
        if record.outcome in ("not run", "passed"):
            record.test = item.nodeid
            record.outcome = report.outcome
            record.seconds = round(record.seconds + report.duration, 1)
            if record not in _ALL:
                _ALL.append(record)


def pytest_sessionfinish(session, exitstatus):
    out = os.environ.get("GENPI_RELIABILITY_OUT")
    if not out or not _ALL:
        return
    path = Path(out)
    previous = json.loads(path.read_text()) if path.is_file() else {"records": []}
    tests_now = {r.test for r in _ALL}
    kept = [r for r in previous["records"] if r["test"] not in tests_now]  # a re-run of a test replaces its rows
    payload = {"updated": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "records": kept + [asdict(r) for r in _ALL]}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)
