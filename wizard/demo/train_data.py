"""The demo models' text and training data: prompts, the tokenizer, scene pools and batches.

:mod:`wizard.demo.train` builds the models and runs the training loop on these.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from . import shapes

PROMPT = "USER: <image>\n{question} ASSISTANT:"
CAPTION_QUESTION = "Describe the image."
IMAGE_TOKEN = "<image>"
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN]


def corpus_lines(n: int = 3000) -> list[str]:
    """Every kind of text the models see: prompts, questions, answers, captions."""
    lines = []
    for i in range(n):
        sc = shapes.scene_at(shapes.TRAIN_SEED, i)
        for q, a in sc.questions:
            lines.append(PROMPT.replace(IMAGE_TOKEN, "").format(question=q) + f" {a}")
        lines.append(PROMPT.replace(IMAGE_TOKEN, "").format(question=CAPTION_QUESTION) + " " + sc.caption())
    return lines


def build_tokenizer(vocab_size: int = 400):
    """A byte-level BPE tokenizer trained offline on the task's text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus_lines(), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        padding_side="left",
        model_max_length=256,
    )
    fast.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}USER: "
        "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
        "{% if c['type'] == 'image' %}<image>\n{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
        "{% endfor %}{% endif %} {% else %}ASSISTANT: {{ m['content'] }}</s>{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
    )
    return fast


# --------------------------------------------------------------------------------------------
# data


class Pool:
    """Pre-rendered training scenes with their pixel tensors."""

    def __init__(self, pixel_fn, n: int, seed: int = shapes.TRAIN_SEED):
        self.scenes = [shapes.scene_at(seed, i) for i in range(n)]
        chunks = []
        for s in range(0, n, 500):
            chunks.append(pixel_fn([sc.render() for sc in self.scenes[s:s + 500]]))
        self.pixels = torch.cat(chunks)


def sample_rows(rng: random.Random, pool: Pool, batch: int, caption_frac: float = 0.25,
                focus: tuple[float, ...] | None = None):
    """``batch`` training rows. ``focus`` weights the categories (in ``shapes.CATEGORIES`` order);
    without it every pool scene is equally likely."""
    idx, prompts, targets = [], [], []
    n_cat = len(shapes.CATEGORIES)
    for _ in range(batch):
        if focus is None:
            i = rng.randrange(len(pool.scenes))
        else:  # the pool cycles categories: scene i has category i % n_cat
            c = rng.choices(range(n_cat), focus)[0]
            i = n_cat * rng.randrange(len(pool.scenes) // n_cat) + c
        sc = pool.scenes[i]
        if rng.random() < caption_frac:
            q, a = CAPTION_QUESTION, sc.caption()
        else:
            q, a = rng.choice(sc.questions)
        idx.append(i)
        prompts.append(PROMPT.format(question=q))
        targets.append(" " + a)
    return torch.tensor(idx), prompts, targets


def encode_rows(tokenizer, prompts, targets, image_expand: int, image_id: int):
    """Token ids and labels (answer + eos only); ``<image>`` becomes ``image_expand`` ids."""
    seqs, labs = [], []
    for p, t in zip(prompts, targets):
        pre, post = p.split(IMAGE_TOKEN)
        p_ids = (
            [tokenizer.bos_token_id]
            + tokenizer(pre, add_special_tokens=False).input_ids
            + [image_id] * image_expand
            + tokenizer(post, add_special_tokens=False).input_ids
        )
        t_ids = tokenizer(t, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        seqs.append(p_ids + t_ids)
        labs.append([-100] * len(p_ids) + t_ids)
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), tokenizer.pad_token_id)
    labels = torch.full((len(seqs), width), -100)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for b, (s, lab) in enumerate(zip(seqs, labs)):
        ids[b, : len(s)] = torch.tensor(s)
        labels[b, : len(s)] = torch.tensor(lab)
        mask[b, : len(s)] = 1
    return ids, labels, mask


def splice_image(model, ids, labels, mask, px) -> dict:
    """tiny-vila's input splice for a training batch, without its per-row loop.

    Every training row holds one image token at the same index (the prompt starts alike) and is
    right-padded; the image token becomes the projected image features. The model's own splice
    left-pads instead: with rotary positions only the distance between tokens matters, so the
    loss is the same up to float rounding. One batched op instead of a loop with a host sync
    per row is what makes the model train fast on a GPU.
    """
    where = (ids == -200).nonzero()
    if where.shape[0] != ids.shape[0] or not bool((where[:, 1] == where[0, 1]).all()):
        raise ValueError("each training row needs exactly one image token, at the same index")
    p = int(where[0, 1])
    feats = model.encode_images(px)
    embed = model.llm.get_input_embeddings()
    n, f = ids.shape[0], feats.shape[1]
    text = embed(torch.where(ids == -200, torch.zeros_like(ids), ids))
    embeds = torch.cat([text[:, :p], feats.to(text.dtype), text[:, p + 1:]], 1)
    ones = torch.ones((n, f), dtype=mask.dtype, device=mask.device)
    ignore = torch.full((n, f), -100, dtype=labels.dtype, device=labels.device)
    return {"inputs_embeds": embeds, "attention_mask": torch.cat([mask[:, :p], ones, mask[:, p + 1:]], 1),
            "labels": torch.cat([labels[:, :p], ignore, labels[:, p + 1:]], 1)}


def portable_files(folder: Path) -> None:
    """Make a folder saved by this transformers readable by the releases research code pins
    (4.36 / 4.37) too, as released checkpoints are: BPE merges as ``"a b"`` strings, the fast
    tokenizer named by a class every release has, and the image processor's settings also in
    ``preprocessor_config.json``, and a SigLIP vision model's weights under the ``vision_model.``
    prefix its released checkpoints have (this transformers saves them without it and reads both).
    Newer releases read the result unchanged."""
    import json

    folder = Path(folder)
    for cfg_file in folder.rglob("config.json"):
        weights = cfg_file.with_name("model.safetensors")
        try:
            is_siglip = json.loads(cfg_file.read_text(encoding="utf-8")).get("model_type") == "siglip_vision_model"
        except ValueError:
            continue
        if is_siglip and weights.is_file():
            from safetensors.torch import load_file, save_file

            state = load_file(str(weights))
            if not all(k.startswith("vision_model.") for k in state):
                save_file({k if k.startswith("vision_model.") else f"vision_model.{k}": v for k, v in state.items()},
                          str(weights), metadata={"format": "pt"})
    for tj in folder.rglob("tokenizer.json"):
        data = json.loads(tj.read_text(encoding="utf-8"))
        merges = data.get("model", {}).get("merges")
        if merges and not isinstance(merges[0], str):
            data["model"]["merges"] = [" ".join(m) for m in merges]
            tj.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    for tc in folder.rglob("tokenizer_config.json"):
        cfg = json.loads(tc.read_text(encoding="utf-8"))
        if cfg.get("tokenizer_class") == "TokenizersBackend":
            cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
            tc.write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    for pc in folder.rglob("processor_config.json"):
        pre = pc.with_name("preprocessor_config.json")
        proc = json.loads(pc.read_text(encoding="utf-8"))
        if "image_processor" in proc and not pre.exists():
            extra = {k: v for k, v in proc.items() if k in ("processor_class", "patch_size",
                                                            "vision_feature_select_strategy")}
            pre.write_text(json.dumps({**proc["image_processor"], **extra}, indent=2) + "\n", encoding="utf-8")
