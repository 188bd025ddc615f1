"""Prefect glue for `genpi serve`: ask a running router to swap in newly promoted versions now.

The router also finds them on its own (it polls promoted.json every ``serve.poll_s``); the `serve-swap`
deployment, triggered by the `genpi.adapter.promoted` event the promote task emits, makes it immediate.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import httpx
from prefect import task
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger


def _logger():
    try:
        return get_run_logger()
    except MissingContextError:  # called as a plain function (scripts, tests)
        return logging.getLogger("genpi.serve")


@task(name="serve-swap", retries=3, retry_delay_seconds=5)
def request_swap(home: str = ".genpi/serve") -> list[str]:
    """POST /genpi/swap to the router `genpi serve up` started with this home; returns the swapped names."""
    state_path = Path(home) / "serve.json"
    if not state_path.is_file():
        _logger().info("no router running (no %s): nothing to swap", state_path)
        return []
    state = json.loads(state_path.read_text())
    key = os.environ.get(state["api_key_env"], "")
    if not key:
        raise RuntimeError(f"set {state['api_key_env']} for the worker: the router refuses calls without its key")
    reply = httpx.post(f"{state['url']}/genpi/swap", headers={"Authorization": f"Bearer {key}"}, timeout=600)
    reply.raise_for_status()
    swapped = reply.json()["swapped"]
    _logger().info("router %s swapped in: %s", state["url"], ", ".join(swapped) or "nothing new")
    return swapped
