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


def lock_moment() -> str | None:
    """When requirements/dev.lock was resolved ("# resolved-before: ..." in its header)."""
    import re

    m = re.search(r"^# resolved-before: (\S+)", (REPO / "requirements" / "dev.lock").read_text(), re.M)
    return m.group(1) if m else None


# Every resolution a test makes (the models' environments, with uv) sees the registry as it was when
# the lock was resolved: what the tests install does not depend on the day they run.
if lock_moment():
    os.environ.setdefault("UV_EXCLUDE_NEWER", lock_moment())


INSTALLED_AT_START: dict[str, str] = {}


def pytest_sessionstart(session):
    """What the environment holds before any test runs (some tests install a demo package into it):
    tests/test_lock.py compares this with the lock."""
    import re
    from importlib import metadata

    for d in metadata.distributions():
        if d.metadata["Name"]:
            INSTALLED_AT_START.setdefault(re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower(), d.version)


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


def _site_package(name: str, init: str, entry_points: str) -> list[Path]:
    """A distribution written straight into this environment's site folder (removed by the caller)."""
    import importlib
    import sysconfig

    sp = Path(sysconfig.get_paths()["purelib"])
    pkg, dist = sp / name, sp / f"{name}-1.0.dist-info"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(init)
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(entry_points)
    (dist / "RECORD").write_text(f"{name}/__init__.py,,\n{dist.name}/METADATA,,\n{dist.name}/entry_points.txt,,\n"
                                 f"{dist.name}/RECORD,,\n")
    importlib.invalidate_caches()
    return [pkg, dist]


@pytest.fixture
def hostile_plugin(tmp_path_factory):
    """A package installed here whose setuptools plugin (an ``egg_info.writers`` entry point, as
    ``kernels`` registers) imports what only this environment has: loaded anywhere else (a model's
    environment, a build of its code) it writes where it ran into the returned file, then fails."""
    import shutil

    marker = tmp_path_factory.mktemp("hostile") / "ran-in.txt"
    init = (f"import sys\nif sys.prefix != {sys.prefix!r}:\n    with open({str(marker)!r}, 'a') as f:\n"
            "        f.write(sys.prefix + '\\n')\n"
            "    raise ImportError(\"cannot import name 'OnlyHere' from 'hostile_plugin'\")\n"
            "def write(cmd, basename, filename):\n    pass\n")
    made = _site_package("hostile_plugin", init, "[egg_info.writers]\nhostile.txt = hostile_plugin:write\n")
    yield marker
    for p in made:
        shutil.rmtree(p)


@pytest.fixture
def broken_adapter_plugin():
    """A package installed here whose ``llmc.adapters`` entry point fails to import."""
    import shutil

    made = _site_package("broken_adapter_plugin", "raise RuntimeError('this plugin is broken')\n",
                         "[llmc.adapters]\nbroken = broken_adapter_plugin\n")
    yield "broken-adapter-plugin"
    for p in made:
        shutil.rmtree(p)


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


@pytest.fixture
def sigterm_tree():
    """``stop(cmd, child_matches, settle)``: start ``cmd``, wait until a descendant whose command line
    holds ``child_matches`` runs (plus ``settle`` seconds at work), SIGTERM the top process; returns
    ``(returncode, stderr, alive)``: ``alive`` is every descendant still running 5 s after the signal."""
    import signal
    import time

    import psutil

    def descendants(pid: int) -> list:
        try:
            return psutil.Process(pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def running(kids, needle: str) -> bool:
        for k in kids:
            try:
                if needle in " ".join(k.cmdline()):
                    return True
            except psutil.Error:
                pass
        return False

    def stop(cmd: list[str], child_matches: str, settle: float = 0.0, wait_s: float = 180):
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and p.poll() is None and not running(descendants(p.pid), child_matches):
            time.sleep(0.1)
        time.sleep(settle)
        kids = descendants(p.pid)
        if not running(kids, child_matches):
            p.kill()
            out, err = p.communicate()
            raise AssertionError(f"no child matching {child_matches!r} started: {err[-2000:]}")
        p.send_signal(signal.SIGTERM)
        t = time.monotonic()
        _, err = p.communicate(timeout=60)
        kids = [k for k in kids if k.is_running()] + descendants(p.pid)
        _, alive = psutil.wait_procs(kids, timeout=max(0.1, 5 - (time.monotonic() - t)))
        return p.returncode, err, [" ".join(a.cmdline()) for a in alive if a.is_running()]

    return stop
