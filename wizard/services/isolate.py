"""An environment of the model's own: its code with its pinned dependencies, layered over this one.

Research code pins old libraries (LLaVA: transformers 4.36.2, tokenizers 0.15, accelerate 0.21,
torch 2.0.1…). Installing them here would replace what the engine runs on; ignoring them
(``--no-deps``) may leave code that cannot import. The isolated environment is a virtual
environment (created with ``uv``) that holds only what the code needs *differently* from this
environment; everything else — torch, the engine, lmms-eval, the wizard — is read from this
environment through a *base layer*: a folder of links to exactly the distributions the environment
needs from here (the resolution's packages it does not install itself, the relaxed ones, and the
engine's own requirements, followed through this environment's metadata), added after the
environment's own folder, so the code's pins win where they differ and nothing is downloaded twice.
A package of this environment that nothing there asked for (a setuptools plugin, a pytest plugin,
an entry point of any kind) is not in the layer, so nothing of it runs there. The code itself is
built in an isolated build environment (uv's build isolation) with this environment's setuptools
version, never with this environment's installed build plugins.

What gets installed is decided by one resolution (``uv pip compile``) of the code's requirements
together with the engine's own, preferring this environment's versions:

* **relaxed** packages keep this environment's version, or are left out when it has none: by
  default the packages built against the local CUDA / torch (:data:`DEFAULT_RELAX`), which a GPU
  user keeps; the answers' ``install.relax`` adds more or removes them;
* a pin that cannot live with the engine's requirements (the resolver names it) is relaxed too,
  and said so; the model-defining libraries (:data:`PROTECTED`) never are — that conflict is an
  error naming both sides;
* after installing, the engine and the code are imported with the environment's Python; a package
  of the environment that fails to import is relaxed (removed, so this environment's copy or none
  is used) and said so, until the imports pass or a protected package fails.

Example::

    plan = plan_env(code_dir, env_dir)        # resolves; nothing installed
    print("\\n".join(plan.describe()))
    create_env(plan, on_line=print)            # venv + packages + the code, imports checked
    env_python(env_dir)                        # the interpreter smoke, run and try use
"""

from __future__ import annotations

import json
import os
import re
import shutil
import site
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

from .errors import WizardError
from .pins import DEFAULT_RELAX, declared_requirements
#: the libraries that define how the model computes: their pins are the reason for the environment
PROTECTED = ("transformers", "tokenizers")
#: what the engine needs at run time beyond its own requirements (lmms-eval is installed without its
#: dependency tree, whose pins would move torch)
ENGINE_EXTRA = ("datasets", "loguru", "pillow", "tenacity", "pytablewriter", "sacrebleu", "evaluate",
                "filelock<4", "accelerate")
#: the engine's requirements it does not hold the code to: it runs on the transformers stack the code
#: pins (tested down to transformers 4.36.2)
ENGINE_FOLLOWS = ("transformers", "tokenizers", "accelerate", "huggingface-hub", "safetensors")
STAMP = ".llmc-wizard-env.json"
OVERLAY = "zz_llmc_wizard_base.pth"
BASE = "base"  #: the folder of links to this environment's distributions, inside the model's environment
MAX_ROUNDS = 6


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _name(req: str) -> str:
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
    return norm(m.group(1)) if m else ""


def env_python(env_dir: Path) -> Path:
    return Path(env_dir) / "bin" / "python"


