#!/usr/bin/env bash
# The test suite: set up, then run pytest on the real embedded model (offline).
# Default run: everything but tests marked slow. Extra arguments go to pytest, e.g.
#   scripts/test.sh -m slow        only the slow tests        scripts/test.sh tests/unit -x
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
exec "${GENPI_VENV:-.venv}/bin/python" -m pytest "$@"
