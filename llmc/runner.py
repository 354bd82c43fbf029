"""Run a config end to end: load → evaluate original → calibrate → quantize → evaluate → save.

Writes into the run directory: ``config.yml`` (effective), ``run.log``, ``events.jsonl``,
``results.json``, the saved models (``trans/``, ``fake/``, ``vllm/``, ``autoawq/``, under
``save.save_path`` when it differs) and, last, the ``COMPLETE`` marker. The directory is locked
for the whole run, must be empty unless ``overwrite``, and every output is staged and moved into
place (:mod:`llmc.rundir`): a run directory holds a complete run or an incomplete one, never a mix.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
import uuid
from pathlib import Path

import torch

from . import __version__
from .config import Config
from .eval.mme import MMEScores, load_dataset
from .models.placement import place
from .progress import Progress
from .report import format_table
from .quant.blockwise import quantize_blockwise
from .quant.methods import make_method
from .rundir import RunDir, atomic_write_text, open_run_dir, planned_outputs, staged, write_marker

POSITIONS = ("pretrain", "transformed", "fake_quant")


def read_cached_scores(path, progress) -> dict | None:
    """The original scores cached at ``path``; None when there are none, or when the entry is
    unreadable (a half-written file from before writes were atomic, a full disk, an edit): it is
    removed with a warning and the evaluation runs again."""
    try:
        scores = json.loads(path.read_text())
        if isinstance(scores, dict) and ("total" in scores or "ppl" in scores):
            return scores
        problem = "it holds no scores"
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        problem = f"{type(e).__name__}: {e}"
    progress.log(f"warning: the cached original scores {path} are unreadable ({problem}); evaluating again")
    path.unlink(missing_ok=True)
    return None

def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def cache_dir() -> Path:
    env = os.environ.get("LLMC_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("LLMC_WIZARD_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "llmc-wizard")
    return Path(base) / "eval-cache"


def _digest_files(root: Path, h) -> None:
    root = Path(root)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file() and ".git" not in p.parts)
    for p in files:
        size = p.stat().st_size
        h.update(f"{p.relative_to(root) if root.is_dir() else p.name}:{size}".encode())
        with open(p, "rb") as f:
            if size <= 64 << 20:
                h.update(f.read())
            else:  # large weights: size + head + tail
                h.update(f.read(1 << 20))
                f.seek(-(1 << 20), 2)
                h.update(f.read())


def eval_cache_key(cfg: Config, ev, device: str) -> str:
    h = hashlib.sha256(f"llmc-{__version__}|{cfg.model.type}|{cfg.model.torch_dtype}|{device}".encode())
    _digest_files(Path(cfg.model.path), h)
    if ev.path:
        _digest_files(Path(ev.path), h)
    h.update(json.dumps({"type": ev.type, "name": ev.name, "n": ev.num_samples, "seq": ev.seq_len}).encode())
    return h.hexdigest()[:24]


def peak_gpu_memory() -> dict:
    """``{"peak_gpu_mem_mib": {card index: MiB}}`` since the start (empty on CPU-only hosts)."""
    if not torch.cuda.is_available():
        return {}
    return {"peak_gpu_mem_mib": {i: round(torch.cuda.max_memory_allocated(i) / 2**20, 1)
                                 for i in range(torch.cuda.device_count())}}


def _seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def evaluate(adapter, ev, progress: Progress, pos: str) -> dict:
    """Scores of one eval section on the model as it is now."""
    def prog(done, total):
        progress.event("eval_progress", pos=pos, name=ev.name, done=done, total=total)

    if ev.type == "vqa":
        from .eval.vqa import evaluate_mme

        res = evaluate_mme(adapter.answer, Path(ev.path), batch_size=ev.bs, limit=ev.num_samples, progress=prog,
                           distributed=False)  # one engine process; data-parallel eval: llmc.eval.dp
        return {"kind": "mme", **res.scores.to_dict(), "lmms_eval_total": res.lmms_total}
    from .eval.ppl import perplexity

    return {"kind": "ppl", **perplexity(adapter, Path(ev.path), ev.seq_len, ev.bs, ev.num_samples, progress=prog)}


def check_overlap(cfg: Config, progress: Progress, samples=None) -> int:
    """Warn loudly when calibration images (``samples``: those the calibration reads, any part of
    a mixture) also appear in a VQA evaluation set."""
    if not samples:
        return 0
    calib = {hashlib.sha256(s.image.convert("RGB").tobytes()).hexdigest() for s in samples if s.image is not None}
    if not calib:
        return 0
    overlap = 0
    for ev in cfg.evals:
        if ev.type != "vqa" or not ev.path:
            continue
        ds = load_dataset(Path(ev.path))
        seen = set()
        for row in ds:
            d = hashlib.sha256(row["image"].convert("RGB").tobytes()).hexdigest()
            if d in calib and d not in seen:
                seen.add(d)
        overlap += len(seen)
    if overlap:
        msg = (f"WARNING: {overlap} calibration image(s) also appear in the evaluation set: "
               "scores after quantization are optimistic; calibrate on a disjoint split")
        progress.log("!" * 78)
        progress.log(msg)
        progress.log("!" * 78)
        progress.event("warning", message=msg, overlap=overlap)
    return overlap


#: methods that can round without calibration data (the runner's path without a calib section)
DATA_FREE_METHODS = ("RTN", "Quarot")


def quant_label(cfg: Config) -> str:
    w, a = cfg.quant.weight, cfg.quant.act
    rot = getattr(cfg.quant.special, "rotate", None)
    if rot and getattr(cfg.quant.special, "online_rotate", False):
        rot += "+online"
    return (f"W{w.bit}A{a.bit if a else 16} {cfg.quant.method}" + (f"+{rot}" if rot else "")
            + (f" g{w.group_size}" if w.granularity == "per_group" else ""))


def run(cfg: Config, run_dir: Path, *, device: str | None = None, progress: Progress | None = None,
        cancelled=None, overwrite: bool = False, workspace: RunDir | None = None, keep: dict | None = None) -> dict:
    """Run ``cfg`` into ``run_dir``. Unless the caller passes the ``workspace`` it already opened
    (:func:`llmc.rundir.open_run_dir`), the directory is checked, locked and (with ``overwrite``)
    emptied here, before the model loads; the lock is released when the run ends."""
    run_dir = Path(run_dir)
    own_ws = workspace is None
    if own_ws:
        workspace = open_run_dir(run_dir, outputs=planned_outputs(cfg, run_dir), overwrite=overwrite)
    own_progress = progress is None
    progress = progress or Progress(run_dir)
    try:
        return _run(cfg, run_dir, device=device, progress=progress, cancelled=cancelled, keep=keep)
    finally:
        if own_progress:
            progress.close()
        if own_ws:
            workspace.close()


def _run(cfg: Config, run_dir: Path, *, device: str | None, progress: Progress, cancelled,
         keep: dict | None = None) -> dict:
    from .context import batch_warning, config_warnings, context_length
    from .models import get_model_class

    device = device or default_device()
    t_start = time.time()
    run_id = uuid.uuid4().hex
    atomic_write_text(run_dir / "config.yml", cfg.effective_yaml())
    progress.event("start", run_dir=str(run_dir), device=device, pid=os.getpid(), run_id=run_id)
    progress.log(f"effective config:\n{cfg.effective_yaml()}")
    for n in cfg.notices():  # keys the config sets that change nothing here: said, not silent
        progress.log(f"note: {n}")
        progress.event("warning", message=f"config {n}")
    _seed(cfg.base.seed)
    results: dict = {"label": quant_label(cfg), "run_id": run_id, "device": device, "evals": {}, "timings": {},
                     "blocks": []}
    saved: dict[str, Path] = {}

    cls = get_model_class(cfg.model.type, [cfg.model.adapters] if cfg.model.adapters else [])
    with progress.phase("load_model"):
        t = time.time()
        mode = cfg.model.placement
        adapter = cls(cfg.model.path, cfg.model.torch_dtype, device if mode == "single" else "cpu")
        placement = place(adapter, mode, device, cfg.model.max_memory)
        if mode != "single":
            progress.log(f"placement {placement.summary()}")
        progress.event("placement", mode=mode, summary=placement.summary(),
                       block_devices=[str(d) for d in placement.block_devices])
        results["timings"]["load_model"] = time.time() - t
    context = context_length(adapter.mm_model.config)

    def warn(message: str) -> None:
        progress.log(f"WARNING: {message}")
        progress.event("warning", message=message)

    for message in config_warnings(cfg, context):
        warn(message)

    def run_evals(pos: str) -> None:
        for ev in cfg.evals:
            if pos not in ev.eval_pos:
                continue
            key = eval_cache_key(cfg, ev, device) if (pos == "pretrain" and ev.cache) else None
            cached = cache_dir() / f"{key}.json" if key else None
            t = time.time()
            with progress.phase(f"eval_{pos}", eval=ev.name):
                scores = read_cached_scores(cached, progress) if cached else None
                if scores is not None:
                    progress.log(f"{ev.name} ({pos}): original scores from cache {cached.name}")
                    progress.event("cache_hit", pos=pos, name=ev.name, key=key)
                else:
                    scores = evaluate(adapter, ev, progress, pos)
                    if cached:
                        cached.parent.mkdir(parents=True, exist_ok=True)
                        atomic_write_text(cached, json.dumps(scores))  # whole or not at all (a full disk)
            results["timings"][f"eval_{pos}_{ev.name}"] = time.time() - t
            results["evals"].setdefault(ev.name, {})[pos] = scores
            progress.event("scores", pos=pos, name=ev.name, scores=scores)
            summary = f"total {scores['total']:.2f}" if scores["kind"] == "mme" else f"ppl {scores['ppl']:.3f}"
            progress.log(f"{ev.name} ({pos}): {summary}")

    run_evals("pretrain")
    if cancelled and cancelled():
        raise KeyboardInterrupt("cancelled")

    data_free = cfg.calib is None  # RTN / Quarot without a calib section: no data, no forward pass
    if data_free and cfg.quant.method not in DATA_FREE_METHODS:
        raise ValueError(f"calib: {cfg.quant.method} calibrates on data; add a calib section")
    batches: list = []
    if not data_free:
        from .data.calib import calib_samples

        samples = calib_samples(cfg.calib)
        check_overlap(cfg, progress, samples)
        with progress.phase("calibration_data"):
            from .data import load_calib

            batches = load_calib(cfg.calib, adapter, samples)
            progress.log(f"{len(batches)} calibration batch(es) from {cfg.calib.name}")
            if too_long := batch_warning(batches, context):
                warn(too_long)

    rotate = getattr(cfg.quant.special, "rotate", None)
    if rotate:
        from .quant.rotation import rotate_model_

        with progress.phase("rotate", kind=rotate):
            rep = rotate_model_(adapter, kind=rotate, seed=cfg.base.seed)
            progress.log(f"rotated the residual stream ({rep.kind}, hidden {rep.hidden_size}): "
                         f"{len(rep.rotated)} layers incl. {', '.join(rep.rotated[-1:])}")
            if getattr(cfg.quant.special, "online_rotate", False):
                from .quant.rotation import attach_online_hadamard_

                online = attach_online_hadamard_(adapter, seed=cfg.base.seed)
                progress.log(f"online Hadamard on the inputs of {len(online.layers)} layers "
                             f"({', '.join(online.layers[:1])}, ...)")

    method = make_method(cfg.quant, cfg.calib, n_blocks=len(adapter.get_blocks()), placement=cfg.model.placement)
    if cfg.quant.method == "Awq":
        progress.log(f"AWQ search: {method.search}, loss tokens {method.loss_tokens}, clip tokens {method.clip_tokens}")
    trans_state: dict[int, dict] = {}
    need_trans = cfg.save is not None and cfg.save.save_trans or any("transformed" in ev.eval_pos for ev in cfg.evals)

    def stash(i, block):
        if need_trans:
            trans_state[i] = {k: v.detach().to("cpu", copy=True) for k, v in block.state_dict().items()}

    def on_block(rep, n):
        progress.event("block", i=rep.index, n=n, seconds=round(rep.seconds, 3), block_error=rep.block_error,
                       last_error=rep.last_error, **peak_gpu_memory())
        results["blocks"].append({"i": rep.index, "seconds": rep.seconds, "block_error": rep.block_error,
                                  "last_error": rep.last_error, "layer_errors": rep.layer_errors})
        if rep.block_error is None:
            progress.log(f"block {rep.index + 1}/{n}: {rep.seconds:.2f}s (rounded without data)")
            return
        losses = getattr(method, "losses", {})
        for layer, err in rep.layer_errors.items():
            extra = {"gptq_loss": losses[(rep.index, layer)]} if (rep.index, layer) in losses else {}
            progress.event("layer_error", block=rep.index, layer=layer, error=err, **extra)
        for (i, layers), (kept, without, with_clip) in getattr(method, "clip_verdicts", {}).items():
            if i == rep.index:
                progress.event("clip_verdict", block=i, layers=layers, kept=kept,
                               answer_kl=without, answer_kl_clipped=with_clip)
        worst = max(rep.layer_errors.items(), key=lambda kv: kv[1])
        progress.log(f"block {rep.index + 1}/{n}: {rep.seconds:.2f}s, output error {rep.block_error:.4f} "
                     f"(last token {rep.last_error:.4f}), worst layer {worst[0]} {worst[1]:.4f}")

    with progress.phase("quantize", method=cfg.quant.method, n_blocks=len(adapter.get_blocks())):
        t = time.time()
        if data_free:
            from .quant.datafree import quantize_without_data

            quantize_without_data(adapter, method, placement=placement, on_block=on_block, stash=stash,
                                  cancelled=cancelled)
        else:
            quantize_blockwise(adapter, method, batches, device=device, quant_out=cfg.quant.quant_out,
                               placement=placement, on_block=on_block, stash=stash, cancelled=cancelled,
                               on_note=lambda m: (progress.log(f"WARNING: {m}"), progress.event("warning", message=m)))
        if not cfg.quant.skip_layers:
            from .quant.rtn import rtn_

            for head in adapter.get_head_layers():
                method.record(head, *rtn_(head, method.wcfg))
        results["timings"]["quantize"] = time.time() - t
    if keep is not None:  # an in-process caller (llmc.api.quantize) keeps the quantized model
        keep.update(adapter=adapter, method=method)

    blocks = adapter.get_blocks()

    def swap_in_trans():
        fake = {i: {k: v.detach().clone() for k, v in blocks[i].state_dict().items()} for i in trans_state}
        for i, sd in trans_state.items():
            blocks[i].load_state_dict(sd)
        return fake

    def save(kind: str) -> None:
        """``save_trans`` / ``save_fake``: the model as it is now, through the adapter."""
        if not (cfg.save and getattr(cfg.save, f"save_{kind}")):
            return
        with progress.phase(f"save_{kind}"):
            out = Path(cfg.save.save_path or run_dir) / kind
            with staged(out) as tmp:  # written as .<kind>.partial, moved into place when whole
                adapter.save_pretrained(tmp)
            progress.event("saved", kind=kind, path=str(out))
            results[f"saved_{kind}"] = str(out)
            saved[kind] = out

    if trans_state:
        fake_state = swap_in_trans()
        run_evals("transformed")
        save("trans")
        for i, sd in fake_state.items():
            blocks[i].load_state_dict(sd)

    from .quant.actquant import act_config, attach_act_quant_

    act = act_config(cfg.quant)
    hooks = attach_act_quant_(adapter, act) if act is not None else None
    if hooks is not None:
        progress.log(f"activation fake quantization ({act.label}, {act.granularity}) on {len(hooks.names)} layers")
    try:
        run_evals("fake_quant")
    finally:
        if hooks is not None:
            hooks.remove()
    save("fake")
    from .export.model import FORMATS, export_quantized

    for fmt in FORMATS:
        if cfg.save and getattr(cfg.save, f"save_{fmt}"):
            with progress.phase(f"save_{fmt}"):
                out = export_quantized(adapter, method.qparams, method.wcfg, fmt,  # staged itself
                                       Path(cfg.save.save_path or run_dir) / fmt, act=cfg.quant.act)
                progress.log(f"saved {FORMATS[fmt]} checkpoint: {out}")
                progress.event("saved", kind=fmt, path=str(out))
                results[f"saved_{fmt}"] = str(out)
                saved[fmt] = out

    results["timings"]["total"] = time.time() - t_start
    table = format_table(results, results["label"])
    results["table"] = table
    atomic_write_text(run_dir / "results.json", json.dumps(results, indent=2, default=str) + "\n")
    progress.log("results:\n" + table, echo=False)  # `llmc run` prints the table once, on stdout
    from .report import write_report

    report = write_report(run_dir, results, cfg.effective_yaml())
    progress.log(f"report: {report['report.md']}")
    peak = peak_gpu_memory()
    results.update(peak)
    # the marker goes last: from here on (and only from here on) the run is complete
    marker = write_marker(run_dir, run_id=run_id, started=t_start,
                          outputs={"config": run_dir / "config.yml", "results": run_dir / "results.json",
                                   **report, **saved})
    progress.event("done", seconds=round(results["timings"]["total"], 3), results=str(run_dir / "results.json"),
                   complete=str(marker), **peak)
    return results


__all__ = ["run", "evaluate", "format_table", "MMEScores", "POSITIONS"]