def installed_here() -> dict[str, str]:
    """This environment's distributions, ``{normalized name: version}``."""
    return {norm(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}


def engine_requirements(skip: set[str]) -> list[str]:
    """The engine's own requirements (this package's, plus :data:`ENGINE_EXTRA`), without the names
    in ``skip`` and :data:`ENGINE_FOLLOWS`; numpy keeps this environment's major version in any case
    (the compiled packages read from this environment need it)."""
    try:
        own = [r for r in (metadata.requires("llmc-wizard") or []) if "extra ==" not in r]
    except metadata.PackageNotFoundError:
        own = []
    reqs = [r.split(";")[0].strip() for r in own] + list(ENGINE_EXTRA)
    skip = set(skip) | set(ENGINE_FOLLOWS) | {"lmms-eval"}
    reqs = [r for r in dict.fromkeys(reqs) if _name(r) not in skip]
    have = installed_here()
    if "numpy" in have:  # whatever the code pins: this environment's compiled packages need it
        major = int(have["numpy"].split(".")[0])
        reqs.append(f"numpy>={major},<{major + 1}")
    return reqs


@dataclass
class EnvPlan:
    env_dir: Path
    code_dir: Path | None
    relaxed: dict[str, str] = field(default_factory=dict)  #: name -> what happens to it and why
    install: list[str] = field(default_factory=list)  #: ``name==version`` that differ from this environment
    resolved: int = 0  #: packages in the whole resolution
    needs: list[str] = field(default_factory=list)  #: the names of the whole resolution
    #: import names the environment gets stand-ins for (``name: why``): modules the code imports but
    #: the engine never calls, which fail in one line if something does call them
    stand_ins: dict[str, str] = field(default_factory=dict)
    #: packages the code declares only in an extra (``name: extra``): what it needs for training,
    #: evaluation scripts...; one it imports at import time gets a stand-in
    optional_only: dict[str, str] = field(default_factory=dict)

    def describe(self) -> list[str]:
        lines = [f"environment: {self.env_dir} (over this one: {sys.prefix})",
                 f"installs {len(self.install)} of {self.resolved} resolved packages: " + ", ".join(self.install)]
        lines += [f"  relaxed {n}: {why}" for n, why in self.relaxed.items()]
        lines += [f"  stand-in for {n}: {why}" for n, why in self.stand_ins.items()]
        return lines

    def stamp(self, commit: str, relax) -> dict:
        return {"code_commit": commit, "requested": sorted(norm(n) for n in relax), "install": sorted(self.install),
                "relaxed": sorted(self.relaxed)}


def uv() -> list[str]:
    exe = shutil.which("uv", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if exe:
        return [exe]
    try:
        import uv as uv_mod  # noqa: F401
    except ImportError:
        raise WizardError("uv is not installed in this environment (it creates the model's environment)",
                          "pip install uv, or set install.environment: shared") from None
    return [sys.executable, "-m", "uv"]


def _relax_note(name: str, have: dict[str, str], why: str) -> str:
    kept = f"this environment's {have[name]} is used" if name in have else "left out (this environment has none)"
    return f"{kept} — {why}"


#: what uv says when the index itself failed (not a requirement's fault)
_NET_FAILURE = re.compile(r"operation timed out|error sending request|tcp connect error|dns error|Connection refused|"
                          r"connection closed before message completed", re.IGNORECASE)


def _compile(reqs: list[str], overrides: list[str], work: Path) -> tuple[int, str, list[str]]:
    work.mkdir(parents=True, exist_ok=True)
    (work / "requirements.in").write_text("\n".join(reqs) + "\n")
    (work / "overrides.txt").write_text("\n".join(overrides) + "\n")
    out = work / "resolved.txt"
    # this environment's versions, as the resolver's preferences
    out.write_text("".join(f"{n}=={v}\n" for n, v in sorted(installed_here().items())))
    cmd = uv() + ["pip", "compile", "-q", str(work / "requirements.in"), "--override", str(work / "overrides.txt"),
                  "--python", sys.executable, "--no-header", "--no-annotate", "-o", str(out)]
    from .net import net_env

    p = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, env=net_env())
    pins = [ln.strip() for ln in out.read_text().splitlines() if "==" in ln and not ln.startswith("#")]
    return p.returncode, p.stderr, pins


def plan_env(code_dir: Path | None, env_dir: Path, relax=DEFAULT_RELAX, requirements: list[str] | None = None,
             extra=(), stand_ins=()) -> EnvPlan:
    """Resolve what the environment at ``env_dir`` needs for the code in ``code_dir`` (installs
    nothing); ``requirements`` instead of the code's own (``code_dir`` None: no code to install);
    ``extra``: more requirements (what the code imports without declaring it), never relaxed;
    ``stand_ins``: import names to stand in for (see :attr:`EnvPlan.stand_ins`)."""
    from .pins import optional_requirements

    code_dir = Path(code_dir) if code_dir is not None else None
    env_dir = Path(env_dir).absolute()
    have = installed_here()
    plan = EnvPlan(env_dir, code_dir)
    plan.stand_ins = {n: "install.stand_ins in the answers" for n in stand_ins}
    if code_dir is not None and requirements is None:
        main = {_name(r) for r in declared_requirements(code_dir)}
        for extra_name, reqs in optional_requirements(code_dir).items():
            for r in reqs:
                if _name(r) and _name(r) not in main:
                    plan.optional_only.setdefault(_name(r), extra_name)
    wanted = {_name(r) for r in extra}
    for n in [r for r in relax if norm(r) not in wanted]:
        plan.relaxed[norm(n)] = _relax_note(norm(n), have, "relaxed by default" if n in DEFAULT_RELAX
                                            else "install.relax in the answers")
    code_reqs = (list(requirements) if requirements is not None else declared_requirements(code_dir)) + list(extra)
    for _ in range(MAX_ROUNDS):
        mine = [r for r in code_reqs if _name(r) not in plan.relaxed]
        # the code's own pins win over the engine's requirement on the same name; a bare name does not
        engine = engine_requirements({_name(r) for r in mine if re.search(r"[<>=!~]", r)} | set(plan.relaxed))
        overrides = [f"{n}=={have[n]}" for n in plan.relaxed if n in have]
        with tempfile.TemporaryDirectory(prefix="llmc-wizard-resolve-") as work:
            rc, err, pins = _compile(mine + engine, overrides, Path(work))
        if rc == 0:
            break
        named = {n for n in (_name(r) for r in mine) if n and re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", err,
                                                                           re.IGNORECASE)}
        culprits = sorted(named - set(PROTECTED))
        cause = " ".join(ln.strip() for ln in err.splitlines() if ln.strip())[:600]
        if _NET_FAILURE.search(err):
            from .net import stall_seconds

            url = re.search(r"https?://[^\s)]+", err)
            raise WizardError(f"the package index did not answer{f' ({url.group()})' if url else ''}: {cause[:300]}",
                              "check the network and the index uv reads (UV_INDEX_URL / UV_DEFAULT_INDEX); a wait "
                              f"without a byte is given up after {stall_seconds()} s ($LLMC_WIZARD_NET_STALL_S)")
        if not culprits:
            raise WizardError(f"the code's requirements cannot live with the engine's: {cause}",
                              "relax the pin that conflicts (install.relax in the answers), or install with "
                              "install.environment: shared and install.no_deps: true")
        why = ("it cannot be fetched or built here" if "Failed to download" in err or "Git operation failed" in err
               else "its pin conflicts with the engine's requirements")
        for n in culprits:
            plan.relaxed[n] = _relax_note(n, have, f"{why} ({cause[:200]})")
    else:
        raise WizardError("the code's requirements did not resolve after relaxing "
                          f"{', '.join(plan.relaxed)}", "relax more pins in install.relax, or install shared")
    plan.resolved = len(pins)
    plan.needs = sorted({_name(p) for p in pins})
    plan.install = [p for p in pins if _name(p) not in plan.relaxed
                    and have.get(_name(p)) != p.split("==", 1)[1].strip()]
    return plan


