"""Our engine against llm-compressor and auto-round on one GPU: the same model, calibration data and
metrics code.

The random-weight Llama of ``bench/gpu_quant_speed.py`` (``--shape 3b``, ``8b`` or ``tiny``) is
built once, with random token ids as calibration data (``--n-calib`` x ``--seq``) and held-out data
(32 x ``--seq``). A first subprocess runs the float model on the held-out data and saves its
reference outputs (next-token log-probabilities of the last 32 positions, residual stream after
blocks 1, depth/4 and depth/2) with the token ids to one file. Then, for each method (``gptq``,
``rtn``, ``awq``) and each tool, one subprocess (so peak GPU memory is per tool) loads the model,
quantizes it W4A16 group 128 symmetric, and measures with this file's code:

* quantize seconds, total seconds (load + quantize), peak GPU memory (load + quantize);
* per-layer loss ``||W X - Q X||^2 / ||W X||^2`` on the calibration inputs ``X`` each Linear
  receives in the float model, ``Q`` the weight the tool leaves (llm-compressor's: its weight
  fake-quantized with its stored scale, as its forward does), mean over blocks per layer type.
  For AWQ, ``Q`` is taken back to the float model's coordinates: its columns are multiplied by
  the ratio of the tool's input to the float input (norm weights for q/k/v/gate/up, the rescaled
  rows of v / up for o / down) and its rows divided by the ratio of its output rows to the float
  ones (least squares per row, used only where the rows were visibly rescaled), so a scaling
  that AWQ folds into the neighbouring op counts as exact;
* residual-stream relative error ``||h_q - h|| / ||h||`` after blocks 1, depth/4, depth/2 and the
  KL divergence of the quantized model's next-token distribution from the float one's, both on
  the held-out data.

Ours: the engine's ``Llama`` adapter; GPTQ block by block with act-order and static groups (what
llm-compressor's GPTQModifier does by default), RTN without data, AWQ with its defaults.
``gptq-mse`` and ``rtn-mse``: the weights' ranges from an MSE search, ours ``calib_algo: mse``,
llm-compressor's the same preset with ``observer: memoryless_mse``. ``-onepass`` (``gptq-onepass``,
``gptq-mse-onepass``): ours with ``true_sequential: false`` (every Hessian from the float block, as
llm-compressor takes them); llm-compressor's run is the same as without it.
``learned``: the registry's LearnedRound at its defaults (``learned-mse``: ranges from the MSE search;
``-rtninit``: the rounding starts from round-to-nearest instead of GPTQ's codes), against auto-round's
``AutoRound`` at its defaults (tool ``autoround``, which runs only this method). ``--formats 4:128,3:128,2:64``
runs each bits:group pair (symmetric weights; llm-compressor's preset is W4 g128 only).
llm-compressor: ``oneshot`` with ``GPTQModifier`` / ``QuantizationModifier`` (no data) /
``AWQModifier`` followed by ``QuantizationModifier`` (its AWQ is a transform only), each with
``targets="Linear", scheme="W4A16", ignore=["lm_head"]``, on a ``datasets.Dataset`` of the same
token ids, its other settings left at their defaults. Prints one markdown table.

    python bench/vs_llmcompressor.py --shape 3b [--methods gptq,rtn,awq] [--tools ours,llmcompressor]
        [--out DIR]     # also writes DIR/vs_llmcompressor.md and DIR/vs_llmcompressor.json

llm-compressor on a machine without a registry (python 3.12 with torch and transformers): fetch the
wheels elsewhere into the git-ignored ``bench/wheels-gpu`` (``pip download --no-deps --python-version
3.12 --only-binary=:all: --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 -d
bench/wheels-gpu llmcompressor==0.14.0.1 compressed-tensors==0.19.0 auto-round==0.15.1 py-cpuinfo loguru datasets
pydantic pydantic-core annotated-types typing-inspection typing-extensions dill multiprocess xxhash``;
datasets 5.x needs pyarrow >= 24, 4.8.4 >= 21), then there ``pip install --no-index --no-deps --target
/tmp/site bench/wheels-gpu/*.whl`` and ``PYTHONPATH=/tmp/site``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from gpu_quant_speed import ROOT, SHAPES, build, tail_logprobs  # noqa: E402  (also puts ROOT on sys.path)

TOOLS = ("ours", "llmcompressor", "autoround")
METHODS = ("gptq", "rtn", "awq", "gptq-mse", "rtn-mse", "gptq-onepass", "gptq-mse-onepass", "learned", "learned-mse",
           "learned-mse-rtninit")
#: what each tool runs: auto-round only its own method (SignRound), which ``learned`` compares with
TOOL_METHODS = {"autoround": ("learned",)}
TYPES = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o", "gate_proj": "gate", "up_proj": "up",
         "down_proj": "down"}
N_HELD = 32
GROUP = 128


def checkpoints(depth: int) -> list[int]:
    """Blocks after which the residual stream is compared: 1, depth/4, depth/2 (1-based)."""
    return sorted({max(1, b) for b in (1, depth // 4, depth // 2)})


def device() -> str:
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


@__import__("torch").no_grad()
def held_out(model, held, blocks: list[int]):
    """Tail log-probs on ``held`` and the residual stream after each of ``blocks`` (bf16, CPU)."""
    import torch

    got: dict[int, list] = {b: [] for b in blocks}
    layers = model.model.layers

    def keep(b):
        return lambda m, i, o: got[b].append((o[0] if isinstance(o, tuple) else o).to("cpu", torch.bfloat16))

    hooks = [layers[b - 1].register_forward_hook(keep(b)) for b in blocks]
    try:
        logp = tail_logprobs(model, held)
    finally:
        for h in hooks:
            h.remove()
    return logp, {b: torch.cat(v) for b, v in got.items()}


# ----------------------------------------------------------------------------- the two tools
def run_ours(path: Path, method: str, calib, dev: str, bits: int, group: int):
    from llmc.models.llama import Llama
    from llmc.quant.blockwise import quantize_blockwise
    from llmc.quant.datafree import quantize_without_data
    from llmc.quant.methods import RTN, Awq, Gptq, registry
    from llmc.quant.quantizer import WeightQuantConfig

    method, *opts = method.split("-")
    wcfg = WeightQuantConfig(bit=bits, symmetric=True, group_size=group, calib_algo="mse" if "mse" in opts else "minmax")
    t = t0 = time.time()
    adapter = Llama(path, "bfloat16", dev)
    sync()
    load_s = time.time() - t
    batches = [{"input_ids": calib[i:i + 1].to(dev)} for i in range(calib.shape[0])]
    t = time.time()
    if method == "rtn":
        quantize_without_data(adapter, RTN(wcfg))
    elif method == "gptq":
        quantize_blockwise(adapter, Gptq(wcfg, {"actorder": True, "static_groups": True,
                                                "true_sequential": "onepass" not in opts}), batches)
    elif method == "learned":  # the registry's rounding optimizer, at its defaults
        learned = registry()["LearnedRound"].impl
        quantize_blockwise(adapter, learned(wcfg, {"init": "rtn"} if "rtninit" in opts else {}), batches)
    else:
        quantize_blockwise(adapter, Awq(wcfg, {}), batches)
    sync()
    return adapter.mm_model, load_s, time.time() - t, time.time() - t0


def run_autoround(path: Path, method: str, calib, dev: str, bits: int, group: int):
    """auto-round's ``AutoRound`` (SignRound) at its default settings (200 steps, batches of 8, learned
    ranges, bf16 autocast), on the same token ids; its quantize() leaves fake-quantized weights."""
    import torch
    from auto_round import AutoRound
    from auto_round.schemes import QuantizationScheme
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t = t0 = time.time()
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.bfloat16, device_map=dev)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    sync()
    load_s = time.time() - t
    t = time.time()
    ar = AutoRound(model, tokenizer, scheme=QuantizationScheme(bits=bits, group_size=group, sym=True),
                   dataset=[calib[i:i + 1] for i in range(calib.shape[0])], nsamples=calib.shape[0],
                   seqlen=calib.shape[1], device_map=0 if dev.startswith("cuda") else "cpu")
    model, _ = ar.quantize()
    sync()
    return model, load_s, time.time() - t, time.time() - t0


def run_llmcompressor(path: Path, method: str, calib, dev: str, bits: int, group: int):
    import torch
    from compressed_tensors.quantization.lifecycle.forward import forward_quantize
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
    from llmcompressor.modifiers.transform.awq import AWQModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t = t0 = time.time()
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.bfloat16, device_map=dev)
    tokenizer = AutoTokenizer.from_pretrained(str(path))  # oneshot wants one with a dataset
    sync()
    load_s = time.time() - t
    method, *opts = method.split("-")  # "onepass": what llm-compressor's GPTQ always does
    if (bits, group) != (4, 128):
        raise SystemExit("llm-compressor's runs here use its W4A16 preset: --bits 4 --group 128")
    kw = dict(targets="Linear", scheme="W4A16", ignore=["lm_head"])
    if "mse" in opts:  # the same preset with its MSE range search for the weights
        from compressed_tensors.quantization import preset_name_to_scheme

        scheme = preset_name_to_scheme("W4A16", ["Linear"])
        scheme.weights.observer = "memoryless_mse"
        kw = dict(config_groups={"group_0": scheme}, ignore=["lm_head"])
    recipe = {"gptq": [GPTQModifier(**kw)], "rtn": [QuantizationModifier(**kw)],
              "awq": [AWQModifier(), QuantizationModifier(**kw)]}[method]  # AWQ: scales, then RTN
    data = {}
    if method != "rtn":
        ds = Dataset.from_dict({"input_ids": calib.tolist(), "attention_mask": torch.ones_like(calib).tolist()})
        data = dict(dataset=ds, num_calibration_samples=calib.shape[0], max_seq_length=calib.shape[1])
    t = time.time()
    model = oneshot(model=model, tokenizer=tokenizer, recipe=recipe, **data) or model
    sync()
    q_s, total_s = time.time() - t, time.time() - t0
    # leave a plain model: each weight replaced by what the quantized forward uses
    with torch.no_grad():
        for m in model.modules():
            scheme = getattr(m, "quantization_scheme", None)
            if scheme is not None and scheme.weights is not None and hasattr(m, "weight_scale"):
                m.weight.data = forward_quantize(m, m.weight.data, "weight", scheme.weights)
                m.quantization_enabled = False
    return model, load_s, q_s, total_s


# ------------------------------------------------------------------------------- metrics
def _row_ratio(w_float, w_tool):
    """Per-row least-squares ratio of the tool's rows to the float rows (1 where not rescaled)."""
    import torch

    r = (w_float * w_tool).sum(1) / (w_float * w_float).sum(1).clamp(min=1e-30)
    return r if float((r - 1).abs().median()) > 0.02 else torch.ones_like(r)


