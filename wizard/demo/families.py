"""The family zoo: tiny random-weight checkpoints of real transformers VLM families.

``build_family(name, out)`` writes a Hugging Face folder (config, ``model.safetensors``,
generation config, processor + tokenizer files, chat template) that plain transformers loads with
``AutoProcessor.from_pretrained`` and ``AutoModelForImageTextToText.from_pretrained``. Everything
is built locally: configs from the config classes, tokenizers trained offline
(:mod:`wizard.demo.family_tokenizer`), processors from their classes
(:mod:`wizard.demo.family_recipes`). The weights are random (seeded), so answers are gibberish;
what the zoo is for is each family's real structure: module tree, processor, prompt format.

:func:`family_info` says what a correct inspection of each built model should find.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from . import family_recipes as R


@dataclass(frozen=True)
class FamilyInfo:
    """What a correct "inspect" of the built model finds; dotted paths as in
    ``model.named_modules()`` / ``named_parameters()`` of the top-level transformers 5 model."""

    name: str
    architecture: str  # config.architectures[0]
    language_model: str  # module holding the decoder layers (``<path>.layers``)
    vision_tower: str
    projector: str
    projector_last: tuple[str, ...]  # layer(s)/Parameter(s) whose output enters the LM hidden stream
    has_chat_template: bool
    notes: str


_INFO = {
    "llava_onevision": FamilyInfo(
        "llava_onevision", "LlavaOnevisionForConditionalGeneration", "model.language_model",
        "model.vision_tower", "model.multi_modal_projector", ("model.multi_modal_projector.linear_2",), True,
        "SigLIP tower + 2-layer MLP projector + Qwen2 LM. anyres: a 64x64 image gives 2x2 tiles of "
        "32 px plus the base image; the unpadded tile features get one learned row separator each, "
        "the Parameter model.image_newline (also enters the LM stream, besides linear_2). "
        "16 base + 64 tile + 8 newline = 88 <image> tokens per 64x64 image.",
    ),
    "qwen2_vl": FamilyInfo(
        "qwen2_vl", "Qwen2VLForConditionalGeneration", "model.language_model", "model.visual",
        "model.visual.merger", ("model.visual.merger.mlp.2",), True,
        "Vision tower with 14 px patches and 2x2 patch merger (the projector lives inside "
        "model.visual); M-RoPE (mrope_section) in the LM. A 64x64 image is resized to 56x56: "
        "16 patches -> 4 <|image_pad|> tokens.",
    ),
    "qwen2_5_vl": FamilyInfo(
        "qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", "model.language_model", "model.visual",
        "model.visual.merger", ("model.visual.merger.mlp.2",), True,
        "As Qwen2-VL, but RMSNorm + SwiGLU vision blocks with window attention; block 0 uses "
        "windows, block 1 (fullatt_block_indexes) full attention. 4 <|image_pad|> tokens per 64x64 image.",
    ),
    "qwen3_vl": FamilyInfo(
        "qwen3_vl", "Qwen3VLForConditionalGeneration", "model.language_model", "model.visual",
        "model.visual.merger", ("model.visual.merger.linear_fc2", "model.visual.deepstack_merger_list.0.linear_fc2"),
        True,
        "Two projectors: the merger writes the <|image_pad|> rows of the input embeddings, and a "
        "deepstack merger adds vision block 0's features to the image positions of the hidden states "
        "after decoder layer 0. 16 px patches, 2x2 merge, interpolated position embeddings; "
        "interleaved M-RoPE. 4 <|image_pad|> tokens per 64x64 image.",
    ),
    "glm4v": FamilyInfo(
        "glm4v", "Glm4vForConditionalGeneration", "model.language_model", "model.visual", "model.visual.merger",
        ("model.visual.merger.down_proj",), True,
        "The vision tower ends in a conv downsample (2x2 patches to the LM width) and a SwiGLU "
        "merger whose down_proj writes the <|image|> rows; no module is named projector. Half of "
        "each head rotates (M-RoPE). A 64x64 image is resized to 56x56: 4 <|image|> tokens between "
        "<|begin_of_image|> and <|end_of_image|>. Prompts start with [gMASK]<sop>.",
    ),
    "idefics2": FamilyInfo(
        "idefics2", "Idefics2ForConditionalGeneration", "model.text_model", "model.vision_model", "model.connector",
        ("model.connector.perceiver_resampler.norm",), True,
        "The connector's MLP (modality_projection) writes the LM width, but a perceiver resampler "
        "reads it into 4 latents; the resampler's RMSNorm writes the <image> rows (rotation cannot "
        "pass a norm). 4 <image> tokens per image wrapped in <fake_token_around_image>; prompts "
        "'<s>User:...<end_of_utterance>\\nAssistant:'.",
    ),
    "idefics3": FamilyInfo(
        "idefics3", "Idefics3ForConditionalGeneration", "model.text_model", "model.vision_model",
        "model.connector", ("model.connector.modality_projection.proj",), True,
        "Pixel-shuffle connector (scale 2) with a single bias-free Linear. Image splitting: a 64x64 "
        "image becomes 2x2 tiles (<row_i_col_j> tokens) + a global image (<global-img>), each 4 "
        "<image> tokens wrapped in <fake_token_around_image>. Prompts end with 'Assistant:'.",
    ),
    "gemma3": FamilyInfo(
        "gemma3", "Gemma3ForConditionalGeneration", "model.language_model", "model.vision_tower",
        "model.multi_modal_projector", ("model.multi_modal_projector.mm_input_projection_weight",), True,
        "The projector's output is a matmul with the raw nn.Parameter mm_input_projection_weight "
        "(no nn.Linear), after avg-pool and RMSNorm. Decoder layers 0,1 sliding-window "
        "(window 16), layer 2 global. <start_of_image> in the prompt expands to "
        "\\n\\n<start_of_image> + 4 <image_soft_token> + <end_of_image>\\n\\n; image tokens attend "
        "bidirectionally (token_type_ids). Embeddings scaled by sqrt(hidden); tied lm_head.",
    ),
    "paligemma": FamilyInfo(
        "paligemma", "PaliGemmaForConditionalGeneration", "model.language_model", "model.vision_tower",
        "model.multi_modal_projector", ("model.multi_modal_projector.linear",), False,
        "No chat template: the prompt is '<image>' + task text; the processor expands it to 16 "
        "<image> tokens, inserts <bos> after them and appends '\\n'. Prefix-LM: the prompt "
        "attends bidirectionally (token_type_ids). Vocabulary includes 1024 <locXXXX> and 128 "
        "<segXXX> tokens. Tied lm_head.",
    ),
    "smolvlm": FamilyInfo(
        "smolvlm", "SmolVLMForConditionalGeneration", "model.text_model", "model.vision_model",
        "model.connector", ("model.connector.modality_projection.proj",), True,
        "Idefics3's architecture (pixel-shuffle connector, image splitting with <row_i_col_j> "
        "tokens) with SmolLM-style tokens: prompts start with <|im_start|> and end with "
        "'Assistant:'. 4 <image> tokens per 32 px tile; a 64x64 image gives 2x2 tiles + global.",
    ),
    "mllama": FamilyInfo(
        "mllama", "MllamaForConditionalGeneration", "model.language_model", "model.vision_model",
        "model.multi_modal_projector", ("model.multi_modal_projector",), True,
        "Image features do not enter the token stream: the projector (a single Linear) feeds the "
        "keys/values of the gated cross-attention decoder layer 1 (layer 0 is self-attention). "
        "One <|image|> token per image; the processor builds cross_attention_mask, "
        "aspect_ratio_ids/mask. A 64x64 image is 2x2 tiles of 32 px.",
    ),
}

# name -> (tokenizer spec, recipe(tok) -> (config, processor))
_RECIPES = {
    "llava_onevision": (R.LLAVA_ONEVISION_TOKENIZER, R.llava_onevision),
    "qwen2_vl": (R.QWEN_TOKENIZER, R.qwen2_vl),
    "qwen2_5_vl": (R.QWEN_TOKENIZER, R.qwen2_5_vl),
    "qwen3_vl": (R.QWEN_TOKENIZER, R.qwen3_vl),
    "glm4v": (R.GLM4V_TOKENIZER, R.glm4v),
    "idefics2": (R.IDEFICS2_TOKENIZER, R.idefics2),
    "idefics3": (R.IDEFICS3_TOKENIZER, R.idefics3),
    "gemma3": (R.GEMMA3_TOKENIZER, R.gemma3),
    "paligemma": (R.PALIGEMMA_TOKENIZER, R.paligemma),
    "smolvlm": (R.SMOLVLM_TOKENIZER, R.smolvlm),
    "mllama": (R.MLLAMA_TOKENIZER, R.mllama),
}

FAMILIES: tuple[str, ...] = tuple(_RECIPES)
# what a build writes (and a rebuild into the same folder first removes)
STALE_FILES = ("config.json", "generation_config.json", "model.safetensors", "processor_config.json",
               "preprocessor_config.json", "video_preprocessor_config.json", "tokenizer.json",
               "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "chat_template.json")


def family_info(name: str) -> FamilyInfo:
    try:
        return _INFO[name]
    except KeyError:
        raise ValueError(f"unknown family {name!r}; expected one of {FAMILIES}") from None


def build_family(name: str, out: Path, seed: int = 0) -> Path:
    """Build family ``name`` into folder ``out`` (created; existing files are overwritten).

    Deterministic for a seed: the tokenizer is trained on a fixed corpus and the weights are
    drawn under ``torch.manual_seed(seed)``.
    """
    import torch
    from transformers import AutoModelForImageTextToText, GenerationConfig

    from .family_tokenizer import build_tokenizer

    if name not in _RECIPES:
        raise ValueError(f"unknown family {name!r}; expected one of {FAMILIES}")
    spec, recipe = _RECIPES[name]
    tok = build_tokenizer(spec)
    config, processor = recipe(tok)

    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    _wake_zero_init(model, config)
    model.eval()
    model.generation_config = _generation_config(GenerationConfig, tok, spec)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in STALE_FILES:  # a previous build of another family may have left these
        (out / stale).unlink(missing_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    _check_saved(out, family_info(name))
    return out


def _wake_zero_init(model, config) -> None:
    """Replace zero initialisations that would cut the image off from the LM by random values.

    Two families start with the image path switched off, sensible for fine-tuning from pretrained
    parts but useless in a random checkpoint: the image could not influence the answer, and
    calibration statistics of the vision side would be degenerate.

    * Gemma 3 zero-initialises its projector matrix ``mm_input_projection_weight``; every weight
      matrix that is all zero is redrawn from N(0, initializer_range).
    * Mllama zero-initialises its tanh gates (cross-attention and the vision tower's tile and
      positional embeddings); zero gates are set to 0.5.

    1-D parameters otherwise (norm weights, biases; Gemma's RMSNorm is ``1 + w`` with ``w``
    zero) are left alone. Runs under the build's seed, so it stays deterministic.
    """
    import torch

    std = getattr(config, "initializer_range", None) or config.get_text_config().initializer_range
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.any() or not p.is_floating_point():
                continue
            if p.ndim >= 2:
                p.normal_(0.0, std)
            elif name.endswith("gate"):
                p.fill_(0.5)


def _generation_config(cls, tok, spec):
    """Greedy by default; stop at EOS and at the family's other stop tokens (end of turn)."""
    stops = [tok.eos_token_id] + [tok.convert_tokens_to_ids(t) for t in spec.stops]
    return cls(bos_token_id=tok.bos_token_id, eos_token_id=stops if len(stops) > 1 else stops[0],
               pad_token_id=tok.pad_token_id, do_sample=False)


def _check_saved(out: Path, info: FamilyInfo) -> None:
    arch = json.loads((out / "config.json").read_text())["architectures"][0]
    if arch != info.architecture:
        raise RuntimeError(f"{info.name}: saved architecture {arch}, expected {info.architecture}")


def publish_family(name: str, cache: Path | None = None) -> Path:
    """Build family ``name`` and publish it as a local git repository (the form a user's weights
    come in): ``<cache>/families/<name>.git``, which is returned. Rebuilt on every call."""
    from .zoo import default_cache, publish_repo

    root = Path(cache) if cache is not None else default_cache()
    src = build_family(name, root / "families" / "build" / name)
    dest = root / "families" / f"{name}.git"
    publish_repo(src, dest, lfs=False)
    return dest
