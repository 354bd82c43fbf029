"""``wizard.services.inspect``: model skeletons built from config.json only, and the projector picker.

Every model here is built on the meta device from an explicit config (no hub, no weights).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers as T
from accelerate import init_empty_weights
from torch import nn

from llmc.models.projector import (
    FLAG_CROSS_ATTENTION,
    FLAG_NORM_AFTER,
    find_injection_layers,
)
from wizard.services.errors import WizardError
from wizard.cli import main_inspect
from wizard.services.inspect import (
    build_skeleton,
    inspect_model,
    inspect_module,
)

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "wizard" / "demo" / "assets"
TINY_LLAVA = ASSETS / "tiny-llava"
TINY_VILA = ASSETS / "tiny-vila"
TINY_VILA_CODE = ASSETS / "tiny-vila-code"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def _copy_without_weights(src: Path, dst: Path) -> Path:
    """A copy of a model folder with only its config/tokenizer files: no weight file at all."""
    shutil.copytree(src, dst, ignore=lambda d, names: [n for n in names if n.endswith(WEIGHT_SUFFIXES)])
    assert not [p for p in dst.rglob("*") if p.name.endswith(WEIGHT_SUFFIXES)]
    return dst


@pytest.fixture
def vila_code(monkeypatch):
    monkeypatch.syspath_prepend(str(TINY_VILA_CODE))


def _writes_hidden(model: nn.Module, name: str, hidden: int) -> bool:
    layer = model.get_submodule(name)
    return isinstance(layer, nn.Linear) and layer.out_features == hidden


# ---------------------------------------------------------------------------------------------
# The demo models
# ---------------------------------------------------------------------------------------------


def test_tiny_llava_report(no_weight_loading):
    r = inspect_model(TINY_LLAVA)
    assert (r.architecture, r.model_kind) == ("LlavaForConditionalGeneration", "transformers")
    assert r.language_model_path == "model.language_model"
    assert (r.blocks_path, r.num_blocks, r.hidden_size) == ("model.language_model.layers", 2, 128)
    assert r.vision_tower_path == "model.vision_tower"
    assert r.projector_path == "model.multi_modal_projector"
    assert r.proposed_last_layers == ["model.multi_modal_projector.linear_2"]
    assert r.flags == [] and r.trailing_norms == []
    # vision width 64 -> 128 -> 128: both Linears write the hidden width, only linear_2 reaches the LM
    assert [(c.name, c.shape) for c in r.candidates] == [
        ("model.multi_modal_projector.linear_1", "64→128"), ("model.multi_modal_projector.linear_2", "128→128")]
    tree = r.projector_tree
    assert (tree.cls, tree.path) == ("LlavaMultiModalProjector", "model.multi_modal_projector")
    assert [(c.name, c.cls, c.shape, c.bias, c.role) for c in tree.children] == [
        ("linear_1", "Linear", "64→128", True, None), ("act", "GELUActivation", None, None, None),
        ("linear_2", "Linear", "128→128", True, "injection")]
    assert tree.params == (64 * 128 + 128) + (128 * 128 + 128)
    assert len(r.quant_layers) == 2 * 7 and all(q.divisible_by_group is None for q in r.quant_layers)


def test_skeleton_is_on_the_meta_device(vila_code):
    for folder, pkg in ((TINY_LLAVA, None), (TINY_VILA, "tiny_vila")):
        model, _, _ = build_skeleton(folder, pkg)
        assert {p.device.type for p in model.parameters()} == {"meta"}


FAKE_CODE = '''
import torch
from torch import nn
from transformers import PretrainedConfig


class FakeVlmConfig(PretrainedConfig):
    model_type = "fake_vlm"

    def __init__(self, width=16, vision_width=8, **kwargs):
        super().__init__(**kwargs)
        self.width, self.vision_width = width, vision_width


class HelperForCausalLM(nn.Module):  # another *ForCausalLM: the one named in architectures wins
    def __init__(self, config):
        raise AssertionError("wrong class picked")


class FakeVlmForCausalLM(nn.Module):
    def __init__(self, config):
        super().__init__()
        # computing with a tensor in __init__ fails on the meta device: init_empty_weights takes over
        n_layers = int(torch.tensor([1, 1]).sum().item())
        h, v = config.width, config.vision_width
        blocks = []
        for _ in range(n_layers):
            b = nn.Module()
            b.self_attn = nn.Module()
            b.self_attn.q_proj, b.self_attn.k_proj, b.self_attn.v_proj, b.self_attn.o_proj = (
                nn.Linear(h, h) for _ in range(4))
            blocks.append(b)
        self.llm = nn.Module()
        self.llm.embed_tokens = nn.Embedding(50, h)
        self.llm.blocks = nn.ModuleList(blocks)
        self.resampler = nn.Sequential(nn.Linear(v, h), nn.GELU(), nn.Linear(h, h))
'''


def test_generic_custom_code_package(tmp_path, monkeypatch):
    pkg = tmp_path / "code" / "fake_vlm"
    (pkg / "model").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "model" / "__init__.py").write_text(FAKE_CODE)
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    (tmp_path / "config.json").write_text(json.dumps(
        {"architectures": ["FakeVlmForCausalLM"], "model_type": "fake_vlm", "width": 16, "vision_width": 8}))
    r = inspect_model(tmp_path, code_package="fake_vlm", group_size=16)
    assert (r.architecture, r.model_kind, r.hidden_size) == ("FakeVlmForCausalLM", "custom-code", 16)
    assert (r.language_model_path, r.blocks_path, r.num_blocks) == ("llm", "llm.blocks", 2)
    assert (r.vision_tower_path, r.projector_path) == (None, "resampler")
    assert r.proposed_last_layers == ["resampler.2"] and r.flags == []
    assert len(r.quant_layers) == 8 and r.group_size_problems == []


def test_the_weight_guard_catches_a_real_load(no_weight_loading):
    with pytest.raises(AssertionError, match="a weight file was opened"):
        T.LlavaForConditionalGeneration.from_pretrained(TINY_LLAVA)


def test_tiny_llava_without_weight_files_gives_the_same_report(tmp_path):
    bare = _copy_without_weights(TINY_LLAVA, tmp_path / "tiny-llava")
    a, b = inspect_model(TINY_LLAVA).to_dict(), inspect_model(bare).to_dict()
    a.pop("weights_dir"), b.pop("weights_dir")
    assert a == b


def test_tiny_vila_custom_code(vila_code, tmp_path, no_weight_loading):
    # configs (and the tokenizer and image processor the code builds) without any weight file
    bare = tmp_path / "tiny-vila"
    bare.mkdir()
    shutil.copy(TINY_VILA / "config.json", bare / "config.json")
    for part in ("llm", "vision_tower", "mm_projector"):  # VILA's parts: each folder's config only
        (bare / part).mkdir()
        for f in ("config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json"):
            if (TINY_VILA / part / f).is_file():
                shutil.copy(TINY_VILA / part / f, bare / part / f)
    r = inspect_model(bare, code_package="tiny_vila")
    assert (r.architecture, r.model_kind) == ("LlavaLlamaModel", "custom-code")
    assert (r.language_model_path, r.blocks_path, r.num_blocks) == ("llm.model", "llm.model.layers", 2)
    assert r.hidden_size == 128
    assert (r.vision_tower_path, r.projector_path) == ("vision_tower", "mm_projector")
    assert r.proposed_last_layers == ["mm_projector.layers.4"]  # Sequential(DownSample, LN, Linear, GELU, Linear)
    assert r.flags == []
    seq = r.projector_tree.children[0]
    assert seq.cls == "Sequential"
    assert [(c.cls, c.shape) for c in seq.children] == [
        ("DownSampleBlock", None), ("LayerNorm", "256"), ("Linear", "256→128"), ("GELU", None), ("Linear", "128→128")]
    assert [c.role for c in seq.children] == [None, None, None, None, "injection"]
    assert r.projector_tree.params == sum(c.params for c in seq.children) == 2 * 256 + 256 * 128 + 128 + 128 * 128 + 128
    # GQA: 2 KV heads of 32 -> k/v write 64
    kv = {q.name.rsplit(".", 1)[-1]: q.out_features for q in r.quant_layers if q.name.startswith("llm.model.layers.0.")}
    assert kv["k_proj"] == kv["v_proj"] == 64 and kv["down_proj"] == 128
    assert r.to_dict() == json.loads(r.to_json())


def test_same_pick_as_the_loaded_projector(vila_code):
    """The report's path names the layer that find_injection_layers picks on the real module."""
    from tiny_vila.model.builder import load_pretrained_model

    model = load_pretrained_model(str(TINY_VILA), "tiny-vila", device="cpu")[1]
    (name, layer), = find_injection_layers(model.mm_projector, 128).layers
    assert layer is model.mm_projector.layers[-1] and f"mm_projector.{name}" == "mm_projector.layers.4"


