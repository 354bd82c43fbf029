"""Export a quantized model, as the engine holds it, to a real low-bit checkpoint.

The model is first written by its own adapter (``save_pretrained``: config, tokenizer,
processor, the model's own file layout and key names); then, in every safetensors file, each
quantized layer's ``<key>.weight`` is replaced by its packed integer codes and the
``config.json`` beside that file gains a ``quantization_config``. The codes are recomputed from
the fake-quantized weight and the ``(scale, zero)`` the quantization method recorded for it, so
the checkpoint holds exactly the weights that were evaluated (scales are stored in the format's
dtype: the model's dtype for compressed-tensors, float16 for AutoAWQ).

Saved key names may differ from in-memory module names (transformers saves LLaVA as
``language_model.model.layers...`` while the module is ``model.language_model.layers...``): each
layer's key is found by the longest matching name suffix and confirmed by comparing tensors.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from llmc.export import autoawq, compressed
from llmc.export.packing import store_scale
from llmc.quant.quantizer import IntQuantizer, WeightQuantConfig
from llmc.rundir import staged

#: ``save.save_<fmt>`` -> human name; the output folder is ``<save_path>/<fmt>``
FORMATS = {"vllm": "compressed-tensors pack-quantized (vLLM)", "autoawq": "AutoAWQ GEMM"}
#: the module implementing each format: ``check_config(wcfg, act)``, ``quantization_config(wcfg, ignore, act)``
_MODULES = {"vllm": compressed, "autoawq": autoawq}


class ExportError(ValueError):
    """The model or its quantization cannot be written in the requested format."""


def check_format(fmt: str, wcfg: WeightQuantConfig, act=None) -> None:
    """Raise :class:`ExportError` naming the setting to change when ``wcfg`` (with the dynamic
    activation quantization ``act``, if any) cannot be exported."""
    if fmt not in _MODULES:
        raise ExportError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    try:
        _MODULES[fmt].check_config(wcfg, act)
    except ValueError as exc:
        raise ExportError(f"save_{fmt}: {exc}") from None


def _weight_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.safetensors") if p.is_file())


class _SavedKeys:
    """Where each ``.weight`` tensor of a saved model lives (key -> file)."""

    def __init__(self, root: Path):
        self.file_of: dict[str, Path] = {}
        self.shape_of: dict[str, list[int]] = {}  # from the headers: tensors are read only to confirm
        for f in _weight_files(root):
            with safe_open(str(f), "pt") as sf:
                for k in sf.keys():
                    if k.endswith(".weight"):
                        qual = f"{f.parent.relative_to(root)}/{k}"
                        self.file_of[qual] = f
                        self.shape_of[qual] = list(sf.get_slice(k).get_shape())

    def tensor(self, qual_key: str) -> Tensor:
        with safe_open(str(self.file_of[qual_key]), "pt") as sf:
            return sf.get_tensor(qual_key.split("/", 1)[1])

    def find(self, name: str, weight: Tensor) -> str | None:
        """The saved key of module ``name`` (longest name suffix whose tensor equals
        ``weight``), or ``None`` when it is not saved (e.g. a tied ``lm_head``)."""
        parts = name.split(".")
        w = weight.detach().cpu()
        for k in range(len(parts), 0, -1):
            tail = ".".join(parts[-k:]) + ".weight"
            cands = [q for q in self.file_of if (q.split("/", 1)[1] == tail or q.endswith("." + tail))
                     and self.shape_of[q] == list(w.shape)]
            same = [q for q in cands if torch.equal(self.tensor(q).to(w.dtype), w)]
            if len(same) == 1:
                return same[0]
            if same:
                raise ExportError(f"layer {name}: several saved tensors match it ({', '.join(same)})")
        return None


def _codes(layer: nn.Module, params, wcfg: WeightQuantConfig, name: str) -> tuple[Tensor, Tensor, Tensor]:
    """Integer codes of ``layer``'s fake-quantized weight under its recorded parameters."""
    if params is None:
        raise ExportError(f"layer {name}: its quantization has no per-group layout to export "
                          "(GPTQ with actorder needs quant.special.static_groups: true)")
    scale, zero = params
    w = layer.weight.detach().cpu()
    quantizer = IntQuantizer(wcfg)
    q = quantizer.quant(w.float(), scale, zero)
    back = quantizer.dequant(q, scale, zero).to(w.dtype)
    if not torch.equal(back, w):
        raise ExportError(f"layer {name}: its weight is not on the recorded quantization grid "
                          f"(max difference {float((back.float() - w.float()).abs().max()):.3g}); "
                          "was it changed after quantization?")
    return q, scale, zero


