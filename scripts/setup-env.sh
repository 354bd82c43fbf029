#!/usr/bin/env bash
# Create or refresh the development environment in .venv (CPU torch, offline-safe pins).
# Idempotent: a second run only re-checks what is installed. Usage: scripts/setup-env.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
VENV=.venv
STAMP=$VENV/.llmc-wizard-env
# Everything that decides what is installed: a change re-runs the install steps.
want=$(cat pyproject.toml setup.py scripts/setup-env.sh | sha256sum | cut -c1-16)

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $("$PY" --version)"
  "$PY" -m venv "$VENV"
fi
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  echo "[setup] $VENV is up to date"
  exit 0
fi
# pip, without the platform's notes about local index folders that do not exist
pipq() {
  "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@" 2>&1 | { grep -v "^WARNING: Location 'file:" || true; }
  return "${PIPESTATUS[0]}"
}
# The CPU build of torch (2.13.0 is the wheel this platform keeps locally); any other spec may
# pull a multi-GB CUDA build. Users with GPUs install the package into their own CUDA env.
echo "[setup] torch (CPU)"
pipq install "torch==2.13.0"
# lmms-eval without its dependency tree: its torchvision pin would replace torch by a CUDA
# build, and the registry's torchvision fails to import next to the CPU torch.
echo "[setup] lmms-eval and runtime dependencies"
pipq install --no-deps "lmms-eval==0.7.3"
pipq install "filelock<4" "transformers>=5,<6" accelerate datasets loguru pillow tenacity \
  pytablewriter sacrebleu evaluate safetensors tokenizers textual jinja2 pyyaml gitpython pydantic \
  "pytest>=8,<9" pytest-timeout pytest-asyncio pytest-textual-snapshot setuptools
# compressed-tensors only to check our pack-quantized export against the library itself
pipq install --no-deps "compressed-tensors==0.20.0"
pipq uninstall -y torchvision >/dev/null 2>&1 || true
echo "[setup] llmc-wizard (editable)"
pipq install --no-deps --no-build-isolation -e .
"$VENV/bin/python" - <<'PY'
import importlib
for m in ("torch", "transformers", "lmms_eval.evaluator", "textual", "git", "pydantic", "wizard", "llmc"):
    importlib.import_module(m)
import torch
assert not torch.cuda.is_available() or True
print(f"[setup] ok: torch {torch.__version__}")
PY
echo "$want" > "$STAMP"
