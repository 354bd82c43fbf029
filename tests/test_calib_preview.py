"""What the model sees of its calibration set (:mod:`llmc.data.preview`, ``llmc calib-preview``):
the prompts equal what the model's own processor renders, image tokens are counted where the
language model reads them (expanded inside the forward for the LLaVA lineage), and lengths past
the model's context are warned of."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llmc.config import load_config
from llmc.models import get_model_class

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "wizard" / "demo" / "assets"


def _config(model_type: str, path, calib: Path, n: int = 4) -> dict:
    return {"model": {"type": model_type, "path": str(path), "torch_dtype": "float32"},
            "calib": {"name": "custom_mm", "path": str(calib), "n_samples": n},
            "quant": {"method": "RTN", "weight": {"bit": 4, "group_size": 32}}}


def _expand(prompt: str) -> str:
    import re

    return re.sub(r"(<[^<>]+>)×(\d+)", lambda m: m[1] * int(m[2]), prompt)


def test_a_transformers_models_prompts_are_its_processors_own(zoo):
    """tiny-llava: each shown prompt, image runs expanded, is the processor's own rendering of the
    sample (its chat template, its image-token expansion); 16 image tokens per image."""
    from PIL import Image
    from transformers import AutoProcessor

    from llmc.data.preview import preview_calib

    cfg = load_config(_config("Llava", ASSETS / "tiny-llava", zoo.calib_set))
    view = preview_calib(cfg, get_model_class("Llava")(ASSETS / "tiny-llava", "float32", "cpu"), n=2)
    rows = json.loads((zoo.calib_set / "samples.json").read_text())
    proc = AutoProcessor.from_pretrained(ASSETS / "tiny-llava")
    for s, row in zip(view.samples, rows):
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": row["question"]}]}]
        text = proc.apply_chat_template(msgs, add_generation_prompt=True)
        ids = proc(text=[text], images=[Image.open(zoo.calib_set / row["image"]).convert("RGB")],
                   return_tensors="pt")["input_ids"][0]
        assert _expand(s.prompt) == proc.tokenizer.decode(ids, skip_special_tokens=False)
        assert "<image>×16" in s.prompt and s.image_tokens == 16 and s.length == len(ids) == s.text_tokens + 16
    assert view.n_samples == 4 and len(view.lengths) == 4 and view.context == 256 and view.warning is None


def test_the_llava_lineage_counts_the_image_tokens_its_forward_expands(zoo, tiny_vila_installed):
    """tiny-vila's input_ids hold one placeholder per image; the language model reads 16 rows for it."""
    from llmc.data.preview import preview_calib

    cfg = load_config(_config("Vila", ASSETS / "tiny-vila", zoo.calib_set, n=2))
    view = preview_calib(cfg, get_model_class("Vila")(ASSETS / "tiny-vila", "float32", "cpu"), n=1)
    (s,) = view.samples
    assert s.prompt.count("<image>") == 1 and "×" not in s.prompt  # one placeholder in the ids
    assert s.image_tokens == 16 and s.length == s.text_tokens + 16


def test_a_family_with_its_own_image_processor(tmp_path, zoo):
    """Qwen2-VL: a 64x64 image becomes 4 merged <|image_pad|> tokens."""
    from llmc.data.preview import preview_calib
    from wizard.demo.families import build_family

    from llmc.models.hf_vlm import HFVisionLanguageModel

    path = build_family("qwen2_vl", tmp_path / "qwen2_vl")
    cls = type("Qwen2VLPreview", (HFVisionLanguageModel,), {"model_cls_name": "Qwen2VLForConditionalGeneration"})
    cfg = load_config(_config("Llava", path, zoo.calib_set, n=2))  # the type names a registered class; unused here
    view = preview_calib(cfg, cls(path, "float32", "cpu"), n=1)
    assert "<|image_pad|>×4" in view.samples[0].prompt and view.samples[0].image_tokens == 4


def test_the_command_line_warns_past_the_context_and_speaks_json(zoo, tmp_path):
    """A model whose context (12 positions) is shorter than its prompts: one warning line naming
    the context; --json holds the same; a bad --n is one line."""
    import shutil

    model = tmp_path / "tiny-llava"
    shutil.copytree(ASSETS / "tiny-llava", model)
    cfg_json = json.loads((model / "config.json").read_text())
    cfg_json["text_config"]["max_position_embeddings"] = 12
    (model / "config.json").write_text(json.dumps(cfg_json))
    config = tmp_path / "c.yml"
    config.write_text(json.dumps(_config("Llava", model, zoo.calib_set)))

    def llmc(*args):
        return subprocess.run([sys.executable, "-m", "llmc", "calib-preview", str(config), *args],
                              capture_output=True, text=True, timeout=300)

    out = llmc("--n", "1")
    assert out.returncode == 0, out.stderr
    assert "WARNING: 4 of 4 calibration sequences are longer than the model's context of 12" in out.stdout
    data = json.loads(llmc("--json").stdout)
    assert data["context"] == 12 and len(data["samples"]) == 3 and data["warning"]
    bad = llmc("--n", "0")
    assert bad.returncode == 1 and bad.stderr.strip() == "llmc: error: --n must be at least 1, got 0"


