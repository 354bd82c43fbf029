"""Train the demo zoo's two tiny VLMs on the synthetic shapes task (fixed seed).

The committed weights come from these runs on one GPU (``--threads 1``):

    python -m wizard.demo.train tiny-llava --device cuda --threads 1 --steps 10000 --stop-step 8616 \
        --batch 64 --lr 3e-3 --pool 40000 --focus 2,1,3,1 --seed 1 --log-every 500 --out DIR
    python -m wizard.demo.train tiny-vila --device cuda --threads 1 --steps 5500 \
        --batch 64 --lr 4e-3 --pool 40000 --caption-frac 0.1 --focus 2,1,3,1 --seed 0 --log-every 500 --out DIR

The tiny-llava run was stopped by a time limit at step 8616 of its 10,000-step schedule;
``--stop-step`` repeats that, and a second run on an H200 reproduced its weights bit for bit
(the tiny-vila command was not re-run).

Count and position are learned early. Color and existence ask whether any image token matches a
word of the question, a circuit that forms late and only for some seeds. Sampling those
categories more often (``--focus``, weights in ``shapes.CATEGORIES`` order) and a pool of
40,000 scenes (too many to memorise) made color learnable: in sweeps of 75 runs on one GPU,
8 learned color; none learned existence much beyond the constant answer.

``--device cuda`` splices tiny-vila's batch in one batched op (:func:`splice_image`); on CPU the
model's own splice runs, and a run is deterministic for a given torch build and thread count.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

import torch

from . import shapes
from .train_data import (
    CAPTION_QUESTION,
    IMAGE_TOKEN,
    PROMPT,
    SPECIALS,
    Pool,
    build_tokenizer,
    portable_files,
    corpus_lines,
    encode_rows,
    sample_rows,
    splice_image,
)

__all__ = ["CAPTION_QUESTION", "IMAGE_TOKEN", "PROMPT", "SPECIALS", "Pool", "build_tiny_llava", "build_tiny_vila",
           "build_tokenizer", "corpus_lines", "encode_rows", "main", "quick_mme", "sample_rows", "splice_image",
           "train", "write_vila_checkpoint"]

ASSETS = Path(__file__).resolve().parent / "assets"
VILA_CODE = ASSETS / "tiny-vila-code"


# --------------------------------------------------------------------------------------------
# model builders


def build_tiny_llava(tokenizer):
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    vision = CLIPVisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
        image_size=shapes.IMAGE_SIZE, patch_size=16, projection_dim=64,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    cfg = LlavaConfig(
        vision_config=vision, text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_layer=-2, vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    model = LlavaForConditionalGeneration(cfg)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": shapes.IMAGE_SIZE},
        crop_size={"height": shapes.IMAGE_SIZE, "width": shapes.IMAGE_SIZE},
        image_mean=IMAGE_MEAN, image_std=IMAGE_STD,
    )
    _informative_init(model.model.vision_tower)
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=16,
        vision_feature_select_strategy="default", chat_template=tokenizer.chat_template,
        num_additional_image_tokens=1,
    )
    _set_generation(model, tokenizer)
    return model, processor


def _import_tiny_vila():
    if str(VILA_CODE) not in sys.path:
        sys.path.insert(0, str(VILA_CODE))
    import tiny_vila.model as tvm  # noqa: PLC0415

    return tvm


def build_tiny_vila(tokenizer):
    """A freshly initialised tiny-vila through VILA 1.5's own path: the parts are written as a
    checkpoint (``llm/``, ``vision_tower/``, ``mm_projector/``, the top ``config.json``) and the code's
    ``LlavaLlamaModel`` builds the model from it, as ``load_pretrained_model`` does."""
    import json
    import tempfile

    from transformers import LlamaConfig, LlamaForCausalLM, SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    tvm = _import_tiny_vila()
    llm = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False))
    llm.config.tokenizer_padding_side = "left"
    tower = SiglipVisionModel(SiglipVisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
        image_size=shapes.IMAGE_SIZE, patch_size=8, vision_use_head=False))
    image_processor = SiglipImageProcessor(
        size={"height": shapes.IMAGE_SIZE, "width": shapes.IMAGE_SIZE}, image_mean=IMAGE_MEAN, image_std=IMAGE_STD)
    with tempfile.TemporaryDirectory(prefix="tiny-vila-init-") as d:
        write_vila_checkpoint(Path(d), llm, tokenizer, tower, image_processor)
        config = tvm.LlavaLlamaConfig(**{k: v for k, v in json.loads((Path(d) / "config.json").read_text()).items()
                                         if k != "model_type"})
        config.resume_path = d
        model = tvm.LlavaLlamaModel(config=config)
    _informative_init(model.get_vision_tower())
    _set_generation(model.llm, tokenizer)
    return model, image_processor


def write_vila_checkpoint(out: Path, llm, tokenizer, tower, image_processor, projector_type="mlp_downsample") -> dict:
    """A checkpoint in VILA 1.5's layout at ``out`` from a language model, its tokenizer, a SigLIP
    tower and its image processor, with a freshly initialised projector of ``projector_type``
    (tiny_vila's, VILA's class): ``llm/``, ``vision_tower/``, ``mm_projector/`` and the top
    ``config.json`` with VILA's keys. Returns the parameter counts of the parts."""
    import json

    tvm = _import_tiny_vila()
    from tiny_vila.model.multimodal_projector.base_projector import MultimodalProjector, MultimodalProjectorConfig

    out = Path(out)
    llm.save_pretrained(out / "llm")
    tokenizer.save_pretrained(out / "llm")
    tower.save_pretrained(out / "vision_tower")
    image_processor.save_pretrained(out / "vision_tower")
    top = dict(architectures=["LlavaLlamaModel"], model_type="llava_llama", hidden_size=llm.config.hidden_size,
               mm_hidden_size=tower.config.hidden_size, mm_vision_select_layer=-2,
               mm_vision_select_feature="cls_patch", image_aspect_ratio="resize", mm_use_im_start_end=False,
               mm_use_im_patch_token=False, s2=False, model_dtype=str(llm.dtype), resume_path="./vlm",
               # the parts' configs as saved (with their architectures), as VILA's save_pretrained keeps them
               llm_cfg=json.loads((out / "llm" / "config.json").read_text()),
               vision_tower_cfg=json.loads((out / "vision_tower" / "config.json").read_text()),
               mm_projector_cfg={"architectures": ["MultimodalProjector"], "model_type": "v2l_projector",
                                 "mm_projector_type": projector_type})
    config = tvm.LlavaLlamaConfig(**{k: v for k, v in top.items() if k != "model_type"})
    projector = MultimodalProjector(MultimodalProjectorConfig(projector_type), config).to(
        device=llm.device, dtype=llm.dtype)
    projector.save_pretrained(out / "mm_projector")
    (out / "config.json").write_text(json.dumps(top, indent=2, sort_keys=True, default=str) + "\n")
    portable_files(out)
    return {"llm": sum(p.numel() for p in llm.parameters()), "vision": sum(p.numel() for p in tower.parameters()),
            "projector": sum(p.numel() for p in projector.parameters())}


