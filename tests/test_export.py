"""Real low-bit checkpoint export: compressed-tensors pack-quantized and AutoAWQ GEMM.

The compressed-tensors tests decompress our checkpoints with the compressed-tensors library
itself (and load one through transformers); the AutoAWQ tests compare against a literal
transcription of AutoAWQ's packing loop and an independent dequantizer.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from llmc.export import (
    pack_awq_gemm,
    pack_int32,
    pack_layer,
    save_autoawq,
    save_compressed_tensors,
    unpack_awq_gemm,
    unpack_int32,
)
from llmc.export.autoawq import unpack_awq_codes
from llmc.export.packing import write_checkpoint
from llmc.quant.quantizer import IntQuantizer, WeightQuantConfig, check_group_size

SYM_MSG = "pack-quantized export needs symmetric weights; set quant.weight.symmetric: true"


class Tiny(nn.Module):
    """Embedding + three Linears (one kept in float as ``lm_head``)."""

    def __init__(self, dtype=torch.float32):
        super().__init__()
        self.emb = nn.Embedding(10, 64)
        self.fc1 = nn.Linear(64, 96)
        self.fc2 = nn.Linear(96, 64, bias=False)
        self.lm_head = nn.Linear(64, 16, bias=False)
        self.to(dtype)


def _tiny_state(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    model = Tiny(dtype)
    # make one group all-zero: its scale is the minimum scale and its codes must be 0
    with torch.no_grad():
        model.fc1.weight[3, :32] = 0
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


CT_CONFIGS = [
    pytest.param(WeightQuantConfig(bit=4, symmetric=True, granularity="per_group", group_size=32), id="int4-g32"),
    pytest.param(WeightQuantConfig(bit=4, symmetric=True, granularity="per_channel"), id="int4-channel"),
    pytest.param(WeightQuantConfig(bit=8, symmetric=True, granularity="per_group", group_size=32), id="int8-g32"),
    pytest.param(WeightQuantConfig(bit=8, symmetric=True, granularity="per_channel"), id="int8-channel"),
]


# ---------------------------------------------------------------------------- packing
@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("cols", [1, 7, 32, 45, 96])
def test_pack_roundtrip_and_layout(bits, cols):
    torch.manual_seed(bits * 100 + cols)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    q = torch.randint(lo, hi + 1, (5, cols), dtype=torch.int32)
    packed = pack_int32(q, bits, offset=1 << (bits - 1))
    assert packed.dtype == torch.int32
    assert packed.shape == (5, -(-cols * bits // 32))
    assert torch.equal(unpack_int32(packed, bits, cols, offset=1 << (bits - 1)), q)


def test_pack_nibble_order_is_little_endian():
    # element j of a word sits at bits 4j..4j+3
    codes = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 15]])
    word = pack_int32(codes, 4)
    assert int(word[0, 0]) & 0xFFFFFFFF == 0xF7654321
    assert word[0, 0] < 0  # top bit set: stored as a negative int32
    assert pack_int32(torch.tensor([[1, 2, 3, 255]]), 8)[0, 0] & 0xFFFFFFFF == 0xFF030201


def test_pack_rejects_out_of_range_codes():
    with pytest.raises(ValueError, match="codes must lie in"):
        pack_int32(torch.tensor([[8]]), 4, offset=8)
    with pytest.raises(ValueError, match="codes must lie in"):
        pack_int32(torch.tensor([[-1]]), 4)


@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_matches_compressed_tensors(bits):
    helpers = pytest.importorskip("compressed_tensors.compressors.pack_quantized.helpers")
    torch.manual_seed(bits)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    for cols in (7, 32, 96, 100):
        q = torch.randint(lo, hi + 1, (6, cols), dtype=torch.int8)
        ours = pack_int32(q, bits, offset=1 << (bits - 1))
        assert torch.equal(ours, helpers.pack_to_int32(q, bits))
        assert torch.equal(helpers.unpack_from_int32(ours, bits, torch.Size([6, cols])), q)


# ----------------------------------------------------------------- compressed-tensors
def _decompress_with_library(out_dir):
    """Load ``out_dir`` into a fresh Tiny through compressed-tensors and decompress it."""
    ct_quant = pytest.importorskip("compressed_tensors.quantization")
    ct_comp = pytest.importorskip("compressed_tensors.compressors")
    cfg = json.loads((out_dir / "config.json").read_text())
    qcfg = ct_quant.QuantizationConfig.model_validate(cfg["quantization_config"])
    model = Tiny()
    ct_quant.apply_quantization_config(model, qcfg)  # honours qcfg.ignore
    compressor = ct_comp.ModelCompressor(quantization_config=qcfg)
    compressor.compress_model(model)  # module layout: weight_packed / weight_scale / weight_shape
    model.load_state_dict(load_file(str(out_dir / "model.safetensors")), strict=True)
    compressor.decompress_model(model)  # PackedQuantizationCompressor.decompress per module
    return model, cfg


@pytest.mark.parametrize("wcfg", CT_CONFIGS)
def test_compressed_tensors_decompresses_to_our_fake_quant(tmp_path, wcfg):
    sd = _tiny_state()
    extra = []
    out = save_compressed_tensors(
        sd, {"model_type": "tiny"}, tmp_path / "ct", wcfg, ["fc1", "fc2"], ["lm_head"],
        save_extra=lambda d: extra.append(d),
    )
    assert extra == [out]

    stored = load_file(str(out / "model.safetensors"))
    assert "fc1.weight" not in stored and "fc2.weight" not in stored
    assert stored["fc1.weight_packed"].dtype == torch.int32
    assert stored["fc1.weight_packed"].shape == (96, 64 * wcfg.bit // 32)
    assert stored["fc1.weight_scale"].dtype == torch.float32
    assert stored["fc1.weight_scale"].shape == (96, wcfg.n_groups(64))
    assert stored["fc1.weight_shape"].tolist() == [96, 64]
    # ignored layer, embedding and bias are stored as they were
    assert torch.equal(stored["lm_head.weight"], sd["lm_head.weight"])
    assert torch.equal(stored["emb.weight"], sd["emb.weight"])
    assert torch.equal(stored["fc1.bias"], sd["fc1.bias"])

    model, cfg = _decompress_with_library(out)
    qc = cfg["quantization_config"]
    assert cfg["model_type"] == "tiny"
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == "pack-quantized"
    assert qc["ignore"] == ["lm_head"]
    group = qc["config_groups"]["group_0"]
    assert group["targets"] == ["Linear"]
    per_group = wcfg.granularity == "per_group"
    assert group["weights"]["num_bits"] == wcfg.bit
    assert group["weights"]["type"] == "int" and group["weights"]["symmetric"] is True
    assert group["weights"]["strategy"] == ("group" if per_group else "channel")
    assert group["weights"]["group_size"] == (32 if per_group else None)

    quantizer = IntQuantizer(wcfg)
    for name in ("fc1", "fc2"):
        got = getattr(model, name).weight.detach().float()
        assert torch.equal(got, quantizer.fake(sd[f"{name}.weight"]).float()), name
    assert torch.equal(model.fc1.weight[3, :32], torch.zeros(32))
    # the ignored layer was never quantized by the library either
    assert not hasattr(model.lm_head, "quantization_scheme")
    assert torch.equal(model.lm_head.weight, sd["lm_head.weight"])


def test_compressed_tensors_bf16_model_rounds_scale_once(tmp_path):
    wcfg = WeightQuantConfig(bit=4, symmetric=True, granularity="per_group", group_size=32)
    sd = _tiny_state(torch.bfloat16)
    out = save_compressed_tensors(sd, {}, tmp_path / "ct", wcfg, ["fc1", "fc2"], ["lm_head"])
    stored = load_file(str(out / "model.safetensors"))
    assert stored["fc1.weight_scale"].dtype == torch.bfloat16

    ct = pytest.importorskip("compressed_tensors.compressors")
    ct_quant = pytest.importorskip("compressed_tensors.quantization")
    qc = ct_quant.QuantizationConfig.model_validate(json.loads((out / "config.json").read_text())["quantization_config"])
    scheme = qc.config_groups["group_0"]
    quantizer = IntQuantizer(wcfg)
    for name in ("fc1", "fc2"):
        local = {k.split(".", 1)[1]: v for k, v in stored.items() if k.startswith(f"{name}.weight_")}
        got = ct.PackedQuantizationCompressor.decompress(local, scheme)["weight"]
        w = sd[f"{name}.weight"]
        scale, zero = quantizer.params(w)
        expected = quantizer.fake_with(w, scale.to(torch.bfloat16).float(), zero)
        assert torch.equal(got.float(), expected.to(torch.bfloat16).float()), name


def test_compressed_tensors_loads_in_transformers(tmp_path):
    pytest.importorskip("compressed_tensors")
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=128, tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    sd = model.state_dict()
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"]
    wcfg = WeightQuantConfig(bit=4, symmetric=True, granularity="per_group", group_size=32)
    out = save_compressed_tensors(sd, config.to_dict(), tmp_path / "ct", wcfg, names, ["lm_head"])

    loaded = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    quantizer = IntQuantizer(wcfg)
    fake = LlamaForCausalLM(config).eval()
    fake.load_state_dict({
        k: quantizer.fake(v) if k.endswith(".weight") and k[: -len(".weight")] in names else v
        for k, v in sd.items()
    })
    ids = torch.randint(0, 128, (1, 6))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, fake(ids).logits)


def test_compressed_rejects_asymmetric_and_odd_bits(tmp_path):
    sd = _tiny_state()
    with pytest.raises(ValueError, match="^" + SYM_MSG + "$"):
        save_compressed_tensors(sd, {}, tmp_path / "a", WeightQuantConfig(bit=4, symmetric=False), ["fc1"], [])
    with pytest.raises(ValueError, match="supports 4 or 8-bit"):
        pack_layer(sd["fc1.weight"], WeightQuantConfig(bit=3, symmetric=True, group_size=32))
    assert not (tmp_path / "a").exists()


def test_group_size_not_dividing_width_raises_quantizer_error(tmp_path):
    sd = _tiny_state()  # fc2 has input width 96
    ct_cfg = WeightQuantConfig(bit=4, symmetric=True, granularity="per_group", group_size=64)
    awq_cfg = WeightQuantConfig(bit=4, symmetric=False, granularity="per_group", group_size=64)
    with pytest.raises(ValueError) as expected:
        check_group_size(96, ct_cfg, "fc2")
    for save, wcfg in ((save_compressed_tensors, ct_cfg), (save_autoawq, awq_cfg)):
        with pytest.raises(ValueError) as got:
            save(sd, {}, tmp_path / "x", wcfg, ["fc1", "fc2"], ["lm_head"])
        assert str(got.value) == str(expected.value)
    assert "choose a divisor of 96" in str(expected.value)


def test_names_are_checked(tmp_path):
    sd = _tiny_state()
    wcfg = WeightQuantConfig(bit=4, symmetric=True, group_size=32)
    with pytest.raises(ValueError, match="both quantized and ignored: lm_head"):
        save_compressed_tensors(sd, {}, tmp_path / "x", wcfg, ["fc1", "lm_head"], ["lm_head"])
    with pytest.raises(ValueError, match="no '<name>.weight' in the state dict for: fc9"):
        save_compressed_tensors(sd, {}, tmp_path / "x", wcfg, ["fc9"], [])


def test_checkpoint_shards_and_tied_weights(tmp_path):
    emb = torch.randn(10, 8)
    tensors = {"a.weight": emb, "b.weight": emb, "c.weight": torch.randn(100, 8)}  # a/b tied
    out = write_checkpoint(tensors, {"x": 1}, tmp_path / "ck", max_shard_bytes=1000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) == 2
    back = {}
    for f in files:
        back.update(load_file(str(out / f)))
    assert set(back) == set(tensors)
    for k, t in tensors.items():
        assert torch.equal(back[k], t)
    assert json.loads((out / "config.json").read_text()) == {"x": 1}


# ---------------------------------------------------------------------------- AutoAWQ
AWQ_CFG = WeightQuantConfig(bit=4, symmetric=False, granularity="per_group", group_size=32)


def _fp16_scale(scale: torch.Tensor) -> torch.Tensor:
    """The documented float16 storage of a float32 scale: rounded, and never 0."""
    half = scale.half().float()
    return torch.where(half > 0, half, torch.full_like(half, 2.0**-24))


def _autoawq_reference_pack(intweight_t: torch.Tensor) -> torch.Tensor:
    """AutoAWQ's ``WQLinear_GEMM.from_linear`` packing loop, transcribed literally."""
    pack_num = 8
    packed = torch.zeros((intweight_t.shape[0], intweight_t.shape[1] // 32 * 4), dtype=torch.int32)
    for col in range(intweight_t.shape[1] // pack_num):
        order_map = [0, 2, 4, 6, 1, 3, 5, 7]
        for i in range(pack_num):
            packed[:, col] |= intweight_t[:, col * pack_num + order_map[i]].to(torch.int32) << (i * 4)
    return packed


def test_awq_orders_are_inverse():
    from llmc.export.autoawq import AWQ_ORDER, AWQ_REVERSE_ORDER

    assert AWQ_ORDER == (0, 2, 4, 6, 1, 3, 5, 7)
    assert [AWQ_ORDER[AWQ_REVERSE_ORDER[j]] for j in range(8)] == list(range(8))


def test_awq_pack_matches_autoawq_layout():
    torch.manual_seed(1)
    w = torch.randn(96, 64)  # AutoAWQ's loop sizes its buffer as out // 32 * 4 words
    qweight, qzeros, scales = pack_awq_gemm(w, AWQ_CFG)
    assert qweight.shape == (64, 12) and qweight.dtype == torch.int32
    assert qzeros.shape == (2, 12) and qzeros.dtype == torch.int32
    assert scales.shape == (2, 96) and scales.dtype == torch.float16

    quantizer = IntQuantizer(AWQ_CFG)
    scale, zero = quantizer.params(w)
    q = quantizer.quant(w, _fp16_scale(scale), zero)
    assert torch.equal(qweight, _autoawq_reference_pack(q.t().contiguous()))
    assert torch.equal(qzeros, _autoawq_reference_pack(zero.to(torch.int32).t().contiguous()))
    assert torch.equal(scales.float(), _fp16_scale(scale).t())
    codes, zeros = unpack_awq_codes(qweight, qzeros, 96)
    assert torch.equal(codes, q) and torch.equal(zeros, zero.to(torch.int32))


def test_awq_roundtrip_equals_fake_quant_with_fp16_scales():
    torch.manual_seed(2)
    w = torch.randn(64, 128) * 0.05
    w[5, 32:64] = 0  # all-zero group
    w[7, :32] = w[7, :32].abs()  # all-positive group: range widened to include 0
    qweight, qzeros, scales = pack_awq_gemm(w, AWQ_CFG)
    got = unpack_awq_gemm(qweight, qzeros, scales, 32)
    assert got.shape == w.shape and got.dtype == torch.float32

    quantizer = IntQuantizer(AWQ_CFG)
    scale, zero = quantizer.params(w)
    expected = quantizer.fake_with(w, _fp16_scale(scale), zero)
    assert scales[1, 5] == 2.0**-24  # the all-zero group's 1e-8 scale underflows float16
    assert torch.equal(got, expected)
    assert torch.equal(got[5, 32:64], torch.zeros(32))

    # close to the float32 fake quantization: at most one step apart, and the integer codes
    # differ from those of the float32 scale only rarely (where fp16 rounding tips a round())
    fake32 = quantizer.fake(w)
    step = scale.repeat_interleave(32, dim=1)
    assert torch.all((got - fake32).abs() <= step * 1.01 + 1e-6)
    assert torch.allclose(got, fake32, rtol=0, atol=float(step.max()) * 1.01)
    codes, _ = unpack_awq_codes(qweight, qzeros, 64)
    assert (codes != quantizer.quant(w, scale, zero)).float().mean() < 0.02


def test_save_autoawq(tmp_path):
    sd = _tiny_state()
    out = save_autoawq(sd, {"model_type": "tiny"}, tmp_path / "awq", AWQ_CFG, ["fc1", "fc2"], ["lm_head"])
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "tiny"
    qc = cfg["quantization_config"]
    assert qc == {
        "quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True, "version": "gemm",
        "modules_to_not_convert": ["lm_head"],
    }
    stored = load_file(str(out / "model.safetensors"))
    assert set(stored) == {
        "emb.weight", "fc1.bias", "lm_head.weight",
        "fc1.qweight", "fc1.qzeros", "fc1.scales", "fc2.qweight", "fc2.qzeros", "fc2.scales",
    }
    assert torch.equal(stored["lm_head.weight"], sd["lm_head.weight"])
    assert torch.equal(stored["fc1.bias"], sd["fc1.bias"])
    quantizer = IntQuantizer(AWQ_CFG)
    for name in ("fc1", "fc2"):
        w = sd[f"{name}.weight"]
        got = unpack_awq_gemm(stored[f"{name}.qweight"], stored[f"{name}.qzeros"], stored[f"{name}.scales"], 32)
        scale, zero = quantizer.params(w)
        assert torch.equal(got, quantizer.fake_with(w, _fp16_scale(scale), zero)), name


def test_awq_rejects_unsupported_configs():
    w = torch.randn(16, 64)
    cases = [
        (WeightQuantConfig(bit=4, symmetric=True, group_size=32), "needs asymmetric weights"),
        (WeightQuantConfig(bit=8, symmetric=False, group_size=32), "supports 4-bit weights only"),
        (WeightQuantConfig(bit=4, symmetric=False, granularity="per_channel"), "needs per-group"),
    ]
    for wcfg, msg in cases:
        with pytest.raises(ValueError, match=msg):
            pack_awq_gemm(w, wcfg)
    with pytest.raises(ValueError, match="output width 12 is not a multiple of 8"):
        pack_awq_gemm(torch.randn(12, 64), AWQ_CFG)
