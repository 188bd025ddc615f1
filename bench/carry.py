"""What a long benchmark keeps in the repository, so a fresh clone goes on where the last machine stopped.

Every session starts on a new machine: no runs/, no caches. The stages checkpoint inside runs/, which is not
committed, so a benchmark of many hours would start over each time. ``BenchState`` is the part that is
committed, bench/resume/<benchmark>/:

  cells.json     each finished unit of work (a student, an environment kind, ...) with its scores, keyed by
                 everything it measured (``result_key``), so it is only reused for exactly that
  clock.json     wall time and peak memory summed over every session of the same benchmark (``Clock``)
  synthesized/   a mirror of the run folders without training and evaluation: small tables, no weights
                 (not named runs/, which .gitignore keeps out of the repository)

``restore`` copies every benchmark's mirror back into runs/ where runs/ lacks it: the stages check their own
keys (config, inputs, package versions), so a stage that does not match is recomputed, never misused.
"""

from __future__ import annotations

import json
import re
import resource
import shutil
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

from genpi_core.evaluate.summary import METRICS_VERSION
from genpi_core.store.stage import atomic_write_json, json_sha256

RESUME = Path(__file__).resolve().parent / "resume"
CARRIED_DIR = "synthesized"
# stages a fresh machine would recompute for hours, but that weigh little, are carried; these are not
UNCARRIED_PREFIXES = ("train", "evaluate", "tasks")
CARRY_LIMIT_BYTES = 20_000_000  # a bigger file is left out (and said so): the folder is committed


def peak_memory_gb() -> float:
    """Largest resident set of this process or any finished child (the trainers run as children)."""
    kib = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return round(kib / 1e6, 2)


def measured_config(cfg) -> dict:
    """A resolved PipelineConfig as a result's identity: all of it but where runs are kept (that is the
    machine's business, and a fresh clone may keep them elsewhere)."""
    resolved = cfg.model_dump(mode="json")
    resolved.pop("runs_dir", None)
    return resolved


def result_key(**parts) -> str:
    """The identity of a finished unit: whatever the caller says it measured, plus the metrics version."""
    return json_sha256(parts | {"metrics": METRICS_VERSION})


class Clock:
    """Wall time and peak memory summed over every run of the same benchmark (a resumed run adds to them), kept
    in a small file that a daemon thread refreshes each minute, so a killed run loses at most a minute of it.
    Time while the process was stopped (SIGSTOP, to let something else use the CPU) is left out: a tick that
    comes much later than a minute counts as one minute."""

    TICK_S = 60.0

    def __init__(self, path: Path, identity: dict) -> None:
        self.path, self.identity = path, identity
        old = json.loads(path.read_text()) if path.is_file() else {}
        same = old.get("identity") == identity
        self.total = old.get("wall_seconds", 0.0) if same else 0.0
        self.sessions = old.get("sessions", 0) + 1 if same else 1
        self.peak_before = old.get("peak_memory_gb", 0.0) if same else 0.0
        self.last = time.perf_counter()
        self.lock = threading.Lock()
        self.save()
        threading.Thread(target=self._tick, daemon=True).start()

    def _advance(self) -> None:
        with self.lock:
            now = time.perf_counter()
            gap = now - self.last
            self.total += gap if gap < 2 * self.TICK_S else self.TICK_S
            self.last = now

    def seconds(self) -> float:
        self._advance()
        return round(self.total, 1)

    def peak_memory_gb(self) -> float:
        return max(self.peak_before, peak_memory_gb())

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {"identity": self.identity, "wall_seconds": self.seconds(), "sessions": self.sessions}
        atomic_write_json(self.path, record | {"peak_memory_gb": self.peak_memory_gb()})

    def _tick(self) -> None:
        while True:
            time.sleep(self.TICK_S)
            self.save()


class ClockReading:
    """A clock as last saved, for rewriting results without running anything."""

    def __init__(self, path: Path) -> None:
        saved = json.loads(path.read_text()) if path.is_file() else {}
        self.total, self.sessions = saved.get("wall_seconds", 0.0), saved.get("sessions", 0)
        self.peak = saved.get("peak_memory_gb", 0.0)

    def seconds(self) -> float:
        return self.total

    def peak_memory_gb(self) -> float:
        return self.peak


