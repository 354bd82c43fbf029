"""Offline tokenizers and chat templates for the family zoo (:mod:`wizard.demo.families`).

Each family gets a small byte-level BPE trained on the shapes task's text, carrying that family's
own special tokens (at the lowest ids, in a fixed order) and a chat template resembling the real
checkpoint's. Nothing is downloaded: the same inputs always give the same vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .train_data import corpus_lines

# Scenes whose questions/captions make up the training corpus (the questions repeat a lot, so a
# few hundred scenes cover every word; more only costs time).
CORPUS_SCENES = 300

# Text seen around the prompts in the families' chat formats, so that role names and the bare
# answers (an answer starts a line after "assistant\n", so without a leading space) are single
# tokens or close to it.
EXTRA_LINES = [
    "system\nYou are a helpful assistant.",
    "user\n", "assistant\n", "model\n", "User:", "Assistant:", "answer en ",
    "Yes", "No", " Yes", " No", "Yes.", "No.",
]


@dataclass(frozen=True)
class TokenizerSpec:
    """What a family's tokenizer must carry.

    ``specials`` get the lowest ids in this order; ``named`` maps the standard attributes
    (``bos_token``, ``eos_token``, ``pad_token``, ``unk_token``) and ``extra`` the family-specific
    attributes the processors read (``image_token`` -> ``tokenizer.image_token`` and
    ``tokenizer.image_token_id``); ``added`` are plain (non-special) tokens appended after training
    (PaliGemma's ``<locXXXX>``/``<segXXX>``); ``stops`` are the tokens besides EOS at which
    generation stops (the generation config's ``eos_token_id`` list, e.g. Gemma's ``<end_of_turn>``).
    """

    specials: tuple[str, ...]
    named: dict[str, str]
    extra: dict[str, str] = field(default_factory=dict)
    added: tuple[str, ...] = ()
    stops: tuple[str, ...] = ()
    chat_template: str | None = None
    vocab_size: int = 512


def build_tokenizer(spec: TokenizerSpec):
    """A ``PreTrainedTokenizerFast`` for ``spec``: left padding, no automatic BOS/EOS.

    No family adds BOS in the tokenizer: the chat templates write it themselves (Gemma 3,
    Idefics3) or the processor inserts it (PaliGemma), so text from ``apply_chat_template`` fed
    back through the processor never gets a doubled BOS.
    """
    from tokenizers import (
        AddedToken,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=spec.named.get("unk_token")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=list(spec.specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = corpus_lines(CORPUS_SCENES) + EXTRA_LINES
    tok.train_from_iterator(lines, trainer=trainer)
    if spec.added:
        tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in spec.added])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        **spec.named,
        extra_special_tokens=dict(spec.extra) or None,
        padding_side="left",
        model_max_length=4096,
    )
    if spec.chat_template is not None:
        fast.chat_template = spec.chat_template
    return fast


# --------------------------------------------------------------------------------------------
# chat templates (close to the released checkpoints', trimmed to images + text)

# Qwen2-VL / Qwen2.5-VL: ChatML with a default system turn; an image is
# <|vision_start|><|image_pad|><|vision_end|>.
QWEN2_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# GLM-4.1V / GLM-4.5V: [gMASK]<sop>, <|role|> headers, images wrapped in begin/end tokens.
GLM4V_TEMPLATE = (
    "[gMASK]<sop>{% for message in messages %}<|{{ message['role'] }}|>\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}<|begin_of_image|><|image|><|end_of_image|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|begin_of_video|><|video|><|end_of_video|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

# LLaVA-OneVision (Qwen2 LM): ChatML, images then videos then text of each turn.
LLAVA_ONEVISION_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + ' ' }}"
    "{% if message['content'] is string %}{{ '\n' + message['content'] }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ '\n' + content['text'] }}{% endfor %}{% endif %}{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Idefics3 / SmolVLM: "User:<image>question<end_of_utterance>\nAssistant:".
IDEFICS3_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}{{ message['role'].capitalize() }}"
    "{% if message['content'] is string %}{{ ': ' + message['content'] }}{% else %}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# Idefics2: Idefics3's turns with the tokenizer's own BOS.
IDEFICS2_TEMPLATE = IDEFICS3_TEMPLATE.replace("<|begin_of_text|>", "{{ bos_token }}")

# Gemma 3: <start_of_turn>user/model turns; the processor expands <start_of_image>.
GEMMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] | trim }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}{{ '<start_of_image>' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

# Llama 3.2 Vision (mllama): header-id turns, <|image|> before the text.
MLLAMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}{{ '<|image|>' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# SmolVLM: Idefics3's format behind <|im_start|>, with videos.
SMOLVLM_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}{{ ': ' + message['content'] }}{% else %}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% elif line['type'] == 'video' %}{{ '<video>' }}"
    "{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
