#!/usr/bin/env bash
# Lint, format check and type check, as scripts/test.sh runs them first (and .pre-commit-config.yaml per commit):
#   ruff check    over the repo (pyproject.toml [tool.ruff])
#   ruff format   --check over the repo (run `.venv/bin/ruff format` to fix)
#   mypy          over genpi_core/, schemas/ and genpi/ (pyproject.toml [tool.mypy])
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${GENPI_VENV:-.venv}
started=$(date +%s)
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
"$VENV/bin/mypy"
echo "genpi lint: ruff and mypy passed in $(( $(date +%s) - started )) s"
