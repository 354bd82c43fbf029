"""GPTQ's one-launch Triton kernel equals the reference column loop (run on the CPU through
Triton's interpreter, in child processes: the interpreter is chosen when the kernel is defined)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / "bench" / "gptq_kernel_check.py"


def test_the_kernel_quantizes_every_setting_exactly_as_the_reference_loop(tmp_path):
    pytest.importorskip("triton")
    sys.path.insert(0, str(ROOT / "bench"))
    from gptq_kernel_check import compare

    for name, extra in (("ref", {"LLMC_GPTQ_KERNEL": "0"}), ("kernel", {"TRITON_INTERPRET": "1"})):
        env = {**os.environ, **extra}
        subprocess.run([sys.executable, str(CHECK), str(tmp_path / f"{name}.json"), "--size", "160x24"], env=env,
                       check=True, capture_output=True, text=True)
    for setting, r in compare(tmp_path / "ref.json", tmp_path / "kernel.json").items():
        assert r["max_diff"] < 1e-6 and r["differ"] == 0, (setting, r)
        assert r["loss"][0] == pytest.approx(r["loss"][1], rel=1e-5), setting


def test_the_kernel_is_used_only_where_it_can_run(monkeypatch):
    import torch

    from llmc.quant import gptq_kernel

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not gptq_kernel.available(torch.zeros(2))  # a CPU tensor without the interpreter
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("LLMC_GPTQ_KERNEL", "0")
    assert not gptq_kernel.available(torch.zeros(2))
