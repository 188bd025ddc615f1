#!/usr/bin/env bash
# Run the service walkthrough of docs/service.md exactly as written: the bash block between the
# `service-walkthrough:begin/end` markers, with .venv/bin first on PATH. It runs in a temporary copy of the
# project (tracked and untracked files, PYTHONPATH pointing there), so the walkthrough's runs/ and .prefect/
# never touch the real ones. Needs curl, jq and openssl, and port 4200 free. On failure it stops the service.
# About 5 minutes on 2 idle cores (one internalize run with configs/smoke.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
block=$(awk '/<!-- service-walkthrough:begin -->/{on=1; next} /<!-- service-walkthrough:end -->/{on=0} on' docs/service.md \
        | sed '/^```/d')
[ -n "$block" ] || { echo "docs/service.md: no service-walkthrough block" >&2; exit 1; }
work=$(mktemp -d /tmp/genpi-walkthrough.XXXXXX)
git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$work"
cd "$work"
export PATH="$root/${GENPI_VENV:-.venv}/bin:$PATH" PYTHONPATH="$work" HF_HUB_OFFLINE=1
trap 'status=$?; [ $status -eq 0 ] || genpi server down; exit $status' EXIT
started=$(date +%s)
bash -euo pipefail -c "$block"   # no -x: the trace would print the auth string
echo "service walkthrough: OK in $(( $(date +%s) - started )) s (project copy: $work)"
