"""Model placement: CPU offload of the decoder blocks and accelerate device maps over several GPUs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llmc.config import ConfigError, load_config
from llmc.models import get_model_class
from llmc.models.placement import auto_device_map, place

pytestmark = pytest.mark.slow
ASSETS = Path(__file__).resolve().parents[1] / "wizard" / "demo" / "assets"


def _llava():
    return get_model_class("Llava")(ASSETS / "tiny-llava", "float32", "cpu")


def _block_bytes(adapter):
    return sum(p.numel() * p.element_size() for p in adapter.get_blocks()[0].parameters())


def test_auto_device_map_spreads_whole_blocks_over_the_cards():
    m = _llava()
    total = sum(p.numel() * p.element_size() for p in m.mm_model.parameters())
    blocks = m.get_blocks()
    # two cards, each able to hold the whole model: balanced, the blocks are split between them
    dm = auto_device_map(m, {0: total, 1: total})
    names = {id(mod): n for n, mod in m.mm_model.named_modules()}
    from llmc.models.placement import _module_device

    devs = [_module_device(dm, names[id(b)]) for b in blocks]
    assert set(devs) == {0, 1}, dm
    assert devs == sorted(devs)  # consecutive blocks, card 0 first
    # a block is never split: no entry names a module inside a block
    for i in range(len(blocks)):
        inside = [k for k in dm if k.startswith(f"{names[id(blocks[i])]}.")]
        assert not inside, inside


def test_auto_device_map_that_does_not_fit_names_the_fix():
    m = _llava()
    with pytest.raises(ValueError, match=r"model.device_map: auto: the model does not fit on the GPUs given "
                                         r"\(0, 1\); .* would go to (cpu|disk)\. Use model.offload: true"):
        auto_device_map(m, {0: _block_bytes(m) // 2, 1: _block_bytes(m) // 2})


def test_offload_keeps_blocks_in_cpu_memory_and_quantizes_like_single(zoo):
    """On a CPU host the device is the CPU, so this checks the plumbing: hooks, pinning and
    identical results; the GPU memory saving is measured by bench/offload_gpu.py."""
    from llmc.data.calib import load_custom_mm
    from llmc.quant.blockwise import quantize_blockwise
    from llmc.quant.methods import Gptq
    from llmc.quant.quantizer import WeightQuantConfig

    results = []
    for mode in ("single", "offload"):
        m = _llava()
        pl = place(m, mode, "cpu")
        seen = []
        h = m.get_blocks()[1].register_forward_pre_hook(lambda mod, a: seen.append(str(next(mod.parameters()).device)))
        batches = [m.batch_process([s]) for s in load_custom_mm(zoo.calib_set, 4)]
        quantize_blockwise(m, Gptq(WeightQuantConfig(bit=4, group_size=32)), batches, device="cpu", placement=pl)
        h.remove()
        assert seen  # the block ran
        results.append({k: v.clone() for k, v in m.get_blocks().state_dict().items()})
        if mode == "offload":
            assert pl.summary() == "offload: blocks in CPU memory, one at a time on cpu"
            assert not pl._pinned  # every block was released after its turn
            pl.remove()
    for k in results[0]:
        assert torch.equal(results[0][k], results[1][k]), k


@pytest.mark.parametrize("model,message", [
    ({"offload": True, "device_map": "auto"}, "model.device_map: offload and device_map: auto exclude each other"),
    ({"max_memory": {0: "10GiB"}}, "model.max_memory: only used with device_map: auto"),
    ({"device_map": "balanced"}, "model.device_map"),
])
def test_placement_settings_are_checked(model, message):
    raw = {"model": {"type": "Llava", "path": str(ASSETS / "tiny-llava"), **model},
           "quant": {"method": "RTN", "weight": {"bit": 4, "group_size": 32}}}
    with pytest.raises(ConfigError, match=message):
        load_config(raw)


def test_engine_run_with_offload_reports_the_placement(zoo, tmp_path):
    from llmc.progress import read_events
    from llmc.runner import run

    cfg = load_config({
        "model": {"type": "Llava", "path": str(ASSETS / "tiny-llava"), "torch_dtype": "float32", "offload": True},
        "calib": {"name": "custom_mm", "path": str(zoo.calib_set), "n_samples": 4},
        "eval": {"eval_pos": ["fake_quant"], "type": "vqa", "name": "mme", "path": str(zoo.eval_set / "data"),
                 "num_samples": 8, "bs": 8},
        "quant": {"method": "RTN", "weight": {"bit": 4, "group_size": 32}},
    })
    res = run(cfg, tmp_path / "run", device="cpu")
    ev = [e for e in read_events(tmp_path / "run" / "events.jsonl") if e["event"] == "placement"]
    assert ev and ev[0]["mode"] == "offload" and ev[0]["block_devices"] == ["cpu", "cpu"]
    assert res["evals"]["mme"]["fake_quant"]["total"] > 0
