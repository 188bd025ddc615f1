#!/usr/bin/env bash
# The test suite: set up, lint and type-check, then run pytest on the real embedded model (offline).
# With no arguments (what CI runs): ruff (lint + format check) and mypy first (scripts/lint.sh, under a minute),
# then the default selection in .venv (everything not marked slow, service,
# reliability or browser), then the Prefect service end to end (tests/service: a real server, worker, REST- and
# event-triggered runs), then the vLLM tests (in-process vllm backend, two `vllm serve` replicas) in .venv-vllm
# with PyPI's CPU build of vLLM.
#   GENPI_SKIP_SERVICE=1       skip the service module (~8-10 min on 2 idle cores)
#   GENPI_SKIP_VLLM=1          skip the vLLM venv and its tests (quick local runs)
#   GENPI_SKIP_LINT=1          skip ruff and mypy
# Extra arguments go to pytest in .venv only, e.g.
#   scripts/test.sh -m slow        only the slow tests        scripts/test.sh tests/unit -x
#   scripts/test.sh -m service     only the Prefect service end to end (server, worker, three real runs)
#   scripts/test.sh -m reliability kills in every stage and concurrent runs (long); with
#                                GENPI_RELIABILITY_OUT=bench/results/reliability.json it records docs/reliability.md's figures
#   scripts/test.sh -m browser     the Prefect UI in headless chromium (bash scripts/setup_browser.sh first)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
if [ $# -gt 0 ]; then
  exec "${GENPI_VENV:-.venv}/bin/python" -m pytest "$@"
fi
[ -n "${GENPI_SKIP_LINT:-}" ] || bash scripts/lint.sh
[ -n "${GENPI_SKIP_VLLM:-}" ] || bash scripts/setup_vllm.sh
"${GENPI_VENV:-.venv}/bin/python" -m pytest
if [ -z "${GENPI_SKIP_SERVICE:-}" ]; then
  echo "genpi tests: the Prefect service end to end (tests/service)"
  "${GENPI_VENV:-.venv}/bin/python" -m pytest -m service tests/service
fi
if [ -z "${GENPI_SKIP_VLLM:-}" ]; then
  echo "genpi tests: vLLM backend and vllm serve replicas (in ${GENPI_VLLM_VENV:-.venv-vllm})"
  GENPI_REQUIRE_VLLM=1 "${GENPI_VLLM_VENV:-.venv-vllm}/bin/python" -m pytest tests/vllm
fi
