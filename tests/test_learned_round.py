"""LearnedRound: rounding and ranges learned on each block's output (a method added as one module)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llmc.config import load_config
from llmc.models import get_model_class

pytestmark = pytest.mark.slow
ASSETS = Path(__file__).resolve().parents[1] / "wizard" / "demo" / "assets"


def _model():
    return get_model_class("Llava")(ASSETS / "tiny-llava", "float32", "cpu")


def _batches(m, zoo, n=8):
    from llmc.data.calib import load_custom_mm

    return [m.batch_process([s]) for s in load_custom_mm(zoo.calib_set, n)]


def _weights(m) -> dict[str, torch.Tensor]:
    return {f"{i}.{n}": lin.weight.detach().clone() for i, b in enumerate(m.get_blocks())
            for n, lin in m.named_linears(b).items()}


def _quantized(method, zoo, wcfg):
    from llmc.quant.blockwise import quantize_blockwise

    m = _model()
    reports = quantize_blockwise(m, method, _batches(m, zoo))
    return m, reports


@pytest.mark.parametrize("init", ["rtn", "gptq"])
def test_without_steps_it_is_exactly_where_it_starts(init, zoo):
    """With a step size of zero the fit moves nothing: the weights are round-to-nearest's, or
    GPTQ's (act order, static groups, every Hessian from the block's inputs) to the bit."""
    from llmc.quant.methods import registry
    from llmc.quant.quantizer import WeightQuantConfig

    wcfg = WeightQuantConfig(bit=3, group_size=32, symmetric=init == "gptq")
    learned, _ = _quantized(registry()["LearnedRound"].impl(wcfg, {"init": init, "iters": 2, "lr": 0.0}), zoo, wcfg)
    if init == "rtn":
        ref, _ = _quantized(registry()["RTN"].impl(wcfg), zoo, wcfg)
    else:
        ref, _ = _quantized(registry()["GPTQ"].impl(wcfg, {"actorder": True, "static_groups": True,
                                                           "true_sequential": False}), zoo, wcfg)
    got, want = _weights(learned), _weights(ref)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0, msg=name)


def test_learning_lowers_the_output_error_below_its_start(zoo):
    """At W2 the fitted rounding leaves the blocks' outputs closer to the float model's than the
    rounding it starts from: from round to nearest's, every block's output error falls below RTN's;
    from GPTQ's codes (the default), the loss over the calibration set falls where the steps find
    better codes and never rises (the start is kept otherwise); each block reports both."""
    from llmc.quant.methods import registry
    from llmc.quant.quantizer import WeightQuantConfig

    wcfg = WeightQuantConfig(bit=2, group_size=32)
    from_rtn = registry()["LearnedRound"].impl(wcfg, {"init": "rtn", "iters": 40})
    _, learned = _quantized(from_rtn, zoo, wcfg)
    _, rtn = _quantized(registry()["RTN"].impl(wcfg), zoo, wcfg)
    assert all(a.block_error < b.block_error for a, b in zip(learned, rtn))
    assert all(best < start for start, best in from_rtn.fit.values())

    from_gptq = registry()["LearnedRound"].impl(wcfg, {"iters": 40})
    _quantized(from_gptq, zoo, wcfg)
    assert all(best <= start for start, best in from_gptq.fit.values())
    assert from_gptq.fit[1][1] < 0.75 * from_gptq.fit[1][0]
    [(name, fields)] = from_gptq.block_events(1)
    assert name == "learned_round" and fields["loss"] < fields["loss_start"] and fields["steps"] == 40


def test_a_run_from_a_config_exports_its_integer_weights(zoo, tmp_path):
    """Through the runner as any method: its options from the config, its events, and a vLLM
    (compressed-tensors) checkpoint whose codes load back to the fake-quantized model exactly."""
    from llmc.runner import run

    cfg = load_config({
        "model": {"type": "Llava", "path": str(ASSETS / "tiny-llava"), "torch_dtype": "float32"},
        "calib": {"name": "custom_mm", "path": str(zoo.calib_set), "n_samples": 8},
        "quant": {"method": "learnedround", "weight": {"bit": 4, "group_size": 32, "symmetric": True},
                  "special": {"iters": 5, "batch_size": 2}},
        "save": {"save_path": str(tmp_path / "out"), "save_fake": True, "save_vllm": True},
    })
    assert cfg.quant.method == "LearnedRound" and cfg.quant.special.iters == 5
    res = run(cfg, tmp_path / "out", device="cpu")
    events = [json.loads(line) for line in (tmp_path / "out" / "events.jsonl").read_text().splitlines()]
    assert [e["block"] for e in events if e["event"] == "learned_round"] == [0, 1]
    assert "LearnedRound: 5 sign steps per block" in (tmp_path / "out" / "run.log").read_text()
    sd = load_file(Path(res["saved_vllm"]) / "model.safetensors")
    assert sum(k.endswith(".weight_packed") for k in sd) == 14
    fake = get_model_class("Llava")(tmp_path / "out" / "fake", "float32", "cpu")
    real = get_model_class("Llava")(Path(res["saved_vllm"]), "float32", "cpu")
    from wizard.demo.shapes import eval_requests

    reqs = eval_requests(3)
    torch.testing.assert_close(real.answer_logits(reqs), fake.answer_logits(reqs), rtol=0, atol=0)


def test_bad_options_are_one_line_at_config_load():
    from llmc.config import ConfigError

    base = {"model": {"type": "Llava", "path": "/m"}, "calib": {"name": "custom_mm", "path": "/c"},
            "quant": {"method": "LearnedRound", "weight": {"bit": 3, "group_size": 32}}}
    for special, message in [({"iters": 0}, "quant.special.iters: 0 is out of range"),
                             ({"optimiser": "adam"}, "did you mean 'optimizer'?"),
                             ({"rotate": "hadamard"}, "LearnedRound does not rotate")]:
        with pytest.raises(ConfigError) as info:
            load_config({**base, "quant": {**base["quant"], "special": special}})
        assert message in str(info.value) and "\n" not in str(info.value)
