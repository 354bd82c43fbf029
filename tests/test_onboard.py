"""Headless onboarding of both demo models from their local git repositories, end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from wizard.services.answers import Answers, load_answers, save_answers

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-vila"])
def test_onboard_demo_model_headless(name, zoo, tmp_path, sigterm_tree):
    entry = zoo.models[name]
    a = Answers()
    a.source.weights_url = entry["weights_repo"]
    if entry["code_repo"]:
        a.source.code_url = entry["code_repo"]
        a.source.code_commit = "v0.1.0"  # pinned by tag; resolved to the release commit
        a.install.no_deps = True  # its dependencies (torch, transformers) are already here
    a.generate.name = f"{name} onboarded"
    a.generate.method = "GPTQ"
    a.generate.calib_path = str(zoo.calib_set)
    a.generate.eval_path = str(zoo.eval_set / "data")
    a.generate.n_calib = 16
    a.generate.eval_samples = 24
    answers = tmp_path / "answers.yml"
    save_answers(a, answers)
    cmd = [sys.executable, "-m", "wizard.cli", "onboard", "--answers", str(answers), "--models-dir",
           str(tmp_path / "adapters"), "--install-target", str(tmp_path / "site"), "--yes", "--device", "cpu"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    for step in ("fetch", "install", "inspect", "generate", "register", "smoke", "run"):
        assert f"== {step}" in r.stderr
    done = load_answers(answers)
    if name == "tiny-vila":
        assert done.source.code_commit == entry["code_commit"]
        assert "install: done" in r.stderr and done.inspect.model_kind == "custom-code"
        assert done.inspect.projector_last_layers == ["mm_projector.layers.4"]
    else:
        assert "install: skipped" in r.stderr and done.inspect.model_kind == "transformers"
        assert done.inspect.projector_last_layers == ["model.multi_modal_projector.linear_2"]
    # the generated declaration is found by the engine from the config alone (a fresh
    # interpreter, no environment variable): model.adapters names its folder
    adapters = sorted((tmp_path / "adapters").glob("*.py"))
    assert len(adapters) == 1
    model_type = __import__("wizard.services.render", fromlist=["x"]).class_name(done.generate.name)
    config = next((tmp_path / "configs").glob("*_gptq.yml"))
    check = subprocess.run(
        [sys.executable, "-c", "import sys; from llmc.config import load_config; from llmc.models import "
         "get_model_class; c = load_config(sys.argv[1]); print(get_model_class(c.model.type, [c.model.adapters]))",
         str(config)], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert check.returncode == 0, check.stderr
    assert model_type in check.stdout
    # the run's score table exists and matches the engine's JSON
    run_dir = tmp_path / done.run.run_dir if not done.run.run_dir.startswith("/") else __import__("pathlib").Path(done.run.run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    mme = results["evals"]["mme"]
    assert sum(mme["pretrain"]["n_images"].values()) == 24
    table = results["table"]
    assert f"| total | {mme['pretrain']['total']:.2f} | {mme['fake_quant']['total']:.2f} |" in table
    assert table in r.stderr
    assert (run_dir / "fake" / "config.json").exists()
    # the Try step, headless: both models answer evaluation sample 3's own question
    t = subprocess.run([sys.executable, "-m", "wizard.cli", "try", "--answers", str(answers), "--models-dir",
                        str(tmp_path / "adapters"), "--install-target", str(tmp_path / "site"), "--sample", "3",
                        "--device", "cpu"], capture_output=True, text=True, timeout=600)
    assert t.returncode == 0, t.stderr[-3000:]
    lines = t.stdout.splitlines()
    assert [x.split(":")[0] for x in lines] == ["float", "quantized"] and all(x.split(": ", 1)[1] for x in lines)
    opts = ["--answers", str(answers), "--models-dir", str(tmp_path / "adapters"), "--install-target",
            str(tmp_path / "site"), "--device", "cpu"]
    # a typed question about an evaluation sample's image: the sample's own answer is not "expected" of it
    from wizard.session import Session
    from wizard.steps import ask

    typed = ask(Session.load(answers, tmp_path, models_dir=tmp_path / "adapters", device="cpu",
                             install_target=tmp_path / "site"), question="Is the sky green?", sample=3)
    assert typed.question == "Is the sky green?" and typed.expected is None and typed.float_answer
    # SIGTERM while both models load to answer: the child goes with the wizard
    rc, err, alive = sigterm_tree([sys.executable, "-m", "wizard.cli", "try", *opts], "wizard.services.ask")
    assert not alive and rc != 0 and "Traceback" not in err, (alive, err[-1500:])
    # the data-parallel evaluation step, headless (one process here): the saved quantized model
    # scores what the engine scored in memory
    ev = subprocess.run([sys.executable, "-m", "wizard.cli", "evaluate", *opts, "--gpus", "1"],
                        capture_output=True, text=True, timeout=600)
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert json.loads(ev.stdout)["total"] == mme["fake_quant"]["total"]
    assert (run_dir / "dp_eval_1.json").exists()
    bad = subprocess.run([sys.executable, "-m", "wizard.cli", "evaluate", *opts, "--gpus", "0"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1 and "--gpus" in bad.stderr
    if name == "tiny-llava":
        # a second run: a new run directory, and the time left from the first run's phases
        again = subprocess.run([sys.executable, "-m", "wizard.cli", "run", *opts], capture_output=True, text=True,
                               timeout=900)
        assert again.returncode == 0, again.stderr[-3000:]
        assert load_answers(answers).run.run_dir != done.run.run_dir
        assert "quantize done in" in again.stderr and "run ~" in again.stderr
