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


def quant_label(cfg: Config) -> str:
    w, a = cfg.quant.weight, cfg.quant.act
    rot = getattr(cfg.quant.special, "rotate", None)
    if rot and getattr(cfg.quant.special, "online_rotate", False):
        rot += "+online"
    return (f"W{w.bit}A{a.bit if a else 16} {cfg.quant.method}" + (f"+{rot}" if rot else "")
            + (f" g{w.group_size}" if w.granularity == "per_group" else ""))


def run(cfg: Config, run_dir: Path, *, device: str | None = None, progress: Progress | None = None,
        cancelled=None, overwrite: bool = False, workspace: RunDir | None = None) -> dict:
    """Run ``cfg`` into ``run_dir`` and return its results (what ``results.json`` holds)."""
    return run_pipeline(cfg, run_dir, device=device, progress=progress, cancelled=cancelled, overwrite=overwrite,
                        workspace=workspace).results


def run_pipeline(cfg: Config, run_dir: Path, *, device: str | None = None, progress: Progress | None = None,
                 cancelled=None, overwrite: bool = False, workspace: RunDir | None = None) -> Pipeline:
    """Run ``cfg`` into ``run_dir``; the finished :class:`Pipeline` holds the quantized model.
    Unless the caller passes the ``workspace`` it already opened (:func:`llmc.rundir.open_run_dir`),
    the directory is checked, locked and (with ``overwrite``) emptied here, before the model loads;
    the lock is released when the run ends."""
    run_dir = Path(run_dir)
    own_ws = workspace is None
    if own_ws:
        workspace = open_run_dir(run_dir, outputs=planned_outputs(cfg, run_dir), overwrite=overwrite)
    own_progress = progress is None
    progress = progress or Progress(run_dir)
    try:
        pipeline = Pipeline(cfg, run_dir, device=device, progress=progress, cancelled=cancelled)
        pipeline.run()
        return pipeline
    finally:
        if own_progress:
            progress.close()
        if own_ws:
            workspace.close()