def _site_dists(sp: Path) -> set[str]:
    """The distributions installed in the site folder ``sp`` (normalized names)."""
    return {norm(d.metadata["Name"]) for d in metadata.distributions(path=[str(sp)]) if d.metadata["Name"]}


def _outer() -> dict[str, metadata.Distribution]:
    """This environment's installed distributions by normalized name: those of its site folders (a
    source tree's ``*.egg-info`` on ``sys.path`` is not an installation), the first folder winning."""
    out: dict[str, metadata.Distribution] = {}
    for d in metadata.distributions(path=[p for p in site.getsitepackages() if os.path.isdir(p)]):
        name = d.metadata["Name"]
        if name:
            out.setdefault(norm(name), d)
    return out


def base_closure(roots, provided: set[str]) -> dict[str, str]:
    """The distributions of this environment a model environment needs, ``{name: version}``: the
    ``roots`` (names, or ``name[extra,...]``) and, through this environment's ``Requires-Dist``
    (markers evaluated, extras followed where asked), what they require, except what the model
    environment ``provided`` itself (its own copy brings its own requirements)."""
    from packaging.requirements import InvalidRequirement, Requirement

    have = _outer()
    seen: dict[str, str] = {}
    todo = [(r, ()) for r in roots]
    while todo:
        spec, extras = todo.pop()
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?", spec)
        if not m:
            continue
        name = norm(m.group(1))
        extras = tuple(extras) + tuple(e.strip() for e in (m.group(2) or "").split(",") if e.strip())
        if name in provided or name not in have:
            continue
        key = name + "[" + ",".join(sorted(extras)) + "]"
        if key in seen:
            continue
        seen[key] = have[name].version
        for raw in have[name].requires or []:
            try:
                req = Requirement(raw)
            except InvalidRequirement:
                continue
            envs = [{"extra": e} for e in extras] or [{"extra": ""}]
            if req.marker is None or any(req.marker.evaluate(e) for e in envs):
                todo.append((req.name, tuple(req.extras)))
    return {k.split("[")[0]: v for k, v in seen.items()}


