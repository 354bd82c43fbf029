"""The model's context — how many positions its position embeddings or rotary tables were built
for — against what a run feeds it: an evaluation window or a calibration sequence past it gives
numbers that mean nothing (a perplexity of 5e9), so the run says so before they are computed."""

from __future__ import annotations

#: config keys that hold the context, in the order they are read (text config first)
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def context_length(config) -> int | None:
    """The context of a transformers config (its text config's for a VLM); None when it names none."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else None
    for c in (text, getattr(config, "text_config", None), getattr(config, "llm_cfg", None), config):
        for key in CONTEXT_KEYS:
            value = c.get(key) if isinstance(c, dict) else getattr(c, key, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def config_warnings(cfg, limit: int | None) -> list[str]:
    """What the config asks for beyond ``limit`` positions: perplexity windows."""
    if not limit:
        return []
    return [f"eval {ev.name}: seq_len {ev.seq_len} is longer than the model's context of {limit} tokens; "
            f"perplexity past the context means nothing — set eval.seq_len to at most {limit}"
            for ev in cfg.evals if ev.type == "ppl" and ev.seq_len > limit]


def batch_warning(batches: list[dict], limit: int | None, what: str = "calibration") -> str | None:
    """One line when some of ``batches`` (model inputs) are longer than ``limit`` positions."""
    return lengths_warning([int(b["input_ids"].shape[-1]) for b in batches if "input_ids" in b], limit, what)


def lengths_warning(lengths: list[int], limit: int | None, what: str = "calibration") -> str | None:
    """One line when some of ``lengths`` are more than ``limit`` positions."""
    over = [n for n in lengths if limit and n > limit]
    if not over:
        return None
    return (f"{len(over)} of {len(lengths)} {what} sequences are longer than the model's context of {limit} "
            f"tokens (the longest {max(over)}); shorten them (calib.seq_len, fewer or smaller images)")
