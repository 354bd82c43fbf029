"""Shared fixtures: the demo zoo built once per session into a temporary cache."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Never reach a hub: everything the tests use is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def zoo(tmp_path_factory):
    from wizard.demo import zoo as zoo_mod

    return zoo_mod.build(tmp_path_factory.mktemp("cache"), log=lambda m: None)


@pytest.fixture(scope="session")
def tiny_vila_installed(zoo, tmp_path_factory):
    """tiny-vila's code cloned at its pinned commit and pip-installed into a private target."""
    import git

    entry = zoo.models["tiny-vila"]
    src = tmp_path_factory.mktemp("vila-code") / "tiny-vila-code"
    repo = git.Repo.clone_from(entry["code_repo"], src)
    repo.git.checkout(entry["code_commit"])
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "--target", str(target), str(src)],
        check=True, capture_output=True,
    )
    sys.path.insert(0, str(target))
    yield target
    sys.path.remove(str(target))


@pytest.fixture
def one_thread():
    """Small matmuls on a shared 2-core machine run far faster without intra-op threading."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def llava_run_config(zoo, tmp_path):
    """A short engine run of tiny-llava (8 calibration samples, 16 uncached eval images):
    ``llava_run_config(quant, **save)`` -> the raw config mapping."""

    def make(quant: dict, **save) -> dict:
        return {
            "model": {"type": "Llava", "path": str(REPO / "wizard" / "demo" / "assets" / "tiny-llava"),
                      "torch_dtype": "float32"},
            "calib": {"name": "custom_mm", "path": str(zoo.calib_set), "n_samples": 8},
            "eval": {"eval_pos": ["pretrain", "fake_quant"], "type": "vqa", "name": "mme",
                     "path": str(zoo.eval_set / "data"), "num_samples": 16, "bs": 32, "cache": False},
            "quant": quant,
            "save": {"save_path": str(tmp_path / "out"), **save},
        }

    return make


@pytest.fixture
def no_weight_loading(monkeypatch):
    """Every weight-loading function fails loudly, wherever a module imported it from."""
    import safetensors
    import safetensors.torch
    import torch

    originals = {id(f): f for f in (safetensors.safe_open, safetensors.torch.load_file, torch.load)}
    by_name = {"safe_open": safetensors.safe_open, "load_file": safetensors.torch.load_file, "load": torch.load}

    def boom(*a, **k):
        raise AssertionError(f"a weight file was opened: {a[:1]}")

    for mod in list(sys.modules.values()):
        for name in ("safe_open", "load_file", "load"):
            if id(getattr(mod, name, None)) in originals:
                monkeypatch.setattr(mod, name, boom)
    yield
    # a module first imported during the test bound `boom` itself: give it the real function back
    for mod in list(sys.modules.values()):
        for name, real in by_name.items():
            if getattr(mod, name, None) is boom:
                setattr(mod, name, real)
