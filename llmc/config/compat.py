"""Deliberate gaps with respect to llmc: what is rejected, what is accepted and ignored."""

from __future__ import annotations

#: llmc keys (``section.key``) or key/value pairs (``section.key: value``) that this engine
#: deliberately does not support, each with a one-sentence reason. Entries listed in
#: :data:`ACCEPTED_BUT_IGNORED` load without error; the others are rejected with a message
#: built from the reason.
UNSUPPORTED_LLMC_KEYS: dict[str, str] = {
    "quant.quant_type": "only integer quantization (int-quant) is implemented, not float "
                        "formats such as fp8.",
    "quant.method": "this engine implements the methods of its registry (llmc.quant.methods), not "
                    "every llmc algorithm.",
    "quant.quant_objects: vision": "only the language model can be quantized for now, not the "
                                   "vision tower.",
    "eval.inference_per_block: True": "block-by-block evaluation is not implemented, the whole "
                                      "model is evaluated at once.",
    "calib.download: True": "datasets are never downloaded from a hub, they are read from a "
                            "local path.",
    "eval.download: True": "datasets are never downloaded from a hub, they are read from a "
                           "local path.",
    "save.save_sgl": "exporting real-quantized checkpoints for SGLang is not implemented.",
    "save.save_mlcllm": "exporting real-quantized checkpoints for MLC-LLM is not implemented.",
    "save.save_lightllm": "exporting real-quantized checkpoints for LightLLM is not implemented.",
    "sparse": "sparsification methods are not supported.",
    "model.tokenizer_mode": "accepted but ignored: the fast tokenizer is used whenever the "
                            "model ships one.",
    "calib.type": "accepted but informational: the kind of data follows from calib.name.",
    "calib.preproc": "accepted but informational: preprocessing follows from calib.name and "
                     "the model adapter.",
    "eval.eval_token_consist": "accepted but informational: token consistency between the "
                               "original and the quantized model is not measured.",
    "run": "accepted but informational: llmc-tpu's task name and type do not change what runs "
           "(the run directory is given on the command line).",
}

#: Entries of :data:`UNSUPPORTED_LLMC_KEYS` that are accepted and have no effect.
ACCEPTED_BUT_IGNORED: frozenset[str] = frozenset({
    "model.tokenizer_mode",
    "calib.type",
    "calib.preproc",
    "eval.eval_token_consist",
    "run",
})

# Values of llmc-only keys (absent from the schema) that request nothing and are dropped
# silently, e.g. ``save_vllm: False``. Any other value is rejected.
_HARMLESS_VALUES: dict[str, tuple] = {
    "quant.quant_type": ("int-quant", None),
}
_DEFAULT_HARMLESS: tuple = (False, None)


def _reason(key: str) -> str:
    return UNSUPPORTED_LLMC_KEYS[key].rstrip(".")
