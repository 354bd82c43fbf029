import json
import shutil
import subprocess

import git
import pytest

from wizard.demo import shapes
from wizard.demo import zoo as zoo_mod

needs_lfs = pytest.mark.skipif(not zoo_mod.have_git_lfs(), reason="git-lfs is not installed")


def _tree(repo_path):
    repo = git.Repo(repo_path)
    return {b.path: b.hexsha for b in repo.head.commit.tree.traverse() if b.type == "blob"}


def test_build_is_deterministic(zoo, tmp_path):
    other = zoo_mod.build(tmp_path, lfs=zoo.lfs, log=lambda m: None)
    for name, entry in zoo.models.items():
        assert other.models[name]["weights_commit"] == entry["weights_commit"]
        assert other.models[name]["code_commit"] == entry["code_commit"]
    a = (zoo.eval_set / "digests.txt").read_text()
    b = (other.eval_set / "digests.txt").read_text()
    assert a == b and len(a.split()) == zoo_mod.EVAL_IMAGES
    assert (zoo.calib_set / "samples.json").read_text() == (other.calib_set / "samples.json").read_text()
    for p in sorted((zoo.calib_set / "images").iterdir())[:10]:
        assert p.read_bytes() == (other.calib_set / "images" / p.name).read_bytes()


def test_up_to_date_zoo_is_reused(zoo):
    stamp = (zoo.root / "zoo.json").stat().st_mtime_ns
    again = zoo_mod.build(zoo.root.parent, lfs=zoo.lfs, log=lambda m: None)
    assert again.root == zoo.root
    assert (zoo.root / "zoo.json").stat().st_mtime_ns == stamp


def test_weights_repos_hold_the_committed_assets(zoo, tmp_path):
    for name, entry in zoo.models.items():
        clone = tmp_path / name
        git.Repo.clone_from(entry["weights_repo"], clone)
        asset = zoo_mod.ASSETS / zoo_mod.DEMO_MODELS[name].weights_asset
        for f in asset.rglob("*"):
            if f.is_file():
                rel = f.relative_to(asset)
                assert (clone / rel).read_bytes() == f.read_bytes(), f"{name}: {rel} differs after clone"


@needs_lfs
def test_weights_travel_through_git_lfs(zoo):
    assert zoo.lfs
    repo = git.Repo(zoo.models["tiny-llava"]["weights_repo"])
    attrs = (repo.working_tree_dir + "/.gitattributes")
    assert "*.safetensors filter=lfs" in open(attrs).read()
    # the blob stored in git is an LFS pointer, the working tree file the real weights
    blob = repo.head.commit.tree / "model.safetensors"
    assert blob.data_stream.read().startswith(b"version https://git-lfs.github.com/spec/v1")
    files = subprocess.run(["git", "lfs", "ls-files"], cwd=repo.working_tree_dir, capture_output=True, text=True)
    assert "model.safetensors" in files.stdout


def test_plain_git_when_lfs_is_off(tmp_path):
    z = zoo_mod.build(tmp_path, lfs=False, log=lambda m: None)
    repo = git.Repo(z.models["tiny-llava"]["weights_repo"])
    blob = repo.head.commit.tree / "model.safetensors"
    assert blob.data_stream.read(8) != b"version "
    assert not (zoo_mod.Path(repo.working_tree_dir) / ".gitattributes").exists()


def test_code_repo_has_a_pinned_release_and_a_later_commit(zoo):
    entry = zoo.models["tiny-vila"]
    repo = git.Repo(entry["code_repo"])
    shas = [c.hexsha for c in repo.iter_commits("main")]
    assert shas == [entry["code_head"], entry["code_commit"]]
    assert repo.tags["v0.1.0"].commit.hexsha == entry["code_commit"]
    files = _tree(entry["code_repo"])
    assert "pyproject.toml" in files and "tiny_vila/model/builder.py" in files


def test_tiny_vila_weights_have_vila_layout(zoo):
    files = _tree(zoo.models["tiny-vila"]["weights_repo"])
    for sub in ("llm/config.json", "llm/model.safetensors", "llm/tokenizer.json",
                "vision_tower/config.json", "vision_tower/model.safetensors",
                "mm_projector/config.json", "mm_projector/model.safetensors", "config.json"):
        assert sub in files
    cfg = json.loads((zoo_mod.ASSETS / "tiny-vila" / "config.json").read_text())
    assert isinstance(cfg["llm_cfg"], dict) and cfg["llm_cfg"]["hidden_size"] % 64 == 0


def test_calibration_split_is_disjoint_from_evaluation(zoo):
    eval_digests = set((zoo.eval_set / "digests.txt").read_text().split())
    samples = json.loads((zoo.calib_set / "samples.json").read_text())
    assert len(samples) == zoo_mod.CALIB_IMAGES
    from PIL import Image

    for s in samples:
        img = Image.open(zoo.calib_set / s["image"]).convert("RGB")
        assert shapes.image_digest(img) not in eval_digests
        assert set(s) >= {"image", "question", "answer"}


def test_calibration_excludes_colliding_images():
    first = zoo_mod.calib_scenes(3)
    digest = shapes.image_digest(first[0][1])
    again = zoo_mod.calib_scenes(3, exclude={digest})
    assert shapes.image_digest(again[0][1]) != digest
    assert [shapes.image_digest(i) for _, i in again[:2]] == [shapes.image_digest(i) for _, i in first[1:3]]


def test_missing_assets_give_a_clear_error(tmp_path, monkeypatch):
    empty = tmp_path / "assets"
    shutil.copytree(zoo_mod.ASSETS / "tiny-vila-code", empty / "tiny-vila-code")
    monkeypatch.setattr(zoo_mod, "ASSETS", empty)
    with pytest.raises(FileNotFoundError, match="tiny-llava, tiny-vila.*python -m wizard.demo.train"):
        zoo_mod.build(tmp_path / "c", log=lambda m: None)
