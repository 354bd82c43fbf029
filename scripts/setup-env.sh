#!/usr/bin/env bash
# Create or refresh the development environment from the lock: exactly the versions (and file hashes)
# in requirements/dev.lock, nothing more (uv pip sync removes what the lock does not name), whatever the
# registry released since. Moving to newer releases is `make lock` (see scripts/lock.py).
# Idempotent: a second run only compares a stamp. Usage: scripts/setup-env.sh
# VENV and LOCK_DIR override where (scripts/lock.py check builds .venv-next from build/lock-next).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
VENV=${VENV:-.venv}
LOCK_DIR=${LOCK_DIR:-requirements}
LOCK=$LOCK_DIR/dev.lock
STAMP=$VENV/.llmc-wizard-env
[ -f "$LOCK" ] || { echo "[setup] error: $LOCK is missing (make lock writes it)" >&2; exit 1; }
# Everything that decides what is installed: a change re-runs the install steps.
want=$(cat "$LOCK" "$LOCK_DIR/files.lock" pyproject.toml setup.py scripts/setup-env.sh | sha256sum | cut -c1-16)

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $("$PY" --version)"
  "$PY" -m venv "$VENV"
fi
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  echo "[setup] $VENV is up to date with $LOCK"
  exit 0
fi
rm -f "$STAMP"
# Some machines keep copies of registry files in local folders (same files, same hashes): faster.
idx=()
for d in /opt/pypi-more/simple /opt/pypi/simple; do
  [ -d "$d" ] && idx+=(--extra-index-url "file://$d")
done
[ ${#idx[@]} -gt 0 ] && idx+=(--index-strategy unsafe-best-match)
# 1. the locked uv, checked by its hash, installed with the venv's own pip
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
awk '/^uv==/{on=1} on{print; if ($0 !~ /\\$/) exit}' "$LOCK" > "$tmp/uv.txt"
[ -s "$tmp/uv.txt" ] || { echo "[setup] error: $LOCK names no uv" >&2; exit 1; }
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps --require-hashes -r "$tmp/uv.txt" 2>&1 \
  | { grep -v "^WARNING: Location 'file:" || true; }
UV="$VENV/bin/uv"
# 2. exactly the lock (hashes checked); anything else installed there is removed
echo "[setup] installing $(grep -c '^[A-Za-z0-9].*==' "$LOCK") locked packages into $VENV"
"$UV" pip sync -q --python "$VENV/bin/python" --require-hashes "${idx[@]}" "$LOCK"
# 3. the project itself, editable, built in an isolated build environment with the locked setuptools
#    (no plugin of an installed package runs in its build)
echo "[setup] llmc-wizard (editable)"
"$UV" pip install -q --python "$VENV/bin/python" --no-deps --build-constraint "$LOCK" "${idx[@]}" -e .
# 4. files the tests publish (not installed)
mkdir -p "$VENV/wheels"
"$VENV/bin/python" -m pip download -q --disable-pip-version-check --no-deps --require-hashes -d "$VENV/wheels" \
  -r "$LOCK_DIR/files.lock" 2>&1 | { grep -v "^WARNING: Location 'file:" || true; }
"$VENV/bin/python" - <<'PY'
import importlib
for m in ("torch", "torchvision.ops", "transformers", "lmms_eval.evaluator", "textual", "git", "pydantic", "wizard", "llmc"):
    importlib.import_module(m)
import torch
import torchvision

torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)  # the compiled ops load next to this torch
print(f"[setup] ok: torch {torch.__version__}")
PY
cp "$LOCK" "$VENV/.llmc-wizard-lock"  # what this environment was built from (tests/test_lock.py compares)
echo "$want" > "$STAMP"
