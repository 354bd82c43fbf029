"""Quantization quality on the demo models: MME-style score and answer-token KL vs float.

For each demo model and each of W4/W3/W2 (A16, group 32, asymmetric) × RTN/AWQ/GPTQ: quantize
with the engine's blockwise pipeline on the calibration split, evaluate on the 512-image
evaluation set through lmms-eval, and measure the mean KL divergence of the answer-token
distribution from the float model's (×1e3). Prints a markdown table (and writes it with --out).

    python bench/quant_table.py [--models tiny-llava tiny-vila] [--bits 4 3 2] [--out docs/quant_table.md]
    python bench/quant_table.py --bits 3 2 --methods RTN Awq --calib-offset 64 --awq-search block --awq-loss-tokens all
    python bench/quant_table.py --weights tiny-vila=/tmp/tv2 --bits 3 2 --awq-search block --awq-clip-tokens same
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from llmc.data.calib import load_custom_mm
from llmc.eval.mme import load_dataset
from llmc.eval.vqa import VQARequest, evaluate_mme
from llmc.models import get_model_class
from llmc.quant.blockwise import quantize_blockwise
from llmc.quant.methods import METHODS
from llmc.quant.quantizer import WeightQuantConfig

ASSETS = Path(__file__).resolve().parents[1] / "wizard" / "demo" / "assets"
MODELS = {"tiny-llava": ("Llava", ASSETS / "tiny-llava"), "tiny-vila": ("Vila", ASSETS / "tiny-vila")}
# Awq as the demo presets run it: the scale search fits the model's answers (the KL divergence
# from the float model's at each calibration prompt's last position, what `loss_tokens: auto`
# picks for custom_mm), the clip search every token, kept only where it lowers that KL too
SPECIAL = {"RTN": {}, "Awq": {"trans": True, "weight_clip": True, "n_grid": 20, "loss_tokens": "last",
                              "search": "output", "clip_tokens": "all"},
           "GPTQ": {"actorder": True, "static_groups": True, "percdamp": 0.01, "blocksize": 128}}


def answer_logits(adapter, requests, bs=64) -> torch.Tensor:
    return torch.cat([adapter.answer_logits(requests[i:i + bs]) for i in range(0, len(requests), bs)])


def kl_x1e3(p_logits: torch.Tensor, q_logits: torch.Tensor) -> float:
    lp = torch.log_softmax(p_logits.float(), -1)
    lq = torch.log_softmax(q_logits.float(), -1)
    return float((lp.exp() * (lp - lq)).sum(-1).mean()) * 1e3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--bits", nargs="+", type=int, default=[4, 3, 2])
    ap.add_argument("--methods", nargs="+", default=["RTN", "Awq", "GPTQ"], help="any of the registry (llmc.quant.methods)")
    ap.add_argument("--n-calib", type=int, default=64)
    ap.add_argument("--calib-offset", type=int, default=0, help="skip this many calibration samples first")
    ap.add_argument("--awq-loss-tokens", choices=["all", "last"], default=SPECIAL["Awq"]["loss_tokens"])
    ap.add_argument("--awq-clip-tokens", choices=["same", "all", "last"], default=SPECIAL["Awq"]["clip_tokens"])
    ap.add_argument("--awq-search", choices=["block", "layer", "output"], default=SPECIAL["Awq"]["search"])
    ap.add_argument("--weights", nargs="+", default=[], metavar="NAME=PATH",
                    help="other weights for a demo model (e.g. a retrained one)")
    ap.add_argument("--group-size", type=int, default=32)
    ap.add_argument("--cache", type=Path, default=None, help="demo zoo cache (default: the usual one)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    from wizard.demo import zoo as zoo_mod

    zoo = zoo_mod.build(args.cache, log=lambda m: print(f"[zoo] {m}", file=sys.stderr))
    sys.path.insert(0, str(ASSETS / "tiny-vila-code"))  # tiny-vila's package, as the zoo publishes it
    data = zoo.eval_set / "data"
    rows = [r for r in load_dataset(data)]
    requests = [VQARequest(r["question"], [r["image"]], {"max_new_tokens": 8}) for r in rows]
    lines = ["| model | method | bits | existence | count | color | position | total | % of float | KL×1e3 | quantize s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    paths = {name: path for name, (_, path) in MODELS.items()}
    for w in args.weights:
        name, _, path = w.partition("=")
        if name not in MODELS or not path:
            raise SystemExit(f"--weights {w!r}: expected NAME=PATH with NAME one of {', '.join(MODELS)}")
        paths[name] = Path(path)
    for name in args.models:
        mtype, path = MODELS[name][0], paths[name]
        cls = get_model_class(mtype)
        fl = cls(path, "float32", args.device)
        f_scores = evaluate_mme(fl.answer, data, batch_size=64).scores
        f_logits = answer_logits(fl, requests)
        cats = f_scores.categories
        lines.append(f"| {name} | float | 16 | {cats['existence']:.1f} | {cats['count']:.1f} | {cats['color']:.1f} | "
                     f"{cats['position']:.1f} | {f_scores.total:.1f} | 100.0 | 0 | - |")
        print(lines[-1], flush=True)
        for bit in args.bits:
            for method in args.methods:
                torch.manual_seed(0)
                m = cls(path, "float32", args.device)
                samples = load_custom_mm(zoo.calib_set, args.calib_offset + args.n_calib)[args.calib_offset:]
                calib = [m.batch_process([s]) for s in samples]
                t = time.time()
                wcfg = WeightQuantConfig(bit=bit, symmetric=False, granularity="per_group", group_size=args.group_size)
                awq = {"loss_tokens": args.awq_loss_tokens, "clip_tokens": args.awq_clip_tokens, "search": args.awq_search}
                special = dict(SPECIAL.get(method, {}), **(awq if method == "Awq" else {}))
                quantize_blockwise(m, METHODS[method](wcfg, special), calib, device=args.device)
                dt = time.time() - t
                s = evaluate_mme(m.answer, data, batch_size=64).scores
                kl = kl_x1e3(f_logits, answer_logits(m, requests))
                c = s.categories
                lines.append(f"| {name} | {method} | {bit} | {c['existence']:.1f} | {c['count']:.1f} | {c['color']:.1f} | "
                             f"{c['position']:.1f} | {s.total:.1f} | {100 * s.total / f_scores.total:.1f} | {kl:.2f} | {dt:.1f} |")
                print(lines[-1], flush=True)
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
