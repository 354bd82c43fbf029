"""Per-family recipes of the family zoo: tokenizer spec, tiny config, processor.

Every recipe is a function ``recipe(tok) -> (config, processor)`` given the family's trained
tokenizer; :func:`wizard.demo.families.build_family` builds the model from the config under a
fixed seed and saves both. Sizes are chosen so that each family's real code paths run (anyres
tiles for LLaVA-OneVision, image splitting for Idefics3, window attention for Qwen2.5-VL, sliding
and global layers for Gemma 3) while the whole folder stays well under 3 MB.
"""

from __future__ import annotations

from .family_tokenizer import (
    GEMMA3_TEMPLATE,
    GLM4V_TEMPLATE,
    IDEFICS2_TEMPLATE,
    IDEFICS3_TEMPLATE,
    LLAVA_ONEVISION_TEMPLATE,
    MLLAMA_TEMPLATE,
    QWEN2_VL_TEMPLATE,
    SMOLVLM_TEMPLATE,
    TokenizerSpec,
)

HIDDEN = 64
# Llama-style decoder shared by the families (head_dim 16).
TEXT = {"hidden_size": HIDDEN, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 4096}
# SigLIP-style vision tower: 32 px images, 8 px patches -> 4x4 patches.
SIGLIP = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
          "image_size": 32, "patch_size": 8}
# Qwen2-VL's smart_resize keeps images between these pixel counts (multiples of 28 px):
# a 64x64 image becomes 56x56 = 4x4 patches of 14 px = 4 merged image tokens.
QWEN_PIXELS = {"min_pixels": 28 * 28, "max_pixels": 56 * 56}


def vocab_size(tok) -> int:
    """The model's vocabulary: the tokenizer's, rounded up to a multiple of 64 as real
    checkpoints pad theirs (so ``len(tokenizer) < vocab_size`` is exercised too)."""
    return -(-len(tok) // 64) * 64


def ids(tok, **named: str) -> dict[str, int]:
    return {k: tok.convert_tokens_to_ids(v) for k, v in named.items()}


# --------------------------------------------------------------------------------------------
# Qwen2-VL / Qwen2.5-VL

QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>")
QWEN_TOKENIZER = TokenizerSpec(
    specials=QWEN_SPECIALS,
    named={"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
    extra={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
           "vision_bos_token": "<|vision_start|>", "vision_eos_token": "<|vision_end|>"},
    chat_template=QWEN2_VL_TEMPLATE,
    stops=("<|endoftext|>",),
)


def _qwen_text(tok) -> dict:
    # mrope_section splits head_dim/2 = 8 rotary frequencies over (temporal, height, width).
    return dict(TEXT, vocab_size=vocab_size(tok), bos_token_id=None, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]})


def _merged_patches(processor_cls, image_cls, video_cls, tok, patch: int, pixels: tuple[int, int]):
    """A processor of the Qwen2-VL kind: ``patch`` px patches over 2 frames, merged 2x2, images
    resized to between ``pixels`` (fewest, most) pixels."""
    px = {"patch_size": patch, "temporal_patch_size": 2, "merge_size": 2,
          "size": {"shortest_edge": pixels[0], "longest_edge": pixels[1]}}
    return processor_cls(image_processor=image_cls(**px), tokenizer=tok, video_processor=video_cls(**px),
                         chat_template=tok.chat_template)


def _qwen_processor(processor_cls, tok):
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    return _merged_patches(processor_cls, Qwen2VLImageProcessor, Qwen2VLVideoProcessor, tok, 14,
                           (QWEN_PIXELS["min_pixels"], QWEN_PIXELS["max_pixels"]))


def _qwen_token_ids(tok) -> dict:
    return ids(tok, image_token_id="<|image_pad|>", video_token_id="<|video_pad|>",
               vision_start_token_id="<|vision_start|>", vision_end_token_id="<|vision_end|>")


def qwen2_vl(tok):
    from transformers import Qwen2VLConfig, Qwen2VLProcessor

    cfg = Qwen2VLConfig(
        text_config=_qwen_text(tok),
        vision_config={"depth": 1, "embed_dim": 32, "hidden_size": HIDDEN, "num_heads": 2, "patch_size": 14,
                       "spatial_merge_size": 2, "temporal_patch_size": 2},
        **_qwen_token_ids(tok),
    )
    return cfg, _qwen_processor(Qwen2VLProcessor, tok)