def test_group_size_problems_list_every_non_divisible_layer():
    r = inspect_model(TINY_LLAVA, group_size=48)
    assert r.group_size == 48
    assert {q.in_features for q in r.quant_layers} == {128, 512}  # 128 % 48 and 512 % 48 are not 0
    assert r.group_size_problems == [q.name for q in r.quant_layers] and len(r.group_size_problems) == 14
    assert "model.language_model.layers.1.mlp.down_proj" in r.group_size_problems
    assert all(q.divisible_by_group is False for q in r.quant_layers)
    ok = inspect_model(TINY_LLAVA, group_size=32)
    assert ok.group_size_problems == [] and all(q.divisible_by_group for q in ok.quant_layers)
    with pytest.raises(WizardError, match="positive"):
        inspect_model(TINY_LLAVA, group_size=0)


# ---------------------------------------------------------------------------------------------
# transformers VLM families, built tiny from their config classes
# ---------------------------------------------------------------------------------------------

H = 64  # LM hidden size of every tiny family (vision widths differ from it on purpose)
TEXT = {"hidden_size": H, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 300, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
SIGLIP = {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 1, "num_attention_heads": 2,
          "image_size": 32, "patch_size": 8}


def _llava_onevision():
    return T.LlavaOnevisionConfig(text_config=T.Qwen2Config(**TEXT), vision_config=T.SiglipVisionConfig(**SIGLIP))


def _qwen2_vl():
    from transformers.models.qwen2_vl.configuration_qwen2_vl import (
        Qwen2VLTextConfig,
        Qwen2VLVisionConfig,
    )

    text = Qwen2VLTextConfig(**TEXT, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                       "mrope_section": [2, 3, 3]})
    # vision: embed_dim 32, the merger's MLP is 128 -> 128 -> hidden_size (= the LM width)
    vision = Qwen2VLVisionConfig(depth=1, embed_dim=32, hidden_size=H, num_heads=2, mlp_ratio=2)
    return T.Qwen2VLConfig(text_config=text, vision_config=vision)


