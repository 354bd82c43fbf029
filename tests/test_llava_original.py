"""The original LLaVA code (llava-torch 1.2.2.post1, haotian-liu/LLaVA) onboarded as it comes.

Its code is cloned from a local git repository, pinned and installed into an environment of its
own with its pinned dependencies (transformers 4.36.2...); a tiny checkpoint in LLaVA-1.5's own format (``LlavaLlamaForCausalLM``, the
vision tower and ``mm_projector`` kept inside ``model``) goes through every step to the score
table, with a generated declaration of data only: the engine drives the code through the
lineage's own loader, conversation templates and mm_utils (:mod:`llmc.models.llava_lineage`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    """(weights repo, code repo, unpacked code) for the original LLaVA and a tiny checkpoint."""
    from wizard.demo.llava_original import build_checkpoint, code_repo, unpack
    from wizard.demo.zoo import publish_repo

    root = tmp_path_factory.mktemp("llava")
    src = unpack(root / "src")
    weights = build_checkpoint(src, root / "build" / "llava-v1.5-tiny", root / "clip-tower")
    repo = root / "repos" / "llava-v1.5-tiny.git"
    publish_repo(weights, repo, lfs=False)
    return repo, code_repo(root / "repos" / "LLaVA.git", root / "work"), src


def test_the_original_llava_code_reaches_the_score_table_in_its_own_environment(llava, zoo, tmp_path, hostile_plugin):
    """Clone, install into an environment of its own (its pins: transformers 4.36.2, tokenizers
    0.15, accelerate 0.21, gradio 4.16...), inspect, generate, smoke and run with GPTQ, then AWQ,
    to the score table: zero hand-written lines, every step after install in that environment —
    while this environment holds a setuptools plugin that breaks wherever else it is loaded."""
    import subprocess
    import sys

    from wizard.services.answers import Answers, load_answers
    from wizard.services.literals import check_declaration
    from wizard.services.render import split_header
    from wizard.session import Session
    from wizard.steps import STEPS, Reporter, onboard

    weights, code, _ = llava
    a = Answers()
    a.source.weights_url, a.source.code_url, a.source.code_commit = str(weights), str(code), "v0.1.0"
    a.generate.name, a.generate.method = "llava-v1.5-tiny", "GPTQ"
    a.generate.calib_path, a.generate.eval_path = str(zoo.calib_set), str(zoo.eval_set / "data")
    a.generate.n_calib, a.generate.eval_samples = 4, 8
    s = Session(a, tmp_path / "answers.yml", tmp_path / "work", assume_yes=True, device="cpu")
    log: list[str] = []
    results = onboard(s, STEPS, Reporter(log=log.append))
    text = "\n".join(log)
    env = s.workdir / "envs" / "LLaVA"
    assert s.answers.install.env_dir == str(env) and s.model_python() == env / "bin" / "python"
    assert "== continuing in the model's environment" in text
    for why in ("relaxed torch: this environment's", "relaxed gradio: left out", "relaxed scikit-learn: left out"):
        assert why in text
    version = subprocess.run([str(s.model_python()), "-W", "ignore", "-c", "import transformers, llava; "
                              "print(transformers.__version__)"], capture_output=True, text=True, check=True)
    assert version.stdout.strip() == "4.36.2"  # the code's pin; this environment keeps its own
    ins = s.answers.inspect
    assert ins.model_kind == "custom-code" and ins.architecture == "LlavaLlamaForCausalLM"
    assert (ins.code_conventions, ins.conv_mode) == ("llava-lineage", "vicuna_v1")
    # found inside the language model's module, where LLaVA keeps them
    assert ins.projector_last_layers == ["model.mm_projector.2"] and ins.language_model_path == "model"
    (adapter,) = (s.workdir / "adapters").glob("*.py")
    decl = check_declaration(split_header(adapter.read_text())[1])
    assert (decl["CODE_PACKAGE"], decl["conv_mode"]) == ("llava", "vicuna_v1")
    assert "(LlavaLineage)" in adapter.read_text()
    assert "eval batch: batch of" in text
    mme = results["evals"]["mme"]
    assert sum(mme["pretrain"]["n_images"].values()) == 8 and sum(mme["fake_quant"]["n_images"].values()) == 8
    assert results["table"] in text and "GPTQ" in results["table"]
    assert not hostile_plugin.exists(), f"this environment's plugin ran in {hostile_plugin.read_text()}"

    # AWQ in the same environment (built once: it is up to date for this commit)
    s.answers.generate.method = "AWQ"
    log.clear()
    awq = onboard(s, ["install", "generate", "smoke", "run"], Reporter(log=log.append))
    assert any("is up to date for" in line for line in log)
    assert "awq" in awq["table"].lower() and sum(awq["evals"]["mme"]["fake_quant"]["n_images"].values()) == 8

    # a single headless command restarts itself in the model's environment
    cli = subprocess.run([sys.executable, "-m", "wizard", "try", "--answers", str(s.answers_path), "--workdir",
                          str(s.workdir), "--question", "Is there a circle?"], capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert f"continuing in the model's environment ({env / 'bin' / 'python'})" in cli.stderr
    assert cli.stdout.startswith("float: ") and "\nquantized: " in cli.stdout
    assert load_answers(s.answers_path).install.env_dir == str(env)


def test_a_failing_hook_is_named_by_the_smoke_test(llava, zoo, tmp_path, monkeypatch):
    """A model whose conventions differ fails in one hook: the smoke test says which."""
    from wizard.services.errors import WizardError
    from wizard.services.smoke import smoke_test

    weights_repo, _, src = llava
    monkeypatch.syspath_prepend(str(src))
    models = tmp_path / "adapters"
    models.mkdir()
    (models / "broken_llava.py").write_text(
        "from llmc.models.llava_lineage import LlavaLineage\n"
        "from llmc.models.registry import register\n\n\n"
        "@register('BrokenLlava')\n"
        "class BrokenLlava(LlavaLineage):\n"
        "    conv_mode = 'no_such_template'\n")
    import git

    weights = tmp_path / "w"
    git.Repo.clone_from(str(weights_repo), weights)
    with pytest.raises(WizardError, match=r"smoke test failed at 'calibration sample' in the adapter's "
                                          r"build_inputs hook|at 'eval sample'.*hook") as e:
        smoke_test("broken_llava", "BrokenLlava", weights, zoo.calib_set, zoo.eval_set / "data", models_dir=models)
    assert "KeyError" in e.value.message and "no_such_template" in e.value.message


def test_rotating_the_original_llava_keeps_its_logits_only_with_the_projector(llava, monkeypatch, tmp_path):
    """With the picked layer (model.mm_projector.2) rotated too, the rotated model's answer logits
    equal the float model's within 1e-4; leaving it out changes them."""
    import torch

    from llmc.eval.vqa import VQARequest
    from llmc.models.llava_lineage import LlavaLineage
    from llmc.quant.rotation import rotate_model_
    from PIL import Image

    weights_repo, _, src = llava
    monkeypatch.syspath_prepend(str(src))
    import git

    weights = Path(git.Repo.clone_from(str(weights_repo), str(tmp_path / "w")).working_dir)

    class Picked(LlavaLineage):
        projector_last_layers = ("model.mm_projector.2",)

    reqs = [VQARequest("Is there a red circle?", [Image.new("RGB", (64, 64), c)], {"max_new_tokens": 2})
            for c in ((200, 30, 30), (30, 30, 200))]
    out = {}
    for skip in (False, True):
        m = Picked(weights, "float32", "cpu")
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():  # trained norms are not all ones
            for mod in m.language_model().modules():
                if "norm" in type(mod).__name__.lower() and getattr(mod, "weight", None) is not None:
                    mod.weight.add_(0.3 * torch.randn(mod.weight.shape, generator=gen))
        before = m.answer_logits(reqs)
        rotate_model_(m, "hadamard", seed=0, skip_extra=skip)
        out[skip] = float((m.answer_logits(reqs) - before).abs().max())
    assert out[False] < 1e-4 and out[True] > 1e-2, out