def qwen2_5_vl(tok):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLProcessor

    # Two vision blocks: block 0 attends within 28 px windows (one merged token each), block 1
    # is a full-attention block, as in the released models' mix.
    cfg = Qwen2_5_VLConfig(
        text_config=_qwen_text(tok),
        vision_config={"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                       "out_hidden_size": HIDDEN, "patch_size": 14, "spatial_merge_size": 2,
                       "temporal_patch_size": 2, "window_size": 28, "fullatt_block_indexes": [1]},
        **_qwen_token_ids(tok),
    )
    return cfg, _qwen_processor(Qwen2_5_VLProcessor, tok)


def qwen3_vl(tok):
    from transformers import Qwen2VLImageProcessor, Qwen3VLConfig, Qwen3VLProcessor, Qwen3VLVideoProcessor

    # Two vision blocks; block 0's features also go, through a deepstack merger of their own, into
    # the language model's hidden states after its decoder layer 0 (the released models inject
    # three). 16 px patches merged 2x2: a 64x64 image is 4 <|image_pad|> tokens; a 4x4 grid of
    # learned position embeddings, interpolated to the image's grid.
    text = dict(TEXT, head_dim=TEXT["hidden_size"] // TEXT["num_attention_heads"], vocab_size=vocab_size(tok),
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [2, 3, 3],
                                 "mrope_interleaved": True})
    cfg = Qwen3VLConfig(
        text_config=text,
        vision_config={"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                       "out_hidden_size": HIDDEN, "patch_size": 16, "spatial_merge_size": 2,
                       "temporal_patch_size": 2, "num_position_embeddings": 16, "deepstack_visual_indexes": [0]},
        **_qwen_token_ids(tok),
    )
    return cfg, _merged_patches(Qwen3VLProcessor, Qwen2VLImageProcessor, Qwen3VLVideoProcessor, tok, 16,
                                (32 * 32, 64 * 64))


# --------------------------------------------------------------------------------------------
# GLM-4.1V (vision tower with a conv downsample and a SwiGLU merger + GLM-4 LM)

GLM4V_TOKENIZER = TokenizerSpec(
    specials=("<|endoftext|>", "[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>",
              "<|begin_of_image|>", "<|end_of_image|>", "<|image|>", "<|begin_of_video|>", "<|end_of_video|>",
              "<|video|>"),
    named={"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"},
    extra={"image_token": "<|image|>", "video_token": "<|video|>"},
    chat_template=GLM4V_TEMPLATE,
    stops=("<|user|>", "<|observation|>"),
)


def glm4v(tok):
    from transformers import Glm4vConfig, Glm4vImageProcessor, Glm4vProcessor, Glm4vVideoProcessor

    # Half of each head's dimensions rotate (partial_rotary_factor 0.5): 4 frequencies over
    # (temporal, height, width). A 64x64 image is resized to 56x56: 16 patches of 14 px, merged
    # 2x2 by the conv downsample into 4 <|image|> tokens; a 4x4 grid of position embeddings.
    text = dict(TEXT, vocab_size=vocab_size(tok), pad_token_id=tok.pad_token_id,
                rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [1, 1, 2],
                                 "partial_rotary_factor": 0.5})
    cfg = Glm4vConfig(
        text_config=text,
        vision_config={"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                       "out_hidden_size": HIDDEN, "patch_size": 14, "image_size": 56, "spatial_merge_size": 2,
                       "temporal_patch_size": 2},
        **ids(tok, image_token_id="<|image|>", video_token_id="<|video|>", image_start_token_id="<|begin_of_image|>",
              image_end_token_id="<|end_of_image|>", video_start_token_id="<|begin_of_video|>",
              video_end_token_id="<|end_of_video|>"),
    )
    return cfg, _merged_patches(Glm4vProcessor, Glm4vImageProcessor, Glm4vVideoProcessor, tok, 14,
                                (28 * 28, 112 * 112))


