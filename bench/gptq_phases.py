"""Where GPTQ's time goes on one GPU: the engine's block-by-block GPTQ, phase by phase.

Builds the random-weight Llama of ``bench/gpu_quant_speed.py`` (``--shape 3b`` or ``8b``), quantizes
it W4A16 g128 symmetric with act-order and static groups (the setting of
``bench/vs_llmcompressor.py``) on ``--n-calib`` x ``--seq`` random token ids, and prints the wall
time spent in each phase of :func:`llmc.quant.blockwise.quantize_blockwise`. Each timed function is
wrapped with a device synchronisation on both sides, so the phases (each without the timed phases it calls) add up to the total (the
synchronisations cost a little overlap: the total is also printed without them, from a second run
unless ``--once``). ``--profile`` adds torch.profiler's top operators over the first blocks.

    python bench/gptq_phases.py --shape 3b [--layers N] [--profile] [--once] [--onepass] [--mse]

``--onepass`` takes every Hessian from the float block (``true_sequential: false``);
``--mse`` searches each group's range (``calib_algo: mse``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from gpu_quant_speed import SHAPES, build  # noqa: E402  (also puts the repository on sys.path)

TIMED = {  # (module, attribute) -> phase name
    ("llmc.quant.blockwise", "capture_block_inputs"): "capture inputs",
    ("llmc.quant.blockwise", "run_block"): "block forward (float / quantized outputs)",
    ("llmc.quant.collect", "_forward_until"): "block forward (collect subset inputs)",
    ("llmc.quant.blockwise", "relative_error"): "per-layer error",
    ("llmc.quant.blockwise", "_advance"): "quantized block forward + block error",
    ("llmc.quant.coalesce", "coalesce"): "coalesce",
}
METHODS = {"add_batch": "Hessian (add_batch)", "quantize_layers_": "GPTQ solve (factor + kernel)"}


def sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def instrument(spent: dict, calls: dict, peaks: dict) -> None:
    import importlib

    import torch

    from llmc.quant.gptq import GPTQ

    cuda = torch.cuda.is_available()
    # per running timed call: [time of the timed calls nested in it, their peak memory]
    stack = [[0.0, 0]]

    def wrap(fn, phase):
        def timed(*a, **k):
            sync()
            if cuda:  # the peak so far belongs to the caller; this call's own is measured from here
                stack[-1][1] = max(stack[-1][1], torch.cuda.max_memory_allocated())
                torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            stack.append([0.0, 0])
            try:
                return fn(*a, **k)
            finally:
                sync()
                took = time.perf_counter() - t
                nested, nested_peak = stack.pop()
                spent[phase] += took - nested
                stack[-1][0] += took
                calls[phase] += 1
                if cuda:
                    peak = max(torch.cuda.max_memory_allocated(), nested_peak)
                    peaks[phase] = max(peaks[phase], peak)
                    stack[-1][1] = max(stack[-1][1], peak)
        return timed

    for (mod, attr), phase in TIMED.items():
        m = importlib.import_module(mod)
        setattr(m, attr, wrap(getattr(m, attr), phase))
    for attr, phase in METHODS.items():
        setattr(GPTQ, attr, wrap(getattr(GPTQ, attr), phase))


def quantize(path: Path, calib, dev: str, onepass: bool = False, mse: bool = False, peak: bool = True) -> float:
    """Seconds to quantize; ``peak``: also print the peak memory (not in the instrumented run,
    whose timed calls reset the peak: there the phases' peaks are printed)."""
    import torch

    from llmc.models.llama import Llama
    from llmc.quant.blockwise import quantize_blockwise
    from llmc.quant.methods import Gptq
    from llmc.quant.quantizer import WeightQuantConfig

    adapter = Llama(path, "bfloat16", dev)
    if dev != "cpu":
        torch.cuda.reset_peak_memory_stats()
    batches = [{"input_ids": calib[i:i + 1].to(dev)} for i in range(calib.shape[0])]
    sync()
    t = time.perf_counter()
    wcfg = WeightQuantConfig(bit=4, symmetric=True, group_size=128, calib_algo="mse" if mse else "minmax")
    quantize_blockwise(adapter, Gptq(wcfg, {"actorder": True, "static_groups": True, "true_sequential": not onepass}),
                       batches)
    sync()
    seconds = time.perf_counter() - t
    if dev != "cpu" and peak:
        print(f"  peak GPU memory (load + quantize): {torch.cuda.max_memory_allocated() / 2**20:,.0f} MiB")
    del adapter
    if dev != "cpu":
        torch.cuda.empty_cache()
    return seconds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=list(SHAPES), default="3b")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--n-calib", type=int, default=128)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--once", action="store_true", help="skip the run without synchronisations")
    ap.add_argument("--onepass", action="store_true", help="true_sequential: false")
    ap.add_argument("--mse", action="store_true", help="calib_algo: mse")
    a = ap.parse_args(argv)
    import torch

    dev = "cuda:0" if torch.cuda.is_available() else "cpu"
    work = Path(tempfile.mkdtemp(prefix="gptq-phases-"))
    build(work / "model", a.shape, a.layers)
    vocab = SHAPES[a.shape]["vocab_size"]
    calib = torch.randint(0, vocab, (a.n_calib, a.seq), generator=torch.Generator().manual_seed(1))
    def run(peak: bool = True) -> float:
        return quantize(work / "model", calib, dev, a.onepass, a.mse, peak)

    if not a.once:
        print(f"plain run (first, Triton compiles included): {run():.2f} s", flush=True)
        print(f"plain run (second): {run():.2f} s", flush=True)
    spent, calls, peaks = defaultdict(float), defaultdict(int), defaultdict(int)
    instrument(spent, calls, peaks)
    total = run(peak=False)
    print(f"\ninstrumented run: {total:.2f} s ({a.shape}, {a.layers or SHAPES[a.shape]['num_hidden_layers']} blocks, "
          f"{a.n_calib} x {a.seq}, {torch.cuda.get_device_name(0) if dev != 'cpu' else 'cpu'})")
    print("| phase | s | calls | peak GPU MiB during it |\n|---|---|---|---|")
    for phase, s in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"| {phase} | {s:.2f} | {calls[phase]} | {peaks[phase] / 2**20:,.0f} |")
    print(f"| other (hooks, sampling, copies, Python) | {total - sum(spent.values()):.2f} | | |")
    if dev != "cpu":
        print(f"peak GPU memory (quantize, the largest phase's): {max(peaks.values()) / 2**20:,.0f} MiB")
    if a.profile:
        from torch.profiler import ProfilerActivity, profile

        build(work / "small", a.shape, 2)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            quantize(work / "small", calib, dev)
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25))
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
