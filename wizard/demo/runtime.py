"""Load a demo model through its own loader (via its llmc adapter) and answer VQA requests.

``tiny-llava`` loads with transformers (``LlavaForConditionalGeneration`` + ``AutoProcessor``);
``tiny-vila`` with its package's ``load_pretrained_model`` — the package must be installed
(``pip install -e <code repo>``), exactly as for the real VILA.
"""

from __future__ import annotations

from pathlib import Path

ADAPTERS = {"tiny-llava": "Llava", "tiny-vila": "Vila"}


def load_model(name: str, path: Path, device: str = "cpu"):
    """The demo model's llmc adapter (``.answer(requests)``, ``.mm_model``, ``.tokenizer`` ...)."""
    from llmc.models import get_model_class

    if name not in ADAPTERS:
        raise ValueError(f"unknown demo model {name!r}; expected one of {', '.join(ADAPTERS)}")
    return get_model_class(ADAPTERS[name])(Path(path), "float32", device)


def load_answerer(name: str, path: Path, device: str = "cpu"):
    return load_model(name, path, device).answer
