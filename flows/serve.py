"""The `serve-swap` flow: a newly promoted adapter goes live in the running `genpi serve` router at once."""

from __future__ import annotations

from prefect import flow

from tasks.serve import request_swap


@flow(name="genpi-serve-swap", log_prints=True)
def serve_swap(home: str = ".genpi/serve") -> list[str]:
    """Ask the router to load newly promoted versions and switch their routes (in-flight requests finish on
    the old version). Started by the `genpi.adapter.promoted` event (prefect.yaml)."""
    return request_swap(home)
