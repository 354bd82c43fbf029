#!/usr/bin/env python3
"""VILA 1.5 through the wizard with NVlabs/VILA's own code: headless onboarding to the score table.

    .venv/bin/python scripts/onboard_vila15.py --vila PATH [--commit ec7fb2c] [--work DIR]
        [--method AWQ] [--eval-samples 64] [--calib 16] [--stand-in NAME ...]

PATH is a git repository of NVlabs/VILA (a clone or a mirror) holding the commit; nothing else is
downloaded but packages from the package index (the model's own environment). The checkpoint, in VILA
1.5's layout (``llm/``, ``vision_tower/``, ``mm_projector/`` with an ``mlp_downsample`` projector,
VILA's config keys), is either

* ``--checkpoint vila-grid`` (default): random weights with VILA1.5-3b's geometry at a tiny width — a
  SigLIP tower whose 27 x 27 patch grid the projector pads to 28 x 28 and merges into 196 image tokens,
  a 2-block Llama; published as a local git repository. Its answers are noise: it proves the path;
* ``--checkpoint demo``: the demo's trained tiny-vila, the folder the demo's ``tiny_vila`` loads.
  Its 8 x 8 grid is even, and VILA 1.5's ``DownSampleBlock`` then calls ``view`` on the tower's
  non-contiguous output (an odd grid is copied by its padding first): the smoke test stops there. Every step is the wizard's own (``wizard.steps.onboard``): fetch (the weights and the code at
the commit), install (an environment of its own with the code's pins), inspect, generate, smoke, run
(quantize and the MME-format evaluation before and after). Nothing is written by hand: what the code
needs but does not declare is named by the install step in one line with its fix, which this script
passes on (``--stand-in``) only when asked. Prints each step's time and the score table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def vila_grid_checkpoint(root: Path) -> Path:
    """A random-weight checkpoint in VILA 1.5's layout with VILA1.5-3b's patch grid (27 x 27 from a
    54 px image in 2 px patches), published as a git repository at ``root/VILA1.5-tiny``; reused when there."""
    repo = root / "VILA1.5-tiny"
    if repo.exists():
        return repo
    import torch
    from transformers import (AutoTokenizer, LlamaConfig, LlamaForCausalLM, SiglipImageProcessor, SiglipVisionConfig,
                              SiglipVisionModel)

    from wizard.demo.train import write_vila_checkpoint
    from wizard.demo.zoo import ASSETS, publish_repo

    torch.manual_seed(0)
    demo = ASSETS / "tiny-vila"
    tokenizer = AutoTokenizer.from_pretrained(demo / "llm")
    llm = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False))
    tower = SiglipVisionModel(SiglipVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                                 num_attention_heads=2, image_size=54, patch_size=2))
    processor = SiglipImageProcessor.from_pretrained(demo / "vision_tower")
    processor.size = {"height": 54, "width": 54}
    write_vila_checkpoint(root / "build", llm, tokenizer, tower, processor)
    publish_repo(root / "build", repo, lfs=False)
    return repo


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vila", required=True, help="a git repository of NVlabs/VILA (path or URL)")
    ap.add_argument("--commit", default="ec7fb2c", help="the code's commit (VILA 1.5: ec7fb2c)")
    ap.add_argument("--work", type=Path, default=Path("vila15-work"), help="where the clones, environment and runs go")
    ap.add_argument("--method", default="AWQ", choices=["RTN", "AWQ", "GPTQ"])
    ap.add_argument("--eval-samples", type=int, default=64, help="MME images evaluated before and after")
    ap.add_argument("--calib", type=int, default=16, help="calibration samples")
    ap.add_argument("--checkpoint", choices=["vila-grid", "demo"], default="vila-grid")
    ap.add_argument("--stand-in", action="append", default=[],
                    help="an import the code needs only for training (what the install step names)")
    a = ap.parse_args(argv)

    from wizard.demo import zoo as zoo_mod
    from wizard.services.answers import Answers
    from wizard.services.errors import WizardError
    from wizard.session import Session
    from wizard.steps import STEPS, Reporter, onboard

    zoo = zoo_mod.build(log=lambda m: None)
    ans = Answers()
    work = a.work.resolve()
    ans.source.weights_url = (zoo.models["tiny-vila"]["weights_repo"] if a.checkpoint == "demo"
                              else str(vila_grid_checkpoint(work / "vila-grid")))
    ans.source.code_url, ans.source.code_commit = a.vila, a.commit
    ans.install.stand_ins = list(a.stand_in)
    g = ans.generate
    g.name, g.method, g.bit, g.group_size = "vila15-tiny", a.method, 4, 32
    g.calib_path, g.eval_path = str(zoo.calib_set), str(zoo.eval_set / "data")
    g.n_calib, g.eval_samples = a.calib, a.eval_samples
    s = Session(ans, work / "answers.yml", work, assume_yes=True, device="cpu")
    marks: list[tuple[float, str]] = []

    def log(line: str) -> None:
        if line.startswith("== "):
            marks.append((time.monotonic(), line[3:].split(":")[0]))
        print(line, flush=True)

    t0 = time.monotonic()
    try:
        results = onboard(s, STEPS, Reporter(log=log))
    except WizardError as e:
        print(f"\nstopped after {time.monotonic() - t0:.0f} s: {e}")
        return 1
    total = time.monotonic() - t0
    print(f"\nVILA 1.5 ({a.vila} @ {a.commit}) onboarded in {total:.0f} s")
    for (t, name), (t_next, _) in zip(marks, marks[1:] + [(t0 + total, "")]):
        print(f"  {name}: {t_next - t:.0f} s")
    print(results.get("table", "") if isinstance(results, dict) else results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