def _generated(zoo, tmp_path):
    """The wizard's answers for a copy of tiny-llava, inspected and generated."""
    import shutil

    from wizard.app import demo_answers
    from wizard.session import Session
    from wizard.steps import Reporter, onboard

    weights = tmp_path / "tiny-llava"
    shutil.copytree(ASSETS / "tiny-llava", weights)
    a = demo_answers(zoo, "tiny-llava")
    a.source.weights_url = a.source.weights_dir = str(weights)
    a.generate.method, a.generate.n_calib = "RTN", 4
    s = Session(a, tmp_path / "answers.yml", tmp_path, tmp_path / "adapters", tmp_path / "site", "cpu")
    onboard(s, ["inspect", "generate"], Reporter())
    s.save()
    return s


def test_the_wizard_previews_the_calibration_set_headless_and_names_a_bad_input(zoo, tmp_path):
    s = _generated(zoo, tmp_path)

    def wizard(*args):
        return subprocess.run([sys.executable, "-m", "wizard", "calib", "preview", "--answers",
                               str(s.answers_path), "--models-dir", str(tmp_path / "adapters"), *args],
                              capture_output=True, text=True, timeout=300)

    out = wizard("--n", "1")
    assert out.returncode == 0, out.stderr
    assert "calibration set custom_mm: 4 sample(s)" in out.stdout and "<image>×16" in out.stdout
    assert out.stdout.count("--- sample ") == 1
    bad = wizard("--n", "0")
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1 and "--n N with N >= 1" in bad.stderr


async def test_the_run_step_previews_the_calibration_set(zoo, tmp_path):
    """Preview on Run (Pilot, 80x24): the rendered prompts land in the log, the status says how
    many samples and their lengths; Preview is free again afterwards."""
    from textual.widgets import Button

    from wizard.app import WizardApp

    s = _generated(zoo, tmp_path)
    app = WizardApp(answers_path=s.answers_path, workdir=tmp_path, models_dir=tmp_path / "adapters", device="cpu",
                    install_target=tmp_path / "site")
    async with app.run_test(size=(80, 24)) as pilot:
        app.goto("Run")
        await pilot.pause()
        screen = app.screen
        screen.query_one("#calib-preview", Button).focus()
        await pilot.press("enter")
        button = screen.query_one("#calib-preview", Button)
        for _ in range(1200):
            await pilot.pause(0.1)
            if not button.disabled:
                break
        status = str(screen.query_one("#status").render())
        assert status.startswith("calibration set custom_mm: 4 sample(s)"), status
        assert any("<image>×16" in line for line in screen.query_one("#log").lines)


def test_a_run_warns_of_sequences_the_forward_makes_longer_than_the_context(zoo, tiny_vila_installed, tmp_path):
    """tiny-vila's input ids fit a context that the 16 image rows its forward inserts overflow: the
    run warns as the first block reads them (the input ids alone said nothing)."""
    import shutil

    from llmc.data.preview import preview_calib
    from llmc.events import Warned, load_events
    from llmc.runner import run

    cfg = load_config(_config("Vila", ASSETS / "tiny-vila", zoo.calib_set, n=2))
    view = preview_calib(cfg, get_model_class("Vila")(ASSETS / "tiny-vila", "float32", "cpu"), n=2)
    lengths = [s.length for s in view.samples]
    context = min(lengths) - 4  # past every expanded length, above every input-id count (length - 15)
    assert max(lengths) - 15 < context
    model = tmp_path / "tiny-vila"
    shutil.copytree(ASSETS / "tiny-vila", model)
    llm = json.loads((model / "llm" / "config.json").read_text())
    llm["max_position_embeddings"] = context
    (model / "llm" / "config.json").write_text(json.dumps(llm))
    top = json.loads((model / "config.json").read_text())  # the language model's config, as VILA keeps a copy
    top["llm_cfg"]["max_position_embeddings"] = context
    (model / "config.json").write_text(json.dumps(top))
    run(load_config(_config("Vila", model, zoo.calib_set, n=2)), tmp_path / "out", device="cpu")
    warned = [e.message for e in load_events(tmp_path / "out" / "events.jsonl") if isinstance(e, Warned)]
    assert any(f"2 of 2 calibration sequences are longer than the model's context of {context}" in m
               and f"longest {max(lengths)}" in m for m in warned), warned