def engine_roots() -> list[str]:
    """What the engine runs on in any environment: this package with every extra it declares (its
    optional capabilities are part of it), and lmms-eval (installed here without its dependency tree:
    what it needs is what this environment installed of its requirements)."""
    try:
        extras = metadata.metadata("llmc-wizard").get_all("Provides-Extra") or []
    except metadata.PackageNotFoundError:
        extras = []
    return [f"llmc-wizard[{','.join(extras)}]", "lmms-eval", *ENGINE_EXTRA]


def _tops(d: metadata.Distribution) -> list[tuple[str, ...]]:
    """The paths of a distribution's files relative to its site folder (scripts and caches left out)."""
    out = []
    for f in d.files or []:
        parts = Path(f).parts
        if parts and parts[0] != ".." and "__pycache__" not in parts:
            out.append(parts)
    return out


def write_base(env_dir: Path, names) -> dict[str, str]:
    """Link ``names`` (distributions of this environment) into the model environment's base layer,
    replacing what was there; returns ``{name: version}`` of what it holds. A folder that
    distributions share (a namespace package such as ``nvidia``) is linked whole only when every
    distribution with files in it is in the layer; otherwise it is a real folder of the members' links."""
    have = _outer()
    keep = {n for n in names if n in have}
    base = Path(env_dir) / BASE
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    owners: dict[tuple[str, ...], set[str]] = {}
    roots: dict[str, Path] = {}
    for name, d in have.items():
        roots[name] = Path(d.locate_file(""))
        for parts in _tops(d):
            for i in range(1, len(parts) + 1):
                owners.setdefault(parts[:i], set()).add(name)

    def link(prefix: tuple[str, ...], src_root: Path) -> None:
        dst = base.joinpath(*prefix)
        if dst.exists() or dst.is_symlink():
            return
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(src_root.joinpath(*prefix))

    for name in sorted(keep):
        for parts in _tops(have[name]):
            for i in range(1, len(parts) + 1):
                if owners.get(parts[:i], set()) <= keep:
                    link(parts[:i], roots[name])
                    break
    return {n: have[n].version for n in sorted(keep)}


def _refresh_base(plan: EnvPlan, env_sp: Path) -> dict[str, str]:
    """The base layer for what the environment holds now (after installs and removals)."""
    roots = list(plan.needs) + list(plan.relaxed) + engine_roots()
    return write_base(plan.env_dir, base_closure(roots, _site_dists(env_sp)))


def build_constraints() -> list[str]:
    """This environment's build tools, as the versions an isolated build of the code gets."""
    have = installed_here()
    return [f"{n}=={have[n]}" for n in ("setuptools", "wheel") if n in have]


def _run(cmd: list[str], on_line, cancelled, what: str) -> None:
    from .install import run_streaming

    res = run_streaming(cmd, on_line=on_line, cancelled=cancelled)
    if res.cancelled:
        raise WizardError(f"{what} cancelled", "start the install again; the environment is rebuilt")
    if res.returncode != 0:
        raise WizardError(f"{what} failed (exit {res.returncode}): {' | '.join(res.tail[-3:])}",
                          "read the output above", details="\n".join(res.tail))


IMPORT_CHECK = """
import importlib, json, sys, traceback
try:
    for m in sys.argv[1:]:
        importlib.import_module(m)
except BaseException as e:
    tb = traceback.extract_tb(e.__traceback__)
    print(json.dumps({"error": f"{type(e).__name__}: {e}"[:400], "files": [f.filename for f in tb]}))
else:
    print(json.dumps({"error": None}))
"""


def _stand_in_reason(plan: EnvPlan, top: str) -> str | None:
    """Why an import the environment lacks may get a stand-in (None: it may not): the answers ask
    for it, the code declares it only in an extra, or it declares it but it could not be installed."""
    if top in plan.stand_ins:
        return plan.stand_ins[top]
    name = norm(top)
    if name in plan.optional_only:
        return f"declared only in the code's {plan.optional_only[name]!r} extra"
    why = plan.relaxed.get(name, "")
    if "cannot be fetched or built here" in why:
        return "declared by the code, but it cannot be fetched or built here"
    return None


