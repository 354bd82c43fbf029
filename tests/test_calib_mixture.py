"""A calibration set described as a mixture: image-text pairs from a custom_mm folder and from an
MME-format (lmms-eval) data set, text-only prompts from a text file; interleaved, rendered by the
model's own processor, previewed, and checked for evaluation images wherever they come from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmc.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "wizard" / "demo" / "assets"


def _mixture(zoo, tmp_path, mme_path=None) -> dict:
    lines = tmp_path / "lines.txt"
    lines.write_text("Describe the picture.\n\nWhat is a triangle?\nCount to three.\n")
    return {"name": "mixture", "parts": [
        {"name": "custom_mm", "path": str(zoo.calib_set), "n_samples": 2},
        {"name": "mme", "path": str(mme_path or zoo.eval_set / "data"), "n_samples": 1},
        {"name": "text_lines", "path": str(lines), "n_samples": 3}]}


def _cfg(calib: dict, tmp_path, evals: dict | None = None) -> dict:
    cfg = {"model": {"type": "Llava", "path": str(ASSETS / "tiny-llava"), "torch_dtype": "float32"},
           "calib": calib, "quant": {"method": "RTN", "weight": {"bit": 4, "group_size": 32}},
           "save": {"save_path": str(tmp_path / "out")}}
    if evals:
        cfg["eval"] = evals
    return cfg


@pytest.mark.parametrize("calib,message", [
    ({"name": "mixture"}, "calib.parts: required for a mixture"),
    ({"name": "mixture", "path": "/x", "parts": [{"name": "text_lines", "path": "/x"}]}, "calib.path: a mixture reads"),
    ({"name": "mixture", "parts": [{"name": "images", "path": "/x"}]}, "calib.parts[0].name: 'images' is not allowed"),
    ({"name": "mixture", "parts": [{"name": "mme", "path": "/x", "n_samples": 0}]}, "out of range"),
    ({"name": "custom_mm", "path": "/x", "parts": [{"name": "mme", "path": "/x"}]}, "calib.parts: only used with name: mixture"),
])
def test_a_wrong_mixture_is_one_line_naming_the_key(calib, message, tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(_cfg(calib, tmp_path))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_the_parts_are_interleaved_so_every_even_subset_holds_each(zoo, tmp_path):
    from llmc.data.calib import calib_samples

    samples = calib_samples(load_config(_cfg(_mixture(zoo, tmp_path), tmp_path)).calib)
    kinds = ["mm" if s.meta.get("image_path") else ("mme" if s.image is not None else "text") for s in samples]
    assert kinds == ["mm", "mme", "text", "mm", "text", "text"]
    assert samples[2].question == "Describe the picture." and samples[2].image is None


def test_a_mixture_calibrates_a_run_and_the_preview_shows_each_kind(zoo, tmp_path):
    """RTN on tiny-llava calibrated on the mixture: the run completes; the preview shows the
    text-only prompt without image tokens and the pairs with 16; the MME pair taken from the
    evaluation set is warned of (the check read only custom_mm folders)."""
    from llmc.data.preview import preview_calib
    from llmc.events import Warned, load_events
    from llmc.models import get_model_class
    from llmc.runner import run

    evals = {"eval_pos": ["fake_quant"], "type": "vqa", "name": "mme", "path": str(zoo.eval_set / "data"),
             "num_samples": 4, "cache": False}
    cfg = load_config(_cfg(_mixture(zoo, tmp_path), tmp_path, evals))
    view = preview_calib(cfg, get_model_class("Llava")(ASSETS / "tiny-llava", "float32", "cpu"), n=3)
    assert [s.image_tokens for s in view.samples] == [16, 16, 0] and view.n_samples == 6
    assert "<image>" not in view.samples[2].prompt and "Describe the picture." in view.samples[2].prompt
    res = run(cfg, tmp_path / "out", device="cpu")
    assert res["evals"]["mme"]["fake_quant"]["total"] >= 0
    warned = [e.message for e in load_events(tmp_path / "out" / "events.jsonl") if isinstance(e, Warned)]
    assert any("1 calibration image(s) also appear in the evaluation set" in m for m in warned), warned


def test_check_names_a_missing_part(zoo, tmp_path):
    from llmc.check import check_config

    calib = _mixture(zoo, tmp_path)
    calib["parts"][1]["path"] = str(tmp_path / "nowhere")
    problems = check_config(load_config(_cfg(calib, tmp_path)))
    assert any(p.startswith(f"calib.parts[1].path: {tmp_path / 'nowhere'} does not exist") for p in problems)
