"""What the model will see of its calibration set: for a few samples the exact prompt the run
renders (through the model's own processor and prompt format, image tokens shown as one run),
the image tokens each sample becomes in the language model's input, and every sample's length
there, against the model's context. The batches are the run's own (:func:`llmc.data.load_calib`);
the lengths are measured at the first decoder block's input (:func:`capture_block_inputs`), so
image tokens a model expands inside its forward (the LLaVA lineage) count as they will."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field


@dataclass
class SampleView:
    index: int
    prompt: str  #: the rendered prompt, each run of image tokens as ``<token>×N``
    text_tokens: int
    image_tokens: int  #: what the sample's images became in the language model's input
    length: int  #: positions at the first decoder block's input


@dataclass
class CalibView:
    name: str
    n_samples: int
    samples: list[SampleView]
    lengths: list[int] = field(default_factory=list)
    context: int | None = None
    warning: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        out = [f"calibration set {self.name}: {self.n_samples} sample(s); language-model input length "
               f"min {min(self.lengths)}, median {statistics.median(self.lengths):g}, max {max(self.lengths)}"
               + (f" (context {self.context})" if self.context else "")]
        for s in self.samples:
            out += [f"--- sample {s.index}: {s.length} positions = {s.text_tokens} text + {s.image_tokens} image",
                    s.prompt]
        if self.warning:
            out.append(f"WARNING: {self.warning}")
        return out


def _render(tokenizer, ids: list[int], image_ids: set[int]) -> str:
    """``ids`` as text with special tokens kept; each run of one image id shown once with its count."""
    parts, run_id, run_n, text = [], None, 0, []

    def flush_text():
        if text:
            parts.append(tokenizer.decode(text, skip_special_tokens=False))
            text.clear()

    def flush_run():
        if run_n:
            name = "<image>" if run_id < 0 else tokenizer.convert_ids_to_tokens(run_id)
            parts.append(f"{name}×{run_n}" if run_n > 1 else name)

    for t in ids:
        if t in image_ids:
            flush_text()
            if t != run_id:
                flush_run()
                run_id, run_n = t, 0
            run_n += 1
            continue
        flush_run()
        run_id, run_n = None, 0
        text.append(t)
    flush_text()
    flush_run()
    return "".join(parts)


def preview_calib(cfg, adapter, n: int = 3) -> CalibView:
    """The calibration set of ``cfg`` as ``adapter`` turns it into model inputs (see the module)."""
    from ..context import context_length, lengths_warning
    from ..quant.capture import capture_block_inputs
    from . import load_calib

    if cfg.calib is None:
        raise ValueError("calib: the config has no calibration set (a data-free method); nothing to preview")
    batches = load_calib(cfg.calib, adapter)
    if not batches:
        raise ValueError(f"calib: the {cfg.calib.name} set gives no samples; check its path and n_samples")
    inputs = capture_block_inputs(adapter, batches)
    lengths = [int(bi.hidden.shape[1]) for bi in inputs]
    image_ids = adapter.image_token_ids()
    views = []
    for k, (b, length) in enumerate(zip(batches[:n], lengths)):
        ids = [int(t) for t in b["input_ids"][0]]
        placeholders = sum(1 for t in ids if t in image_ids)
        text = len(ids) - placeholders
        views.append(SampleView(k, _render(adapter.tokenizer, ids, image_ids), text, length - text, length))
    context = context_length(adapter.mm_model.config)
    return CalibView(cfg.calib.name, len(batches), views, lengths, context, lengths_warning(lengths, context))
