"""The engine in-process: run a config and keep the quantized model in memory.

::

    from llmc.api import quantize
    q = quantize("configs/tiny-llava_w4a16_gptq.yml", "runs/gptq")
    q.model          # the fake-quantized torch model (q.adapter: the engine's adapter around it)
    q.results        # what results.json holds (scores, timings, per-block errors)

The run is the same as ``llmc run``: the run directory gets its config, logs, events, outputs
and, last, its ``COMPLETE`` marker.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import Config, load_config
from .models.base import BaseModel


@dataclass
class Quantized:
    adapter: BaseModel  #: the engine's adapter around the quantized model
    results: dict
    run_dir: Path

    @property
    def model(self):
        """The fake-quantized model itself (``adapter.mm_model``)."""
        return self.adapter.mm_model


def quantize(config, run_dir, *, device: str | None = None, overwrite: bool = False) -> Quantized:
    """Run ``config`` (a path, a mapping or a :class:`~llmc.config.Config`) into ``run_dir`` and
    return the quantized model with the results."""
    from .runner import run_pipeline

    cfg = config if isinstance(config, Config) else load_config(config)
    done = run_pipeline(cfg, Path(run_dir), device=device, overwrite=overwrite)
    return Quantized(done.adapter, done.results, Path(run_dir))


__all__ = ["Quantized", "quantize"]
