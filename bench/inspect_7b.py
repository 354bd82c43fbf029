"""Time and memory of ``inspect_model`` on a real-size 7B LLaVA-style config (no weights).

Writes a LLaVA-1.5-7B-shaped ``config.json`` (CLIP ViT-L/14 at 336 px + Llama-2-7B) into a temp
folder, builds the inspect report from it and prints the wall time and the process's peak RSS.
Targets: < 3 s for the report, < 1 GB peak RSS (the whole process, imports included).

    OMP_NUM_THREADS=1 .venv/bin/python bench/inspect_7b.py
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGET_S = 3.0
TARGET_RSS_MB = 1024


def llava_7b_config():
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                              num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768,
                              hidden_act="quick_gelu")
    text = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=32, vocab_size=32064, max_position_embeddings=4096,
                       rms_norm_eps=1e-5, pad_token_id=0)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=32000,
                      projector_hidden_act="gelu", vision_feature_layer=-2,
                      vision_feature_select_strategy="default", image_seq_length=576)
    cfg.architectures = ["LlavaForConditionalGeneration"]
    cfg.dtype = "float16"
    return cfg


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> int:
    t0 = time.perf_counter()
    from wizard.services.inspect import inspect_model

    t_import = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        llava_7b_config().save_pretrained(d)
        rss_before = peak_rss_mb()
        t1 = time.perf_counter()
        report = inspect_model(d, group_size=128)
        wall = time.perf_counter() - t1  # cold: includes transformers' lazy import of the model code
        t2 = time.perf_counter()
        inspect_model(d, group_size=128)
        warm = time.perf_counter() - t2
    rss = peak_rss_mb()
    n_params = report.projector_tree.params if report.projector_tree else 0
    print(f"architecture     : {report.architecture}")
    print(f"decoder          : {report.num_blocks} blocks at {report.blocks_path}, hidden {report.hidden_size}")
    print(f"projector        : {report.projector_path} ({n_params:,} params) -> {report.proposed_last_layers}")
    print(f"quant layers     : {len(report.quant_layers)} ({len(report.group_size_problems)} not divisible by 128)")
    print(f"imports          : {t_import:.2f} s")
    print(f"inspect wall time: {wall:.2f} s cold, {warm:.2f} s warm   (target < {TARGET_S:.0f} s)")
    print(f"peak RSS         : {rss:.0f} MB (before inspect: {rss_before:.0f} MB)   (target < {TARGET_RSS_MB} MB)")
    ok = wall < TARGET_S and rss < TARGET_RSS_MB
    print("OK" if ok else "OVER TARGET")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
