"""``llmc check``: validate a config without loading weights."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from .config import Config

VISION_MARKERS = ("vision", "visual", "mm_projector", "multi_modal_projector", "image_newline")


def safetensors_shapes(root: Path) -> dict[str, list[int]]:
    """Tensor name -> shape for every safetensors file under ``root`` (headers only)."""
    shapes: dict[str, list[int]] = {}
    files = [root] if root.is_file() else sorted(root.rglob("*.safetensors"))
    for f in files:
        rel = f.relative_to(root).parent.as_posix() if root.is_dir() else ""
        with open(f, "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            header = json.loads(fh.read(n))
        for k, v in header.items():
            if k != "__metadata__":
                shapes[f"{rel}/{k}" if rel not in ("", ".") else k] = v["shape"]
    return shapes


def language_linear_shapes(model_path: Path) -> dict[str, list[int]]:
    """2-D ``.weight`` tensors of the language model's decoder blocks."""
    out = {}
    for k, shape in safetensors_shapes(model_path).items():
        low = k.lower()
        if len(shape) == 2 and k.endswith(".weight") and ".layers." in k and not any(m in low for m in VISION_MARKERS):
            out[k] = shape
    return out


def check_config(cfg: Config) -> list[str]:
    """Problems found (empty = fine). Every line names the key and the fix."""
    from .models import get_model_class

    problems = []
    try:
        get_model_class(cfg.model.type)
    except ValueError as e:
        problems.append(str(e))
    mp = Path(cfg.model.path)
    if not mp.exists():
        problems.append(f"model.path: {mp} does not exist; point it at the model's weights folder")
    if cfg.calib is not None and cfg.calib.path and not Path(cfg.calib.path).exists():
        problems.append(f"calib.path: {cfg.calib.path} does not exist; point it at the calibration set")
    for i, ev in enumerate(cfg.evals):
        if ev.path and not Path(ev.path).exists():
            problems.append(f"eval[{i}].path: {ev.path} does not exist; point it at the evaluation set")
    if mp.exists():
        shapes = language_linear_shapes(mp)
        if not shapes:
            problems.append(f"model.path: no safetensors weights of decoder layers found under {mp}")
        w = cfg.quant.weight
        if w.granularity == "per_group" and w.group_size:
            bad = sorted((k, s[1]) for k, s in shapes.items() if s[1] % w.group_size)
            if bad:
                widths = sorted({s[1] for s in shapes.values()})
                ok = [g for g in (16, 32, 64, 128, 256) if all(x % g == 0 for x in widths)]
                hint = f"choose a common divisor of {', '.join(map(str, widths))} such as {', '.join(map(str, ok[-3:]))}" \
                    if ok else "use granularity: per_channel"
                problems.append(
                    f"quant.weight.group_size: {w.group_size} does not divide the input width {bad[0][1]} of "
                    f"{bad[0][0]} ({len(bad)} layer(s) in all); {hint}")
        if cfg.save is not None and cfg.save.save_autoawq:
            odd = sorted((k, s[0]) for k, s in shapes.items() if s[0] % 8)
            if odd:
                problems.append(
                    f"save.save_autoawq: AutoAWQ GEMM packs 8 output columns per int32 word, but "
                    f"{odd[0][0]} has {odd[0][1]} outputs ({len(odd)} layer(s) in all); use save_vllm instead")
    return problems
