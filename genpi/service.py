"""`genpi server up|down|status`: genpi as a local service on one machine.

`up` starts a Prefect server on loopback (SQLite under a project-local PREFECT_HOME), creates the
process work pool and the tag concurrency limits, deploys prefect.yaml's deployments on that pool and starts a
worker; `down` stops what `up` started. The pids go to ``<home>/genpi-service.json`` so `down` stops
exactly those processes (checked against their command line, so a recycled pid is never killed).

Optional basic auth: with ``GENPI_SERVER_AUTH=user:password`` in the environment the server refuses
requests without it (Prefect's ``PREFECT_SERVER_API_AUTH_STRING``) and the worker, deploy step and
flow runs get it as ``PREFECT_API_AUTH_STRING``. The string only ever travels in environment
variables: it is not written to the state file or to any log.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel

from genpi.api_client import AUTH_ENV, PrefectAPI, auth_from_env

PROJECT_DIR = Path(__file__).resolve().parents[1]
STATE_FILE = "genpi-service.json"
WORK_POOL = "genpi-local"
# Tags set on the tasks in tasks/stages.py; the limits make Prefect hold extra task runs until a slot is free.
GENERATION_TAG = "genpi-generation"
TRAINING_TAG = "genpi-training"


class ServiceState(BaseModel):
    """What `up` started; no secrets in here."""

    home: str
    project_dir: str
    api_url: str
    ui_url: str
    pool: str
    server_pid: int | None = None
    worker_pid: int | None = None
    auth: bool = False
    started_at: str
    limits: dict[str, int] = {}
    run_limit: int | None = None  # flow runs the work pool starts at once


def default_home(project_dir: Path = PROJECT_DIR) -> Path:
    return project_dir / ".prefect"


def _state_path(home: Path) -> Path:
    return Path(home) / STATE_FILE


def read_state(home: Path) -> ServiceState | None:
    path = _state_path(home)
    if not path.is_file():
        return None
    return ServiceState.model_validate_json(path.read_text())


def _write_state(state: ServiceState) -> None:
    path = _state_path(Path(state.home))
    tmp = path.with_suffix(".tmp")
    tmp.write_text(state.model_dump_json(indent=2))
    os.replace(tmp, path)


def is_loopback(host: str) -> bool:
    """Only this machine can reach it: 127.0.0.0/8, ::1 or localhost."""
    import ipaddress

    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost: may resolve to anything
        return False


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _ours(pid: int | None) -> bool:
    """The pid is alive and still a Prefect process (not a recycled pid of something else)."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return b"prefect" in cmdline


