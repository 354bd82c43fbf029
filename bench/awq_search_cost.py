"""What AWQ's ``search: output`` costs against the block search, by model depth.

Builds random-weight Llama models (``bench/offload_gpu.py``'s: hidden 512 by default, run in
float32) with 2, 8 and 16 decoder blocks, then quantizes each with AWQ W4 g128 twice through
``llmc.runner.run``: ``search: block`` and ``search: output`` (both ``loss_tokens: last``, 16
calibration lines of about 110 tokens, one per batch). ``search: output`` runs the rest of the
model for every scale candidate, so its cost grows with the square of the depth. Prints the
quantization time of each and their ratio.

    python bench/awq_search_cost.py [--layers 2 8 16] [--hidden 512] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from offload_gpu import build  # noqa: E402  (the same random-weight Llama and text file)


def quantize_seconds(root: Path, search: str, device: str) -> float:
    from llmc.config import load_config
    from llmc.progress import Progress
    from llmc.runner import run

    cfg = load_config({
        "model": {"type": "Llama", "path": str(root / "model"), "torch_dtype": "float32"},
        "calib": {"name": "custom_txt", "path": str(root / "text.txt"), "n_samples": 16, "seq_len": 128, "bs": 1},
        "quant": {"method": "Awq", "weight": {"bit": 4, "symmetric": False, "group_size": 128},
                  "special": {"search": search, "loss_tokens": "last", "n_grid": 20}},
    })
    t = time.time()
    out = root / f"run-{search}"
    res = run(cfg, out, device=device, progress=Progress(out, echo=None))
    return res.get("timings", {}).get("quantize", time.time() - t)


def main(argv=None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", nargs="+", type=int, default=[2, 8, 16])
    ap.add_argument("--hidden", type=int, default=512, help="a multiple of 128")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    where = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print(f"AWQ W4 g128, hidden {args.hidden}, 16 calibration lines, on {args.device} ({where})")
    print("| blocks | search: block s | search: output s | ratio |")
    print("|---|---|---|---|")
    for layers in args.layers:
        with tempfile.TemporaryDirectory(prefix="awq-cost-") as tmp:
            root = Path(tmp)
            build(root, layers, args.hidden)
            block = quantize_seconds(root, "block", args.device)
            output = quantize_seconds(root, "output", args.device)
            print(f"| {layers} | {block:.1f} | {output:.1f} | {output / block:.1f}x |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
