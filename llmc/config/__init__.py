"""Typed schema for llmc-style YAML configs.

A config has the sections of the original llmc toolkit (ModelTC/llmc)::

    base:  {seed}
    model: {type, path, adapters, tokenizer_mode, torch_dtype}
    calib: {name, type, download, path, add_answer, apply_chat_template, n_samples, bs,
            seq_len, preproc, padding, seed}
    eval:  one mapping or a list of mappings {eval_pos, type, name, download, path, bs,
            seq_len, num_samples, inference_per_block, eval_token_consist, cache}
    quant: {method, quant_objects, skip_layers, weight: {bit, symmetric, granularity,
            group_size, calib_algo}, act, special: {...per method...}, quant_out}
    save:  {save_path, save_trans, save_fake}

Only ``model`` and ``quant`` are required; ``calib`` is required by the methods that
calibrate on data (their spec in :mod:`llmc.quant.methods` says so). llmc configs load unchanged as long as they only ask for what
this engine implements; every deliberate gap is listed in :data:`UNSUPPORTED_LLMC_KEYS`.

Use :func:`load_config` to read a file (or a mapping). Every problem is reported as a
:class:`ConfigError` whose message is one line naming the YAML path and the fix, e.g.::

    quant.weight.bits: unknown key; did you mean 'bit'?
    quant.method: unknown method 'Aqw'; did you mean 'Awq'? (choose from RTN, Awq, GPTQ, ...)
    quant.weight.bit: 9 is out of range; use 2..8

Paths are not checked for existence here (a separate check step does that); ``~`` is expanded.

The package is split by concern: :mod:`.errors` (``ConfigError``, one-line messages),
:mod:`.compat` (deliberate gaps with respect to llmc), :mod:`.types` (field types, ``${VAR}``
expansion, bit ranges, method names), :mod:`.sections` (base, model, calib, eval, save),
:mod:`.quant` (weight/act formats; each method's ``special`` options live with the method in
:mod:`llmc.quant.methods`) and :mod:`.load`
(the whole :class:`Config` and :func:`load_config`).
"""

from .compat import ACCEPTED_BUT_IGNORED, UNSUPPORTED_LLMC_KEYS
from .errors import ConfigError
from .load import Config, load_config
from .quant import ActConfig, QuantConfig, WeightConfig
from .sections import BaseConfig, CalibConfig, EvalConfig, ModelConfig, SaveConfig
from .types import ACT_BITS, WEIGHT_BITS, Bool, Float, Int, PathStr, Str, expand_env

__all__ = [
    "ACCEPTED_BUT_IGNORED",
    "ACT_BITS",
    "UNSUPPORTED_LLMC_KEYS",
    "WEIGHT_BITS",
    "ActConfig",
    "BaseConfig",
    "Bool",
    "CalibConfig",
    "Config",
    "ConfigError",
    "EvalConfig",
    "Float",
    "Int",
    "ModelConfig",
    "PathStr",
    "QuantConfig",
    "SaveConfig",
    "Str",
    "WeightConfig",
    "expand_env",
    "load_config",
]
