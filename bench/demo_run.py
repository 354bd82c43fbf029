"""Time a full demo run per model: original eval + W4A16 quantization + fake-quant eval.

Runs the presets' settings (512-image eval set, 64 calibration samples, group 32) through
``llmc.runner.run`` and prints the wall time of each phase and the whole run.

    python bench/demo_run.py [--method Awq] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "wizard" / "demo" / "assets"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", default="Awq", choices=["RTN", "Awq", "GPTQ"])
    ap.add_argument("--models", nargs="+", default=["tiny-llava", "tiny-vila"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--cache", type=Path, default=None)
    args = ap.parse_args(argv)

    from llmc.config import load_config
    from llmc.progress import Progress
    from llmc.runner import run
    from wizard.demo import zoo as zoo_mod

    zoo = zoo_mod.build(args.cache, log=lambda m: print(f"[zoo] {m}", file=sys.stderr))
    sys.path.insert(0, str(ASSETS / "tiny-vila-code"))
    os.environ["LLMC_CACHE"] = tempfile.mkdtemp(prefix="llmc-bench-cache-")  # measure the original eval too
    for name in args.models:
        preset = ROOT / "configs" / f"{name}_w4a16_{args.method.lower()}.yml"
        import yaml

        raw = yaml.safe_load(preset.read_text())
        raw["model"]["path"] = zoo.models[name]["weights_repo"]
        raw["calib"]["path"] = str(zoo.calib_set)
        raw["eval"]["path"] = str(zoo.eval_set / "data")
        raw["save"] = {"save_path": tempfile.mkdtemp(prefix="llmc-bench-"), "save_fake": False, "save_trans": False}
        cfg = load_config(raw)
        t = time.time()
        res = run(cfg, Path(raw["save"]["save_path"]), device=args.device, progress=Progress(None, echo=None))
        total = time.time() - t
        ev = res["evals"]["mme"]
        timings = ", ".join(f"{k} {v:.1f}s" for k, v in res["timings"].items() if k != "total")
        print(f"{name} {args.method} W4A16 g32 on {args.device} ({torch.cuda.get_device_name() if args.device == 'cuda' else 'CPU'}): "
              f"total {total:.1f}s [{timings}]; MME float {ev['pretrain']['total']:.1f} -> "
              f"W4 {ev['fake_quant']['total']:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
