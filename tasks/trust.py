"""Prefect-side glue for genpi_core.trust: was this flow run started by a deployment (REST, UI, trigger)?"""

from __future__ import annotations


def started_by_deployment() -> bool:
    """True for a deployment's flow run and for subflows of one; False for flows called directly (CLI, Python)."""
    from prefect.runtime import deployment, flow_run

    return deployment.id is not None or flow_run.parent_deployment_id is not None