# Normalise around the light background, so empty patches are near zero and shapes stand out,
# and start position embeddings large enough that patch position is visible after the tower's
# normalisation (both only change the starting point; the task stays the same).
IMAGE_MEAN = [0.94, 0.94, 0.94]
IMAGE_STD = [0.3, 0.3, 0.3]


def _informative_init(vision_tower: torch.nn.Module, std: float = 0.5) -> None:
    (pos,) = [m for n, m in vision_tower.named_modules() if n.endswith("embeddings.position_embedding")]
    with torch.no_grad():
        pos.weight.normal_(0.0, std)


def _set_generation(model, tokenizer):
    gc = model.generation_config
    gc.bos_token_id = tokenizer.bos_token_id
    gc.eos_token_id = tokenizer.eos_token_id
    gc.pad_token_id = tokenizer.pad_token_id
    gc.do_sample = False
    gc.max_new_tokens = 8


# --------------------------------------------------------------------------------------------
# quick in-training evaluation: MME formula on next-token Yes/No


def quick_mme(answer_fn, scenes) -> dict[str, float]:
    """``answer_fn(list[(scene, question)]) -> list[str]`` of "Yes"/"No"; MME score per category."""
    pairs = [(sc, q) for sc in scenes for q, _ in sc.questions]
    preds = []
    for s in range(0, len(pairs), 64):
        preds.extend(answer_fn(pairs[s:s + 64]))
    scores: dict[str, list[float]] = {}
    for k, sc in enumerate(scenes):
        ok = [preds[2 * k + j] == sc.questions[j][1] for j in range(2)]
        scores.setdefault(sc.category, []).append(50.0 * sum(ok) + 100.0 * all(ok))
    return {c: sum(v) / len(v) for c, v in scores.items()}


