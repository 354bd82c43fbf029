"""One demo run on the GPU through ``llmc.runner.run`` with a run directory; prints the block
events' peak GPU memory per card (the figure multi-GPU quantization reports)."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    from llmc.config import load_config
    from llmc.progress import read_events
    from llmc.runner import run
    from wizard.demo import zoo as zoo_mod

    zoo = zoo_mod.build(Path(tempfile.mkdtemp()), log=lambda m: None)
    raw = yaml.safe_load((ROOT / "configs" / "tiny-llava_w4a16_gptq.yml").read_text())
    raw["model"]["path"] = zoo.models["tiny-llava"]["weights_repo"]
    raw["calib"]["path"] = str(zoo.calib_set)
    raw["eval"]["path"] = str(zoo.eval_set / "data")
    out = Path(tempfile.mkdtemp())
    raw["save"] = {"save_path": str(out), "save_fake": False}
    run(load_config(raw), out, device="cuda" if torch.cuda.is_available() else "cpu")
    for e in read_events(out / "events.jsonl"):
        if e["event"] in ("block", "done"):
            print(json.dumps({k: e[k] for k in e if k in ("event", "i", "n", "peak_gpu_mem_mib", "seconds")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