def _idefics3():
    return T.Idefics3Config(text_config=T.LlamaConfig(**TEXT), vision_config=T.Idefics3VisionConfig(**SIGLIP),
                            scale_factor=2)


def _paligemma():
    return T.PaliGemmaConfig(text_config=T.GemmaConfig(**TEXT, head_dim=16), vision_config=T.SiglipVisionConfig(**SIGLIP),
                             projection_dim=H, hidden_size=H)


def _mllama():
    text = T.MllamaTextConfig(**TEXT, cross_attention_layers=[1])
    vision = T.MllamaVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_global_layers=1,
                                  attention_heads=2, image_size=32, patch_size=8, vision_output_dim=48,
                                  intermediate_layers_indices=[0])
    return T.MllamaConfig(text_config=text, vision_config=vision)


FAMILIES = {
    # name: (config factory, LM path, vision tower, projector, proposed last layer)
    "llava-onevision": (_llava_onevision, "model.language_model", "model.vision_tower", "model.multi_modal_projector",
                        "model.multi_modal_projector.linear_2"),
    "qwen2-vl": (_qwen2_vl, "model.language_model", "model.visual", "model.visual.merger", "model.visual.merger.mlp.2"),
    "idefics3": (_idefics3, "model.text_model", "model.vision_model", "model.connector",
                 "model.connector.modality_projection.proj"),
    "paligemma": (_paligemma, "model.language_model", "model.vision_tower", "model.multi_modal_projector",
                  "model.multi_modal_projector.linear"),
    "mllama": (_mllama, "model.language_model", "model.vision_model", "model.multi_modal_projector",
               "model.multi_modal_projector"),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_vlm_family_pick(family, tmp_path, no_weight_loading):
    make, lm_path, vision_path, proj_path, last = FAMILIES[family]
    make().save_pretrained(tmp_path)  # config.json only; inspect_model builds from it
    r = inspect_model(tmp_path, group_size=32)
    assert r.model_kind == "transformers" and r.architecture.endswith("ForConditionalGeneration")
    assert (r.language_model_path, r.vision_tower_path, r.projector_path) == (lm_path, vision_path, proj_path)
    assert (r.blocks_path, r.num_blocks, r.hidden_size) == (f"{lm_path}.layers", 2, H)
    # LLaVA-OneVision's image_newline vector is placed among the image tokens: an injection point too
    assert r.proposed_last_layers == [last] + (["model.image_newline"] if family == "llava-onevision" else [])

    with init_empty_weights():
        model = T.AutoModelForImageTextToText.from_config(make())
    assert _writes_hidden(model, last, H)
    assert model.get_submodule(lm_path).get_input_embeddings().embedding_dim == H
    # the picked layer is not inside the language model or the vision encoder's blocks
    assert not last.startswith(lm_path + ".") and ".layers." not in last and ".blocks." not in last
    assert r.group_size_problems == []
    assert len(r.quant_layers) == 14 and all(q.name.startswith(f"{lm_path}.layers.") for q in r.quant_layers)

    if family == "mllama":  # image features reach the LM as cross-attention keys/values
        assert [f for f in r.flags if f.startswith(FLAG_CROSS_ATTENTION)]
        assert "model.language_model.layers.1" in r.flags[-1]
        assert r.projector_tree.cls == "Linear" and r.projector_tree.role == "injection"
    elif family == "llava-onevision":  # the image_newline vector goes among the image tokens too
        assert any(f.startswith("model.image_newline:") for f in r.flags)
        assert ("model.image_newline", "Parameter", "64") in [(c.name, c.cls, c.shape) for c in r.candidates]
    else:
        assert r.flags == []
    assert not any(FLAG_CROSS_ATTENTION in f for f in r.flags) or family == "mllama"


def test_text_only_model(tmp_path):
    T.LlamaConfig(**TEXT).save_pretrained(tmp_path)
    r = inspect_model(tmp_path)
    assert (r.language_model_path, r.blocks_path, r.num_blocks) == ("model", "model.layers", 2)
    assert r.vision_tower_path is None and r.projector_path is None and r.proposed_last_layers == []
    assert r.flags == ["text-only model: no vision tower or projector found"]


# ---------------------------------------------------------------------------------------------
# Flags, on synthetic VLMs
# ---------------------------------------------------------------------------------------------

V, D = 24, 32  # vision width, LM hidden width


class Attn(nn.Module):
    def __init__(self, h):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(h, h) for _ in range(4))


