"""Measure the committed demo models' float MME scores and record them in assets/scores.json.

    python -m wizard.demo.evaluate [--cache DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from llmc.eval.vqa import evaluate_mme

from . import zoo as zoo_mod
from .facts import SCORES_FILE
from .runtime import load_answerer


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cache", type=Path, default=None)
    args = ap.parse_args(argv)
    zoo = zoo_mod.build(args.cache, log=lambda m: print(f"[zoo] {m}", file=sys.stderr))
    # tiny-vila's package, straight from the committed sources (the zoo publishes the same files)
    sys.path.insert(0, str(zoo_mod.ASSETS / "tiny-vila-code"))
    out = {}
    for name, m in zoo_mod.DEMO_MODELS.items():
        t = time.time()
        res = evaluate_mme(load_answerer(name, zoo_mod.ASSETS / m.weights_asset), zoo.eval_set / "data", batch_size=64)
        out[name] = res.scores.to_dict()
        print(f"{name}: {json.dumps(res.scores.to_dict()['categories'])} total {res.scores.total:.2f} "
              f"({time.time() - t:.1f}s)", file=sys.stderr)
    SCORES_FILE.write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