# --------------------------------------------------------------------------------------------
# LLaVA-OneVision (SigLIP + Qwen2)

LLAVA_ONEVISION_TOKENIZER = TokenizerSpec(
    specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"),
    named={"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
    extra={"image_token": "<image>", "video_token": "<video>"},
    chat_template=LLAVA_ONEVISION_TEMPLATE,
    stops=("<|endoftext|>",),
)
# anyres: a 64x64 image picks the 64x64 grid = 2x2 tiles of 32 px plus the 32 px base image.
LLAVA_PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]


def llava_onevision(tok):
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
    )

    cfg = LlavaOnevisionConfig(
        text_config=dict(TEXT, model_type="qwen2", vocab_size=vocab_size(tok), bos_token_id=None,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(SIGLIP, model_type="siglip_vision_model", vision_use_head=False),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        video_token_index=tok.convert_tokens_to_ids("<video>"),
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=LLAVA_PINPOINTS,
    )
    size = {"height": SIGLIP["image_size"], "width": SIGLIP["image_size"]}
    proc = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=LLAVA_PINPOINTS),
        tokenizer=tok,
        video_processor=LlavaOnevisionVideoProcessor(size=size),
        num_image_tokens=(SIGLIP["image_size"] // SIGLIP["patch_size"]) ** 2,
        vision_feature_select_strategy="full",
        chat_template=tok.chat_template,
    )
    return cfg, proc


# --------------------------------------------------------------------------------------------
# Idefics3 (SigLIP-style tower + pixel-shuffle connector + Llama)