class Pipeline:
    """One run, as named phases: :meth:`load`, :meth:`evaluate` (original), :meth:`calibrate`,
    :meth:`rotate`, :meth:`quantize`, :meth:`evaluate` (transformed, quantized), :meth:`save`,
    :meth:`finish`. What a method does and reports is its own (:mod:`llmc.quant.methods`): the
    phases name none."""

    def __init__(self, cfg: Config, run_dir: Path, *, device: str | None, progress: Progress, cancelled=None):
        from .quant.methods import spec

        self.cfg, self.run_dir, self.progress, self.cancelled = cfg, Path(run_dir), progress, cancelled
        self.device = device or default_device()
        self.spec = spec(cfg.quant.method)
        self.t_start = time.time()
        self.run_id = uuid.uuid4().hex
        self.results: dict = {"label": quant_label(cfg), "run_id": self.run_id, "device": self.device, "evals": {},
                              "timings": {}, "blocks": []}
        self.saved: dict[str, Path] = {}
        self.adapter = self.placement = self.method = None
        self.context: int | None = None
        self.batches: list = []
        self.trans_state: dict[int, dict] = {}

    @property
    def model(self):
        """The (quantized, once :meth:`quantize` ran) model itself."""
        return self.adapter.mm_model

    def run(self) -> dict:
        self.start()
        self.load()
        self.evaluate("pretrain")
        self._check_cancel()
        self.calibrate()
        self.rotate()
        self.quantize()
        self.evaluate_transformed()
        self.evaluate_quantized()
        self.save()
        return self.finish()

    # -- phases -------------------------------------------------------------------------------
    def start(self) -> None:
        cfg, progress = self.cfg, self.progress
        atomic_write_text(self.run_dir / "config.yml", cfg.effective_yaml())
        progress.event("start", run_dir=str(self.run_dir), device=self.device, pid=os.getpid(), run_id=self.run_id)
        progress.log(f"effective config:\n{cfg.effective_yaml()}")
        for n in cfg.notices():  # keys the config sets that change nothing here: said, not silent
            progress.log(f"note: {n}")
            progress.event("warning", message=f"config {n}")
        _seed(cfg.base.seed)

    def load(self) -> None:
        from .context import config_warnings, context_length
        from .models import get_model_class

        cfg, progress, device = self.cfg, self.progress, self.device
        cls = get_model_class(cfg.model.type, [cfg.model.adapters] if cfg.model.adapters else [])
        with progress.phase("load_model"):
            t = time.time()
            mode = cfg.model.placement
            self.adapter = cls(cfg.model.path, cfg.model.torch_dtype, device if mode == "single" else "cpu")
            self.placement = place(self.adapter, mode, device, cfg.model.max_memory)
            if mode != "single":
                progress.log(f"placement {self.placement.summary()}")
            progress.event("placement", mode=mode, summary=self.placement.summary(),
                           block_devices=[str(d) for d in self.placement.block_devices])
            self.results["timings"]["load_model"] = time.time() - t
        self.context = context_length(self.adapter.mm_model.config)
        for message in config_warnings(cfg, self.context):
            self.warn(message)

    def evaluate(self, pos: str) -> None:
        """Every eval section that asks for position ``pos`` on the model as it is now (the
        original scores from the cache where the section allows it)."""
        cfg, progress, results = self.cfg, self.progress, self.results
        for ev in cfg.evals:
            if pos not in ev.eval_pos:
                continue
            key = eval_cache_key(cfg, ev, self.device) if (pos == "pretrain" and ev.cache) else None
            cached = cache_dir() / f"{key}.json" if key else None
            t = time.time()
            with progress.phase(f"eval_{pos}", eval=ev.name):
                scores = read_cached_scores(cached, progress) if cached else None
                if scores is not None:
                    progress.log(f"{ev.name} ({pos}): original scores from cache {cached.name}")
                    progress.event("cache_hit", pos=pos, name=ev.name, key=key)
                else:
                    scores = evaluate(self.adapter, ev, progress, pos)
                    if cached:
                        cached.parent.mkdir(parents=True, exist_ok=True)
                        atomic_write_text(cached, json.dumps(scores))  # whole or not at all (a full disk)
            results["timings"][f"eval_{pos}_{ev.name}"] = time.time() - t
            results["evals"].setdefault(ev.name, {})[pos] = scores
            progress.event("scores", pos=pos, name=ev.name, scores=scores)
            summary = f"total {scores['total']:.2f}" if scores["kind"] == "mme" else f"ppl {scores['ppl']:.3f}"
            progress.log(f"{ev.name} ({pos}): {summary}")

    def calibrate(self) -> None:
        """The calibration batches (none for a method that rounds without data and a config
        without a calib section)."""
        cfg, progress = self.cfg, self.progress
        if cfg.calib is None:
            if self.spec.needs_data:  # the config schema refuses this; a Config built around it does not
                raise ValueError(f"calib: {cfg.quant.method} calibrates on data; add a calib section")
            return
        from .data import load_calib
        from .data.calib import calib_samples

        samples = calib_samples(cfg.calib)
        check_overlap(cfg, progress, samples)
        with progress.phase("calibration_data"):
            self.batches = load_calib(cfg.calib, self.adapter, samples)
            progress.log(f"{len(self.batches)} calibration batch(es) from {cfg.calib.name}")
            # (sequences past the context are warned of once the first block reads them: quantize)

    def rotate(self) -> None:
        """QuaRot's rotation of the residual stream, where the method's options ask for it."""
        opts, progress, seed = self.cfg.quant.special, self.progress, self.cfg.base.seed
        kind = getattr(opts, "rotate", None)
        if not kind:
            return
        from .quant.rotation import attach_online_hadamard_, rotate_model_

        with progress.phase("rotate", kind=kind):
            rep = rotate_model_(self.adapter, kind=kind, seed=seed)
            progress.log(f"rotated the residual stream ({rep.kind}, hidden {rep.hidden_size}): "
                         f"{len(rep.rotated)} layers incl. {', '.join(rep.rotated[-1:])}")
            if getattr(opts, "online_rotate", False):
                online = attach_online_hadamard_(self.adapter, seed=seed)
                progress.log(f"online Hadamard on the inputs of {len(online.layers)} layers "
                             f"({', '.join(online.layers[:1])}, ...)")

    def quantize(self) -> None:
        from .quant.methods import make_method

        cfg, progress, adapter = self.cfg, self.progress, self.adapter
        n_blocks = len(adapter.get_blocks())
        self.method = method = make_method(cfg.quant, cfg.calib, n_blocks=n_blocks, placement=cfg.model.placement)
        if line := method.describe():
            progress.log(line)
        need_trans = cfg.save is not None and cfg.save.save_trans or any("transformed" in ev.eval_pos
                                                                         for ev in cfg.evals)

        def stash(i, block):
            if need_trans:
                self.trans_state[i] = {k: v.detach().to("cpu", copy=True) for k, v in block.state_dict().items()}

        with progress.phase("quantize", method=cfg.quant.method, n_blocks=n_blocks):
            t = time.time()
            if cfg.calib is None:
                from .quant.datafree import quantize_without_data

                quantize_without_data(adapter, method, placement=self.placement, on_block=self._on_block,
                                      stash=stash, cancelled=self.cancelled)
            else:
                quantize_blockwise(adapter, method, self.batches, device=self.device, quant_out=cfg.quant.quant_out,
                                   placement=self.placement, on_block=self._on_block, stash=stash,
                                   cancelled=self.cancelled, on_note=self.warn, context=self.context)
            if not cfg.quant.skip_layers:
                from .quant.rtn import rtn_

                for head in adapter.get_head_layers():
                    method.record(head, *rtn_(head, method.wcfg))
            self.results["timings"]["quantize"] = time.time() - t

    def evaluate_transformed(self) -> None:
        """The transformed float model (the blocks as they were before rounding): evaluated and
        saved as ``trans`` where the config asks, then the quantized blocks go back."""
        if not self.trans_state:
            return
        blocks = self.adapter.get_blocks()
        fake = {i: {k: v.detach().clone() for k, v in blocks[i].state_dict().items()} for i in self.trans_state}
        for i, sd in self.trans_state.items():
            blocks[i].load_state_dict(sd)
        self.evaluate("transformed")
        self._save_model("trans")
        for i, sd in fake.items():
            blocks[i].load_state_dict(sd)

    def evaluate_quantized(self) -> None:
        from .quant.actquant import act_config, attach_act_quant_

        act = act_config(self.cfg.quant)
        hooks = attach_act_quant_(self.adapter, act) if act is not None else None
        if hooks is not None:
            self.progress.log(f"activation fake quantization ({act.label}, {act.granularity}) on "
                              f"{len(hooks.names)} layers")
        try:
            self.evaluate("fake_quant")
        finally:
            if hooks is not None:
                hooks.remove()

    def save(self) -> None:
        from .export.model import FORMATS, export_quantized

        cfg, progress = self.cfg, self.progress
        self._save_model("fake")
        for fmt in FORMATS:
            if cfg.save and getattr(cfg.save, f"save_{fmt}"):
                with progress.phase(f"save_{fmt}"):
                    out = export_quantized(self.adapter, self.method.qparams, self.method.wcfg, fmt,  # staged itself
                                           Path(cfg.save.save_path or self.run_dir) / fmt, act=cfg.quant.act)
                    progress.log(f"saved {FORMATS[fmt]} checkpoint: {out}")
                    progress.event("saved", kind=fmt, path=str(out))
                    self.results[f"saved_{fmt}"] = str(out)
                    self.saved[fmt] = out

    def finish(self) -> dict:
        from .report import write_report

        results, progress, run_dir = self.results, self.progress, self.run_dir
        results["timings"]["total"] = time.time() - self.t_start
        table = format_table(results, results["label"])
        results["table"] = table
        atomic_write_text(run_dir / "results.json", json.dumps(results, indent=2, default=str) + "\n")
        progress.log("results:\n" + table, echo=False)  # `llmc run` prints the table once, on stdout
        report = write_report(run_dir, results, self.cfg.effective_yaml())
        progress.log(f"report: {report['report.md']}")
        peak = peak_gpu_memory()
        results.update(peak)
        # the marker goes last: from here on (and only from here on) the run is complete
        marker = write_marker(run_dir, run_id=self.run_id, started=self.t_start,
                              outputs={"config": run_dir / "config.yml", "results": run_dir / "results.json",
                                       **report, **self.saved})
        progress.event("done", seconds=round(results["timings"]["total"], 3), results=str(run_dir / "results.json"),
                       complete=str(marker), **peak)
        return results

    # -- helpers ------------------------------------------------------------------------------
    def warn(self, message: str) -> None:
        self.progress.log(f"WARNING: {message}")
        self.progress.event("warning", message=message)

    def _check_cancel(self) -> None:
        if self.cancelled and self.cancelled():
            raise KeyboardInterrupt("cancelled")

    def _save_model(self, kind: str) -> None:
        """``save_trans`` / ``save_fake``: the model as it is now, through the adapter."""
        cfg = self.cfg
        if not (cfg.save and getattr(cfg.save, f"save_{kind}")):
            return
        with self.progress.phase(f"save_{kind}"):
            out = Path(cfg.save.save_path or self.run_dir) / kind
            with staged(out) as tmp:  # written as .<kind>.partial, moved into place when whole
                self.adapter.save_pretrained(tmp)
            self.progress.event("saved", kind=kind, path=str(out))
            self.results[f"saved_{kind}"] = str(out)
            self.saved[kind] = out

    def _on_block(self, rep, n: int) -> None:
        progress, method = self.progress, self.method
        progress.event("block", i=rep.index, n=n, seconds=round(rep.seconds, 3), block_error=rep.block_error,
                       last_error=rep.last_error, **peak_gpu_memory())
        self.results["blocks"].append({"i": rep.index, "seconds": rep.seconds, "block_error": rep.block_error,
                                       "last_error": rep.last_error, "layer_errors": rep.layer_errors})
        if rep.block_error is None:
            progress.log(f"block {rep.index + 1}/{n}: {rep.seconds:.2f}s (rounded without data)")
            return
        for layer, err in rep.layer_errors.items():
            progress.event("layer_error", block=rep.index, layer=layer, error=err,
                           **method.layer_fields(rep.index, layer))
        for name, fields in method.block_events(rep.index):
            progress.event(name, **fields)
        worst = max(rep.layer_errors.items(), key=lambda kv: kv[1])
        progress.log(f"block {rep.index + 1}/{n}: {rep.seconds:.2f}s, output error {rep.block_error:.4f} "
                     f"(last token {rep.last_error:.4f}), worst layer {worst[0]} {worst[1]:.4f}")


__all__ = ["run", "run_pipeline", "Pipeline", "evaluate", "format_table", "MMEScores", "POSITIONS"]