class Block(nn.Module):
    def __init__(self, h, cross=False):
        super().__init__()
        self.input_layernorm = nn.RMSNorm(h)
        if cross:
            self.cross_attn = Attn(h)
        else:
            self.self_attn = Attn(h)
        self.post_attention_layernorm = nn.RMSNorm(h)
        self.mlp = nn.Sequential()
        self.mlp.gate_proj, self.mlp.up_proj, self.mlp.down_proj = nn.Linear(h, 2 * h), nn.Linear(h, 2 * h), nn.Linear(2 * h, h)


class ToyLM(nn.Module):
    def __init__(self, cross_at=()):
        super().__init__()
        self.embed_tokens = nn.Embedding(100, D)
        self.layers = nn.ModuleList(Block(D, cross=i in cross_at) for i in range(3))
        self.norm = nn.RMSNorm(D)


class ToyVision(nn.Module):
    def __init__(self):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, V, 4, 4)
        self.layers = nn.ModuleList([Block(V)])
        self.post_norm = nn.LayerNorm(V)


class ToyVLM(nn.Module):
    def __init__(self, projector: nn.Module, cross_at=(), **extra):
        super().__init__()
        self.vision_tower = ToyVision()
        self.projector = projector
        for k, v in extra.items():
            setattr(self, k, v)
        self.language_model = ToyLM(cross_at)
        self.lm_head = nn.Linear(D, 100, bias=False)