def train(name: str, out: Path, steps: int, batch: int, lr: float, pool_size: int, seed: int = 0,
          log_every: int = 250, threads: int = 2, device: str = "cpu", caption_frac: float = 0.25,
          time_limit: float | None = None, focus: tuple[float, ...] | None = None,
          stop_step: int | None = None) -> dict[str, float]:
    torch.manual_seed(seed)
    rng = random.Random(seed)
    torch.set_num_threads(threads)
    tokenizer = build_tokenizer()
    yes_id = tokenizer(" Yes", add_special_tokens=False).input_ids[0]
    no_id = tokenizer(" No", add_special_tokens=False).input_ids[0]
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)

    if name == "tiny-llava":
        model, processor = build_tiny_llava(tokenizer)
        pixel_fn = lambda imgs: processor.image_processor(imgs, return_tensors="pt")["pixel_values"]  # noqa: E731
        expand = (shapes.IMAGE_SIZE // 16) ** 2

        def loss_fn(ids, labels, mask, px):
            return model(input_ids=ids, pixel_values=px, attention_mask=mask, labels=labels).loss

        def logits_fn(ids, mask, px):
            return model(input_ids=ids, pixel_values=px, attention_mask=mask).logits[:, -1]
    elif name == "tiny-vila":
        model, image_processor = build_tiny_vila(tokenizer)
        pixel_fn = lambda imgs: image_processor(imgs, return_tensors="pt")["pixel_values"]  # noqa: E731
        expand, image_id = 1, -200

        def loss_fn(ids, labels, mask, px):
            if device == "cpu":  # the model's own splice
                return model(ids, images=px, attention_mask=mask, labels=labels).loss
            return model.llm(**splice_image(model, ids, labels, mask, px)).loss

        def logits_fn(ids, mask, px):
            return model(ids, images=px, attention_mask=mask).logits[:, -1]
    else:
        raise SystemExit(f"unknown demo model {name!r}; expected tiny-llava or tiny-vila")

    model.to(device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[{name}] {n_params / 1e3:.0f}k parameters; building a pool of {pool_size} scenes", flush=True)
    pool = Pool(pixel_fn, pool_size)
    eval_scenes = [shapes.scene_at(shapes.EVAL_SEED, i) for i in range(200)]
    eval_px = pixel_fn([sc.render() for sc in eval_scenes])
    eval_index = {id(sc): k for k, sc in enumerate(eval_scenes)}

    def answer(pairs):
        prompts = [PROMPT.format(question=q) for _, q in pairs]
        ids, _, mask = encode_rows(tokenizer, prompts, [""] * len(prompts), expand, image_id)
        # drop the target (eos) column of each row: encode_rows appended it
        lengths = mask.sum(1) - 1
        left = torch.full((len(pairs), int(lengths.max())), tokenizer.pad_token_id)
        lmask = torch.zeros_like(left)
        for b, n in enumerate(lengths.tolist()):
            left[b, -n:] = ids[b, :n]
            lmask[b, -n:] = 1
        px = eval_px[[eval_index[id(sc)] for sc, _ in pairs]]
        with torch.no_grad():
            lg = logits_fn(left.to(device), lmask.to(device), px.to(device)).cpu()
        return ["Yes" if y > n else "No" for y, n in zip(lg[:, yes_id], lg[:, no_id])]

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    )
    model.train()
    t0 = time.time()
    running = 0.0
    for step in range(1, steps + 1):
        idx, prompts, targets = sample_rows(rng, pool, batch, caption_frac, focus)
        ids, labels, mask = encode_rows(tokenizer, prompts, targets, expand, image_id)
        loss = loss_fn(ids.to(device), labels.to(device), mask.to(device), pool.pixels[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running += loss.item()
        if step % log_every == 0 or step == steps:
            model.eval()
            sc = quick_mme(answer, eval_scenes)
            model.train()
            print(f"[{name}] step {step}/{steps} loss {running / log_every:.3f} "
                  f"mme {sum(sc.values()):.0f} {({k: round(v) for k, v in sc.items()})} "
                  f"{time.time() - t0:.0f}s", flush=True)
            running = 0.0
        if time_limit is not None and time.time() - t0 > time_limit:
            print(f"[{name}] stopped at step {step}/{steps}: --time-limit {time_limit:.0f}s reached", flush=True)
            break
        if stop_step is not None and step >= stop_step:
            print(f"[{name}] stopped at step {step}/{steps} (--stop-step)", flush=True)
            break
    model.eval()
    model.to("cpu")
    device = "cpu"
    out.mkdir(parents=True, exist_ok=True)
    if name == "tiny-llava":
        model.save_pretrained(out)
        processor.save_pretrained(out)
    else:
        model.save_pretrained(out, tokenizer=tokenizer)
    portable_files(out)
    print(f"[{name}] saved to {out} after {time.time() - t0:.0f}s", flush=True)
    return quick_mme(answer, eval_scenes)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", choices=["tiny-llava", "tiny-vila"])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--pool", type=int, default=6000)
    ap.add_argument("--log-every", type=int, default=250)
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (the result depends on it)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--caption-frac", type=float, default=0.25)
    ap.add_argument("--focus", default=None, metavar="W,W,W,W",
                    help=f"category weights for sampling, in the order {','.join(shapes.CATEGORIES)}")
    ap.add_argument("--stop-step", type=int, default=None,
                    help="stop after this step (the learning-rate schedule still spans --steps)")
    ap.add_argument("--time-limit", type=float, default=None,
                    help="stop after this many seconds and save what was learned (not reproducible)")
    args = ap.parse_args(argv)
    focus = None
    if args.focus:
        try:
            focus = tuple(float(w) for w in args.focus.split(","))
        except ValueError:
            focus = ()
        if (len(focus) != len(shapes.CATEGORIES) or not all(math.isfinite(w) and w >= 0 for w in focus)
                or sum(focus) <= 0):
            ap.error(f"--focus {args.focus!r}: give {len(shapes.CATEGORIES)} non-negative weights, at least one "
                     f"positive, one per category ({','.join(shapes.CATEGORIES)}), e.g. 2,1,3,1")
        if args.pool < len(shapes.CATEGORIES):
            ap.error(f"--pool {args.pool}: --focus needs at least {len(shapes.CATEGORIES)} scenes, one per category")
    if args.stop_step is not None and not 1 <= args.stop_step <= args.steps:
        ap.error(f"--stop-step {args.stop_step}: must be between 1 and --steps ({args.steps})")
    train(args.model, args.out, args.steps, args.batch, args.lr, args.pool, log_every=args.log_every,
          threads=args.threads, device=args.device, caption_frac=args.caption_frac, seed=args.seed,
          time_limit=args.time_limit, focus=focus, stop_step=args.stop_step)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
