"""The LLaVA lineage's conventions, derived from the code itself; the engine places what a research
loader loads."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch

from llmc.models.llava_lineage import engine_placement
from wizard.services.inspect import code_conventions

VILA_CODE = Path(__file__).resolve().parents[1] / "wizard" / "demo" / "assets" / "tiny-vila-code"


def _package(root: Path, name: str, conversation: str) -> None:
    pkg = root / name
    (pkg / "model").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "model" / "__init__.py").write_text("")
    (pkg / "model" / "builder.py").write_text("def load_pretrained_model(model_path, model_name, device='cuda'):\n"
                                              "    raise NotImplementedError\n")
    (pkg / "mm_utils.py").write_text("def tokenizer_image_token(*a, **k): pass\ndef process_images(*a, **k): pass\n")
    (pkg / "constants.py").write_text("IMAGE_TOKEN_INDEX = -200\nDEFAULT_IMAGE_TOKEN = '<image>'\n")
    (pkg / "conversation.py").write_text(textwrap.dedent(conversation))


CONV = """
    class Conv:
        def __init__(self, style, roles=("USER", "ASSISTANT")):
            self.style, self.roles, self.messages = style, roles, []
        def copy(self):
            return Conv(self.style, self.roles)
        def append_message(self, role, message):
            self.messages.append((role, message))
        def get_prompt(self):
            if self.style == "auto":
                raise ValueError("Invalid style: SeparatorStyle.AUTO")
            return " ".join(f"{r}: {m or ''}" for r, m in self.messages)
    conv_auto, conv_plain, conv_v1 = Conv("auto"), Conv("two"), Conv("two")
    conv_templates = {"auto": conv_auto, "plain": conv_plain, "vicuna_v1": conv_v1, "mine": Conv("two")}
    default_conversation = DEFAULT
"""


@pytest.mark.parametrize("default,expected", [("conv_auto", "vicuna_v1"), ("conv_templates['mine']", "mine"),
                                              ("None", "vicuna_v1")])
def test_the_conversation_mode_is_the_codes_own_default_when_it_builds_a_prompt(tmp_path, monkeypatch, default,
                                                                                  expected):
    name = f"lineage_pkg_{abs(hash(default)) % 10**8}"
    _package(tmp_path, name, CONV.replace("DEFAULT", default))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert code_conventions(name) == ("llava-lineage", expected, [])


def test_tiny_vila_follows_the_lineage_with_the_template_it_was_trained_on(monkeypatch):
    monkeypatch.syspath_prepend(str(VILA_CODE))
    assert code_conventions("tiny_vila") == ("llava-lineage", "vicuna_v1_nosys", [])


def test_a_loader_asking_for_another_device_gets_the_engines(tmp_path):
    """VILA 1.5's loader sets ``device_map="cuda"`` whenever its tower is SigLIP, whatever device it
    was given: inside ``engine_placement`` the model lands where the engine runs."""
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(tmp_path / "m")
    if not torch.cuda.is_available():
        with pytest.raises(Exception):  # noqa: B017 - whatever transformers / torch raise without CUDA
            LlamaForCausalLM.from_pretrained(tmp_path / "m", device_map="cuda")
    with engine_placement("cpu"):
        model = LlamaForCausalLM.from_pretrained(tmp_path / "m", device_map="cuda")
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert "from_pretrained" not in LlamaForCausalLM.__dict__  # put back as it was
    assert sys.modules["transformers"].PreTrainedModel.from_pretrained.__func__.__qualname__.startswith(
        "PreTrainedModel.")
