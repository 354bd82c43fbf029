#!/usr/bin/env bash
# The engine's own tests under the transformers that research code pins: an environment over .venv
# (wizard.services.isolate) with transformers 4.37.2, tokenizers 0.15.1 and accelerate 0.21.0
# (NVlabs/VILA's and haotian-liu/LLaVA's pins; llava-torch's 4.36.2 runs end to end in
# tests/test_llava_original.py), then the engine tests that build their models at test time.
set -uo pipefail
cd "$(dirname "$0")/.."
# resolve as the lock was resolved: the same versions whatever the registry released since
UV_EXCLUDE_NEWER=${UV_EXCLUDE_NEWER:-$(sed -n 's/^# resolved-before: //p' requirements/dev.lock)}
export UV_EXCLUDE_NEWER
.venv/bin/python -m wizard.services.isolate .venv-compat "transformers==4.37.2" "tokenizers==0.15.1" \
  "accelerate==0.21.0" | tail -n 3 || exit 1
.venv-compat/bin/python -W ignore::FutureWarning -m pytest -q -p no:cacheprovider \
  tests/test_quant_layer.py tests/test_capture.py tests/test_engine_text.py tests/test_config.py tests/test_export.py \
  --deselect tests/test_quant_layer.py::test_symmetric_int4_matches_compressed_tensors_fake_quantize
# (that one calls compressed-tensors' forward module, which imports transformers 5's masking_utils)
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "[compat] no test collected: failing"
  exit 1
fi
exit "$rc"
