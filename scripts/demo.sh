#!/usr/bin/env bash
# The main job: set up, then internalize the bundled example prompt end to end on the embedded
# CPU model through the Prefect flow, and print where the report is plus its headline numbers.
# Extra arguments go to `genpi internalize`, e.g. scripts/demo.sh --set train.epochs=3
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
exec "${GENPI_VENV:-.venv}/bin/genpi" internalize examples/prompts/library_desk.yaml --config configs/default.yaml "$@"