STAND_IN_MODULE = "_llmc_wizard_stand_ins"
STAND_IN_CODE = """
import importlib.abc, importlib.machinery, sys, types

NAMES = {names!r}


class StandIn:
    def __init__(self, name):
        self._name = name

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return StandIn(self._name + "." + attr)

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{{self._name}} was called, but its package is a stand-in in this environment (the "
                           "model's code imports it; llmc-wizard's install step did not install it): install the "
                           "real package (install.extra_packages in the answers)")

    def __repr__(self):
        return f"<stand-in {{self._name}}>"


class Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] in NAMES:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        mod = types.ModuleType(spec.name)
        mod.__path__ = []

        def __getattr__(attr, _name=spec.name):
            if attr.startswith("__"):
                raise AttributeError(attr)
            return StandIn(_name + "." + attr)

        mod.__getattr__ = __getattr__
        return mod

    def exec_module(self, module):
        pass


sys.meta_path.append(Finder())
"""


def write_stand_ins(env_dir: Path, names: dict[str, str]) -> None:
    """The environment's stand-ins: an import hook (loaded by a ``.pth`` file) that serves ``names``
    and their submodules as modules whose every attribute fails when called, naming the package."""
    sp = next((Path(env_dir) / "lib").glob("python*/site-packages"))
    mod, pth = sp / f"{STAND_IN_MODULE}.py", sp / f"{STAND_IN_MODULE}.pth"
    if not names:
        mod.unlink(missing_ok=True)
        pth.unlink(missing_ok=True)
        return
    mod.write_text(STAND_IN_CODE.format(names=sorted(names)))
    pth.write_text(f"import {STAND_IN_MODULE}\n")


