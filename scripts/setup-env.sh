#!/usr/bin/env bash
# Create or refresh the development environment in .venv (torch + its torchvision, offline-safe pins).
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
# torch with the torchvision built for it: transformers needs torchvision for every processor
# that declares a video processor (Qwen2-VL, Qwen2.5-VL, LLaVA-OneVision, InternVL, SmolVLM) and
# for the fast image processors. The registry's CPU torch has no matching torchvision, so this is
# the CUDA pair (it runs on CPU; about 5.5 GB). Users with GPUs install the package into their
# own CUDA environment.
echo "[setup] torch + torchvision"
pipq install "torch==2.14.1" "torchvision==0.29.1"
# lmms-eval without its dependency tree (its pins would move torch)
echo "[setup] lmms-eval and runtime dependencies"
pipq install --no-deps "lmms-eval==0.7.3"
pipq install "filelock<4" "transformers>=5,<6" accelerate datasets loguru pillow tenacity \
  pytablewriter sacrebleu evaluate safetensors tokenizers textual jinja2 pyyaml gitpython pydantic \
  "pytest>=8,<9" pytest-timeout pytest-asyncio pytest-textual-snapshot setuptools num2words uv
# compressed-tensors only to check our pack-quantized export against the library itself
pipq install --no-deps "compressed-tensors==0.20.0"
# The original LLaVA code as the registry publishes it, kept as a file (not installed): the tests
# publish it as a git repository and onboard a tiny LLaVA-1.5 checkpoint through it
mkdir -p "$VENV/wheels"
pipq download --no-deps -d "$VENV/wheels" "llava-torch==1.2.2.post1"
echo "[setup] llmc-wizard (editable)"
pipq install --no-deps --no-build-isolation -e .
"$VENV/bin/python" - <<'PY'
import importlib
for m in ("torch", "torchvision.ops", "transformers", "lmms_eval.evaluator", "textual", "git", "pydantic", "wizard", "llmc"):
    importlib.import_module(m)
import torch
import torchvision

torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)  # the compiled ops load next to this torch
print(f"[setup] ok: torch {torch.__version__}")
PY
echo "$want" > "$STAMP"