class RawProjector(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(V, D))

    def forward(self, x):
        return x @ self.weight


class TwoBranch(nn.Module):
    """Local and pooled features, each projected to the LM width and summed: two writers."""

    def __init__(self):
        super().__init__()
        self.local_proj = nn.Linear(V, D)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.global_proj = nn.Linear(V, D)


def test_plain_chain_has_no_flags():
    r = inspect_module(ToyVLM(nn.Sequential(nn.Linear(V, D), nn.GELU(), nn.Linear(D, D))))
    assert (r.language_model_path, r.vision_tower_path, r.projector_path) == ("language_model", "vision_tower", "projector")
    assert r.proposed_last_layers == ["projector.2"] and r.flags == []
    assert [c.name for c in r.candidates] == ["projector.0", "projector.2"]


def test_flag_raw_parameter_projector():
    r = inspect_module(ToyVLM(RawProjector()))
    assert r.projector_path == "projector"
    assert r.proposed_last_layers == ["projector.weight"]
    assert len(r.flags) == 1 and "raw weight Parameter (projector.weight, shape 24x32)" in r.flags[0]
    assert [(c.name, c.cls, c.shape) for c in r.candidates] == [("projector.weight", "Parameter", "24×32")]
    (leaf,) = r.projector_tree.children
    assert (leaf.cls, leaf.path, leaf.role, leaf.params) == ("Parameter", "projector.weight", "injection", V * D)
    rep = find_injection_layers(RawProjector(), D)
    assert rep.layers == [] and [n for n, _ in rep.parameters] == ["weight"]  # callers' .layers stay modules


def test_flag_norm_after_last_linear():
    proj = nn.Sequential(nn.Linear(V, D), nn.GELU(), nn.Linear(D, D), nn.LayerNorm(D))
    r = inspect_module(ToyVLM(proj))
    assert r.proposed_last_layers == ["projector.2"]  # the Linear, with the norm reported
    assert r.trailing_norms == ["projector.3"]
    assert r.flags == [f"{FLAG_NORM_AFTER} (projector.3)"]
    assert [c.role for c in r.projector_tree.children] == [None, None, "injection", "norm-after"]
    assert r.projector_tree.children[3].shape == "32" and r.projector_tree.children[3].bias is True
    # a norm *before* the last Linear (VILA's LayerNorm on the vision width) is not flagged
    r2 = inspect_module(ToyVLM(nn.Sequential(nn.LayerNorm(V), nn.Linear(V, D))))
    assert r2.flags == [] and r2.trailing_norms == []


def test_flag_parallel_writers():
    r = inspect_module(ToyVLM(TwoBranch()))
    assert r.proposed_last_layers == ["projector.local_proj", "projector.global_proj"]
    assert r.flags == [(f"2 parallel layers write the language model width {D} (projector.local_proj, "
                        "projector.global_proj): each is an injection point; rotate every one of them")]
    assert [c.role for c in r.projector_tree.children] == ["injection", None, "injection"]


def test_flag_cross_attention():
    r = inspect_module(ToyVLM(nn.Linear(V, D), cross_at=(1,)))
    assert r.proposed_last_layers == ["projector"]
    assert len(r.flags) == 1 and r.flags[0].startswith(FLAG_CROSS_ATTENTION)
    assert "language_model.layers.1" in r.flags[0] and "layers.0" not in r.flags[0]
    assert inspect_module(ToyVLM(nn.Linear(V, D))).flags == []