def check_imports(env_dir: Path, modules: list[str]) -> tuple[str | None, list[str]]:
    """Import ``modules`` with the environment's Python: ``(error or None, traceback files)``."""
    p = subprocess.run([str(env_python(env_dir)), "-W", "ignore", "-c", IMPORT_CHECK, *modules],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return f"the environment's Python failed: {(p.stderr or p.stdout).strip()[-400:]}", []
    out = json.loads(lines[-1])
    return out["error"], out.get("files", [])


def _owner(env_dir: Path, files: list[str]) -> str | None:
    """The distribution of the environment whose file raised (the innermost frame inside it)."""
    sp = next(iter((Path(env_dir) / "lib").glob("python*/site-packages")), None)
    if sp is None:
        return None
    for f in reversed(files):
        try:
            top = Path(f).resolve().relative_to(sp.resolve()).parts[0]
        except ValueError:
            continue
        for rec in sp.glob("*.dist-info/RECORD"):
            if any(line.startswith(top + "/") for line in rec.read_text(errors="replace").splitlines()):
                return norm(rec.parent.name.split("-")[0])
    return None


def create_env(plan: EnvPlan, *, commit: str = "", relax=DEFAULT_RELAX, code_package: str | None = None, editable: bool = True,
               on_line=None, cancelled=None) -> EnvPlan:
    """Build ``plan.env_dir``: the virtual environment, the overlay, the differing packages, the code;
    then import the engine and the code with it, relaxing what fails to import (said in ``on_line``)."""
    log = on_line or (lambda _m: None)
    env_dir = plan.env_dir
    if env_dir.exists():
        if any(env_dir.iterdir()) and not (env_dir / "pyvenv.cfg").is_file():
            raise WizardError(f"{env_dir} exists and is not a virtual environment",
                              "move it away; the model's environment is built there")
        shutil.rmtree(env_dir)
    _run(uv() + ["venv", "-q", str(env_dir), "--python", sys.executable], log, cancelled, "creating the environment")
    sp = next((env_dir / "lib").glob("python*/site-packages"))
    (sp / OVERLAY).write_text(f"import site; site.addsitedir({str(env_dir / BASE)!r})\n")
    write_stand_ins(env_dir, plan.stand_ins)
    py = str(env_python(env_dir))
    if plan.install:
        req = env_dir / "requirements.txt"
        req.write_text("\n".join(plan.install) + "\n")
        log(f"environment: installing {len(plan.install)} package(s) the code pins differently")
        _run(uv() + ["pip", "install", "--python", py, "--no-deps", "-r", str(req)], log, cancelled,
             "installing the code's pinned packages")
    if plan.code_dir is not None:
        log(f"environment: installing the code from {plan.code_dir}")
        cons = env_dir / "build-constraints.txt"
        cons.write_text("\n".join(build_constraints()) + "\n")
        # built in an isolated build environment: no build plugin installed anywhere runs in it
        _run(uv() + ["pip", "install", "--python", py, "--no-deps", "--build-constraint", str(cons),
                     *(["-e"] if editable else []), str(plan.code_dir)], log, cancelled, "installing the code")
    base = _refresh_base(plan, sp)
    modules = ["llmc.runner", "lmms_eval.evaluator", "wizard.steps"] + ([code_package] if code_package else [])
    for _ in range(MAX_ROUNDS):
        err, files = check_imports(env_dir, modules)
        if err is None:
            break
        # the failing frame's file, or the module an ImportError names ("cannot import name x from
        # 'pkg' (/env/.../pkg/__init__.py)": the frames are the importer's, the fault is pkg's)
        owner = _owner(env_dir, files + re.findall(r"\((/[^()]+)\)\s*$", err))
        missing = re.match(r"ModuleNotFoundError: No module named '([\w.]+)'", err)
        if owner is None and missing:
            top = missing.group(1).split(".")[0]
            why = _stand_in_reason(plan, top)
            if why is None:
                raise WizardError(f"in the model's environment, the code imports {top}, which it does not declare "
                                  "and nothing installed",
                                  "add its package to install.extra_packages (a name on the package index, or the "
                                  f"path of a local copy of its source); or, when the code only needs it for "
                                  f"training, install.stand_ins: [{top}] (a stand-in that fails if called)")
            plan.stand_ins.setdefault(top, why)
            log(f"environment: the code imports {top} ({why}): a stand-in is provided, which fails if called")
            write_stand_ins(env_dir, plan.stand_ins)
            continue
        if owner is None or owner in PROTECTED or owner == norm(code_package or "-"):
            raise WizardError(f"in the model's environment, importing {', '.join(modules)} fails: {err}",
                              "the code needs a library this version of it lacks: relax or pin it in "
                              "install.relax, or fix the code", details="\n".join(files))
        log(f"environment: {owner} fails to import ({err}); relaxed")
        plan.relaxed[owner] = _relax_note(owner, installed_here(), f"it fails to import in the environment ({err[:160]})")
        plan.install = [p for p in plan.install if _name(p) != owner]
        _run(uv() + ["pip", "uninstall", "--python", py, owner], log, cancelled, f"removing {owner}")
        base = _refresh_base(plan, sp)
    else:
        raise WizardError("the model's environment still fails to import after relaxing "
                          f"{', '.join(plan.relaxed)}", "relax more pins in install.relax")
    (env_dir / STAMP).write_text(json.dumps({**plan.stamp(commit, relax), "base": base, "plan": asdict(plan)},
                                            default=str, indent=1))
    return plan


def env_is_current(env_dir: Path, commit: str, relax=DEFAULT_RELAX) -> bool:
    """Whether ``env_dir`` is a complete environment built for the code at ``commit`` with ``relax``."""
    stamp = Path(env_dir) / STAMP
    try:
        data = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return False
    have = installed_here()
    return (env_python(env_dir).exists() and data.get("code_commit") == commit
            and data.get("requested") == sorted(norm(n) for n in relax)
            # the base layer links this environment's distributions by version: any change rebuilds
            and all(have.get(n) == v for n, v in (data.get("base") or {"?": "?"}).items()))


def main(argv: list[str] | None = None) -> int:
    """``python -m wizard.services.isolate ENV_DIR REQUIREMENT...``: an environment over this one with
    these requirements (how the tests get the engine under an older transformers)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m wizard.services.isolate")
    ap.add_argument("env_dir", type=Path)
    ap.add_argument("requirements", nargs="+")
    a = ap.parse_args(argv)
    key = "requirements:" + ",".join(sorted(a.requirements))
    if env_is_current(a.env_dir, key):
        print(f"[isolate] {a.env_dir} is up to date")
        return 0
    try:
        plan = create_env(plan_env(None, a.env_dir, requirements=a.requirements), commit=key, on_line=print)
    except WizardError as e:
        print(f"[isolate] error: {e}", file=sys.stderr)
        return 1
    print("\n".join("[isolate] " + ln for ln in plan.describe()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
