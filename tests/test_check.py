"""``llmc check``: everything the run will need is checked before any compute, one line per problem.

Real files only: copies of the demo's tiny-llava checkpoint, damaged the way downloads get damaged
(no config.json, an LFS pointer in place of the weights, a truncated or garbage safetensors file),
real adapter classes declaring projector layers, and save paths that cannot be created even by root.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from llmc.cli import main

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "wizard" / "demo" / "assets"
TINY_LLAVA = ASSETS / "tiny-llava"
TINY_VILA = ASSETS / "tiny-vila"
TINY_VILA_CODE = ASSETS / "tiny-vila-code"

LFS_POINTER = (
    "version https://git-lfs.github.com/spec/v1\n"
    "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
    "size 2926728\n"
)


@pytest.fixture
def model_dir(tmp_path) -> Path:
    """A private copy of the tiny-llava checkpoint, free to damage."""
    return Path(shutil.copytree(TINY_LLAVA, tmp_path / "tiny-llava"))


def _config(tmp_path: Path, model_path: Path, model_type: str = "Llava", save_path: str | Path | None = None) -> Path:
    raw = {
        "model": {"type": model_type, "path": str(model_path), "torch_dtype": "float32"},
        "quant": {"method": "RTN", "weight": {"bit": 4, "group_size": 32}},
        "save": {"save_path": str(save_path if save_path is not None else tmp_path / "out" / "run1")},
    }
    p = tmp_path / f"check-{uuid.uuid4().hex[:8]}.yml"
    p.write_text(yaml.safe_dump(raw))
    return p


def _check(capsys, cfg: Path, *extra: str) -> tuple[int, list[str], str]:
    """``(exit code, stderr lines, stdout)`` of ``llmc check``, run in-process."""
    rc = main(["check", str(cfg), *extra])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, err.splitlines(), out


def _errors(lines: list[str]) -> list[str]:
    assert all(line.startswith("llmc: error: ") for line in lines), lines
    return [line[len("llmc: error: "):] for line in lines]


# ---------------------------------------------------------------------------------------------
# A sound folder, and the output
# ---------------------------------------------------------------------------------------------


def test_sound_model_folder_passes_with_only_the_verdict(model_dir, tmp_path, capsys, no_weight_loading):
    rc, err, out = _check(capsys, _config(tmp_path, model_dir))
    assert (rc, err, out) == (0, ["llmc: config OK"], "")


def test_print_config_prints_the_effective_config(model_dir, tmp_path, capsys):
    rc, err, out = _check(capsys, _config(tmp_path, model_dir), "--print-config")
    assert rc == 0 and err == ["llmc: config OK"]
    assert "method: RTN" in out and "group_size: 32" in out


# ---------------------------------------------------------------------------------------------
# 1. config.json
# ---------------------------------------------------------------------------------------------


def test_folder_without_config_json_fails(model_dir, tmp_path, capsys):
    (model_dir / "config.json").unlink()
    rc, err, _ = _check(capsys, _config(tmp_path, model_dir))
    assert rc == 1
    (line,) = _errors(err)
    assert line.startswith(f"model.path: {model_dir} has no config.json")
    assert "point model.path at the folder that holds the model's config.json" in line


def test_invalid_config_json_fails(model_dir, tmp_path, capsys):
    (model_dir / "config.json").write_text('{"model_type": "llava",')
    rc, err, _ = _check(capsys, _config(tmp_path, model_dir))
    assert rc == 1
    (line,) = _errors(err)
    assert f"{model_dir / 'config.json'} is not valid JSON" in line and "re-download" in line


# ---------------------------------------------------------------------------------------------
# 2. weight files: LFS pointers, truncated and garbage safetensors
# ---------------------------------------------------------------------------------------------


def test_lfs_pointer_is_named_with_the_fix(model_dir, tmp_path, capsys):
    (model_dir / "model.safetensors").write_text(LFS_POINTER)
    rc, err, _ = _check(capsys, _config(tmp_path, model_dir))
    assert rc == 1
    (line,) = _errors(err)
    assert "Git LFS pointer" in line and "model.safetensors" in line
    assert f"run `git lfs pull` in {model_dir}" in line and "git-lfs installed" in line


def _truncate_half(f: Path) -> None:
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])


def _huge_header_length(f: Path) -> None:
    data = f.read_bytes()
    f.write_bytes(struct.pack("<Q", 2**60) + data[8:])


def _garbage(f: Path) -> None:
    f.write_bytes(bytes(range(256)) * 64)


def _header_not_json(f: Path) -> None:
    f.write_bytes(struct.pack("<Q", 16) + b"not json at all!" + b"\0" * 64)


def _rewrite(f: Path, edit, pad: int = 0) -> None:
    """``f`` with its header changed by ``edit(header)`` and ``pad`` spaces after it (data unchanged)."""
    import json

    data = f.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    edit(header)
    raw = json.dumps(header).encode() + b" " * pad
    f.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])


def _overlap(f: Path) -> None:
    def edit(h):  # the two first tensors swap sizes' worth of bytes: one covers part of the other
        (a, b) = sorted((k for k in h if k != "__metadata__"), key=lambda k: h[k]["data_offsets"][0])[:2]
        h[b]["data_offsets"] = [h[a]["data_offsets"][0], h[a]["data_offsets"][0] + (h[b]["data_offsets"][1]
                                                                                   - h[b]["data_offsets"][0])]
    _rewrite(f, edit)


def _huge_padded_header(f: Path) -> None:
    _rewrite(f, lambda h: None, pad=99 * 1000 * 1000)


@pytest.mark.parametrize("damage,problem", [
    (_overlap, "overlaps tensor"),
    (_huge_padded_header, "far more than a header needs"),
    (_truncate_half, "(truncated download)"),
    (lambda f: f.write_bytes(f.read_bytes()[:5]), "too short to be a safetensors file"),
    (_huge_header_length, f"its header claims {2**60} bytes but the file has"),
    (_garbage, "but the file has 16384 bytes"),
    (_header_not_json, "its header is not valid JSON"),
], ids=["overlap", "99MB-header", "truncated", "five-bytes", "header-2**60", "garbage", "header-not-json"])
def test_damaged_safetensors_fails_with_one_line(damage, problem, model_dir, tmp_path, capsys):
    damage(model_dir / "model.safetensors")
    rc, err, _ = _check(capsys, _config(tmp_path, model_dir))
    assert rc == 1
    (line,) = _errors(err)
    assert line.startswith(f"model.path: {model_dir / 'model.safetensors'}: ")
    assert problem in line and line.endswith("re-download the model's weights")


# ---------------------------------------------------------------------------------------------
# 3. projector layers declared by the adapter
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def adapter():
    """``adapter(base, **attrs)`` -> the name of a real adapter class registered for this test only."""
    from llmc.models.registry import MODEL_REGISTRY, register

    names = []

    def make(base, **attrs) -> str:
        name = f"CheckTest{uuid.uuid4().hex[:8]}"
        register(name)(type(name, (base,), {"__module__": __name__, **attrs}))
        names.append(name)
        return name

    yield make
    for n in names:
        MODEL_REGISTRY.pop(n, None)


def _llava_adapter(adapter, *layers: str) -> str:
    from llmc.models.hf_vlm import HFVisionLanguageModel

    return adapter(HFVisionLanguageModel, model_cls_name="LlavaForConditionalGeneration",
                   projector_last_layers=tuple(layers))


def test_declared_projector_layer_that_is_missing_fails(adapter, model_dir, tmp_path, capsys):
    name = _llava_adapter(adapter, "model.multi_modal_projector.linear_9")
    rc, err, _ = _check(capsys, _config(tmp_path, model_dir, name))
    assert rc == 1
    assert _errors(err) == [
        f"model.type {name}: projector layer 'model.multi_modal_projector.linear_9' is not in the model; "
        "layers under model.multi_modal_projector: linear_1, linear_2; "
        "re-run the wizard's Inspect step or fix projector_last_layers"]


def test_declared_projector_layer_of_the_wrong_width_fails(adapter, model_dir, tmp_path, capsys):
    name = _llava_adapter(adapter, "model.vision_tower.encoder.layers.0.mlp.fc2")  # writes the vision width
    rc, err, _ = _check(capsys, _config(tmp_path, model_dir, name))
    assert rc == 1
    (line,) = _errors(err)
    assert "projector layer 'model.vision_tower.encoder.layers.0.mlp.fc2' writes width 64, not the language " \
           "model's hidden size 128" in line


def test_declared_projector_layer_that_is_right_passes(adapter, model_dir, tmp_path, capsys, no_weight_loading):
    name = _llava_adapter(adapter, "model.multi_modal_projector.linear_2")
    rc, err, _ = _check(capsys, _config(tmp_path, model_dir, name))
    assert (rc, err) == (0, ["llmc: config OK"])


def test_custom_code_adapter_is_checked_with_its_code_package(adapter, tmp_path, capsys, monkeypatch):
    from llmc.models.vila import Vila

    monkeypatch.syspath_prepend(str(TINY_VILA_CODE))
    good = adapter(Vila, CODE_PACKAGE="tiny_vila", projector_last_layers=("mm_projector.layers.4",))
    rc, err, _ = _check(capsys, _config(tmp_path, TINY_VILA, good))
    assert (rc, err) == (0, ["llmc: config OK"])
    bad = adapter(Vila, CODE_PACKAGE="tiny_vila", projector_last_layers=("mm_projector.layers.9",))
    rc, err, _ = _check(capsys, _config(tmp_path, TINY_VILA, bad))
    assert rc == 1 and _errors(err) == [
        f"model.type {bad}: projector layer 'mm_projector.layers.9' is not in the model; "
        "layers under mm_projector.layers: 1, 2, 4; re-run the wizard's Inspect step or fix projector_last_layers"]


def test_code_package_that_cannot_be_imported_is_one_line(adapter, tmp_path, capsys):
    from llmc.models.vila import Vila

    name = adapter(Vila, CODE_PACKAGE="no_such_code_pkg_xyz", projector_last_layers=("mm_projector.layers.4",))
    rc, err, _ = _check(capsys, _config(tmp_path, TINY_VILA, name))
    assert rc == 1
    (line,) = _errors(err)
    assert line.startswith(f"model.type {name}: cannot build the model from")
    assert "cannot import the model's code package 'no_such_code_pkg_xyz'" in line and "pip install -e" in line


def test_adapters_without_declared_layers_skip_the_skeleton(model_dir, tmp_path, monkeypatch):
    """Built-in adapters find the projector structurally: no skeleton is built for them."""
    from llmc import check
    from llmc.config import load_config
    from llmc.models import skeleton

    monkeypatch.setattr(skeleton, "build_skeleton", lambda *a, **k: pytest.fail("skeleton built"))
    assert check.check_config(load_config(_config(tmp_path, model_dir))) == []


# ---------------------------------------------------------------------------------------------
# 4. the save path (cases that fail for root too)
# ---------------------------------------------------------------------------------------------


FIX = "choose a folder you can write to (or a shorter path)"


def test_save_path_under_a_file_fails(model_dir, tmp_path, capsys):
    (tmp_path / "file.txt").write_text("not a folder")
    save = tmp_path / "file.txt" / "sub"
    rc, err, _ = _check(capsys, _config(tmp_path, model_dir, save_path=save))
    assert rc == 1
    assert _errors(err) == [f"cannot create save.save_path {save}: {tmp_path / 'file.txt'} is a file, "
                            f"not a folder; {FIX}"]


def test_save_path_that_is_a_file_fails(model_dir, tmp_path, capsys):
    (tmp_path / "file.txt").write_text("not a folder")
    rc, err, _ = _check(capsys, _config(tmp_path, model_dir, save_path=tmp_path / "file.txt"))
    assert rc == 1
    assert _errors(err) == [f"save.save_path {tmp_path / 'file.txt'} is a file, not a folder; {FIX}"]


def test_save_path_with_a_too_long_name_fails(model_dir, tmp_path, capsys):
    rc, err, _ = _check(capsys, _config(tmp_path, model_dir, save_path=tmp_path / ("x" * 5000) / "run"))
    assert rc == 1
    (line,) = _errors(err)
    assert line.startswith("save.save_path ") and len(line) < 400  # the long name is elided
    assert "is 5000 bytes long, more than the file system allows (255)" in line
    assert line.endswith(FIX)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through directory permissions")
def test_save_path_under_a_read_only_folder_fails(model_dir, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        rc, err, _ = _check(capsys, _config(tmp_path, model_dir, save_path=ro / "a" / "b"))
    finally:
        ro.chmod(0o700)
    assert rc == 1 and _errors(err) == [
        f"cannot create save.save_path {ro / 'a' / 'b'}: {ro} is not writable (Permission denied); {FIX}"]


def test_existing_writable_save_path_passes(model_dir, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    rc, err, _ = _check(capsys, _config(tmp_path, model_dir, save_path=tmp_path / "out"))
    assert (rc, err) == (0, ["llmc: config OK"])


# ---------------------------------------------------------------------------------------------
# The installed command: one stderr line per problem, no traceback
# ---------------------------------------------------------------------------------------------


def test_llmc_check_command_prints_one_line_per_problem(adapter, model_dir, tmp_path):
    (model_dir / "config.json").unlink()
    (model_dir / "model.safetensors").write_text(LFS_POINTER)
    (tmp_path / "file.txt").write_text("not a folder")
    cfg = _config(tmp_path, model_dir, save_path=tmp_path / "file.txt" / "sub")
    exe = Path(sys.executable).with_name("llmc")
    r = subprocess.run([str(exe), "check", str(cfg)], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr and r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 3 and all(line.startswith("llmc: error: ") for line in lines), r.stderr
    assert "Git LFS pointer" in lines[0] and "has no config.json" in lines[1] and "save.save_path" in lines[2]


# ---------------------------------------------------------------------------------------------
# The skeleton builder moved to the engine; the wizard keeps its error types
# ---------------------------------------------------------------------------------------------


def test_wizard_skeleton_errors_stay_wizard_errors(tmp_path):
    from llmc.models import skeleton
    from wizard.services.errors import WizardError
    from wizard.services.inspect import CodePackageError, build_skeleton

    with pytest.raises(CodePackageError, match="no_such_code_pkg_xyz"):
        build_skeleton(TINY_VILA, "no_such_code_pkg_xyz")
    with pytest.raises(WizardError, match="has no config.json"):
        build_skeleton(tmp_path)
    with pytest.raises(skeleton.CodeImportError):
        skeleton.build_skeleton(TINY_VILA, "no_such_code_pkg_xyz")
    assert issubclass(skeleton.SkeletonError, ValueError)
    assert not any(m.startswith("wizard") for m in _engine_imports())


def _engine_imports() -> set[str]:
    """Modules imported by ``import llmc.check, llmc.models.skeleton`` in a fresh interpreter."""
    code = ("import sys, llmc.check, llmc.models.skeleton; "
            "print('\\n'.join(m for m in sys.modules if m.split('.')[0] == 'wizard'))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    return set(r.stdout.split())
