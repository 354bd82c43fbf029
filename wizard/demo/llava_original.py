"""The original LLaVA code (haotian-liu/LLaVA, published on the registry as ``llava-torch``) and a
tiny random-weight checkpoint in LLaVA-1.5's own format, for onboarding research code offline.

* :func:`code_repo` publishes the package from the wheel as a local git repository with a
  ``pyproject.toml`` (what a clone of the LLaVA repository gives the Install step);
* :func:`build_checkpoint` writes a LLaVA-1.5-format folder (``LlavaLlamaForCausalLM``,
  ``model_type: llava_llama``, ``mm_projector_type: mlp2x_gelu``) whose ``mm_vision_tower`` is a
  tiny CLIP tower in a local folder, built with the code's own classes.

The wheel comes from ``scripts/setup-env.sh`` (``.venv/wheels``); nothing is downloaded here.
"""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

WHEEL_GLOB = "llava_torch-1.2.2.post1-*.whl"

PYPROJECT = """[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "llava-torch"
version = "1.2.2.post1"
description = "LLaVA (haotian-liu/LLaVA), as published on the package registry"
requires-python = ">=3.8"
dependencies = {deps}

[tool.setuptools.packages.find]
include = ["llava*"]
"""


def wheel_requirements(wheel: Path) -> list[str]:
    """The wheel's own pinned requirements (``Requires-Dist`` without extras): torch 2.0.1,
    transformers 4.36.2, tokenizers 0.15.0, gradio 4.16.0, scikit-learn 1.2.2, ..."""
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    reqs = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("Requires-Dist:")]
    return [r.replace(" ", "") for r in reqs if "extra ==" not in r]


def llava_wheel() -> Path:
    """The llava-torch wheel that ``scripts/setup-env.sh`` keeps in ``<venv>/wheels``."""
    hits = sorted((Path(sys.prefix) / "wheels").glob(WHEEL_GLOB))
    if not hits:
        raise FileNotFoundError(f"no {WHEEL_GLOB} in {Path(sys.prefix) / 'wheels'}: run scripts/setup-env.sh")
    return hits[-1]


def unpack(dest: Path) -> Path:
    """The package's source tree (``llava/``) with a ``pyproject.toml``, at ``dest``."""
    dest = Path(dest)
    with zipfile.ZipFile(llava_wheel()) as z:
        z.extractall(dest, [n for n in z.namelist() if n.startswith("llava/")])
    deps = "[" + ", ".join(json.dumps(r) for r in wheel_requirements(llava_wheel())) + "]"
    (dest / "pyproject.toml").write_text(PYPROJECT.replace("{deps}", deps))
    (dest / "README.md").write_text("LLaVA's code as published on the registry (llava-torch 1.2.2.post1).\n")
    return dest


def code_repo(dest: Path, work: Path) -> Path:
    """Publish the code as a git repository at ``dest`` (built in ``work``); returns ``dest``."""
    from .zoo import publish_repo

    publish_repo(unpack(Path(work) / "llava-code"), Path(dest), lfs=False)
    return Path(dest)


def _legacy_keys(path: Path, prefix: str) -> None:
    """Store the tower's tensors under ``prefix`` (``vision_model.``), as released CLIP checkpoints do
    and every transformers release reads (newer releases save them without it)."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    save_file({k if k.startswith(prefix) else prefix + k: v for k, v in tensors.items()}, str(path),
              metadata={"format": "pt"})


def build_checkpoint(code_dir: Path, out: Path, tower: Path, seed: int = 0) -> Path:
    """A tiny LLaVA-1.5 checkpoint at ``out`` built with the code in ``code_dir`` (imported from
    there), its CLIP tower at ``tower``. The demo's tokenizer (``<image>`` among its tokens)."""
    import torch
    import transformers as T

    from .train_data import build_tokenizer, portable_files

    sys.path.insert(0, str(code_dir))
    try:
        from llava.model.language_model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM
    finally:
        sys.path.remove(str(code_dir))
    torch.manual_seed(seed)
    vcfg = T.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=32)
    T.CLIPVisionModel(vcfg).save_pretrained(tower)
    _legacy_keys(Path(tower) / "model.safetensors", "vision_model.")
    T.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(tower)
    tok = build_tokenizer()
    cfg = LlavaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=512, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False,
        mm_vision_tower=str(Path(tower).resolve()), mm_hidden_size=32, mm_projector_type="mlp2x_gelu",
        mm_vision_select_layer=-2, mm_vision_select_feature="patch", image_aspect_ratio="pad",
        mm_use_im_start_end=False, mm_use_im_patch_token=False, architectures=["LlavaLlamaForCausalLM"])
    model = LlavaLlamaForCausalLM(cfg)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    portable_files(out)  # readable by the transformers 4.36 the code pins
    return Path(out)