def test_projector_found_by_structure_names_only_break_ties():
    # an oddly named projector is still found; the vision tower's own layers never are
    class Odd(ToyVLM):
        def __init__(self):
            super().__init__(nn.Identity(), bridge=nn.Sequential(nn.Linear(V, D)))
    r = inspect_module(Odd())
    assert (r.projector_path, r.proposed_last_layers, r.flags) == ("bridge", ["bridge.0"], [])
    # two candidate modules: the conventional name wins, and the user is told
    two = ToyVLM(nn.Identity(), adapter=nn.Linear(V, D), mm_projector=nn.Linear(V, D))
    r2 = inspect_module(two)
    assert r2.projector_path == "mm_projector" and r2.proposed_last_layers == ["mm_projector"]
    assert r2.flags == [(f"2 modules outside the language model write its width {D} (adapter, mm_projector); "
                         "picked mm_projector by name")]


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def _env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *extra.pop("path", []), env.get("PYTHONPATH", "")])
    return env | extra


def test_cli_json_subprocess():
    p = subprocess.run([sys.executable, "-m", "wizard", "inspect", str(TINY_LLAVA), "--group-size", "48",
                        "--json"], capture_output=True, text=True, env=_env(), cwd=REPO, timeout=240, check=False)
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["proposed_last_layers"] == ["model.multi_modal_projector.linear_2"]
    assert d["projector_tree"]["children"][0]["class"] == "Linear"
    assert len(d["group_size_problems"]) == 14 and d["quant_layers"][0]["divisible_by_group"] is False


def test_cli_custom_code_subprocess():
    p = subprocess.run([sys.executable, "-m", "wizard", "inspect", str(TINY_VILA), "--code", "tiny_vila",
                        "--json"], capture_output=True, text=True, env=_env(path=[str(TINY_VILA_CODE)]), cwd=REPO,
                       timeout=240, check=False)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["proposed_last_layers"] == ["mm_projector.layers.4"]


def test_cli_errors(tmp_path, capsys):
    def run(*argv):
        rc = main_inspect([*map(str, argv), "--json"])
        out, err = capsys.readouterr()
        assert rc == 1 and out == "" and err.count("\n") == 1 and err.startswith("llmc-wizard inspect: error: ")
        return err

    assert "no such model folder" in run(tmp_path / "nope")
    assert "has no config.json" in run(tmp_path)
    shutil.copy(TINY_VILA / "config.json", tmp_path / "config.json")
    err = run(tmp_path, "--code", "no_such_vila_pkg")
    assert "'no_such_vila_pkg'" in err and "not installed" in err and "pip install" in err
    err = run(tmp_path)  # custom code without --code
    assert "'llava_llama' is not a transformers architecture" in err and "--code" in err


