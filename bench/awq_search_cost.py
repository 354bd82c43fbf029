"""What AWQ's ``search: output`` costs against the block search, by model depth.

Builds random-weight Llama models (hidden 256 by default, float32) with 2, 8 and 16 decoder blocks
and the demo tokenizer, then quantizes each with AWQ W4 g128 twice through ``llmc.runner.run``:
``search: block`` and ``search: output`` (both ``loss_tokens: last``, 16 calibration sequences of
128 tokens, one per batch). ``search: output`` runs the rest of the model for every scale
candidate, so its cost grows with the square of the depth. Prints the quantization time of each
and their ratio.

    python bench/awq_search_cost.py [--layers 2 8 16] [--hidden 256] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TOKENIZER = ROOT / "wizard" / "demo" / "assets" / "tiny-llava"


def build(root: Path, layers: int, hidden: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(str(TOKENIZER))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 4,
                      num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64,
                      max_position_embeddings=512, tie_word_embeddings=False,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(str(root / "model"))
    tok.save_pretrained(str(root / "model"))
    rng = random.Random(0)
    words = ["red", "green", "blue", "circle", "square", "triangle", "left", "right", "above", "below",
             "the", "is", "of", "a", "there", "how", "many", "one", "two", "three"]
    (root / "text.txt").write_text("\n".join(" ".join(rng.choice(words) for _ in range(60)) for _ in range(200)))


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
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    where = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print(f"AWQ W4 g128, hidden {args.hidden}, 16 x 128-token calibration sequences, on {args.device} ({where})")
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