ROW_COL = tuple(f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6))
IDEFICS3_TOKENIZER = TokenizerSpec(
    specials=("<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
              "<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>") + ROW_COL,
    named={"bos_token": "<|begin_of_text|>", "eos_token": "<end_of_utterance>",
           "pad_token": "<|reserved_special_token_0|>"},
    extra={"image_token": "<image>", "fake_image_token": "<fake_token_around_image>",
           "global_image_token": "<global-img>", "end_of_utterance_token": "<end_of_utterance>"},
    chat_template=IDEFICS3_TEMPLATE,
    stops=("<|end_of_text|>",),
)
# pixel shuffle by 2 turns 4x4 patches into 4 image tokens per 32 px tile
IDEFICS3_SCALE = 2
IDEFICS3_SEQ = (SIGLIP["image_size"] // SIGLIP["patch_size"]) ** 2 // IDEFICS3_SCALE**2


def _idefics_config(tok) -> dict:
    """The config values Idefics3 and SmolVLM (the same architecture) share."""
    return dict(
        text_config=dict(TEXT, model_type="llama", vocab_size=vocab_size(tok), bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(SIGLIP),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        scale_factor=IDEFICS3_SCALE,
        pad_token_id=tok.pad_token_id,
    )


def idefics3(tok):
    from transformers import Idefics3Config, Idefics3ImageProcessor, Idefics3Processor

    cfg = Idefics3Config(**_idefics_config(tok))
    # A 64x64 image is split into 2x2 tiles of 32 px (row/col tokens) plus a global 32 px image.
    improc = Idefics3ImageProcessor(size={"longest_edge": 2 * SIGLIP["image_size"]},
                                    max_image_size={"longest_edge": SIGLIP["image_size"]},
                                    do_image_splitting=True)
    return cfg, Idefics3Processor(image_processor=improc, tokenizer=tok, image_seq_len=IDEFICS3_SEQ,
                                  chat_template=tok.chat_template)


# --------------------------------------------------------------------------------------------
# Idefics2 (SigLIP-style tower + MLP modality projection + perceiver resampler + Mistral)

IDEFICS2_TOKENIZER = TokenizerSpec(
    specials=("<unk>", "<s>", "</s>", "<fake_token_around_image>", "<image>", "<end_of_utterance>"),
    named={"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"},
    extra={"image_token": "<image>", "image_boundary_token": "<fake_token_around_image>",
           "end_of_utterance_token": "<end_of_utterance>"},
    chat_template=IDEFICS2_TEMPLATE,
    stops=("<end_of_utterance>",),
)
#: the perceiver's latents: the <image> tokens per image, whatever its size
IDEFICS2_LATENTS = 4


def idefics2(tok):
    from transformers import Idefics2Config, Idefics2ImageProcessor, Idefics2Processor

    # The modality projection (an MLP) writes the LM width; a one-layer perceiver resampler then
    # reads it into 4 latents, and the resampler's final norm writes the <image> rows.
    cfg = Idefics2Config(
        text_config=dict(TEXT, model_type="mistral", vocab_size=vocab_size(tok), bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, sliding_window=None),
        vision_config=dict(SIGLIP),
        perceiver_config={"hidden_size": HIDDEN, "resampler_n_latents": IDEFICS2_LATENTS, "resampler_depth": 1,
                          "resampler_n_heads": 2, "resampler_head_dim": 16, "num_key_value_heads": 1},
        image_token_id=tok.convert_tokens_to_ids("<image>"),
    )
    side = SIGLIP["image_size"]
    improc = Idefics2ImageProcessor(size={"shortest_edge": side, "longest_edge": side}, do_image_splitting=False)
    return cfg, Idefics2Processor(image_processor=improc, tokenizer=tok, image_seq_len=IDEFICS2_LATENTS,
                                  chat_template=tok.chat_template)


# --------------------------------------------------------------------------------------------
# Gemma 3 and PaliGemma (SigLIP + Gemma). Gemma's own special-token ids: pad 0, eos 1, bos 2, unk 3.

GEMMA_BASE = ("<pad>", "<eos>", "<bos>", "<unk>")
GEMMA_NAMED = {"pad_token": "<pad>", "eos_token": "<eos>", "bos_token": "<bos>", "unk_token": "<unk>"}
GEMMA3_TOKENIZER = TokenizerSpec(
    specials=GEMMA_BASE + ("<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>",
                           "<image_soft_token>"),
    named=GEMMA_NAMED,
    extra={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"},
    chat_template=GEMMA3_TEMPLATE,
    stops=("<end_of_turn>",),
)
GEMMA3_IMAGE_TOKENS = 4  # 4x4 patches average-pooled 2x2


def gemma3(tok):
    from transformers import Gemma3Config, Gemma3ImageProcessor, Gemma3Processor

    # Three decoder layers: two sliding-window (local) layers then a global one, the pattern of
    # the released models (5 local : 1 global) in miniature. The window (16) is shorter than a
    # chat prompt, so the sliding mask really cuts.
    text = dict(TEXT, num_hidden_layers=3, vocab_size=vocab_size(tok), head_dim=16, query_pre_attn_scalar=16,
                sliding_window=16, sliding_window_pattern=3,
                layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    cfg = Gemma3Config(
        text_config=text,
        vision_config=dict(SIGLIP, model_type="siglip_vision_model", vision_use_head=False),
        mm_tokens_per_image=GEMMA3_IMAGE_TOKENS,
        **ids(tok, boi_token_index="<start_of_image>", eoi_token_index="<end_of_image>",
              image_token_index="<image_soft_token>"),
    )
    size = {"height": SIGLIP["image_size"], "width": SIGLIP["image_size"]}
    improc = Gemma3ImageProcessor(size=size, do_pan_and_scan=False)
    return cfg, Gemma3Processor(image_processor=improc, tokenizer=tok, image_seq_length=GEMMA3_IMAGE_TOKENS,
                                chat_template=tok.chat_template)


PALIGEMMA_TOKENIZER = TokenizerSpec(
    specials=GEMMA_BASE + ("<image>",),
    named=GEMMA_NAMED,
    extra={"image_token": "<image>"},
    # the processor adds these on every load; having them in the vocabulary keeps the model's
    # embedding covering every id the tokenizer can produce
    added=tuple(f"<loc{i:0>4}>" for i in range(1024)) + tuple(f"<seg{i:0>3}>" for i in range(128)),
)
PALIGEMMA_IMAGE_TOKENS = (SIGLIP["image_size"] // SIGLIP["patch_size"]) ** 2


def paligemma(tok):
    from transformers import PaliGemmaConfig, PaliGemmaProcessor, SiglipImageProcessor

    n_vocab = vocab_size(tok)
    cfg = PaliGemmaConfig(
        text_config=dict(TEXT, model_type="gemma", num_key_value_heads=1, head_dim=16, vocab_size=n_vocab,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id),
        vision_config=dict(SIGLIP, model_type="siglip_vision_model", vision_use_head=False),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        vocab_size=n_vocab,
        projection_dim=HIDDEN,
        hidden_size=HIDDEN,
    )
    improc = SiglipImageProcessor(size={"height": SIGLIP["image_size"], "width": SIGLIP["image_size"]},
                                  image_seq_length=PALIGEMMA_IMAGE_TOKENS)
    return cfg, PaliGemmaProcessor(image_processor=improc, tokenizer=tok)


# --------------------------------------------------------------------------------------------
# SmolVLM (Idefics3's architecture and image splitting, SmolLM tokens, video support)

SMOLVLM_TOKENIZER = TokenizerSpec(
    specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<fake_token_around_image>", "<image>",
              "<global-img>", "<end_of_utterance>", "<video>") + ROW_COL,
    named={"bos_token": "<|im_start|>", "eos_token": "<end_of_utterance>", "pad_token": "<|im_end|>",
           "unk_token": "<|endoftext|>"},
    extra={"image_token": "<image>", "video_token": "<video>", "fake_image_token": "<fake_token_around_image>",
           "global_image_token": "<global-img>", "end_of_utterance_token": "<end_of_utterance>"},
    chat_template=SMOLVLM_TEMPLATE,
)


def smolvlm(tok):
    from transformers import (
        SmolVLMConfig,
        SmolVLMImageProcessor,
        SmolVLMProcessor,
        SmolVLMVideoProcessor,
    )

    cfg = SmolVLMConfig(**_idefics_config(tok))
    sizes = {"size": {"longest_edge": 2 * SIGLIP["image_size"]},
             "max_image_size": {"longest_edge": SIGLIP["image_size"]}}
    return cfg, SmolVLMProcessor(image_processor=SmolVLMImageProcessor(do_image_splitting=True, **sizes),
                                 tokenizer=tok, video_processor=SmolVLMVideoProcessor(**sizes),
                                 image_seq_len=IDEFICS3_SEQ, chat_template=tok.chat_template)


# --------------------------------------------------------------------------------------------
# Mllama (Llama 3.2 Vision): the image enters through cross-attention decoder layers

MLLAMA_TOKENIZER = TokenizerSpec(
    specials=("<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>", "<|start_header_id|>",
              "<|end_header_id|>", "<|eot_id|>", "<|python_tag|>", "<|image|>"),
    named={"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "pad_token": "<|finetune_right_pad_id|>"},
    extra={"image_token": "<|image|>"},
    chat_template=MLLAMA_TEMPLATE,
    stops=("<|end_of_text|>",),
)
MLLAMA_TILES = 4  # up to 4 tiles of 32 px; a 64x64 image uses a 2x2 arrangement


def mllama(tok):
    from transformers import MllamaConfig, MllamaImageProcessor, MllamaProcessor

    # Decoder layer 0 is self-attention, layer 1 a gated cross-attention layer over the image.
    # The vision tower is a 1-layer local encoder + 1-layer global encoder; the features of
    # local layer 0 are concatenated to the final ones (vision_output_dim = 2 * 32).
    cfg = MllamaConfig(
        text_config=dict(TEXT, vocab_size=vocab_size(tok), cross_attention_layers=[1],
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id),
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_global_layers": 1,
                       "attention_heads": 2, "image_size": SIGLIP["image_size"], "patch_size": SIGLIP["patch_size"],
                       "max_num_tiles": MLLAMA_TILES, "intermediate_layers_indices": [0], "vision_output_dim": 64},
        image_token_index=tok.convert_tokens_to_ids("<|image|>"),
    )
    improc = MllamaImageProcessor(size={"height": SIGLIP["image_size"], "width": SIGLIP["image_size"]},
                                  max_image_tiles=MLLAMA_TILES)
    return cfg, MllamaProcessor(image_processor=improc, tokenizer=tok, chat_template=tok.chat_template)
