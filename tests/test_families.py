"""The family zoo: each tiny checkpoint loads in plain transformers and behaves like its family.

Real builds, real processors, real forward passes and generation (no mocks). Per family: the
folder reloads through the Auto classes; a batch of two different samples (nested images, one
list per sample) runs forward and greedy generation with left padding, giving the same answers
and last-token logits as running the samples one at a time; builds are deterministic; and the
module paths of :func:`wizard.demo.families.family_info` exist in the loaded model.
"""

from __future__ import annotations

import json

import pytest

from wizard.demo.families import FAMILIES, build_family, family_info

MAX_BYTES = 3 * 1024 * 1024
QUESTIONS = (
    "Is there a red circle in the image? Please answer yes or no.",
    "Describe the image.",
)
COLOURS = ((215, 40, 40), (40, 80, 215))


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    """(name, folder, processor, model) for one family, built once per module."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    name = request.param
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # small matmuls on a shared 2-core machine
    out = build_family(name, tmp_path_factory.mktemp(name) / name)
    processor = AutoProcessor.from_pretrained(out)
    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    yield name, out, processor, model
    torch.set_num_threads(before)


def _images():
    from PIL import Image, ImageDraw

    imgs = []
    for i, colour in enumerate(COLOURS):
        img = Image.new("RGB", (64, 64), (245, 245, 245))
        ImageDraw.Draw(img).ellipse((8 + 16 * i, 8, 40 + 16 * i, 40), fill=colour)
        imgs.append(img)
    return imgs


def _prompt(name: str, processor, question: str) -> str:
    if family_info(name).has_chat_template:
        conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return processor.apply_chat_template(conv, add_generation_prompt=True)
    return "<image>answer en " + question  # PaliGemma: the processor adds <bos> and "\n"


def _inputs(name, processor, idx):
    imgs = _images()
    return processor(images=[[imgs[i]] for i in idx], text=[_prompt(name, processor, QUESTIONS[i]) for i in idx],
                     return_tensors="pt", padding=True)


def test_folder_is_small_and_names_its_architecture(family):
    name, out, processor, _ = family
    info = family_info(name)
    assert info.name == name
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"][0] == info.architecture
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    assert size < MAX_BYTES, f"{name}: {size} bytes"
    assert (out / "model.safetensors").is_file()
    assert (out / "chat_template.jinja").is_file() == info.has_chat_template
    assert bool(processor.chat_template) == info.has_chat_template
    assert processor.tokenizer.padding_side == "left"
    assert processor.tokenizer.pad_token_id is not None
    # generation stops at EOS (and the family's end-of-turn token), all ids inside the vocabulary
    gen = json.loads((out / "generation_config.json").read_text())
    stops = gen["eos_token_id"] if isinstance(gen["eos_token_id"], list) else [gen["eos_token_id"]]
    assert processor.tokenizer.eos_token_id in stops
    vocab = config["text_config"]["vocab_size"]
    assert all(0 <= i < vocab for i in stops) and len(processor.tokenizer) <= vocab


def test_family_info_paths_resolve(family):
    name, _, _, model = family
    info = family_info(name)
    assert len(model.get_submodule(info.language_model).layers) >= 2
    model.get_submodule(info.vision_tower)
    projector = model.get_submodule(info.projector)
    assert info.projector_last[0].startswith(info.projector)  # the main one; Qwen3-VL's deepstack is beside it
    for path in info.projector_last:
        try:
            target = model.get_submodule(path)
            assert any(True for _ in target.parameters())
        except AttributeError:
            target = model.get_parameter(path)
        assert target is not None
    assert any(True for _ in projector.parameters())
    if name == "gemma3":  # both attention kinds exist
        layer_types = model.config.get_text_config().layer_types
        assert {"sliding_attention", "full_attention"} <= set(layer_types)


def test_batched_forward_and_greedy_match_single(family):
    import torch

    name, _, processor, model = family
    batch = _inputs(name, processor, (0, 1))
    mask = batch["attention_mask"]
    assert (mask[:, -1] == 1).all(), "padding must be on the left"
    assert (mask[:, 0] == 0).any(), "the two prompts should differ in length"
    assert not torch.equal(batch["input_ids"][0], batch["input_ids"][1])

    with torch.no_grad():
        logits = model(**batch).logits
    assert torch.isfinite(logits).all()
    assert logits.shape[:2] == batch["input_ids"].shape

    n = batch["input_ids"].shape[1]
    out = model.generate(**batch, max_new_tokens=3, do_sample=False, output_logits=True,
                         return_dict_in_generate=True)
    answers = out.sequences[:, n:]
    assert answers.shape == (2, 3)
    for i in range(2):
        single = _inputs(name, processor, (i,))
        m = single["input_ids"].shape[1]
        one = model.generate(**single, max_new_tokens=3, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
        assert one.sequences[0, m:].tolist() == answers[i].tolist(), f"{name}: sample {i}"
        # greedy tokens alone can be insensitive (tied embeddings tend to repeat a token):
        # the first step's logits must match too, up to float rounding
        torch.testing.assert_close(one.logits[0][0], out.logits[0][i], atol=1e-4, rtol=1e-4)


def test_build_is_deterministic(family, tmp_path):
    name, out, _, _ = family
    again = build_family(name, tmp_path / "again", seed=0)
    assert (again / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()
    assert (again / "tokenizer.json").read_bytes() == (out / "tokenizer.json").read_bytes()
    other = build_family(name, tmp_path / "other", seed=1)
    assert (other / "model.safetensors").read_bytes() != (out / "model.safetensors").read_bytes()


def test_rebuild_into_a_folder_replaces_the_previous_family(tmp_path):
    build_family("gemma3", tmp_path / "m")
    assert (tmp_path / "m" / "chat_template.jinja").is_file()
    build_family("paligemma", tmp_path / "m")
    assert not (tmp_path / "m" / "chat_template.jinja").exists()  # paligemma has none
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["architectures"] == ["PaliGemmaForConditionalGeneration"]


def test_unknown_family_is_refused():
    with pytest.raises(ValueError, match="unknown family"):
        family_info("nope")
