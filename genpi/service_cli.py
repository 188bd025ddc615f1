"""The service commands of `genpi`: `server up|down|status`, `run` (over the REST API), `watch`, `adapters`.

Kept apart from cli.py so the pipeline commands stay short; cli.py registers these with
``add_service_commands``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from genpi.api_client import AUTH_ENV, INTERNALIZE_DEPLOYMENT


def _errors_exit_2(func):
    """Service failures (server won't start, API refuses) print one line and exit 2, like bad input."""
    def wrapped(args) -> int:
        from genpi.api_client import PrefectAPIError

        try:
            return func(args)
        except (PrefectAPIError, RuntimeError, TimeoutError) as exc:
            print(f"genpi: error: {exc}", file=sys.stderr)
            return 2
    wrapped.__doc__ = func.__doc__
    return wrapped


def _config(args):
    from schemas.config import load_config

    overrides = list(args.set or [])
    if getattr(args, "runs_dir", None):
        overrides.append(f"runs_dir={args.runs_dir}")
    return load_config(args.config, overrides)


@_errors_exit_2
def cmd_server(args) -> int:
    from genpi import service

    if args.action == "up":
        service.up(home=args.home, port=args.port, host=args.host, generation_limit=args.generation_limit,
                   training_limit=args.training_limit, worker=not args.no_worker, timeout_s=args.timeout)
        return 0
    if args.action == "down":
        service.down(home=args.home)
        return 0
    info = service.status(home=args.home)
    print(json.dumps(info, indent=2) if args.json else "\n".join(service.main_status_lines(info)))
    return 0 if info["running"] else 3


def _api_url(args) -> str:
    from genpi.service import client_env

    return client_env(args.api_url, args.home)


@_errors_exit_2
def cmd_run(args) -> int:
    """Start a deployment run over REST, like the README's curl, and optionally wait for its final state."""
    from genpi.api_client import PrefectAPI, auth_from_env

    cfg = _config(args)
    spec_path = Path(args.spec)
    # the worker reads the path: send it absolute when it exists here (same machine or shared disk)
    spec = str(spec_path.resolve()) if spec_path.is_file() else args.spec
    parameters = {"spec_path": spec, "config": cfg.model_dump(mode="json")}
    api_url = _api_url(args)
    started = time.perf_counter()
    with PrefectAPI(api_url, auth_from_env()) as api:
        deployment = api.deployment(args.deployment)
        run = api.create_flow_run(deployment["id"], parameters, tags=["genpi-run"])
        ui = api_url.removesuffix("/api")
        print(f"genpi run: flow run {run['name']} ({run['id']}) {run['state_name']}: {ui}/runs/flow-run/{run['id']}")
        if not args.wait:
            return 0
        final = api.wait(run["id"], timeout_s=args.timeout)
    print(f"genpi run: {final['name']} {final['state_name']} after {time.perf_counter() - started:.0f} s")
    if spec_path.is_file() and final["state_type"] == "COMPLETED":
        from genpi_core.ingest import load_spec, run_dir_for, spec_version

        loaded = load_spec(spec_path)
        print(f"run folder: {run_dir_for(cfg.runs_dir, loaded, spec_version(loaded))}")
    return 0 if final["state_type"] == "COMPLETED" else 1


@_errors_exit_2
def cmd_watch(args) -> int:
    cfg = _config(args)
    _api_url(args)  # before importing prefect: events must reach the service, not a throw-away server
    from flows.watch import scan_once

    first = True
    while True:
        result = scan_once(args.prompts_dir, cfg, args.state)
        for change in result.changes:
            print(f"genpi watch: {change.path}: {change.name} {change.version[:12]} changed -> event genpi.prompt.changed",
                  flush=True)
        if first or args.once:
            for path, why in result.skipped.items():
                print(f"genpi watch: {path}: {why}", flush=True)
        if args.once:
            return 0
        first = False
        time.sleep(args.interval)


def cmd_adapters(args) -> int:
    from genpi_core.promote import list_adapters

    rows = list_adapters(args.runs_dir, args.name)
    if args.json:
        print(json.dumps([r.model_dump() for r in rows], indent=2))
        return 0
    if not rows:
        print(f"genpi adapters: no runs under {args.runs_dir}")
        return 0

    def fmt(x):
        return "-" if x is None else f"{x:.2f}"

    print(f"{'':2}{'name':<20} {'version':<13} {'student':>7} {'teacher':>7} {'base':>6} {'recovery':>8}  {'gate':<13} finished")
    for r in rows:
        print(f"{'*' if r.promoted else ' ':2}{r.name:<20} {r.version12:<13} {fmt(r.student):>7} {fmt(r.teacher):>7} "
              f"{fmt(r.base):>6} {fmt(r.recovery):>8}  {r.gate:<13} {(r.finished_at or '-')[:19]}")
    print("(* = promoted: the adapter to serve for that prompt)")
    return 0


def add_service_commands(sub, config_args) -> None:
    home_help = "PREFECT_HOME of the service (default: .prefect/ in the project)"

    p = sub.add_parser("server", help="start/stop/inspect genpi as a local Prefect service (UI, deployments, worker)",
                       description="up: start a Prefect server on 127.0.0.1 (SQLite under --home), create the process "
                       "work pool `genpi-local` and the concurrency limits (tags genpi-generation, genpi-training), "
                       "deploy everything in prefect.yaml, start a worker. down: stop what up started. status: "
                       f"processes, health, deployments. With {AUTH_ENV}=user:password set, the server requires "
                       "that basic auth (the string is never logged or stored).",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  genpi server up            # UI at http://127.0.0.1:4200\n"
                       "  genpi server status\n  genpi server down")
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--home", type=Path, help=home_help)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--port", type=int, default=4200, help="server port; 0 picks a free one (default 4200)")
    p.add_argument("--generation-limit", type=int, default=1, help="generation tasks running at once (default 1)")
    p.add_argument("--training-limit", type=int, default=1, help="training tasks running at once (default 1)")
    p.add_argument("--no-worker", action="store_true", help="do not start a worker (start your own on pool genpi-local)")
    p.add_argument("--timeout", type=float, default=180, help="seconds to wait for the server and worker (default 180)")
    p.add_argument("--json", action="store_true", help="status as JSON")
    p.set_defaults(func=cmd_server)

    p = sub.add_parser("run", help="start the internalize deployment over Prefect's REST API (optionally wait)",
                       description="POST /api/deployments/<id>/create_flow_run with the spec path and the resolved "
                       "config as typed parameters, like the README's curl; --wait polls the run until it ends. "
                       "5xx answers and connection errors are retried. The worker reads SPEC: a local file is "
                       f"sent as an absolute path. Basic auth from {AUTH_ENV}.",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="example:\n  genpi run examples/prompts/library_desk.yaml --config configs/tiny.yaml "
                       "--api-url http://127.0.0.1:4200 --wait")
    p.add_argument("spec", help="prompt spec YAML (a path the worker can read)")
    config_args(p)
    p.add_argument("--runs-dir", help="root of run folders on the worker (default: runs/ in the project)")
    p.add_argument("--api-url", help="Prefect API, e.g. http://127.0.0.1:4200 (default: PREFECT_API_URL, "
                   "else the one `genpi server up` recorded)")
    p.add_argument("--home", type=Path, help=home_help)
    p.add_argument("--deployment", default=INTERNALIZE_DEPLOYMENT, help=f"<flow>/<deployment> (default {INTERNALIZE_DEPLOYMENT})")
    p.add_argument("--wait", action="store_true", help="wait for the final state; exit 0 only if Completed")
    p.add_argument("--timeout", type=float, default=6 * 3600, help="seconds to wait with --wait")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("watch", help="emit genpi.prompt.changed for specs whose version changed (starts internalize)",
                       description="Poll PROMPTS_DIR (*.yaml specs) and emit one Prefect event per spec whose version "
                       "changed since it was last announced and has no finished evaluation yet. The `internalize` "
                       "deployment's trigger (prefect.yaml) starts a run with the spec and this config. Unchanged or "
                       "already internalized versions emit nothing. Announced versions are kept in "
                       "<runs_dir>/.genpi-watch.json.",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="example:\n  genpi watch examples/prompts --config configs/tiny.yaml --interval 5")
    p.add_argument("prompts_dir")
    config_args(p)
    p.add_argument("--runs-dir", help="root of run folders (default: runs/)")
    p.add_argument("--once", action="store_true", help="scan once and exit (cron, tests)")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between scans (default 5)")
    p.add_argument("--state", help="state file (default <runs_dir>/.genpi-watch.json)")
    p.add_argument("--api-url", help="Prefect API (default: PREFECT_API_URL, else the `genpi server up` one)")
    p.add_argument("--home", type=Path, help=home_help)
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("adapters", help="list adapter versions, their metrics, gate verdict and which is promoted",
                       description="One row per run folder: held-out compliance of student/teacher/base, recovery, "
                       "the promotion gate's verdict (promote.* config) and a * on the promoted version of each prompt.")
    p.add_argument("name", nargs="?", help="only this prompt name")
    p.add_argument("--runs-dir", default=os.environ.get("GENPI_RUNS_DIR", "runs"), help="root of run folders (default runs/)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_adapters)