def export_quantized(adapter, qparams: dict[nn.Module, tuple | None], wcfg: WeightQuantConfig, fmt: str,
                     out_dir: str | Path, act=None) -> Path:
    """Write ``adapter``'s model with the layers of ``qparams`` packed in format ``fmt``.

    ``fmt`` is ``"vllm"`` (compressed-tensors pack-quantized; int-quantized W8A8 when ``act``, the
    dynamic activation quantization, is given) or ``"autoawq"``. Every other
    ``nn.Linear`` stays in float and is listed as ignored. The checkpoint is built in
    ``.<out_dir>.partial`` and moved into place when complete (:func:`llmc.rundir.staged`); an
    existing ``out_dir`` is replaced only then.
    """
    check_format(fmt, wcfg, act)
    out = Path(out_dir)
    with staged(out) as tmp:
        _export_into(adapter, qparams, wcfg, fmt, tmp, act)
    return out


def _export_into(adapter, qparams, wcfg: WeightQuantConfig, fmt: str, tmp: Path, act) -> None:
    adapter.save_pretrained(tmp)
    keys = _SavedKeys(tmp)

    model = adapter.mm_model
    names = {m: n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    missing = [m for m in qparams if m not in names]
    if missing:
        raise ExportError(f"{len(missing)} quantized layer(s) are not modules of the model")

    packed: dict[Path, dict[str, dict[str, Tensor]]] = defaultdict(dict)  # file -> key -> tensors
    ignored: dict[Path, list[str]] = defaultdict(list)  # folder -> float Linear names
    folders: set[Path] = set()
    unsaved: list[str] = []
    for layer, name in names.items():
        qual = keys.find(name, layer.weight)
        if qual is None:
            if layer in qparams:
                raise ExportError(f"layer {name}: its weight was not found in the checkpoint "
                                  f"written by {type(adapter).__name__}.save_pretrained")
            unsaved.append(name)  # not saved (tied to another tensor): float, never packed
            continue
        f = keys.file_of[qual]
        key = qual.split("/", 1)[1][: -len(".weight")]
        if layer not in qparams:
            ignored[f.parent] += [key] + ([name] if name != key else [])
            continue
        q, scale, zero = _codes(layer, qparams[layer], wcfg, name)
        if fmt == "vllm" and act is not None:  # int-quantized: int8 codes as the weight itself
            packed[f][key] = {"weight": q.to(torch.int8), "weight_scale": store_scale(scale, layer.weight.dtype)}
        elif fmt == "vllm":
            p, s, shape = compressed.pack_codes(q, store_scale(scale, layer.weight.dtype), wcfg)
            packed[f][key] = {"weight_packed": p, "weight_scale": s, "weight_shape": shape}
        else:
            qw, qz, s = autoawq.pack_awq_codes(q, scale, zero)
            packed[f][key] = {"qweight": qw, "qzeros": qz, "scales": s}
        folders.add(f.parent)

    for f, layers in packed.items():
        with safe_open(str(f), "pt") as sf:
            meta = sf.metadata() or {"format": "pt"}
            tensors = {k: sf.get_tensor(k) for k in sf.keys()}
        for key, parts in layers.items():
            del tensors[f"{key}.weight"]
            tensors.update({f"{key}.{leaf}": t.contiguous() for leaf, t in parts.items()})
        save_file(tensors, str(f), metadata=meta)
        index = f.parent / "model.safetensors.index.json"
        if index.exists():  # sharded: point the new keys at their shard
            data = json.loads(index.read_text())
            wm = data["weight_map"]
            for key, parts in layers.items():
                wm.pop(f"{key}.weight", None)
                wm.update({f"{key}.{leaf}": f.name for leaf in parts})
            index.write_text(json.dumps(data, indent=2, sort_keys=True))

    for folder in folders:
        cfg_path = folder / "config.json"
        cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
        ignore = list(dict.fromkeys(ignored.get(folder, []) + unsaved))
        cfg["quantization_config"] = _MODULES[fmt].quantization_config(wcfg, ignore, act)
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))


__all__ = ["FORMATS", "ExportError", "check_format", "export_quantized"]
