"""The engine's quantization speed on one GPU at real scale, method by method.

A random-weight Llama of a 3B shape (hidden 3072, MLP 8192, 28 blocks, 24 heads / 8 KV heads,
vocab 32000) or the Llama-3-8B shape (4096, 14336, 32, 32 / 8, 128256) in bfloat16, random token
ids as calibration data (``--n-calib`` x ``--seq``, one sequence per forward pass as the engine's
text calibration runs) and held-out data (32 x ``--seq``), W4A16 group 128, asymmetric. Each method
loads the model afresh through the engine's ``Llama`` adapter and quantizes it in place:

* ``rtn-free``: RTN without data (:mod:`llmc.quant.datafree`, what a config without ``calib`` runs);
* ``rtn``: RTN block by block on the calibration data (what measures per-block errors);
* ``gptq``: GPTQ block by block (the engine's defaults).

Prints one table: load s, quantize s, peak GPU MiB, and the KL divergence of the quantized model's
next-token distribution from the float model's on the held-out data (last 32 positions of each
sequence). Usage: ``python bench/gpu_quant_speed.py --shape 3b [--methods rtn-free,rtn,gptq]``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TOKENIZER = ROOT / "wizard" / "demo" / "assets" / "tiny-llava"
SHAPES = {
    "3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
               num_key_value_heads=8, vocab_size=32000),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256),
    "tiny": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1000),
}
TAIL = 32  # positions of each held-out sequence whose distributions are compared


def build(path: Path, shape: str, layers: int | None = None) -> float:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    dims = {**SHAPES[shape], **({"num_hidden_layers": layers} if layers else {})}
    cfg = LlamaConfig(**dims, max_position_embeddings=4096, tie_word_embeddings=False)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(str(path))
    PreTrainedTokenizerFast.from_pretrained(str(TOKENIZER)).save_pretrained(str(path))
    size = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    del model
    return size


@__import__("torch").no_grad()
def tail_logprobs(model, data, bs: int = 4):
    import torch

    out = []
    for i in range(0, data.shape[0], bs):
        logits = model(input_ids=data[i:i + bs]).logits[:, -TAIL:].float()
        out.append(torch.log_softmax(logits, -1).cpu())
    return torch.cat(out)


def graph_check(dev: str) -> str:
    """GPTQ of one random 3072-wide layer with and without CUDA graphs: the two must agree."""
    import os

    import torch

    from llmc.quant.gptq import GptqSolver
    from llmc.quant.quantizer import WeightQuantConfig

    g = torch.Generator().manual_seed(2)
    w = torch.randn(1024, 3072, generator=g)
    x = (torch.randn(4096, 3072, generator=g) @ torch.randn(3072, 3072, generator=g) * 0.02).to(dev)
    out = []
    for flag in ("0", "1"):
        os.environ["LLMC_GPTQ_GRAPHS"] = flag
        lin = torch.nn.Linear(3072, 1024, bias=False).to(dev)
        lin.weight.data.copy_(w)
        q = GptqSolver(lin)
        q.add_batch(x)
        torch.cuda.synchronize() if dev.startswith("cuda") else None
        t = time.time()
        st = q.quantize_(WeightQuantConfig(bit=4, group_size=128))
        torch.cuda.synchronize() if dev.startswith("cuda") else None
        out.append((lin.weight.data.float().cpu(), st["error"], time.time() - t))
    os.environ.pop("LLMC_GPTQ_GRAPHS")
    (a, ea, ta), (b, eb, tb) = out
    return (f"graph check (1024x3072 layer): max |eager - graphed| {float((a - b).abs().max()):.3g}, "
            f"loss {ea:.6g} vs {eb:.6g}, {ta:.2f}s eager vs {tb:.2f}s graphed (first call captures)")


def main(argv=None) -> int:
    import torch

    from llmc.models.llama import Llama
    from llmc.quant.blockwise import quantize_blockwise
    from llmc.quant.datafree import quantize_without_data
    from llmc.quant.methods import RTN, Gptq
    from llmc.quant.quantizer import WeightQuantConfig

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=list(SHAPES), default="3b")
    ap.add_argument("--methods", default="rtn-free,rtn,gptq")
    ap.add_argument("--n-calib", type=int, default=128)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--layers", type=int, default=None, help="fewer blocks than the shape has (profiling)")
    a = ap.parse_args(argv)
    dev = "cuda:0" if torch.cuda.is_available() else "cpu"
    tmp = Path(tempfile.mkdtemp(prefix="gpu-quant-"))
    try:
        t = time.time()
        mib = build(tmp / "model", a.shape, a.layers)
        print(f"model {a.shape}: {mib:,.0f} MiB bf16, built and saved in {time.time() - t:.1f}s on {dev} "
              f"({torch.cuda.get_device_name(0) if dev.startswith('cuda') else 'cpu'}, torch {torch.__version__})",
              flush=True)
        print(graph_check(dev), flush=True)
        vocab = SHAPES[a.shape]["vocab_size"]
        g = torch.Generator().manual_seed(1)
        calib = torch.randint(0, vocab, (a.n_calib, a.seq), generator=g)
        held = torch.randint(0, vocab, (32, a.seq), generator=g).to(dev)
        ref = None
        rows = []
        wcfg = WeightQuantConfig(bit=4, symmetric=False, group_size=128)
        for name in a.methods.split(","):
            torch.cuda.empty_cache() if dev.startswith("cuda") else None
            t = time.time()
            adapter = Llama(tmp / "model", "bfloat16", dev)
            load_s = time.time() - t
            if ref is None:
                ref = tail_logprobs(adapter.mm_model, held)
            if dev.startswith("cuda"):
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            batches = [{"input_ids": calib[i:i + 1].to(dev)} for i in range(a.n_calib)]
            t = time.time()
            if name == "rtn-free":
                quantize_without_data(adapter, RTN(wcfg))
            elif name == "rtn":
                quantize_blockwise(adapter, RTN(wcfg), batches)
            elif name == "gptq":
                quantize_blockwise(adapter, Gptq(wcfg, {}), batches)
            else:
                raise SystemExit(f"unknown method {name!r}; use rtn-free, rtn or gptq")
            if dev.startswith("cuda"):
                torch.cuda.synchronize()
            q_s = time.time() - t
            peak = torch.cuda.max_memory_allocated() / 2**20 if dev.startswith("cuda") else 0.0
            got = tail_logprobs(adapter.mm_model, held)
            kl = float(torch.nn.functional.kl_div(got, ref, log_target=True, reduction="none").sum(-1).mean())
            rows.append((name, load_s, q_s, peak, kl))
            print(f"{name}: load {load_s:.1f}s, quantize {q_s:.1f}s, peak {peak:,.0f} MiB, held-out KL {kl:.4f}",
                  flush=True)
            del adapter, batches
        print("\n| method | load s | quantize s | peak GPU MiB | held-out KL |\n|---|---|---|---|---|")
        for r in rows:
            print(f"| {r[0]} | {r[1]:.1f} | {r[2]:.1f} | {r[3]:,.0f} | {r[4]:.4f} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
