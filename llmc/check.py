"""``llmc check``: validate a config before any compute; no weight is loaded.

What is checked (each problem is one line naming the key or path and the fix):

* the registered model type, and the data paths (``model.path``, ``calib.path``, ``eval[i].path``);
* the model folder: ``config.json`` present and valid JSON (without it the engine would build a
  default-size model from nothing), no Git LFS pointer files left in place of the real files, and
  every ``*.safetensors`` header readable within bounds (header length at most the file size and
  100 MB, valid JSON, every tensor's data inside the file);
* ``save.save_path`` writable, or creatable below its first existing parent;
* the weight shapes against the quantization (group size, AutoAWQ packing), from the headers;
* the projector layers an adapter declares (``projector_last_layers``): present in the model's
  skeleton (:mod:`llmc.models.skeleton`, built from ``config.json`` on the meta device) and
  writing the language model's hidden size.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import struct
import warnings
from pathlib import Path

from .config import Config

VISION_MARKERS = ("vision", "visual", "mm_projector", "multi_modal_projector", "image_newline")

#: the first line of a Git LFS pointer file (what a clone without git-lfs leaves in place of a large file)
LFS_MAGIC = b"version https://git-lfs.github.com/spec/v1"
#: safetensors itself refuses headers over 100 MB
MAX_HEADER_BYTES = 100 * 1000 * 1000
#: a header needs well under this per tensor (name, dtype, shape, offsets) plus some metadata
HEADER_BYTES_BASE, HEADER_BYTES_PER_TENSOR = 1 << 20, 4096
#: bytes per element of the safetensors dtypes (unknown dtypes skip the size check)
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "U16": 2, "I16": 2,
               "F16": 2, "BF16": 2, "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8}
REDOWNLOAD = "re-download the model's weights"
_SCAN_DEPTH = 3  # model folders nest at most a level or two (VILA: llm/, vision_tower/, mm_projector/)


class WeightFileError(ValueError):
    """A weight file that cannot be what its name says; ``str()`` names the file, the problem and the fix."""


# ---------------------------------------------------------------------------------------------
# Weight files (headers only, every size bounded)
# ---------------------------------------------------------------------------------------------


def is_lfs_pointer(f: Path) -> bool:
    """``f`` is a Git LFS pointer (a ~130-byte text file) rather than the file it stands for."""
    try:
        if f.stat().st_size > 1024:
            return False
        with open(f, "rb") as fh:
            return fh.read(len(LFS_MAGIC)) == LFS_MAGIC
    except OSError:
        return False


def read_safetensors_header(f: Path) -> dict:
    """The parsed JSON header of one safetensors file; :class:`WeightFileError` when it is not sound.

    Never reads more than the file holds nor more than :data:`MAX_HEADER_BYTES`: a pointer file,
    a truncated download or garbage fails with one line instead of a ``MemoryError``.
    """
    def bad(problem: str, fix: str = REDOWNLOAD) -> WeightFileError:
        return WeightFileError(f"{f}: {problem}; {fix}")

    if is_lfs_pointer(f):
        raise bad("is a Git LFS pointer file, not the weights (the LFS download did not run)",
                  f"run `git lfs pull` in {f.parent}, or re-fetch the model with git-lfs installed")
    try:
        size = f.stat().st_size
        with open(f, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise bad(f"{size} bytes, too short to be a safetensors file (truncated download?)")
            n = struct.unpack("<Q", head)[0]
            if n > size - 8:
                raise bad(f"its header claims {n} bytes but the file has {size} bytes "
                          "(truncated download, or not a safetensors file)")
            if n > MAX_HEADER_BYTES:
                raise bad(f"its header claims {n} bytes, over the {MAX_HEADER_BYTES // 1000000} MB limit "
                          "(corrupt, or not a safetensors file)")
            raw = fh.read(n)
    except OSError as e:
        raise bad(f"cannot be read ({e.strerror or e})", "check the file's permissions") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad(f"its header is not valid JSON ({e}) (corrupt, or not a safetensors file)") from None
    if not isinstance(header, dict):
        raise bad("its header is not a JSON object (corrupt, or not a safetensors file)")
    data_len = size - 8 - n
    tensors = len([k for k in header if k != "__metadata__"])
    if n > HEADER_BYTES_BASE + HEADER_BYTES_PER_TENSOR * tensors:
        raise bad(f"its header is {n} bytes for {tensors} tensor(s), far more than a header needs "
                  f"(at most {HEADER_BYTES_BASE + HEADER_BYTES_PER_TENSOR * tensors}): corrupt or crafted")
    spans = []
    for name, v in header.items():
        if name == "__metadata__":
            continue
        shape = v.get("shape") if isinstance(v, dict) else None
        offs = v.get("data_offsets") if isinstance(v, dict) else None
        if (not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape)
                or not isinstance(offs, list) or len(offs) != 2 or not all(isinstance(o, int) for o in offs)):
            raise bad(f"tensor {name!r} has a malformed header entry (corrupt file)")
        begin, end = offs
        if not 0 <= begin <= end:
            raise bad(f"tensor {name!r} has data offsets {begin}..{end} (corrupt file)")
        if end > data_len:
            raise bad(f"tensor {name!r} ends at byte {8 + n + end} but the file has {size} bytes "
                      "(truncated download)")
        width = DTYPE_BYTES.get(v.get("dtype"))
        if width is not None and math.prod(shape) * width != end - begin:
            raise bad(f"tensor {name!r} ({v.get('dtype')} {shape}) needs {math.prod(shape) * width} bytes "
                      f"but its data spans {end - begin} (corrupt file)")
        spans.append((begin, end, name))
    # the data is exactly the tensors, one after another (the format's own rule): no overlap, no hole
    at, last = 0, None
    for begin, end, name in sorted(spans):
        if begin < at:
            raise bad(f"tensor {name!r} (bytes {begin}..{end}) overlaps tensor {last!r} (ends at {at}) "
                      "(corrupt or crafted file)")
        if begin > at:
            raise bad(f"{begin - at} byte(s) before tensor {name!r} belong to no tensor (corrupt or crafted file)")
        at, last = end, name
    if at != data_len:
        raise bad(f"{data_len - at} byte(s) after the last tensor belong to no tensor (corrupt or crafted file)")
    return header


def _weight_files(root: Path) -> list[Path]:
    return [root] if root.is_file() else sorted(
        f for f in root.rglob("*.safetensors") if f.is_file() and not _hidden(f.relative_to(root)))


def _hidden(rel: Path) -> bool:
    return any(p.startswith(".") for p in rel.parts[:-1])  # .git, .cache/huggingface...


def safetensors_shapes(root: Path) -> dict[str, list[int]]:
    """Tensor name -> shape for every safetensors file under ``root`` (headers only).

    Raises :class:`WeightFileError` for a file that is not a sound safetensors file.
    """
    shapes: dict[str, list[int]] = {}
    for f in _weight_files(root):
        rel = f.relative_to(root).parent.as_posix() if root.is_dir() else ""
        header = read_safetensors_header(f)
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


def _small_files(root: Path) -> list[Path]:
    """Files up to ``_SCAN_DEPTH`` levels under ``root`` (hidden folders skipped), for the LFS scan."""
    out = []
    for d, dirs, files in os.walk(root):
        depth = len(Path(d).relative_to(root).parts)
        dirs[:] = [] if depth >= _SCAN_DEPTH else sorted(x for x in dirs if not x.startswith("."))
        out += [Path(d) / f for f in sorted(files)]
    return out


def check_model_folder(mp: Path) -> list[str]:
    """Problems of the model folder itself: config.json, LFS pointers, safetensors headers."""
    if not mp.is_dir():
        return [f"model.path: {mp} is a file, not a folder; point it at the folder that holds the model's "
                "config.json and weights"]
    from llmc.paths import links_leaving, links_leaving_line

    bad = links_leaving(mp)
    if bad:  # nothing is read through them: every later check would follow the links
        return ["model.path: " + links_leaving_line(mp, bad)]
    problems = []
    pointers = [f for f in _small_files(mp) if is_lfs_pointer(f)]
    if pointers:
        names = [f.relative_to(mp).as_posix() for f in pointers]
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        problems.append(
            f"model.path: {len(names)} file(s) in {mp} are Git LFS pointer files, not the real files ({shown}): "
            f"the LFS download did not run or failed; run `git lfs pull` in {mp}, "
            "or re-fetch the model with git-lfs installed (`git lfs install` first)")
    cfg = mp / "config.json"
    if cfg not in pointers:
        if not cfg.is_file():
            problems.append(f"model.path: {mp} has no config.json (the engine would build a default model from "
                            "nothing); point model.path at the folder that holds the model's config.json, "
                            "or download the model again")
        else:
            try:
                raw = json.loads(cfg.read_text(encoding="utf-8"))
                if not isinstance(raw, dict):
                    problems.append(f"model.path: {cfg} is not a JSON object; re-download the model's config.json")
                else:
                    from llmc.textsafe import identity_problem

                    if problem := identity_problem(raw):
                        problems.append(f"model.path: {cfg}: {problem}; use the model's real config.json")
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                problems.append(f"model.path: {cfg} is not valid JSON ({e}); re-download the model's config.json")
    for f in _weight_files(mp):
        if f in pointers:
            continue
        try:
            read_safetensors_header(f)
        except WeightFileError as e:
            problems.append(f"model.path: {e}")
    return problems


# ---------------------------------------------------------------------------------------------
# The save path
# ---------------------------------------------------------------------------------------------


def check_save_path(path: str) -> str | None:
    """Why ``save.save_path`` cannot be written (None when it can): it must be a writable folder,
    or creatable below its first existing parent (the engine's own check before a run)."""
    from .paths import RunDirError, check_folder

    try:
        check_folder(path, "save.save_path", "choose a folder you can write to (or a shorter path)")
    except RunDirError as e:
        return str(e)
    return None


# ---------------------------------------------------------------------------------------------
# Projector layers declared by the adapter
# ---------------------------------------------------------------------------------------------

_FIX_LAYERS = "re-run the wizard's Inspect step or fix projector_last_layers"


def _lookup(model, path: str):
    """The submodule or Parameter at ``path`` (None when there is none)."""
    if not path:
        return None
    try:
        return model.get_submodule(path)
    except AttributeError:
        pass
    try:
        return model.get_parameter(path)
    except AttributeError:
        return None


def _nearest(model, path: str) -> tuple[str, list[str]]:
    """The deepest existing ancestor of ``path`` and the names of its parameterised children."""
    parts = path.split(".")
    anc, mod = "", model
    for i in range(len(parts) - 1, 0, -1):
        try:
            anc, mod = ".".join(parts[:i]), model.get_submodule(".".join(parts[:i]))
            break
        except AttributeError:
            continue
    names = [n for n, c in mod.named_children() if any(True for _ in c.parameters())]
    names += [n for n, _ in mod.named_parameters(recurse=False)]
    return anc, names


def _width_problem(obj, hidden: int) -> str | None:
    """Why ``obj`` cannot be a layer writing the hidden size (None when it writes it)."""
    from torch import nn

    from .models.projector import linear_out
    from .models.structure import is_norm

    if isinstance(obj, nn.Parameter):
        if (obj.dim() == 2 and hidden in obj.shape) or (obj.dim() == 1 and obj.shape[0] == hidden):
            return None  # a raw projection, or a hidden-width vector placed among the image tokens
        return f"is a Parameter of shape {'×'.join(map(str, obj.shape))}, with no dimension of the hidden size {hidden}"
    out = linear_out(obj)
    if out is not None:
        return None if out == hidden else f"writes width {out}, not the language model's hidden size {hidden}"
    if is_norm(obj):  # a resampler's output norm writes the image rows (rotation refuses it on its own)
        w = getattr(obj, "weight", None)
        width = w.shape[-1] if w is not None else getattr(obj, "normalized_shape", (None,))[-1]
        return None if width == hidden else f"is a norm of width {width}, not the language model's hidden size {hidden}"
    mats = [p for _, p in obj.named_parameters(recurse=False) if p.dim() == 2]
    if len(mats) == 1:
        return None if hidden in mats[0].shape else (
            f"holds a weight of shape {'×'.join(map(str, mats[0].shape))}, with no dimension of the hidden size {hidden}")
    return f"is a {type(obj).__name__}, not a layer with one weight writing the hidden size {hidden}"


@contextlib.contextmanager
def _quiet():
    """No library warnings while the skeleton is built: the check's output is its verdict lines."""
    import transformers

    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        transformers.logging.set_verbosity(level)


def check_projector_layers(cls, mp: Path) -> list[str]:
    """The adapter's ``projector_last_layers`` against the model's skeleton (config.json only)."""
    layers = getattr(cls, "projector_last_layers", ()) or ()
    if isinstance(layers, str):
        layers = (layers,)
    if not layers:
        return []  # built-in adapters find the layer by structure
    from .models.parts import find_language_model
    from .models.skeleton import SkeletonError, build_skeleton

    who = f"model.type {getattr(cls, 'name', '') or cls.__name__}"
    code = getattr(cls, "CODE_PACKAGE", None)
    try:
        with _quiet():
            model, _, _ = build_skeleton(mp, code, None if code else getattr(cls, "model_cls_name", None))
        _, _, hidden = find_language_model(model)
    except SkeletonError as e:
        return [f"{who}: cannot build the model from {mp / 'config.json'} to check projector_last_layers: {e}"]
    except Exception as e:  # noqa: BLE001 - the model's own code may fail in any way: report, do not crash
        msg = " ".join(str(e).split())
        return [f"{who}: cannot build the model from {mp / 'config.json'} to check projector_last_layers "
                f"({type(e).__name__}: {msg}); check that config.json and the adapter belong together"]
    problems = []
    for path in layers:
        obj = _lookup(model, path)
        if obj is None:
            anc, names = _nearest(model, path)
            where = f"layers under {anc}" if anc else "top-level modules"
            problems.append(f"{who}: projector layer {path!r} is not in the model; {where}: "
                            f"{', '.join(names) or 'none'}; {_FIX_LAYERS}")
            continue
        why = _width_problem(obj, hidden)
        if why:
            problems.append(f"{who}: projector layer {path!r} {why}; {_FIX_LAYERS}")
    return problems


# ---------------------------------------------------------------------------------------------
# The whole config
# ---------------------------------------------------------------------------------------------


def check_config(cfg: Config) -> list[str]:
    """Problems found (empty = fine). Every line names the key and the fix."""
    from .models import get_model_class

    problems = []
    cls = None
    if cfg.model.adapters and not Path(cfg.model.adapters).is_dir():
        problems.append(f"model.adapters: {cfg.model.adapters} is not a folder; point it at the folder of adapter "
                        "modules (model declarations)")
    try:
        cls = get_model_class(cfg.model.type, [cfg.model.adapters] if cfg.model.adapters else [])
    except ValueError as e:
        problems.append(str(e))
    mp = Path(cfg.model.path)
    folder_ok = False
    if not mp.exists():
        problems.append(f"model.path: {mp} does not exist; point it at the model's weights folder")
    else:
        folder = check_model_folder(mp)
        problems += folder
        folder_ok = not folder
    if cfg.calib is not None and cfg.calib.path and not Path(cfg.calib.path).exists():
        problems.append(f"calib.path: {cfg.calib.path} does not exist; point it at the calibration set")
    for i, part in enumerate(cfg.calib.parts or [] if cfg.calib is not None else []):
        if not Path(part.path).exists():
            problems.append(f"calib.parts[{i}].path: {part.path} does not exist; point it at the {part.name} data")
    for i, ev in enumerate(cfg.evals):
        if ev.path and not Path(ev.path).exists():
            problems.append(f"eval[{i}].path: {ev.path} does not exist; point it at the evaluation set")
    if cfg.save is not None and cfg.save.save_path:
        bad = check_save_path(cfg.save.save_path)
        if bad:
            problems.append(bad)
    if folder_ok:
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
        if cls is not None:
            problems += check_projector_layers(cls, mp)
    return problems
