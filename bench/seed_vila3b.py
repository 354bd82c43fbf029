"""The seed pipeline at its real size: AWQ W4A16 and MME before and after, through ``llmc run``.

Builds a random-weight VLM with VILA1.5-3b's shapes in VILA 1.5's layout (loaded by the demo's ``tiny_vila``
package: ``llm/``, ``vision_tower/``, ``mm_projector/``, ``load_pretrained_model``):

- vision tower: SigLIP-so400m shape (hidden 1152, 27 blocks, 16 heads, MLP 4304, 384 px,
  patch 14, so 729 patches; the second-to-last block's output is used);
- projector: ``mlp_downsample`` (2x2 patch merge to 196 tokens, LayerNorm(4608),
  Linear(4608, 2560), GELU, Linear(2560, 2560));
- language model: Sheared-LLaMA-2.7B shape (hidden 2560, 32 blocks, 20 heads, MLP 6912,
  vocab 32000, 4096 positions);

in bf16, with the demo's tokenizer and an image processor that resizes to 384 px. The demo's
512-image MME-format set (1,024 questions) and its 128-image calibration split are rebuilt.
Then ``python -m llmc run`` quantizes the language model with AWQ W4A16 (asymmetric, group 128,
scale search and weight clip) on the 128 calibration samples and evaluates MME before and after.
Prints each phase's seconds (from the run's ``events.jsonl``), the whole command's wall time,
the peak GPU memory and the scores (random weights: the scores only show the path runs).

    python bench/seed_vila3b.py [--shape 3b|small] [--device cuda|cpu] [--work DIR] [--layers N]
        [--eval-images N] [--calib-samples N]

``--shape small`` builds the same layout at a size a CPU runs in minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "wizard" / "demo" / "assets"
CODE = ASSETS / "tiny-vila-code"
sys.path.insert(0, str(ROOT))

SHAPES = {
    "3b": {
        "llm": dict(hidden_size=2560, intermediate_size=6912, num_hidden_layers=32, num_attention_heads=20,
                    num_key_value_heads=20, head_dim=128, vocab_size=32000, max_position_embeddings=4096,
                    rms_norm_eps=1e-5),
        "vision": dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                       image_size=384, patch_size=14),
    },
    "small": {
        "llm": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=4, head_dim=64, vocab_size=32000, max_position_embeddings=4096,
                    rms_norm_eps=1e-5),
        "vision": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                       image_size=384, patch_size=14),
    },
}

PHASES = ("load_model", "eval_pretrain", "calibration_data", "quantize", "eval_fake_quant")


def build_model(out: Path, shape: str, device: str, layers: int | None = None) -> dict:
    """A random-weight checkpoint in VILA 1.5's layout at ``out``; returns its parameter counts."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, SiglipImageProcessor, SiglipVisionConfig
    from transformers import SiglipVisionModel

    from wizard.demo.train import write_vila_checkpoint

    base = json.loads((ASSETS / "tiny-vila" / "config.json").read_text())
    llm_cfg = {**base["llm_cfg"], **SHAPES[shape]["llm"], "dtype": "bfloat16"}
    if layers:
        llm_cfg["num_hidden_layers"] = layers
    vt_cfg = {**base["vision_tower_cfg"], **SHAPES[shape]["vision"], "dtype": "bfloat16"}
    side = SHAPES[shape]["vision"]["image_size"]
    processor = SiglipImageProcessor.from_pretrained(ASSETS / "tiny-vila" / "vision_tower")
    processor.size = {"height": side, "width": side}
    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            llm = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in llm_cfg.items() if k != "model_type"}))
            tower = SiglipVisionModel(SiglipVisionConfig(**{k: v for k, v in vt_cfg.items() if k != "model_type"}))
            counts = write_vila_checkpoint(out, llm, AutoTokenizer.from_pretrained(ASSETS / "tiny-vila" / "llm"),
                                           tower, processor)
    finally:
        torch.set_default_dtype(prev)
    del llm, tower
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return counts


