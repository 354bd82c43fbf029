"""Hostile repositories: nothing is read through a link that leaves the model's folder.

A weights repository that commits ``additional_chat_templates/tool_use.jinja -> /proc/self/environ``
(or a link to any file of the user's) would have that file's bytes copied into every checkpoint the
engine saves. Real git repositories, real clones, the real engine command line.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import git
import pytest
import yaml

from wizard.services.errors import WizardError
from wizard.services.fetch import fetch_repo

ASSETS = Path(__file__).resolve().parents[1] / "wizard" / "demo" / "assets"
SECRET = b"hf_SECRET_TOKEN_must_never_leave_0123456789"


def _secret(tmp_path: Path) -> Path:
    f = tmp_path / "outside" / "secret.txt"
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_bytes(SECRET)
    return f


def _repo(path: Path, build) -> Path:
    """A git repository at ``path`` whose tree ``build(path)`` writes, committed as it is (links too)."""
    path.mkdir(parents=True)
    build(path)
    repo = git.Repo.init(path, initial_branch="main")
    with repo.config_writer() as cw:
        cw.set_value("user", "name", "t").set_value("user", "email", "t@example.com")
    repo.git.add("-A")
    repo.git.commit("-m", "model")
    return path


def _llava_with_link(root: Path, target: str) -> Path:
    shutil.copytree(ASSETS / "tiny-llava", root)
    (root / "additional_chat_templates").mkdir()
    os.symlink(target, root / "additional_chat_templates" / "tool_use.jinja")
    return root


def _holds_secret(folder: Path) -> list[str]:
    hits = []
    for d, _, files in os.walk(folder):
        for f in files:
            p = Path(d) / f
            if not p.is_symlink() and SECRET in p.read_bytes():
                hits.append(str(p))
    return hits


@pytest.mark.parametrize("target", ["secret", "/proc/self/environ"])
def test_fetch_refuses_a_repository_linking_outside_itself(tmp_path, target):
    secret = _secret(tmp_path)
    link = str(secret) if target == "secret" else target
    src = _repo(tmp_path / "src", lambda p: (p.mkdir(exist_ok=True), _llava_with_link(p / "m", link)))
    dest = tmp_path / "weights" / "m"
    with pytest.raises(WizardError) as e:
        fetch_repo(str(src), dest)
    msg = str(e.value)
    assert "\n" not in msg and "m/additional_chat_templates/tool_use.jinja -> " + link in msg
    assert "nothing was kept" in msg and not dest.exists()


def test_a_resumed_clone_loses_such_links(tmp_path):
    secret = _secret(tmp_path)
    src = _repo(tmp_path / "src", lambda p: (p / "config.json").write_text("{}"))
    dest = tmp_path / "weights" / "m"
    fetch_repo(str(src), dest)
    os.symlink(str(secret), src / "leak.txt")
    r = git.Repo(src)
    r.git.add("-A")
    r.git.commit("-m", "a link")
    with pytest.raises(WizardError, match="those links were removed from the clone"):
        fetch_repo(str(src), dest, commit=r.head.commit.hexsha)
    assert not os.path.lexists(dest / "leak.txt") and (dest / "config.json").is_file()


def test_the_engine_never_reads_through_such_a_link(tmp_path, zoo):
    """A model folder that was never fetched (a path the user gave) with the same link: ``llmc check``
    names it in one line, ``llmc run`` stops in one line before loading, and no byte of the secret
    reaches the run's folder or its saved checkpoints."""
    secret = _secret(tmp_path)
    model = _llava_with_link(tmp_path / "tiny-llava", str(secret))
    cfg = {"model": {"type": "Llava", "path": str(model), "torch_dtype": "float32"},
           "quant": {"method": "RTN", "weight": {"bit": 4, "symmetric": True, "granularity": "per_group",
                                                  "group_size": 32}},
           "save": {"save_path": str(tmp_path / "out"), "save_fake": True, "save_trans": True}}
    path = tmp_path / "run.yml"
    path.write_text(yaml.safe_dump(cfg))
    check = subprocess.run([sys.executable, "-m", "llmc", "check", str(path)], capture_output=True, text=True)
    assert check.returncode != 0
    line = next(ln for ln in (check.stdout + check.stderr).splitlines() if "link(s) leading outside" in ln)
    assert "additional_chat_templates/tool_use.jinja -> " + str(secret) in line
    run = subprocess.run([sys.executable, "-m", "llmc", "run", str(path)], capture_output=True, text=True,
                         cwd=tmp_path)
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert "link(s) leading outside" in run.stderr + run.stdout
    assert _holds_secret(tmp_path / "out") == [] if (tmp_path / "out").exists() else True
    for folder in (tmp_path / "out", tmp_path / "runs"):
        if folder.exists():
            assert _holds_secret(folder) == []


def _random_tree(root: Path, rng: random.Random, secret: Path) -> bool:
    """Files, folders and links of every kind under ``root``; True when some link leads outside it."""
    (root / "d" / "e").mkdir(parents=True)
    for i, f in enumerate(["a.txt", "d/b.json", "d/e/c.bin"]):
        (root / f).write_text(f"inside {i}\n")
    kinds = ["in-file", "in-dir", "dangling-in", "out-file", "out-dir", "loop", "git", "absolute-in"]
    leaves = False
    for i in range(rng.randint(1, 4)):
        kind = rng.choice(kinds)
        where = root / rng.choice(["", "d", "d/e"]) / f"link{i}"
        rel_root = os.path.relpath(root, where.parent)
        target = {
            "in-file": os.path.join(rel_root, "a.txt"),
            "in-dir": os.path.join(rel_root, "d"),
            "dangling-in": os.path.join(rel_root, "missing"),
            "out-file": os.path.relpath(secret, where.parent),
            "out-dir": str(secret.parent),
            "loop": where.name,
            "git": os.path.join(rel_root, ".git", "config"),
            "absolute-in": str(root / "a.txt"),  # absolute: leads into the *source* repo, not the clone
        }[kind]
        os.symlink(target, where)
        leaves |= kind in ("out-file", "out-dir", "loop", "git", "absolute-in")
    return leaves


@pytest.mark.parametrize("seed", range(12))
def test_random_links_are_cloned_or_refused_in_one_line_and_no_outside_byte_gets_in(tmp_path, seed):
    rng = random.Random(seed)
    secret = _secret(tmp_path)
    leaves = {}
    src = _repo(tmp_path / "src", lambda p: leaves.setdefault("v", _random_tree(p, rng, secret)))
    # the source's own files are outside the clone too: an absolute link into it must not count as inside
    (src / "a.txt").write_bytes(SECRET)
    dest = tmp_path / "clone"
    try:
        fetch_repo(str(src), dest)
    except WizardError as e:
        assert leaves["v"], f"refused a repository whose links all stay inside it: {e}"
        assert "\n" not in str(e) and "leading outside" in str(e) and not dest.exists()
        return
    assert not leaves["v"], "a repository linking outside itself was cloned"
    seen, visited = b"", set()
    for d, dirs, files in os.walk(dest, followlinks=True):
        real = os.path.realpath(d)
        if ".git" in Path(d).relative_to(dest).parts or real in visited:  # a link back up: walked already
            dirs[:] = []
            continue
        visited.add(real)
        for f in files:
            p = Path(d) / f
            if p.exists():
                seen += p.read_bytes()
    assert SECRET not in seen
