"""Weight-activation quantization on the demo models: rotation and SmoothQuant.

Rows: SmoothQuant W8A8 vs plain RTN W8A8 (per-channel symmetric int8 weights, per-token int8
activations), and RTN / GPTQ W4A8 and W4A4 (group 32 weights, per-token activations) with and
without QuaRot-style Hadamard rotation first (W4A4 also with the online Hadamard before
down_proj). Each: MME-style score on the 512-image set and
the answer-token KL divergence from the float model (×1e3). Prints a markdown table.

    python bench/act_table.py [--models tiny-llava tiny-vila] [--out docs/act_table.md]
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
from llmc.quant.actquant import ActQuantConfig, attach_act_quant_
from llmc.quant.blockwise import quantize_blockwise
from llmc.quant.methods import METHODS
from llmc.quant.quantizer import WeightQuantConfig
from llmc.quant.rotation import attach_online_hadamard_, rotate_model_

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quant_table import ASSETS, MODELS, SPECIAL, answer_logits, kl_x1e3  # noqa: E402

W8 = WeightQuantConfig(bit=8, symmetric=True, granularity="per_channel", group_size=None)
W4 = WeightQuantConfig(bit=4, symmetric=False, granularity="per_group", group_size=32)
ROWS = [  # label, method, weights, act bits, rotate (False, True or "online"), special
    ("RTN W8A8", "RTN", W8, 8, False, {}),
    ("SmoothQuant W8A8", "SmoothQuant", W8, 8, False, {"alpha": 0.5, "smooth_linear": True}),
    ("RTN W4A8", "RTN", W4, 8, False, {}),
    ("RTN W4A8 + rotation", "RTN", W4, 8, True, {}),
    ("GPTQ W4A8", "GPTQ", W4, 8, False, SPECIAL["GPTQ"]),
    ("GPTQ W4A8 + rotation", "GPTQ", W4, 8, True, SPECIAL["GPTQ"]),
    ("RTN W4A4", "RTN", W4, 4, False, {}),
    ("RTN W4A4 + rotation", "RTN", W4, 4, True, {}),
    ("GPTQ W4A4", "GPTQ", W4, 4, False, SPECIAL["GPTQ"]),
    ("GPTQ W4A4 + rotation", "GPTQ", W4, 4, True, SPECIAL["GPTQ"]),
    ("RTN W4A4 + rotation + online Hadamard", "RTN", W4, 4, "online", {}),
    ("GPTQ W4A4 + rotation + online Hadamard", "GPTQ", W4, 4, "online", SPECIAL["GPTQ"]),
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--n-calib", type=int, default=64)
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    from wizard.demo import zoo as zoo_mod

    zoo = zoo_mod.build(args.cache, log=lambda m: print(f"[zoo] {m}", file=sys.stderr))
    sys.path.insert(0, str(ASSETS / "tiny-vila-code"))
    data = zoo.eval_set / "data"
    requests = [VQARequest(r["question"], [r["image"]], {"max_new_tokens": 8}) for r in load_dataset(data)]
    lines = ["| model | setting | total | % of float | KL×1e3 | seconds |", "|---|---|---|---|---|---|"]
    for name in args.models:
        mtype, path = MODELS[name]
        cls = get_model_class(mtype)
        fl = cls(path, "float32", args.device)
        f_total = evaluate_mme(fl.answer, data, batch_size=64).scores.total
        f_logits = answer_logits(fl, requests)
        lines.append(f"| {name} | float | {f_total:.1f} | 100.0 | 0 | - |")
        print(lines[-1], flush=True)
        for label, method, wcfg, abit, rotate, special in ROWS:
            torch.manual_seed(0)
            t = time.time()
            m = cls(path, "float32", args.device)
            if rotate:
                rotate_model_(m, kind="hadamard", seed=0)
            if rotate == "online":
                attach_online_hadamard_(m, seed=0)
            calib = [m.batch_process([s]) for s in load_custom_mm(zoo.calib_set, args.n_calib)]
            quantize_blockwise(m, METHODS[method](wcfg, special), calib, device=args.device)
            hooks = attach_act_quant_(m, ActQuantConfig(bit=abit, symmetric=True, granularity="per_token"))
            total = evaluate_mme(m.answer, data, batch_size=64).scores.total
            kl = kl_x1e3(f_logits, answer_logits(m, requests))
            hooks.remove()
            lines.append(f"| {name} | {label} | {total:.1f} | {100 * total / f_total:.1f} | {kl:.2f} | "
                         f"{time.time() - t:.1f} |")
            print(lines[-1], flush=True)
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