def test_differing_conventions_take_a_few_hand_written_lines_in_the_hooks_file(llava, zoo, tmp_path, monkeypatch):
    """Code of the lineage without ``mm_utils.process_images``: smoke names the build_inputs hook;
    a hooks file of at most 15 hand-written lines (the declaration stays data) makes it pass."""
    import shutil
    import sys

    import git

    from wizard.services.errors import WizardError
    from wizard.services.smoke import smoke_test

    weights_repo, _, src = llava
    code = tmp_path / "code"
    shutil.copytree(src / "llava", code / "llava")
    mm = code / "llava" / "mm_utils.py"
    mm.write_text(mm.read_text().replace("def process_images(", "def _process_images_elsewhere("))
    monkeypatch.syspath_prepend(str(code))
    for name in [m for m in sys.modules if m == "llava" or m.startswith("llava.")]:
        monkeypatch.delitem(sys.modules, name)  # this copy of the code, not the one imported before
    models = tmp_path / "adapters"
    models.mkdir()
    (models / "differs.py").write_text(
        "from llmc.models.llava_lineage import LlavaLineage\n"
        "from llmc.models.registry import register\n\n\n"
        "@register('Differs')\n"
        "class Differs(LlavaLineage):\n"
        "    hooks_file = 'hooks/differs.py'\n")
    weights = tmp_path / "w"
    git.Repo.clone_from(str(weights_repo), weights)
    args = ("differs", "Differs", weights, zoo.calib_set, zoo.eval_set / "data")
    with pytest.raises(WizardError, match=r"in the adapter's build_inputs hook") as e:
        smoke_test(*args, models_dir=models)
    assert "process_images" in e.value.message and "\n" not in str(e.value)
    hooks = (
        "from llmc.models.base import left_pad\n"
        "\n"
        "\n"
        "def build_inputs(self, samples, add_answer=False):\n"
        "    mm, index = self._code('mm_utils'), self._code('constants').IMAGE_TOKEN_INDEX\n"
        "    rows = [mm.tokenizer_image_token(self.prompt(s.question, s.answer if add_answer else None,\n"
        "                                                 s.image is not None), self.tokenizer, index,\n"
        "                                     return_tensors='pt') for s in samples]\n"
        "    ids, mask = left_pad(rows, self.tokenizer.pad_token_id, self.device)\n"
        "    images = [s.image.convert('RGB') for s in samples if s.image is not None]\n"
        "    out = {'input_ids': ids, 'attention_mask': mask}\n"
        "    if images:\n"
        "        px = self.image_processor(images, return_tensors='pt')['pixel_values']\n"
        "        out['images'] = px.to(self.device, dtype=self._dtype())\n"
        "    return out\n")
    assert len([ln for ln in hooks.splitlines() if ln.strip()]) <= 15
    (models / "hooks").mkdir()
    (models / "hooks" / "differs.py").write_text(hooks)
    smoke_test(*args, models_dir=models)