def service_env(home: Path, api_url: str, project_dir: Path, auth: str | None, worker_poll_s: float = 2.0) -> dict:
    """The environment for everything the service starts (server, deploy, worker and its flow runs)."""
    env = dict(os.environ)
    env.update(
        {
            "PREFECT_HOME": str(home),
            "PREFECT_API_URL": api_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
            "GENPI_PROJECT_DIR": str(project_dir),  # prefect.yaml's pull step: flow runs start in the project
            # the default 10 s poll adds up to 10 s to every run start; 2 s costs nothing measurable
            "PREFECT_WORKER_QUERY_SECONDS": str(worker_poll_s),
            # a 503 ("retry later") otherwise leaves no trace of its cause in server.log
            "PREFECT_API_LOG_RETRYABLE_ERRORS": "true",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.pop("PREFECT_SERVER_API_AUTH_STRING", None)
    if auth:
        env["PREFECT_API_AUTH_STRING"] = auth
    else:
        env.pop("PREFECT_API_AUTH_STRING", None)
    return env


def _spawn(args: list[str], env: dict, log: Path, cwd: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        # own session: `down` signals the whole group (the worker's flow-run children included)
        return subprocess.Popen(
            args,
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _wait_healthy(api: PrefectAPI, proc: subprocess.Popen, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not api.healthy():
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with code {proc.returncode}; {log}:\n{_tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"prefect server not healthy after {timeout_s:.0f} s; {log}:\n{_tail(log)}")
        time.sleep(0.5)


def ensure_pool_and_limits(api: PrefectAPI, pool: str, limits: dict[str, int], run_limit: int | None = None) -> None:
    """Idempotent: an existing pool is kept (its run limit set); tag limits are upserted by the server.

    ``run_limit`` caps the flow runs the pool starts at once. Tag limits alone hold back a run's tasks, not
    its process: a burst of 20 triggers would start 20 Python processes (~0.3 GB each before any model loads)."""
    from prefect.workers.process import ProcessWorker

    try:
        api.request(
            "POST",
            "/work_pools/",
            json={
                "name": pool,
                "type": "process",
                "base_job_template": ProcessWorker.get_default_base_job_template(),
                "concurrency_limit": run_limit,
            },
        )
    except Exception as exc:  # 409: the pool exists already
        if getattr(exc, "status", None) != 409:
            raise
        api.request("PATCH", f"/work_pools/{pool}", json={"concurrency_limit": run_limit})
    for tag, limit in limits.items():
        api.request("POST", "/concurrency_limits/", json={"tag": tag, "concurrency_limit": limit})


def local_deployments(project_dir: Path, pool: str = WORK_POOL) -> list[str]:
    """The prefect.yaml deployments on this service's own pool; the others (the Docker pool's) belong to pools
    this service does not create, and `prefect deploy` refuses a deployment whose pool does not exist."""
    import yaml

    declared = yaml.safe_load((project_dir / "prefect.yaml").read_text(encoding="utf-8"))["deployments"]
    return [d["name"] for d in declared if (d.get("work_pool") or {}).get("name") == pool]


def deploy(project_dir: Path, env: dict, log: Path, pool: str = WORK_POOL) -> None:
    """`prefect deploy` of every prefect.yaml deployment on ``pool`` (idempotent: redeploying replaces)."""
    names = [x for name in local_deployments(project_dir, pool) for x in ("--name", name)]
    with open(log, "ab") as out:
        rc = subprocess.run(
            [sys.executable, "-m", "prefect", "--no-prompt", "deploy", *names],
            cwd=project_dir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        ).returncode
    if rc != 0:
        raise RuntimeError(f"prefect deploy failed (exit {rc}); {log}:\n{_tail(log)}")


def _wait_worker(api: PrefectAPI, pool: str, proc: subprocess.Popen, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        workers = api.request("POST", f"/work_pools/{pool}/workers/filter", json={})
        if any(w.get("status") == "ONLINE" for w in workers or []):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"prefect worker exited with code {proc.returncode}; {log}:\n{_tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"prefect worker not online after {timeout_s:.0f} s; {log}:\n{_tail(log)}")
        time.sleep(0.5)


def up(
    home: Path | None = None,
    project_dir: Path = PROJECT_DIR,
    host: str = "127.0.0.1",
    port: int = 4200,
    pool: str = WORK_POOL,
    generation_limit: int = 1,
    training_limit: int = 1,
    run_limit: int | None = 4,
    worker: bool = True,
    worker_poll_s: float = 2.0,
    timeout_s: float = 180.0,
    say=print,
) -> ServiceState:
    """Start server, pool, limits, deployments and worker; return what was started."""
    home = Path(home or default_home(project_dir)).resolve()
    home.mkdir(parents=True, exist_ok=True)
    logs = home / "logs"
    auth = auth_from_env()
    if not auth and not is_loopback(host):  # an open API that trains whatever it is sent, on the network: no
        raise RuntimeError(
            f"genpi server: refusing to listen on {host} without auth; set {AUTH_ENV}=user:password "
            "(or listen on 127.0.0.1 / ::1)"
        )
    running = read_state(home)
    if running is not None and (_ours(running.server_pid) or _ours(running.worker_pid)):
        return _repair(running, auth, worker, worker_poll_s, timeout_s, say)
    if port == 0:
        port = free_port(host)
    api_url = f"http://{host}:{port}/api"
    env = service_env(home, api_url, project_dir, auth, worker_poll_s)
    limits = {GENERATION_TAG: generation_limit, TRAINING_TAG: training_limit}
    state = ServiceState(
        home=str(home),
        project_dir=str(project_dir),
        api_url=api_url,
        ui_url=f"http://{host}:{port}",
        pool=pool,
        auth=bool(auth),
        started_at=datetime.now(timezone.utc).isoformat(),
        limits=limits,
        run_limit=run_limit,
    )

    say(f"genpi server: starting Prefect on {state.ui_url} (PREFECT_HOME={home}{', basic auth on' if auth else ''})")
    server = _start_server(state, env, auth, logs)
    state.server_pid = server.pid
    _write_state(state)  # recorded before waiting, so `down` can stop a half-started server
    try:
        with PrefectAPI(api_url, auth) as api:
            _wait_healthy(api, server, logs / "server.log", timeout_s)
            ensure_pool_and_limits(api, pool, limits, run_limit)
            say(
                f"genpi server: work pool {pool} (runs at once: {run_limit or 'no limit'}); concurrency limits "
                f"{limits}; deploying prefect.yaml"
            )
            deploy(project_dir, env, logs / "deploy.log", pool)
            if worker:
                proc = _start_worker(state, env, logs)
                state.worker_pid = proc.pid
                _write_state(state)
                _wait_worker(api, pool, proc, logs / "worker.log", timeout_s)
    except BaseException:
        down(home, say=lambda *_: None)  # leave nothing half-started behind
        raise
    say(f"genpi server: up. UI {state.ui_url}   logs {logs}")
    say(f"  export PREFECT_API_URL={api_url}")
    return state


def _start_server(state: ServiceState, env: dict, auth: str | None, logs: Path) -> subprocess.Popen:
    server_env = dict(env)
    if auth:
        server_env["PREFECT_SERVER_API_AUTH_STRING"] = auth
    host, port = _host_port(state.ui_url)
    return _spawn(
        [sys.executable, "-m", "genpi.prefect_server", "start", "--host", host, "--port", str(port)],
        server_env,
        logs / "server.log",
        Path(state.project_dir),
    )


def _start_worker(state: ServiceState, env: dict, logs: Path) -> subprocess.Popen:
    _, port = _host_port(state.ui_url)
    return _spawn(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", state.pool, "--name", f"genpi-{port}"],
        env,
        logs / "worker.log",
        Path(state.project_dir),
    )


def _host_port(ui_url: str) -> tuple[str, int]:
    host, _, port = ui_url.removeprefix("http://").rpartition(":")
    return host.strip("[]"), int(port)


def _repair(
    state: ServiceState, auth: str | None, worker: bool, worker_poll_s: float, timeout_s: float, say
) -> ServiceState:
    """`up` on a service that is partly alive: start what died (the server on its old address and database,
    the worker) and keep what runs. Runs that a dead worker left behind are not resumed here: trigger them
    again and they reuse every finished stage."""
    if state.auth and not auth:
        raise RuntimeError(f"genpi server: the running service has auth on; set {AUTH_ENV} to repair it")
    server_alive, worker_alive = _ours(state.server_pid), _ours(state.worker_pid)
    if server_alive and (worker_alive or not worker):
        raise RuntimeError(
            f"genpi server already running at {state.ui_url} (pid {state.server_pid}); "
            f"`genpi server down --home {state.home}` first"
        )
    home = Path(state.home)
    logs = home / "logs"
    env = service_env(home, state.api_url, Path(state.project_dir), auth, worker_poll_s)
    with PrefectAPI(state.api_url, auth) as api:
        if not server_alive:
            say(f"genpi server: the server was gone; starting it again on {state.ui_url} (same database)")
            server = _start_server(state, env, auth, logs)
            state.server_pid = server.pid
            _write_state(state)
            _wait_healthy(api, server, logs / "server.log", timeout_s)
            ensure_pool_and_limits(api, state.pool, state.limits, state.run_limit)
        if worker and not worker_alive:
            say("genpi server: the worker was gone; starting a new one")
            proc = _start_worker(state, env, logs)
            state.worker_pid = proc.pid
            _write_state(state)
            _wait_worker(api, state.pool, proc, logs / "worker.log", timeout_s)
    say(f"genpi server: up again. UI {state.ui_url}")
    return state


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _ours(pid) or _zombie(pid):
            return True
        time.sleep(0.2)
    return False


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def _stop(pid: int | None, first: int, second: int | None, grace_s: float) -> str:
    if pid is None or not _ours(pid):
        return "not running"
    _signal_group(pid, first)
    if _wait_gone(pid, grace_s):
        return "stopped"
    if second is not None:  # a worker wants SIGINT twice (notes G1)
        _signal_group(pid, second)
        if _wait_gone(pid, grace_s):
            return "stopped"
    _signal_group(pid, signal.SIGKILL)
    _wait_gone(pid, 5)
    return "killed"


def down(home: Path | None = None, say=print) -> bool:
    """Stop the worker (and its flow runs), then the server. False when nothing was recorded."""
    home = Path(home or default_home()).resolve()
    state = read_state(home)
    if state is None:
        say(f"genpi server: nothing recorded in {home}")
        return False
    say(f"genpi server: worker {_stop(state.worker_pid, signal.SIGINT, signal.SIGINT, 10)}")
    say(f"genpi server: server {_stop(state.server_pid, signal.SIGTERM, None, 20)}")
    _state_path(home).unlink(missing_ok=True)
    return True


def status(home: Path | None = None) -> dict:
    """Processes, health, deployments and online workers of the recorded service."""
    home = Path(home or default_home()).resolve()
    state = read_state(home)
    if state is None:
        return {"running": False, "home": str(home)}
    info = {
        "running": False,
        "home": str(home),
        "ui_url": state.ui_url,
        "api_url": state.api_url,
        "pool": state.pool,
        "auth": state.auth,
        "server_alive": _ours(state.server_pid),
        "worker_alive": _ours(state.worker_pid),
        "worker_recorded": state.worker_pid is not None,
        "started_at": state.started_at,
        "limits": state.limits,
        "run_limit": state.run_limit,
    }
    with PrefectAPI(state.api_url, auth_from_env(), retries=1) as api:
        info["healthy"] = api.healthy()
        if info["healthy"]:
            try:
                deployments = api.request("POST", "/deployments/filter", json={"limit": 50})
                info["deployments"] = sorted(d["name"] for d in deployments)
                workers = api.request("POST", f"/work_pools/{state.pool}/workers/filter", json={})
                info["workers_online"] = sum(w.get("status") == "ONLINE" for w in workers)
            except Exception as exc:  # e.g. 401 when GENPI_SERVER_AUTH is missing in this shell
                info["error"] = str(exc).split(":", 2)[-1].strip()[:200] + (f" (set {AUTH_ENV}?)" if state.auth else "")
    info["running"] = bool(info["server_alive"] and info["healthy"])
    return info


def client_env(api_url: str | None = None, home: Path | None = None) -> str:
    """Point this process's Prefect client at the service (G2: an unset PREFECT_API_URL goes nowhere).

    Order: the explicit URL, PREFECT_API_URL, then the URL recorded by `genpi server up`. Call before importing prefect.
    """
    url = api_url or os.environ.get("PREFECT_API_URL")
    if not url:
        state = read_state(Path(home or default_home()).resolve())
        if state is None:
            raise ValueError(
                "no Prefect API: pass --api-url, export PREFECT_API_URL, or start one with `genpi server up`"
            )
        url = state.api_url
    from genpi.api_client import normalize_api_url

    url = normalize_api_url(url)
    os.environ["PREFECT_API_URL"] = url
    os.environ.setdefault("PREFECT_HOME", str(Path(home or default_home()).resolve()))
    auth = auth_from_env()
    if auth:
        os.environ["PREFECT_API_AUTH_STRING"] = auth
    return url


def main_status_lines(info: dict) -> list[str]:
    if not info.get("ui_url"):
        return [f"genpi server: not running (nothing recorded in {info['home']})"]
    lines = [
        f"genpi server: {'running' if info['running'] else 'NOT running'} at {info['ui_url']} (home {info['home']})",
        f"  server process {'alive' if info['server_alive'] else 'gone'}, healthy {info.get('healthy')}, "
        f"worker process {'alive' if info['worker_alive'] else 'gone'}, workers online {info.get('workers_online', '?')}",
        f"  pool {info['pool']} (runs at once: {info.get('run_limit') or 'no limit'}), concurrency limits "
        f"{info['limits']}, basic auth {'on' if info['auth'] else 'off'}",
    ]
    if info.get("deployments"):
        lines.append(f"  deployments: {', '.join(info['deployments'])}")
    if not info["running"] or (info.get("worker_recorded") and not info["worker_alive"]):
        lines.append(f"  `genpi server up --home {info['home']}` starts what is gone")
    if info.get("error"):
        lines.append(f"  error: {info['error']}")
    return lines