def write_config(path: Path, model: Path, calib: Path, eval_data: Path, save: Path, n_calib: int) -> None:
    cfg = {
        "base": {"seed": 42},
        "model": {"type": "Vila", "path": str(model), "torch_dtype": "bfloat16"},
        "calib": {"name": "custom_mm", "download": False, "path": str(calib), "n_samples": n_calib, "bs": 1,
                  "seq_len": 512, "padding": True, "seed": 42},
        "eval": {"eval_pos": ["pretrain", "fake_quant"], "type": "vqa", "name": "mme", "download": False,
                 "path": str(eval_data), "bs": 64},
        "quant": {"method": "Awq", "quant_objects": ["language"], "skip_layers": True,
                  "weight": {"bit": 4, "symmetric": False, "granularity": "per_group", "group_size": 128},
                  "special": {"trans": True, "trans_version": "v2", "weight_clip": True, "clip_sym": False}},
        "save": {"save_path": str(save), "save_trans": False, "save_fake": False},
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def phase_seconds(events: Path) -> dict[str, float]:
    out = {}
    for line in events.read_text().splitlines():
        e = json.loads(line)
        if e.get("event") == "phase" and e.get("state") == "end":
            out[e["name"]] = out.get(e["name"], 0.0) + float(e["seconds"])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="3b")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--work", type=Path, default=None, help="working folder (default: a new temporary one)")
    ap.add_argument("--eval-images", type=int, default=512)
    ap.add_argument("--calib-samples", type=int, default=128)
    ap.add_argument("--layers", type=int, default=None, help="language-model blocks (default: the shape's)")
    args = ap.parse_args(argv)

    from wizard.demo import zoo

    work = args.work or Path(tempfile.mkdtemp(prefix="llmc-seed-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    digests = zoo.build_eval_set(work / "mme", n=args.eval_images)
    zoo.build_calib_set(work / "calib", digests, n=args.calib_samples)
    t_data = time.time() - t0
    t0 = time.time()
    counts = build_model(work / "model", args.shape, args.device, args.layers)
    t_model = time.time() - t0
    cfg = work / "seed_awq.yml"
    write_config(cfg, work / "model", work / "calib", work / "mme" / "data", work / "save", args.calib_samples)

    run_dir = work / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(CODE), os.environ.get("PYTHONPATH", "")]),
           "LLMC_CACHE": str(work / "llmc-cache")}  # a fresh cache: the original model is evaluated too
    t0 = time.time()
    res = subprocess.run([sys.executable, "-m", "llmc", "run", str(cfg), "--run-dir", str(run_dir),
                          "--device", args.device, "--overwrite"], env=env)
    t_run = time.time() - t0
    if res.returncode != 0:
        print(f"llmc run failed with exit code {res.returncode}; see {run_dir}/", file=sys.stderr)
        return 1
    phases = phase_seconds(run_dir / "events.jsonl")
    result = json.loads((run_dir / "results.json").read_text())
    done = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines() if '"done"' in x]
    ev = result["evals"]["mme"]
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"\nseed pipeline, VILA-1.5-3B layout at shape {args.shape!r} on {dev}; torch {torch.__version__}, "
          f"transformers {__import__('transformers').__version__}")
    print(f"parameters: LM {counts['llm'] / 1e9:.3f} B, vision tower {counts['vision'] / 1e6:.1f} M, "
          f"projector {counts['projector'] / 1e6:.1f} M; {args.eval_images} images "
          f"({2 * args.eval_images} questions), {args.calib_samples} calibration samples")
    print("| step | seconds |\n|---|---|")
    print(f"| build data (not part of the run) | {t_data:.1f} |")
    print(f"| build and save the model (not part of the run) | {t_model:.1f} |")
    for name in PHASES:
        if name in phases:
            print(f"| llmc run: {name} | {phases[name]:.1f} |")
    rest = t_run - sum(phases.get(n, 0.0) for n in PHASES)
    print(f"| llmc run: start-up, checks, report and the rest | {rest:.1f} |")
    print(f"| **llmc run, whole command** | **{t_run:.1f}** |")
    peak = done[-1].get("peak_gpu_mem_mib") if done else None
    if peak:
        print("peak GPU memory (MiB, torch's allocator, per card): " + ", ".join(f"{k}: {v:,.0f}" for k, v in peak.items()))
    print(f"MME total: original {ev['pretrain']['total']:.1f}, W4A16 {ev['fake_quant']['total']:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
