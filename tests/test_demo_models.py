"""The committed demo models load through their own loaders, answer, and beat chance."""

import json
import subprocess
import sys

import pytest

from llmc.eval.vqa import VQARequest, evaluate_mme
from wizard.demo import shapes
from wizard.demo.facts import SCORES_FILE, model_facts
from wizard.demo.runtime import load_model

pytestmark = pytest.mark.slow


def _question(i=0):
    sc = shapes.scene_at(shapes.EVAL_SEED, i)
    return sc, [VQARequest(q, [sc.render()], {"max_new_tokens": 4}) for q, _ in sc.questions]


@pytest.fixture(scope="module")
def llava(zoo, tmp_path_factory):
    import git

    clone = tmp_path_factory.mktemp("w") / "tiny-llava"
    git.Repo.clone_from(zoo.models["tiny-llava"]["weights_repo"], clone)
    return load_model("tiny-llava", clone)


@pytest.fixture(scope="module")
def vila(zoo, tiny_vila_installed, tmp_path_factory):
    import git

    clone = tmp_path_factory.mktemp("w") / "tiny-vila"
    git.Repo.clone_from(zoo.models["tiny-vila"]["weights_repo"], clone)
    return load_model("tiny-vila", clone)


def test_tiny_llava_answers_through_transformers(llava):
    _, reqs = _question()
    answers = llava.answer(reqs)
    assert len(answers) == 2 and all(a in ("Yes", "No") for a in answers)


def test_tiny_vila_is_not_importable_before_install(zoo):
    res = subprocess.run([sys.executable, "-c", "import tiny_vila"], capture_output=True, text=True)
    assert res.returncode != 0 and "No module named 'tiny_vila'" in res.stderr


def test_tiny_vila_answers_through_its_own_loader(vila):
    """tiny_vila is VILA 1.5's API: its loader, config class, accessors, projector and templates."""
    import tiny_vila
    from tiny_vila.conversation import conv_templates, default_conversation
    from tiny_vila.mm_utils import get_model_name_from_path

    assert tiny_vila.__version__ == "0.2.0"
    m = vila.mm_model
    assert (type(m).__name__, m.config.model_type) == ("LlavaLlamaModel", "llava_llama")
    layers = [type(x).__name__ for x in m.get_mm_projector().layers]
    assert layers == ["DownSampleBlock", "LayerNorm", "Linear", "GELU", "Linear"]
    assert m.get_mm_projector().config.mm_projector_type == "mlp_downsample"
    assert isinstance(m.config.llm_cfg, dict)
    assert m.get_llm().config.hidden_size == m.config.llm_cfg["hidden_size"]
    assert default_conversation is conv_templates["vicuna_v1_nosys"] and "vicuna_v1" in conv_templates
    assert get_model_name_from_path("/x/VILA1.5-3b/checkpoint-10/") == "VILA1.5-3b_checkpoint-10"
    _, reqs = _question(1)
    answers = vila.answer(reqs)
    assert len(answers) == 2 and all(a in ("Yes", "No") for a in answers)


def test_batched_answers_equal_one_by_one(llava, vila):
    reqs = [r for i in range(4) for r in _question(i)[1]]
    for model in (llava, vila):
        assert model.answer(reqs) == [model.answer([r])[0] for r in reqs]


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-vila"])
def test_committed_models_beat_chance_and_match_recorded_scores(name, zoo, request):
    model = request.getfixturevalue("llava" if name == "tiny-llava" else "vila")
    res = evaluate_mme(model.answer, zoo.eval_set / "data", batch_size=64)
    # chance ~300, a constant answer 200; count and position alone give 500: both models also answer color
    assert res.scores.total >= 550, res.scores.to_dict()
    recorded = json.loads(SCORES_FILE.read_text())[name]
    assert res.scores.categories == pytest.approx(recorded["categories"], abs=1e-6)
    assert model_facts(name).total == pytest.approx(res.scores.total)


def test_batched_training_splice_matches_the_models_own():
    """The GPU training path's batched image splice gives tiny-vila's own loss."""
    import random

    import torch

    from wizard.demo import train

    torch.manual_seed(0)
    tok = train.build_tokenizer()
    model, processor = train.build_tiny_vila(tok)
    model.eval()
    pool = train.Pool(lambda imgs: processor(imgs, return_tensors="pt")["pixel_values"], 24)
    idx, prompts, targets = train.sample_rows(random.Random(0), pool, 8)
    ids, labels, mask = train.encode_rows(tok, prompts, targets, 1, -200)
    with torch.no_grad():
        own = model(ids, images=pool.pixels[idx], attention_mask=mask, labels=labels).loss
        batched = model.llm(**train.splice_image(model, ids, labels, mask, pool.pixels[idx])).loss
    torch.testing.assert_close(batched, own, rtol=1e-5, atol=1e-5)
    ids[0, ids[0] == -200] = tok.pad_token_id  # a row without its image token is refused
    with pytest.raises(ValueError, match="exactly one image token"):
        train.splice_image(model, ids, labels, mask, pool.pixels[idx])


def test_training_focus_weights_the_categories_and_stop_step_stops(tmp_path, capsys, one_thread):
    import random

    from wizard.demo import shapes, train

    tok = train.build_tokenizer()
    _, processor = train.build_tiny_llava(tok)
    pool = train.Pool(lambda imgs: processor.image_processor(imgs, return_tensors="pt")["pixel_values"], 16)
    color_only = (0.0, 0.0, 1.0, 0.0)
    idx, prompts, _ = train.sample_rows(random.Random(0), pool, 32, caption_frac=0.0, focus=color_only)
    assert {pool.scenes[i].category for i in idx.tolist()} == {"color"}
    assert all(any(f"Is there a {c} shape" in p for c in shapes.COLORS) for p in prompts)
    idx, _, _ = train.sample_rows(random.Random(0), pool, 64)  # no focus: every category turns up
    assert {pool.scenes[i].category for i in idx.tolist()} == set(shapes.CATEGORIES)

    for bad, message in [(["--focus", "1,2"], "--focus '1,2': give 4 non-negative weights"),
                         (["--focus", "0,0,0,0"], "at least one positive"),
                         (["--focus", "1,nan,1,1"], "give 4 non-negative weights"),
                         (["--stop-step", "0"], "--stop-step 0: must be between 1 and --steps")]:
        with pytest.raises(SystemExit):
            train.main(["tiny-llava", "--out", str(tmp_path / "x"), *bad])
        assert message in capsys.readouterr().err

    train.train("tiny-llava", tmp_path / "m", steps=10, batch=2, lr=1e-3, pool_size=8, log_every=1000,
                threads=1, stop_step=2, focus=color_only)
    assert "stopped at step 2/10 (--stop-step)" in capsys.readouterr().out
    assert (tmp_path / "m" / "model.safetensors").is_file()
