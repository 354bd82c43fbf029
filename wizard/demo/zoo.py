"""The demo zoo: two trained tiny VLMs, published as local git repositories, plus data.

``build()`` turns the committed assets into, under a cache folder:

    repos/tiny-llava/        weights of a transformers-native VLM (git, LFS when available)
    repos/tiny-vila/         weights of a custom-code VLM in VILA 1.5's layout (llm/, vision_tower/, mm_projector/)
    repos/tiny-vila-code/    its installable Python package; two commits, the first tagged v0.1.0
    data/shapes-mme/         MME-format evaluation set (datasets folder + lmms-eval task yaml)
    data/shapes-calib/       disjoint calibration split in llmc's custom_mm layout
    zoo.json                 manifest: paths, pinned commits, facts

Everything is deterministic: the same assets give the same commits and the same data.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from . import shapes

ASSETS = Path(__file__).resolve().parent / "assets"
ZOO_VERSION = 2
EVAL_IMAGES = 512
CALIB_IMAGES = 128
GIT_ENV = {
    "GIT_AUTHOR_NAME": "llmc-wizard demo",
    "GIT_AUTHOR_EMAIL": "demo@llmc-wizard.invalid",
    "GIT_COMMITTER_NAME": "llmc-wizard demo",
    "GIT_COMMITTER_EMAIL": "demo@llmc-wizard.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
}
LFS_PATTERNS = ("*.safetensors", "*.bin")


@dataclass(frozen=True)
class DemoModel:
    name: str
    kind: str  # "transformers" (native) or "custom-code"
    weights_asset: str
    code_asset: str | None
    description: str


DEMO_MODELS = {
    "tiny-llava": DemoModel(
        "tiny-llava", "transformers", "tiny-llava", None,
        "LlavaForConditionalGeneration: CLIP vision tower, 2-layer MLP projector, Llama LM",
    ),
    "tiny-vila": DemoModel(
        "tiny-vila", "custom-code", "tiny-vila", "tiny-vila-code",
        "custom code with VILA 1.5's API and layout: SigLIP tower, mlp_downsample projector, Llama LM",
    ),
}


def default_cache() -> Path:
    env = os.environ.get("LLMC_WIZARD_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llmc-wizard"


def have_git_lfs() -> bool:
    if shutil.which("git-lfs") is None:
        return False
    return subprocess.run(["git", "lfs", "version"], capture_output=True).returncode == 0


def _git(args: list[str], cwd: Path, date: str) -> str:
    env = {**os.environ, **GIT_ENV, "GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date}
    res = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed in {cwd}: {res.stderr.strip()}")
    return res.stdout.strip()


def _copy_tree(src: Path, dst: Path) -> None:
    for p in sorted(src.rglob("*")):
        if "__pycache__" in p.parts or p.suffix == ".pyc" or ".egg-info" in str(p):
            continue
        rel = p.relative_to(src)
        if p.is_dir():
            (dst / rel).mkdir(parents=True, exist_ok=True)
        else:
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, dst / rel)


def publish_repo(src: Path, dest: Path, *, lfs: bool, extra_commits: list[tuple[str, dict[str, str]]] = ()) -> list[str]:
    """Create a git repository at ``dest`` holding ``src``; returns the commit shas, oldest first.

    Commits have fixed authors and dates, so the same content gives the same shas.
    """
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    date = "2026-01-01T00:00:00+0000"
    _git(["init", "-q", "-b", "main"], dest, date)
    _git(["config", "core.autocrlf", "false"], dest, date)
    if lfs:
        _git(["lfs", "install", "--local"], dest, date)
        # what `git lfs track` writes, in a fixed order (git-lfs's own order varies run to run)
        (dest / ".gitattributes").write_text(
            "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS))
    _copy_tree(src, dest)
    _git(["add", "-A"], dest, date)
    _git(["commit", "-q", "-m", f"Add {src.name}"], dest, date)
    shas = [_git(["rev-parse", "HEAD"], dest, date)]
    _git(["tag", "v0.1.0"], dest, date)
    for i, (message, files) in enumerate(extra_commits, start=1):
        d = f"2026-01-0{1 + i}T00:00:00+0000"
        for rel, text in files.items():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).write_text(text)
        _git(["add", "-A"], dest, d)
        _git(["commit", "-q", "-m", message], dest, d)
        shas.append(_git(["rev-parse", "HEAD"], dest, d))
    # allow clients to fetch any commit (commit pinning) and keep the published tree clean
    _git(["config", "uploadpack.allowAnySHA1InWant", "true"], dest, date)
    return shas


# ---------------------------------------------------------------------------------------------
# data


def eval_scenes(n: int = EVAL_IMAGES) -> list[shapes.Scene]:
    return [shapes.scene_at(shapes.EVAL_SEED, i) for i in range(n)]


def calib_scenes(n: int = CALIB_IMAGES, exclude: set[str] | None = None) -> list[tuple[shapes.Scene, object]]:
    """Calibration scenes whose rendered pixels differ from every ``exclude`` digest."""
    out, i = [], 0
    while len(out) < n:
        sc = shapes.scene_at(shapes.CALIB_SEED, i)
        img = sc.render()
        if exclude is None or shapes.image_digest(img) not in exclude:
            out.append((sc, img))
        i += 1
    return out


def build_eval_set(out: Path, n: int = EVAL_IMAGES, task_name: str = "shapes_mme") -> set[str]:
    """MME-format set: ``out/data`` (datasets folder), ``out/<task_name>.yaml``, ``out/utils.py``."""
    from llmc.eval.mme import write_dataset, write_task

    rows, digests = [], set()
    for i, sc in enumerate(eval_scenes(n)):
        img = sc.render()
        digests.add(shapes.image_digest(img))
        qid = f"{sc.category}/{i:04d}.png"
        for q, a in sc.questions:
            rows.append({"question_id": qid, "image": img, "question": q, "answer": a, "category": sc.category})
    if len(digests) != n:
        raise RuntimeError("evaluation images are not unique")
    if out.exists():
        shutil.rmtree(out)
    write_dataset(out / "data", rows)
    write_task(out, task_name, out / "data")
    (out / "digests.txt").write_text("\n".join(sorted(digests)) + "\n")
    return digests


def build_calib_set(out: Path, exclude: set[str], n: int = CALIB_IMAGES) -> None:
    """llmc ``custom_mm`` layout: ``samples.json`` (image, question, answer) + ``images/``."""
    if out.exists():
        shutil.rmtree(out)
    (out / "images").mkdir(parents=True)
    samples = []
    for i, (sc, img) in enumerate(calib_scenes(n, exclude)):
        name = f"images/{i:04d}.png"
        img.save(out / name, optimize=False)
        q, a = sc.questions[0]
        samples.append({"image": name, "question": q, "answer": a, "category": sc.category})
    (out / "samples.json").write_text(json.dumps(samples, indent=1) + "\n")


# ---------------------------------------------------------------------------------------------
# build


def assets_digest() -> str:
    h = hashlib.sha256(f"zoo-v{ZOO_VERSION}".encode())
    for p in sorted(ASSETS.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts and ".egg-info" not in str(p):
            h.update(str(p.relative_to(ASSETS)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


@dataclass
class Zoo:
    root: Path
    lfs: bool
    models: dict  # name -> {"weights_repo", "code_repo", "code_commit", "weights_commit", ...}
    eval_set: Path
    eval_task: str
    calib_set: Path
    digest: str

    def to_json(self) -> str:
        d = asdict(self)
        d = json.loads(json.dumps(d, default=str))
        return json.dumps(d, indent=2, sort_keys=True) + "\n"

    @classmethod
    def load(cls, root: Path) -> Zoo:
        d = json.loads((root / "zoo.json").read_text())
        return cls(Path(d["root"]), d["lfs"], d["models"], Path(d["eval_set"]), d["eval_task"],
                   Path(d["calib_set"]), d["digest"])


def built(cache: Path | None = None) -> Zoo | None:
    """The zoo already built under ``cache`` (default: ``$LLMC_WIZARD_CACHE`` or
    ``~/.cache/llmc-wizard``), when it is up to date; nothing is built."""
    root = Path(cache or default_cache()).resolve() / "demo"
    try:
        zoo = Zoo.load(root)
    except (OSError, ValueError, KeyError):
        return None
    return zoo if zoo.digest == assets_digest() else None


def build(cache: Path | None = None, *, force: bool = False, lfs: bool | None = None,
          log: Callable[[str], None] = print) -> Zoo:
    """Build the zoo under ``cache`` (default: ``$LLMC_WIZARD_CACHE`` or ``~/.cache/llmc-wizard``).

    Re-running is cheap: an up-to-date zoo (same assets, same LFS choice) is reused.
    """
    root = Path(cache or default_cache()).resolve() / "demo"
    lfs = have_git_lfs() if lfs is None else lfs
    digest = assets_digest()
    manifest = root / "zoo.json"
    if manifest.exists() and not force:
        zoo = Zoo.load(root)
        if zoo.digest == digest and zoo.lfs == lfs:
            return zoo
    missing = [m.weights_asset for m in DEMO_MODELS.values() if not (ASSETS / m.weights_asset).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"demo weights missing under {ASSETS}: {', '.join(missing)}; "
            "train them with `python -m wizard.demo.train <model> --out <dir>`"
        )
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
    try:
        models = {}
        for m in DEMO_MODELS.values():
            log(f"publishing {m.name} weights as a git repository{' (git-lfs)' if lfs else ''}")
            w = publish_repo(ASSETS / m.weights_asset, tmp / "repos" / m.weights_asset, lfs=lfs)
            entry = {"kind": m.kind, "description": m.description,
                     "weights_repo": str(root / "repos" / m.weights_asset), "weights_commit": w[-1],
                     "code_repo": None, "code_commit": None, "code_head": None}
            if m.code_asset:
                log(f"publishing {m.name} code as a git repository")
                c = publish_repo(ASSETS / m.code_asset, tmp / "repos" / m.code_asset, lfs=False, extra_commits=[
                    ("Start 0.2 development", {"CHANGELOG.md": "# Changelog\n\n## 0.2.0 (unreleased)\n- work in progress\n"}),
                ])
                entry.update(code_repo=str(root / "repos" / m.code_asset), code_commit=c[0], code_head=c[-1])
            models[m.name] = entry
        log(f"rendering the MME-format evaluation set ({EVAL_IMAGES} images)")
        digests = build_eval_set(tmp / "data" / "shapes-mme")
        log(f"rendering the calibration set ({CALIB_IMAGES} images, disjoint from evaluation)")
        build_calib_set(tmp / "data" / "shapes-calib", digests)
        for sub in ("repos", "data"):
            if (root / sub).exists():
                shutil.rmtree(root / sub)
            (tmp / sub).rename(root / sub)
        # the task yaml names its dataset by absolute path: rewrite it for the final location
        from llmc.eval.mme import write_task

        write_task(root / "data" / "shapes-mme", "shapes_mme", root / "data" / "shapes-mme" / "data")
        zoo = Zoo(root, lfs, models, root / "data" / "shapes-mme", "shapes_mme",
                  root / "data" / "shapes-calib", digest)
        manifest.write_text(zoo.to_json())
        log(f"demo zoo ready in {root}")
        return zoo
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
