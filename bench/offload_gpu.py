"""Quantize a model larger than the GPU memory it may use: decoder blocks offloaded to CPU memory.

Builds a random-weight Llama (default 16 blocks, hidden 2048: about 1.7 GB in float16) with the
demo tokenizer, a text file for calibration and perplexity, then runs GPTQ W4 g128 through
``llmc.runner.run`` three times, each in its own process:

* ``single``: the whole model on GPU 0;
* ``offload``: ``model.offload: true`` while ``torch.cuda.set_per_process_memory_fraction`` caps
  the process at HALF the model's size: the model cannot be on the card, yet it quantizes;
* ``auto``: ``model.device_map: auto`` over every visible GPU (accelerate's balanced map).

Prints per mode: the placement, peak GPU memory per card, wall time and perplexity before and
after quantization (the three must agree). Usage: ``python bench/offload_gpu.py [--layers 16]``.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "wizard" / "demo" / "assets" / "tiny-llava"


def build(root: Path, layers: int, hidden: int) -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(str(TOKENIZER))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 11 // 4,
                      num_hidden_layers=layers, num_attention_heads=hidden // 128, num_key_value_heads=hidden // 128,
                      max_position_embeddings=1024, tie_word_embeddings=False,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = LlamaForCausalLM(cfg).to(torch.float16)
    model.save_pretrained(str(root / "model"))
    tok.save_pretrained(str(root / "model"))
    rng = random.Random(0)
    words = ["red", "green", "blue", "circle", "square", "triangle", "left", "right", "above", "below",
             "the", "is", "of", "a", "there", "how", "many", "one", "two", "three"]
    (root / "text.txt").write_text("\n".join(" ".join(rng.choice(words) for _ in range(60)) for _ in range(600)))
    return sum(p.numel() * p.element_size() for p in model.parameters())


def child(root: Path, mode: str, cap_bytes: int) -> None:
    import torch

    from llmc.config import load_config
    from llmc.progress import read_events
    from llmc.runner import run

    if cap_bytes:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(cap_bytes / total, 0)
    model = {"type": "Llama", "path": str(root / "model"), "torch_dtype": "float16"}
    if mode == "offload":
        model["offload"] = True
    elif mode == "auto":
        model["device_map"] = "auto"
    cfg = load_config({
        "model": model,
        "calib": {"name": "custom_txt", "path": str(root / "text.txt"), "n_samples": 32, "seq_len": 512},
        "eval": {"eval_pos": ["pretrain", "fake_quant"], "type": "ppl", "name": "text", "path": str(root / "text.txt"),
                 "seq_len": 512, "bs": 4, "num_samples": 16, "cache": False},
        "quant": {"method": "GPTQ", "weight": {"bit": 4, "symmetric": True, "group_size": 128},
                  "special": {"static_groups": True, "actorder": True}},
    })
    out = root / f"run-{mode}"
    t = time.time()
    res = run(cfg, out, device="cuda:0" if torch.cuda.is_available() else "cpu")
    ev = read_events(out / "events.jsonl")
    place = next(e for e in ev if e["event"] == "placement")
    print("RESULT " + json.dumps({
        "mode": mode, "placement": place["summary"], "seconds": round(time.time() - t, 1),
        "quantize_s": round(res["timings"]["quantize"], 1),
        "peak_gpu_mem_mib": res.get("peak_gpu_mem_mib"),
        "ppl_float": round(res["evals"]["text"]["pretrain"]["ppl"], 4),
        "ppl_quant": round(res["evals"]["text"]["fake_quant"]["ppl"], 4),
        "cap_mib": round(cap_bytes / 2**20) if cap_bytes else None,
    }), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--child", choices=["single", "offload", "auto"])
    ap.add_argument("--root")
    ap.add_argument("--cap", type=int, default=0)
    ap.add_argument("--modes", default="single,offload,auto", help="comma-separated subset to run")
    a = ap.parse_args()
    if a.child:
        child(Path(a.root), a.child, a.cap)
        return 0
    import torch

    root = Path(tempfile.mkdtemp(prefix="offload-bench-"))
    try:
        size = build(root, a.layers, a.hidden)
        print(f"model: {a.layers} blocks, hidden {a.hidden}, {size / 2**20:.0f} MiB float16; "
              f"{torch.cuda.device_count()} GPU(s)" + (f": {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""),
              flush=True)
        gpu = torch.cuda.is_available()
        modes = [("single", 0), ("offload", size // 2), ("auto", 0)] if gpu else [("single", 0), ("offload", 0)]
        for mode, cap in modes:
            if mode not in a.modes.split(","):
                continue
            r = subprocess.run([sys.executable, __file__, "--child", mode, "--root", str(root), "--cap", str(cap)],
                               capture_output=True, text=True)
            lines = [x[7:] for x in r.stdout.splitlines() if x.startswith("RESULT ")]
            print(lines[0] if lines else f"{mode}: FAILED rc={r.returncode}\n{r.stderr[-3000:]}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
