"""Real transformers VLM families onboarded end to end, headless, with zero hand-edited lines.

Each family of the family zoo (:mod:`wizard.demo.families`: tiny random weights, locally built
working processors) is published as a local git repository and taken through every step the
user runs: fetch (a real clone), inspect, generate, register, smoke (a child process), run (the
engine: original and quantized MME-format evaluation) — reaching the score table.
"""

from __future__ import annotations

import pytest

from wizard.demo.families import FAMILIES, build_family, family_info

pytestmark = pytest.mark.slow

#: the families onboarded with GPTQ as well as RTN
GPTQ_TOO = ("qwen2_vl", "gemma3")


def _published(name: str, tmp_path) -> str:
    from wizard.demo.zoo import publish_repo

    src = build_family(name, tmp_path / "build" / name)
    dest = tmp_path / "repos" / f"{name}.git"
    publish_repo(src, dest, lfs=False)
    return str(dest)


def _onboard(name: str, method: str, tmp_path, zoo):
    from wizard.services.answers import Answers
    from wizard.session import Session
    from wizard.steps import STEPS, Reporter, onboard

    a = Answers()
    a.source.weights_url = _published(name, tmp_path)
    a.generate.name = f"{name} family"
    a.generate.method = method
    a.generate.calib_path = str(zoo.calib_set)
    a.generate.eval_path = str(zoo.eval_set / "data")
    a.generate.n_calib = 4
    a.generate.eval_samples = 8
    s = Session(a, tmp_path / "answers.yml", tmp_path / "work", device="cpu")
    log: list[str] = []
    results = onboard(s, STEPS, Reporter(log=log.append))
    return s, results, "\n".join(log)


@pytest.mark.parametrize("name", FAMILIES)
def test_family_reaches_the_score_table(name, zoo, tmp_path):
    info = family_info(name)
    s, results, log = _onboard(name, "RTN", tmp_path, zoo)
    ins = s.answers.inspect
    # inspect found the parts where the family keeps them, and the prompt format
    assert ins.architecture == info.architecture
    assert (ins.language_model_path, ins.vision_tower_path, ins.projector_path) == \
        (info.language_model, info.vision_tower, info.projector)
    assert ins.prompt_format == ("chat" if info.has_chat_template else "plain")
    assert set(info.projector_last) <= set(ins.projector_last_layers)
    # the declaration is the generated one (no hand edits) and is plain data
    from wizard.services.literals import check_declaration
    from wizard.services.render import split_header

    (adapter,) = (s.workdir / "adapters").glob("*.py")
    decl = check_declaration(split_header(adapter.read_text())[1])
    assert decl["language_model_path"] == info.language_model and decl["model_cls_name"] == info.architecture
    assert "eval batch: batch of" in log  # smoke ran the batch check
    mme = results["evals"]["mme"]
    for pos in ("pretrain", "fake_quant"):
        assert sum(mme[pos]["n_images"].values()) == 8
    assert f"| total | {mme['pretrain']['total']:.2f} | {mme['fake_quant']['total']:.2f} |" in results["table"]
    assert results["table"] in log


@pytest.mark.parametrize("name", GPTQ_TOO)
def test_family_onboards_with_gptq(name, zoo, tmp_path):
    _, results, _ = _onboard(name, "GPTQ", tmp_path, zoo)
    assert "GPTQ" in results["label"] or "gptq" in results["label"].lower()
    assert sum(results["evals"]["mme"]["fake_quant"]["n_images"].values()) == 8