class Deadline:
    """When this machine goes away (a session's end): a benchmark skips a unit it would not finish by then, so
    the hours before the end are not spent on work a kill would throw away, and runs whatever still fits.

    ``--stop-by`` takes "HH:MM" (local time, the next such time), an ISO date and time, or "+90m" / "+2h" /
    "+5400s" from now. A unit whose duration is unknown (nothing like it finished yet) always starts."""

    MARGIN = 1.1  # units vary: a unit must fit with 10% to spare

    def __init__(self, at: datetime | None) -> None:
        self.at = at

    @classmethod
    def parse(cls, text: str | None, now: datetime | None = None) -> Deadline:
        now = now or datetime.now()
        if not text:
            return cls(None)
        relative = re.fullmatch(r"\+(\d+(?:\.\d+)?)([smh])", text.strip())
        if relative:
            seconds = float(relative.group(1)) * {"s": 1, "m": 60, "h": 3600}[relative.group(2)]
            return cls(now + timedelta(seconds=seconds))
        clock = re.fullmatch(r"(\d{1,2}):(\d{2})", text.strip())
        if clock:
            at = now.replace(hour=int(clock.group(1)), minute=int(clock.group(2)), second=0, microsecond=0)
            return cls(at if at > now else at + timedelta(days=1))
        try:
            return cls(datetime.fromisoformat(text.strip()))
        except ValueError:
            raise ValueError(
                f"--stop-by: {text!r} is not HH:MM, an ISO date and time, or +90m / +2h / +5400s"
            ) from None

    def seconds_left(self, now: datetime | None = None) -> float | None:
        return None if self.at is None else (self.at - (now or datetime.now())).total_seconds()

    def allows(self, estimate_s: float | None, now: datetime | None = None) -> bool:
        left = self.seconds_left(now)
        return left is None or estimate_s is None or estimate_s * self.MARGIN <= left

    def why_not(self, name: str, estimate_s: float, now: datetime | None = None) -> str:
        left = self.seconds_left(now) or 0.0
        return (
            f"   skipped before the deadline ({self.at:%Y-%m-%d %H:%M}): {name} needs about {estimate_s / 60:.0f} min, "
            f"{max(left, 0) / 60:.0f} min left"
        )


class BenchState:
    """One benchmark's committed progress (see the module docstring)."""

    def __init__(self, name: str, runs_dir: Path, root: Path = RESUME) -> None:
        self.root, self.folder, self.runs_dir = root, root / name, runs_dir
        self.cells_path = self.folder / "cells.json"
        self.cells: dict[str, dict] = json.loads(self.cells_path.read_text()) if self.cells_path.is_file() else {}

    def clock(self, identity: dict) -> Clock:
        return Clock(self.folder / "clock.json", identity)

    def clock_reading(self) -> ClockReading:
        return ClockReading(self.folder / "clock.json")

    def finished(self, key: str) -> dict | None:
        return self.cells.get(key)

    def record(self, key: str, result: dict) -> None:
        self.cells[key] = result
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.cells_path, self.cells)

    def keep(self, key: str, result: dict) -> None:
        """Record a unit that just finished, and mirror its run folder (``result["run_dir"]``)."""
        self.record(key, result)
        self.save_run(Path(result["run_dir"]))

    def restore(self, others_into: Path | None = None) -> int:
        """Copy every benchmark's carried data into runs/ where runs/ lacks it (what is already there wins, this
        benchmark's own folder first); the number of files copied. Other benchmarks' data goes to
        ``others_into`` where this benchmark keeps its runs of their layout (<spec name>/<version>/) deeper
        down (default: runs_dir)."""
        copied = 0
        others = sorted(p for p in self.root.glob(f"*/{CARRIED_DIR}") if p.parent != self.folder)
        for carried in [self.folder / CARRIED_DIR, *others]:
            into = self.runs_dir if carried.parent == self.folder else (others_into or self.runs_dir)
            for src in sorted(p for p in carried.rglob("*") if p.is_file()) if carried.is_dir() else []:
                dst = into / src.relative_to(carried)
                if not dst.exists():
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, dst)
                    copied += 1
        return copied

    def save_run(self, run_dir: Path) -> None:
        """Mirror one run's carried stages (every entry but training and evaluation) into the folder; the run
        may sit anywhere under runs_dir (a benchmark may keep its own runs root inside it)."""
        rel = Path(run_dir).resolve().relative_to(self.runs_dir.resolve())
        target = self.folder / CARRIED_DIR / rel
        for entry in sorted(Path(run_dir).iterdir()):
            if entry.name.startswith(UNCARRIED_PREFIXES) or entry.name.startswith("."):
                continue
            dst = target / entry.name
            tmp = dst.with_name(dst.name + ".partial")
            shutil.rmtree(tmp, ignore_errors=True)
            if entry.is_dir():
                shutil.copytree(entry, tmp, ignore=self._too_big)
            else:
                tmp.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(entry, tmp)
            if dst.is_dir():
                shutil.rmtree(dst)
            elif dst.exists():
                dst.unlink()
            tmp.rename(dst)

    def save_all(self, pattern: str = "*/*/ingest") -> None:
        """Mirror every run folder under runs_dir that ``pattern`` finds (by its ingest stage)."""
        for run_dir in sorted({p.parent for p in self.runs_dir.glob(pattern)}):
            self.save_run(run_dir)

    @staticmethod
    def _too_big(folder: str, names: list[str]) -> list[str]:
        big = [
            n for n in names if (Path(folder) / n).is_file() and (Path(folder) / n).stat().st_size > CARRY_LIMIT_BYTES
        ]
        for name in big:
            print(
                f"   resume state: left out {Path(folder) / name} (over {CARRY_LIMIT_BYTES // 1_000_000} MB)",
                flush=True,
            )
        return big
