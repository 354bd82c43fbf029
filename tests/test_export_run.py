"""``save.save_vllm`` / ``save.save_autoawq`` through the engine: real checkpoints of the demo models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llmc.config import ConfigError, load_config
from llmc.models import get_model_class

pytestmark = pytest.mark.slow
ASSETS = Path(__file__).resolve().parents[1] / "wizard" / "demo" / "assets"


def _cfg(zoo, tmp_path, model, weights, method, weight, save, special=None):
    return {
        "model": {"type": model, "path": str(ASSETS / weights), "torch_dtype": "float32"},
        "calib": {"name": "custom_mm", "path": str(zoo.calib_set), "n_samples": 8},
        "quant": {"method": method, "weight": {"granularity": "per_group", "group_size": 32, **weight},
                  "special": special or {}},
        "save": {"save_path": str(tmp_path / "out"), "save_fake": True, **save},
    }


def _requests(n=3):
    from wizard.demo.shapes import eval_requests

    return eval_requests(n)


def test_vllm_export_loads_in_transformers_and_answers_like_the_fake_model(zoo, tmp_path):
    from llmc.runner import run

    cfg = load_config(_cfg(zoo, tmp_path, "Llava", "tiny-llava", "GPTQ", {"bit": 4, "symmetric": True},
                           {"save_vllm": True}))
    res = run(cfg, tmp_path / "out", device="cpu")
    out = Path(res["saved_vllm"])
    assert out == tmp_path / "out" / "vllm" and not (tmp_path / "out" / ".vllm.partial").exists()
    sd = load_file(out / "model.safetensors")
    packed = sorted(k[: -len(".weight_packed")] for k in sd if k.endswith(".weight_packed"))
    assert len(packed) == 14 and all("language_model" in k for k in packed)  # 2 blocks x 7 linears
    assert not any(f"{k}.weight" in sd for k in packed)
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["format"] == "pack-quantized" and qc["config_groups"]["group_0"]["weights"]["group_size"] == 32
    assert "lm_head" in qc["ignore"] and any("multi_modal_projector.linear_2" in n for n in qc["ignore"])

    # transformers + compressed-tensors load the checkpoint through the model's own loader
    fake = get_model_class("Llava")(out.parent / "fake", "float32", "cpu")
    real = get_model_class("Llava")(out, "float32", "cpu")
    reqs = _requests()
    torch.testing.assert_close(real.answer_logits(reqs), fake.answer_logits(reqs), rtol=0, atol=0)


def test_w8a8_export_is_int_quantized_and_loads_with_dynamic_token_activations(zoo, tmp_path):
    from llmc.quant.actquant import ActQuantConfig, attach_act_quant_
    from llmc.runner import run

    cfg = _cfg(zoo, tmp_path, "Llava", "tiny-llava", "SmoothQuant", {"bit": 8, "symmetric": True},
               {"save_vllm": True})
    cfg["quant"]["weight"] = {"bit": 8, "symmetric": True, "granularity": "per_channel"}
    cfg["quant"]["act"] = {"bit": 8, "symmetric": True, "granularity": "per_token"}
    run(load_config(cfg), tmp_path / "out", device="cpu")
    out = tmp_path / "out" / "vllm"
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    group = qc["config_groups"]["group_0"]
    assert qc["format"] == group["format"] == "int-quantized"
    assert group["weights"]["strategy"] == "channel" and group["weights"]["num_bits"] == 8
    assert group["input_activations"]["strategy"] == "token" and group["input_activations"]["dynamic"] is True
    sd = load_file(out / "model.safetensors")
    fake = load_file(tmp_path / "out" / "fake" / "model.safetensors")
    codes = sorted(k for k, t in sd.items() if t.dtype == torch.int8)
    assert len(codes) == 14 and all(k.endswith(".weight") and "language_model" in k for k in codes)
    for k in codes:  # int8 codes times the (out, 1) scale are exactly the evaluated weights
        scale = sd[k[: -len("weight")] + "weight_scale"]
        assert scale.shape == (sd[k].shape[0], 1)
        assert torch.equal(sd[k].float() * scale, fake[k])

    # transformers + compressed-tensors: the loaded model quantizes each Linear input per token
    # at run time. Its grid divides the absmax by 127.5 where ours (and vLLM's int8 GEMM) uses
    # 127, so the logits agree closely, not bit for bit; without activation quantization they
    # would differ more.
    real = get_model_class("Llava")(out, "float32", "cpu")
    fake_model = get_model_class("Llava")(tmp_path / "out" / "fake", "float32", "cpu")
    reqs = _requests(8)
    weights_only = fake_model.answer_logits(reqs)
    hooks = attach_act_quant_(fake_model, ActQuantConfig(8, True, "per_token"))
    ours = fake_model.answer_logits(reqs)
    hooks.remove()
    theirs = real.answer_logits(reqs)
    assert torch.equal(theirs.argmax(-1), ours.argmax(-1))
    gap, gap_weights_only = (theirs - ours).abs().max(), (theirs - weights_only).abs().max()
    assert gap < 0.8 * gap_weights_only, (float(gap), float(gap_weights_only))


def test_autoawq_export_of_a_custom_code_vlm_unpacks_to_the_fake_weights(zoo, tmp_path, tiny_vila_installed):
    from llmc.export import unpack_awq_gemm
    from llmc.runner import run

    cfg = load_config(_cfg(zoo, tmp_path, "Vila", "tiny-vila", "Awq", {"bit": 4, "symmetric": False},
                           {"save_autoawq": True}, {"n_grid": 5}))
    run(cfg, tmp_path / "out", device="cpu")
    out = tmp_path / "out" / "autoawq"
    # the model's own layout is kept; only the language model's folder is quantized
    assert {p.name for p in out.iterdir()} >= {"config.json", "llm", "vision_tower", "mm_projector"}
    assert "quantization_config" not in json.loads((out / "mm_projector" / "config.json").read_text())
    qc = json.loads((out / "llm" / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "awq" and qc["version"] == "gemm" and qc["group_size"] == 32
    assert "lm_head" in qc["modules_to_not_convert"]
    sd = load_file(out / "llm" / "model.safetensors")
    fake = load_file(tmp_path / "out" / "fake" / "llm" / "model.safetensors")
    bases = [k[: -len(".qweight")] for k in sd if k.endswith(".qweight")]
    assert len(bases) == 14
    for b in bases:
        w = unpack_awq_gemm(sd[f"{b}.qweight"], sd[f"{b}.qzeros"], sd[f"{b}.scales"], 32)
        # identical codes and zero points; only the scale is stored in float16 (relative 2**-11)
        torch.testing.assert_close(w, fake[f"{b}.weight"], rtol=2**-10, atol=1e-12)
    # everything else is stored unchanged
    for k, t in fake.items():
        if not any(k == f"{b}.weight" for b in bases):
            assert torch.equal(sd[k], t), k


@pytest.mark.parametrize("weight,save,special,message", [
    ({"bit": 4, "symmetric": False}, {"save_vllm": True}, None,
     "save.save_vllm: pack-quantized export needs symmetric weights; set quant.weight.symmetric: true"),
    ({"bit": 3, "symmetric": True}, {"save_vllm": True}, None,
     "save.save_vllm: pack-quantized export supports 4 or 8-bit weights, got 3"),
    ({"bit": 4, "symmetric": True}, {"save_autoawq": True}, None,
     "save.save_autoawq: AutoAWQ export needs asymmetric weights (zero points); set quant.weight.symmetric: false"),
    ({"bit": 4, "symmetric": True}, {"save_vllm": True}, {"actorder": True},
     "save.save_vllm: GPTQ act-order groups cannot be stored in this format; set quant.special.static_groups: true"),
])
def test_export_settings_that_cannot_work_fail_at_load_time(weight, save, special, message, zoo, tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(_cfg(zoo, tmp_path, "Llava", "tiny-llava", "GPTQ", weight, save, special))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("weight,save,message", [
    ({"bit": 4, "symmetric": False}, {"save_autoawq": True},
     "save.save_autoawq: this format is weight-only; remove quant.act, or export W8A8 with save_vllm"),
    ({"bit": 8, "symmetric": True}, {"save_vllm": True},
     "save.save_vllm: W8A8 export needs per-channel weights (vLLM's int8 kernels); "
     "set quant.weight.granularity: per_channel"),
])
def test_activation_quantization_exports_only_as_w8a8(weight, save, message, zoo, tmp_path):
    raw = _cfg(zoo, tmp_path, "Llava", "tiny-llava", "RTN", weight, save)
    raw["quant"]["act"] = {"bit": 8}
    with pytest.raises(ConfigError) as err:
        load_config(raw)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_w8a8_export_needs_the_head_in_float(zoo, tmp_path):
    raw = _cfg(zoo, tmp_path, "Llava", "tiny-llava", "RTN", {"bit": 8, "symmetric": True}, {"save_vllm": True})
    raw["quant"]["weight"] = {"bit": 8, "symmetric": True, "granularity": "per_channel"}
    raw["quant"]["act"] = {"bit": 8}
    assert load_config(raw).save.save_vllm  # the W8A8 export, head in float (skip_layers: true)
    raw["quant"]["skip_layers"] = False
    with pytest.raises(ConfigError, match="keeps the head in float; set quant.skip_layers: true"):
        load_config(raw)