@__import__("torch").no_grad()
def awq_folds(fmodel, qmodel) -> dict[str, tuple]:
    """For AWQ: per Linear, ``(col, row)`` with the tool's weight ``Q`` acting on float inputs
    and outputs as ``Q * col[None, :] / row[:, None]``: ``col`` the ratio of the tool's input to
    the float one (norm weights; for o and down the rescaled rows of v and up), ``row`` the ratio
    of the tool's output rows to the float ones (estimated; 1 where not rescaled)."""
    cfg = fmodel.config
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    out = {}
    for i, (fl, ql) in enumerate(zip(fmodel.model.layers, qmodel.model.layers)):
        p = f"model.layers.{i}."
        cols = {"self_attn.q_proj": ql.input_layernorm.weight.float() / fl.input_layernorm.weight.float(),
                "mlp.gate_proj": ql.post_attention_layernorm.weight.float() / fl.post_attention_layernorm.weight.float()}
        cols["self_attn.k_proj"] = cols["self_attn.v_proj"] = cols["self_attn.q_proj"]
        cols["mlp.up_proj"] = cols["mlp.gate_proj"]
        for n in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj",
                  "self_attn.o_proj", "mlp.down_proj"):
            if n == "self_attn.o_proj":  # o reads v's rows (GQA: each KV head feeds heads // kv heads)
                r = out[p + "self_attn.v_proj"][1]
                if r.numel() != fl.self_attn.o_proj.in_features:
                    r = r.reshape(kv, 1, -1).expand(kv, heads // kv, r.numel() // kv).reshape(-1)
                cols[n] = r
            elif n == "mlp.down_proj":
                cols[n] = out[p + "mlp.up_proj"][1]
            f, q = fl.get_submodule(n).weight.float(), ql.get_submodule(n).weight.float()
            out[p + n] = (cols[n], _row_ratio(f, q * cols[n]))
    return out


@__import__("torch").no_grad()
def layer_losses(fmodel, qmodel, calib, folds: dict | None, bs: int = 8) -> dict[str, float]:
    """Mean over blocks, per layer type, of ``||W X - Q X||^2 / ||W X||^2`` on the float model's
    calibration inputs (``Q`` the tool's weight, mapped by ``folds`` where given: :func:`awq_folds`)."""
    import torch

    qmods = dict(qmodel.named_modules())
    num, den, hooks = {}, {}, []

    def hook(name, q):
        def f(m, inp, out):
            x = inp[0].reshape(-1, m.in_features).float()
            qw = q.weight.float()
            if folds is not None:
                col, row = folds[name]
                qw = qw * col.to(x.device)[None, :] / row.to(x.device)[:, None]
            d = x @ (m.weight.float() - qw).t()
            num[name] = num.get(name, 0.0) + float(d.pow(2).sum())
            den[name] = den.get(name, 0.0) + float(out.float().pow(2).sum())
        return f

    for name, m in fmodel.named_modules():
        if name.startswith("model.layers.") and name.rsplit(".", 1)[-1] in TYPES:
            hooks.append(m.register_forward_hook(hook(name, qmods[name])))
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True  # metrics only: the quantization is done
    try:
        dev = next(fmodel.parameters()).device
        for i in range(0, calib.shape[0], bs):
            fmodel.model(input_ids=calib[i:i + bs].to(dev))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        for h in hooks:
            h.remove()
    per_type: dict[str, list[float]] = {}
    for name in num:
        per_type.setdefault(TYPES[name.rsplit(".", 1)[-1]], []).append(num[name] / den[name])
    return {t: sum(v) / len(v) for t, v in per_type.items()}


# ------------------------------------------------------------------------------- stages
def stage_ref(work: Path, a) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    t = time.time()
    mib = build(work / "model", a.shape, a.layers)
    vocab = SHAPES[a.shape]["vocab_size"]
    g = torch.Generator().manual_seed(1)
    calib = torch.randint(0, vocab, (a.n_calib, a.seq), generator=g)
    held = torch.randint(0, vocab, (N_HELD, a.seq), generator=g)
    dev = device()
    model = AutoModelForCausalLM.from_pretrained(str(work / "model"), dtype=torch.bfloat16).to(dev).eval()
    blocks = checkpoints(model.config.num_hidden_layers)
    logp, hidden = held_out(model, held.to(dev), blocks)
    torch.save({"calib": calib, "held": held, "logp": logp, "hidden": hidden, "mib": mib}, work / "ref.pt")
    print(f"reference: model {a.shape} {mib:,.0f} MiB bf16, built and run in {time.time() - t:.1f}s", flush=True)


def stage_run(work: Path, tool: str, method: str, bits: int = 4, group: int = GROUP) -> None:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    dev = device()
    ref = torch.load(work / "ref.pt")
    if dev.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    run = {"ours": run_ours, "llmcompressor": run_llmcompressor, "autoround": run_autoround}[tool]
    model, load_s, q_s, total_s = run(work / "model", method, ref["calib"], dev, bits, group)  # imports not timed
    peak = torch.cuda.max_memory_allocated() / 2**20 if dev.startswith("cuda") else 0.0
    model.eval()
    logp, hidden = held_out(model, ref["held"].to(dev), sorted(ref["hidden"]))
    kl = float(torch.nn.functional.kl_div(logp, ref["logp"], log_target=True, reduction="none").sum(-1).mean())
    resid = {b: float((hidden[b].float() - h.float()).norm() / h.float().norm()) for b, h in ref["hidden"].items()}
    fmodel = AutoModelForCausalLM.from_pretrained(str(work / "model"), dtype=torch.bfloat16).to(dev).eval()
    losses = layer_losses(fmodel, model, ref["calib"], awq_folds(fmodel, model) if method == "awq" else None)
    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    if tool == "llmcompressor":
        import compressed_tensors
        import llmcompressor
        versions |= {"llmcompressor": llmcompressor.__version__, "compressed-tensors": compressed_tensors.__version__}
    if tool == "autoround":
        import auto_round
        versions |= {"auto-round": auto_round.__version__}
    res = dict(tool=tool, method=method, bits=bits, group=group, load_s=load_s, quantize_s=q_s, total_s=total_s, peak_mib=peak, kl=kl,
               resid=resid, layer_loss=losses, versions=versions,
               device=torch.cuda.get_device_name(0) if dev.startswith("cuda") else "cpu")
    (work / f"result-{tool}-{method}.json").write_text(json.dumps(res, indent=1))
    print(f"{tool} {method}: load {load_s:.1f}s, quantize {q_s:.1f}s, peak {peak:,.0f} MiB, KL {kl:.4f}", flush=True)


def table(results: list[dict], blocks: list[int], depth: int) -> str:
    types = list(TYPES.values())
    names = {b: " = ".join(n for n, v in (("1", 1), ("d/4", depth // 4), ("d/2", depth // 2)) if max(1, v) == b)
             for b in blocks}
    head = (["format", "method", "tool", "load s", "quantize s", "total s", "peak GPU MiB"] + [f"loss {t}" for t in types]
            + [f"resid after {names[b]} ({b})" for b in blocks] + ["held-out KL"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        if "error" in r:
            lines.append(f"| | {r['method']} | {r['tool']} | failed: {r['error']} |")
            continue
        cells = [f"W{r.get('bits', 4)} g{r.get('group', GROUP)}", r["method"], r["tool"], f"{r['load_s']:.1f}", f"{r['quantize_s']:.1f}", f"{r['total_s']:.1f}",
                 f"{r['peak_mib']:,.0f}"] + [f"{r['layer_loss'].get(t, float('nan')):.5f}" for t in types]
        cells += [f"{r['resid'][str(b)]:.4f}" for b in blocks] + [f"{r['kl']:.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=list(SHAPES), default="3b")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--n-calib", type=int, default=128)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--layers", type=int, default=None, help="fewer blocks than the shape has")
    ap.add_argument("--formats", default="4:128", help="bits:group pairs, e.g. 4:128,3:128,2:64 (symmetric)")
    ap.add_argument("--out", type=Path, default=None, help="folder for the table (.md) and the results (.json)")
    ap.add_argument("--stage", choices=("ref", "run"), default=None, help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--tool", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--method", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.stage == "ref":
        stage_ref(a.work, a)
        return 0
    if a.stage == "run":
        bits, group = (int(x) for x in a.formats.split(":"))
        stage_run(a.work, a.tool, a.method, bits, group)
        return 0

    work = Path(tempfile.mkdtemp(prefix="vs-llmcompressor-"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    me = [sys.executable, str(Path(__file__).resolve()), "--work", str(work)]
    dims = ["--shape", a.shape, "--n-calib", str(a.n_calib), "--seq", str(a.seq)]
    dims += ["--layers", str(a.layers)] if a.layers else []
    depth = a.layers or SHAPES[a.shape]["num_hidden_layers"]
    blocks, results = checkpoints(depth), []
    t0 = time.time()
    try:
        subprocess.run(me + ["--stage", "ref"] + dims, env=env, check=True)
        runs = [(fmt, method, tool) for fmt in a.formats.split(",") for method in a.methods.split(",")
                for tool in a.tools.split(",")]
        for fmt, method, tool in runs:
            if tool not in TOOLS or method not in METHODS:
                raise SystemExit(f"unknown tool {tool!r} or method {method!r}")
            if method not in TOOL_METHODS.get(tool, METHODS):
                continue
            rc = subprocess.run(me + ["--stage", "run", "--tool", tool, "--method", method, "--formats", fmt],
                                env=env).returncode
            f = work / f"result-{tool}-{method}.json"
            results.append(json.loads(f.read_text()) if rc == 0 and f.exists()
                           else {"tool": tool, "method": method, "error": f"exit status {rc}"})
            f.unlink(missing_ok=True)
            md = table(results, blocks, depth)
            if a.out:  # written after every run, so a cut-off run still leaves what it measured
                a.out.mkdir(parents=True, exist_ok=True)
                (a.out / "vs_llmcompressor.md").write_text(md + "\n")
                (a.out / "vs_llmcompressor.json").write_text(json.dumps(results, indent=1))
        ok = [r for r in results if "error" not in r]
        versions = {k: v for r in ok for k, v in r["versions"].items()}
        print(f"\n{a.shape} shape, {depth} blocks, {a.n_calib} x {a.seq} calibration, {N_HELD} x {a.seq} held out, "
              f"symmetric weights ({a.formats}); {ok[0]['device'] if ok else '?'}; "
              + ", ".join(f"{k} {v}" for k, v in versions.items()) + f"; {time.time() - t0:.0f}s in all\n")
        print(table(results, blocks, depth))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