def test_cli_text_summary(capsys):
    assert main_inspect([str(TINY_LLAVA), "--group-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "last layer(s)  : model.multi_modal_projector.linear_2" in out and "every layer divisible" in out


def _llava_original(tower_layers: int = 1):
    """The original LLaVA code's layout: vision_tower and mm_projector kept inside the language
    model's module (``LlavaLlamaModel`` extends ``LlamaModel``), beside its layers."""

    class LlavaLikeModel(T.LlamaModel):
        def __init__(self, config):
            super().__init__(config)
            self.vision_tower = T.CLIPVisionModel(T.CLIPVisionConfig(
                hidden_size=32, intermediate_size=64, num_hidden_layers=tower_layers, num_attention_heads=2,
                image_size=32, patch_size=8))
            self.mm_projector = nn.Sequential(nn.Linear(32, H), nn.GELU(), nn.Linear(H, H))

    class LlavaLikeForCausalLM(T.LlamaForCausalLM):
        def __init__(self, config):
            super().__init__(config)
            self.model = LlavaLikeModel(config)

    return LlavaLikeForCausalLM(T.LlamaConfig(**TEXT))


@pytest.mark.parametrize("tower_layers", [1, 4])
def test_parts_kept_inside_the_language_model_are_found(tower_layers):
    """The projector and tower live under `model` with the decoder: found there, and the decoder
    blocks are still the language model's (even when the tower has more layers)."""
    r = inspect_module(_llava_original(tower_layers), "LlavaLlamaForCausalLM", "custom-code", group_size=32)
    assert (r.language_model_path, r.vision_tower_path, r.projector_path) == \
        ("model", "model.vision_tower", "model.mm_projector")
    assert r.proposed_last_layers == ["model.mm_projector.2"]
    assert (r.blocks_path, r.num_blocks) == ("model.layers", 2)
    assert all(q.name.startswith("model.layers.") for q in r.quant_layers)
    assert not any(f.startswith("text-only") for f in r.flags)


def test_a_plain_language_model_has_no_attached_parts():
    r = inspect_module(T.LlamaForCausalLM(T.LlamaConfig(**TEXT)), "LlamaForCausalLM")
    assert r.vision_tower_path is None and r.projector_path is None and r.proposed_last_layers == []


def _code_package(root: Path, name: str, body: str) -> None:
    """A model code package ``name`` (``name.model`` holds ``body``) importable from ``root``."""
    (root / name / "model").mkdir(parents=True)
    (root / name / "__init__.py").write_text("")
    (root / name / "model" / "__init__.py").write_text(body)


_TWO_MODELS = '''
import transformers as T

class LlavaLlamaConfig(T.LlamaConfig):
    model_type = "llava_llama"

class LlavaMistralConfig(T.MistralConfig):
    model_type = "llava_mistral"

class LlavaLlamaModel(T.LlamaForCausalLM):
    config_class = LlavaLlamaConfig

class LlavaMistralForCausalLM(T.MistralForCausalLM):
    config_class = LlavaMistralConfig

class LlavaLlamaForCausalLM(T.LlamaForCausalLM):
    config_class = LlavaLlamaConfig
'''


def test_the_class_chooser_reads_architectures_against_every_export(tmp_path, monkeypatch):
    """VILA's config names LlavaLlamaModel (not a *ForCausalLM); several candidates and no match:
    an error naming them all, never a silent first pick."""
    pkg = f"vila_like_{os.getpid()}"
    _code_package(tmp_path, pkg, _TWO_MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    weights = tmp_path / "w"
    weights.mkdir()
    cfg = {**TEXT, "model_type": "llava_llama", "architectures": ["LlavaLlamaModel"]}
    (weights / "config.json").write_text(json.dumps(cfg))
    model, arch, kind = build_skeleton(weights, pkg)
    assert type(model).__name__ == "LlavaLlamaModel" and arch == "LlavaLlamaModel" and kind == "custom-code"
    (weights / "config.json").write_text(json.dumps({**cfg, "architectures": ["LlavaGemmaForCausalLM"]}))
    with pytest.raises(WizardError) as e:
        build_skeleton(weights, pkg)
    assert "several model classes (LlavaLlamaForCausalLM, LlavaMistralForCausalLM)" in e.value.message
    assert "'LlavaGemmaForCausalLM', which it does not export" in e.value.message


def test_installed_code_that_does_not_import_says_why(tmp_path, monkeypatch):
    """Code pinned to an older transformers (VILA imports no_init_weights, removed in 5) is
    installed: the error shows the import failure, not "not installed"."""
    pkg = f"old_code_{os.getpid()}"
    _code_package(tmp_path, pkg, "from transformers.modeling_utils import no_such_helper_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "config.json").write_text(json.dumps({**TEXT, "model_type": "llava_llama"}))
    with pytest.raises(WizardError) as e:
        build_skeleton(tmp_path / "w", pkg)
    assert f"{pkg}.model is installed but does not import: ImportError: cannot import name 'no_such_helper_xyz'" \
        in e.value.message
    assert "not installed" not in e.value.message and "older transformers" in e.value.fix
