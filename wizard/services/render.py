"""Render the model declaration (``<models dir>/<module>.py``) and config from Jinja templates; write safely.

Safety rules, enforced by the code below rather than by care in the templates:

- **Data never becomes code.** In a Python template every ``{{ … }}`` must be a literal made by
  the ``py`` filter (``ascii()``: pure ASCII, one line, every character escaped) or an
  identifier checked by the ``ident`` filter; in a YAML template a scalar made by ``yamlq``.
  Anything else — a plain string, a concatenation — is refused while rendering. No user or
  repository text goes into a comment or a docstring. :func:`check_declaration` then proves the
  generated module holds only imports, literal assignments and one registered class.
- **Credentials are never written**: every string of the render context passes through
  :func:`llmc.secrets.scrub`.
- **Nothing foreign is replaced**: a generated file carries a header with the hash of its body.
  A target without the header was not made by the wizard and is never overwritten; one whose body
  no longer matches its header (edited by hand) is kept as a backup, with a unified diff, before
  the new one is written. Writes are atomic (temporary file + ``os.replace``).
- **Adapters live outside the engine.** Declarations go to a models folder that the config names
  (``model.adapters``); the engine discovers them there, so nothing edits ``llmc/models``.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.resources
import keyword
import os
import pkgutil
import re
import tempfile
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

from llmc.secrets import scrub

from .errors import WizardError
from .literals import Identifier, PyLiteral, YamlScalar, check_declaration, finalize_only  # noqa: F401
from .literals import to_identifier, to_literal, to_yaml_key, to_yaml_scalar

TEMPLATE_VERSION = "8"
HEADER_RE = re.compile(r"^# llmc-wizard: generated; template (\S+) v(\S+); body-sha256 ([0-9a-f]{64})\s*$")
MAX_MODULE_LEN = 48


def templates_dir() -> Path:
    """The shipped templates (the top-level ``templates/`` folder, installed as ``wizard.templates``)."""
    return Path(str(importlib.resources.files("wizard.templates")))


# ---------------------------------------------------------------------------------------------
# names


def module_name(name: str) -> str:
    """A safe, bounded Python module name from any user-supplied model name (a long name is cut
    and keeps a digest of the whole, so two long names stay apart)."""
    s = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    s = re.sub(r"[^0-9a-zA-Z]+", "_", s).strip("_").lower()
    if not s:
        s = "model"
    if s[0].isdigit():
        s = f"m_{s}"
    if len(s) > MAX_MODULE_LEN:
        s = f"{s[:MAX_MODULE_LEN - 9].rstrip('_')}_{hashlib.sha256(name.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"
    if keyword.iskeyword(s) or s.startswith("__"):
        s = f"{s}_model"
    return s


def reserved_names() -> set[str]:
    """Lower-cased names a generated class must not take: every model type the engine registers
    itself and every public name importable from ``llmc.models`` and its modules (computed, not
    listed; adapters discovered from models folders do not count)."""
    import importlib

    import llmc.models as pkg
    from llmc.models.registry import MODEL_REGISTRY

    names = {k.lower() for k, cls in MODEL_REGISTRY.items() if cls.__module__.startswith("llmc.")}
    names |= {n.lower() for n in dir(pkg) if not n.startswith("_")}
    for info in pkgutil.iter_modules(pkg.__path__):
        names.add(info.name.lower())
        mod = importlib.import_module(f"{pkg.__name__}.{info.name}")
        names |= {n.lower() for n in dir(mod) if not n.startswith("_")}
    return names


def class_name(name: str) -> str:
    """A safe CamelCase class name that clashes with nothing the engine defines."""
    parts = [p for p in module_name(name).split("_") if p]
    s = "".join(p[:1].upper() + p[1:] for p in parts) or "Model"
    if s[0].isdigit():
        s = f"M{s}"
    reserved = reserved_names()
    while keyword.iskeyword(s) or s.lower() in reserved:
        s = f"{s}Adapter"
    return s


# ---------------------------------------------------------------------------------------------
# templates: every interpolated value is a literal or a checked identifier (see .literals)


def environment(kind: str) -> jinja2.Environment:
    """A Jinja environment for ``kind`` "py" or "yaml" whose output accepts only safe values."""
    allowed = (PyLiteral, Identifier) if kind == "py" else (YamlScalar,)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates_dir())), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=False, finalize=finalize_only(allowed))
    env.filters.update(py=to_literal, ident=to_identifier, yamlq=to_yaml_scalar, yamlkey=to_yaml_key)
    return env


def _scrubbed(value):
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_scrubbed(v) for v in value)
    return value


def _body_hash(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()


def render_text(template: str, context: dict) -> str:
    """Render ``template`` with a header line recording template, version and body hash."""
    env = environment("py" if template.endswith(".py.j2") else "yaml")
    ctx = {k: _scrubbed(v) for k, v in context.items()}
    body = env.get_template(template).render(**ctx).lstrip("\n")
    return f"# llmc-wizard: generated; template {template} v{TEMPLATE_VERSION}; body-sha256 {_body_hash(body)}\n{body}"


# ---------------------------------------------------------------------------------------------
# safe writes


def split_header(text: str) -> tuple[re.Match | None, str]:
    first, _, rest = text.partition("\n")
    m = HEADER_RE.match(first)
    return (m, rest) if m else (None, text)


def is_generated(text: str) -> bool:
    return split_header(text)[0] is not None


def is_hand_edited(text: str) -> bool:
    """True when a file has no generator header or its body differs from the recorded hash."""
    m, body = split_header(text)
    return m is None or _body_hash(body) != m.group(3)


@dataclass
class WriteResult:
    path: Path
    action: str  # "created", "unchanged", "updated", "replaced-edited"
    backup: Path | None = None
    diff: str = ""


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_existing(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (UnicodeDecodeError, IsADirectoryError):
        return ""  # not ours: no header


def refuse_foreign(path: Path) -> None:
    """Raise when ``path`` exists and was not generated by the wizard."""
    old = _read_existing(path)
    if old is not None and not is_generated(old):
        raise WizardError(f"{path} exists and was not written by llmc-wizard; it is never replaced",
                          "move it away, or choose another model name or folder")


def safe_write(path: Path, text: str) -> WriteResult:
    path = Path(path)
    old = _read_existing(path)
    if old is None:
        atomic_write(path, text)
        return WriteResult(path, "created")
    if old == text:
        return WriteResult(path, "unchanged")
    refuse_foreign(path)
    diff = "".join(difflib.unified_diff(old.splitlines(True), text.splitlines(True),
                                        fromfile=f"{path.name} (on disk)", tofile=f"{path.name} (new)"))
    if is_hand_edited(old):
        stamp = time.strftime('%Y%m%d-%H%M%S')
        backup = path.with_name(f"{path.name}.bak-{stamp}")
        n = 1
        while backup.exists():
            backup = path.with_name(f"{path.name}.bak-{stamp}-{n}")
            n += 1
        atomic_write(backup, old)
        atomic_write(path, text)
        return WriteResult(path, "replaced-edited", backup, diff)
    atomic_write(path, text)
    return WriteResult(path, "updated", None, diff)


# ---------------------------------------------------------------------------------------------
# the plan


@dataclass
class RenderPlan:
    """What will be written: previewable before anything touches the disk."""

    adapter_path: Path
    adapter_text: str
    config_path: Path
    config_text: str
    module: str
    class_name: str
    model_type: str
    answers_path: Path
    notes: list[str] = field(default_factory=list)
    #: the hand-written hooks file (LLaVA-lineage code): created once, never rewritten
    hooks_path: Path | None = None


def check_models_dir(models_dir: Path) -> Path:
    """The folder for model declarations: anywhere but inside the engine's own package."""
    import llmc

    models_dir = Path(models_dir).expanduser().resolve()
    engine = Path(llmc.__file__).resolve().parent
    if models_dir == engine or engine in models_dir.parents:
        raise WizardError(f"models folder {models_dir} is inside the engine's package",
                          "use a folder of your own (the default is <workdir>/adapters); the engine finds it "
                          "through model.adapters in the config")
    return models_dir


def _weights_path(src) -> str:
    if src.weights_dir:
        return src.weights_dir
    url = src.weights_url or ""
    if url and "://" not in url and Path(url).expanduser().is_dir():
        return str(Path(url).expanduser().resolve())
    raise WizardError("the weights have not been fetched (source.weights_dir is empty)",
                      "run the fetch step (Source) first, or set source.weights_dir to a local model folder")


def _owner_of(path: Path, answers_path: Path) -> str | None:
    """The model name recorded in an existing declaration (or the model's answers file)."""
    text = _read_existing(path)
    if text and is_generated(text):
        try:
            name = check_declaration(split_header(text)[1]).get("display_name")
            if isinstance(name, str):
                return name
        except (ValueError, SyntaxError):
            pass
    if answers_path.exists():
        from .answers import load_answers

        try:
            return load_answers(answers_path).generate.name
        except WizardError:
            return None
    return None


def plan(answers, models_dir: Path, configs_dir: Path) -> RenderPlan:
    """Render both files from the answers (nothing is written)."""
    g, src, ins = answers.generate, answers.source, answers.inspect
    if not g.name:
        raise WizardError("generate.name is empty", "give the model a name, e.g. my-vlm")
    if not ins.projector_last_layers:
        raise WizardError("no projector last layer chosen", "pick one in the Inspect step")
    from llmc.quant.methods import registry, spec

    method = spec(g.method)
    if g.rotate and method.rotation == "never":
        rotating = [m.name for m in registry().values() if m.rotation != "never"]
        raise WizardError(f"{method.name} does not rotate the residual stream",
                          f"choose {', '.join(rotating)}, or no rotation")
    models_dir = check_models_dir(models_dir)
    configs_dir = Path(configs_dir)
    mod = module_name(g.name)
    cls = class_name(g.class_name) if g.class_name else class_name(g.name)
    adapter_path = models_dir / f"{mod}.py"
    answers_path = configs_dir / f"{mod}.answers.yml"
    owner = _owner_of(adapter_path, answers_path)
    if owner is not None and owner != scrub(g.name):
        raise WizardError(f"model name {g.name!r} maps to {adapter_path.name}, which belongs to the model {owner!r}",
                          "choose a name that differs in more than case and punctuation, or remove "
                          f"{adapter_path}")
    refuse_foreign(adapter_path)
    weights = _weights_path(src)
    custom = ins.model_kind == "custom-code"
    adapter = render_text("adapter_custom.py.j2" if custom else "adapter_hf.py.j2", dict(
        display_name=g.name, model_type=cls, class_name=cls,
        architecture=ins.architecture or "AutoModelForImageTextToText",
        code_package=getattr(ins, "code_package", None) or _code_package(src.code_dir),
        last_layers=list(ins.projector_last_layers), language_model_path=ins.language_model_path or "",
        vision_tower_path=ins.vision_tower_path or "", projector_path=ins.projector_path or "",
        prompt_format=g.prompt_template or ins.prompt_format or "chat",
        conv_mode=ins.conv_mode,
        hooks_file=f"hooks/{mod}.py"))
    try:
        check_declaration(split_header(adapter)[1])
    except (ValueError, SyntaxError) as e:  # the templates guarantee this; fail loudly if not
        raise WizardError(f"the generated declaration is not plain data: {e}", "report this as a bug") from None
    config_path = configs_dir / f"{mod}_{g.method.lower()}.yml"
    refuse_foreign(config_path)
    symmetric = g.symmetric if g.symmetric is not None else (g.export == "vllm" or method.symmetric)
    config = render_text("config.yml.j2", dict(
        model_type=cls, weights=str(weights), adapters=str(models_dir), calib_path=str(g.calib_path or ""),
        eval_path=str(g.eval_path or ""), n_calib=g.n_calib, eval_samples=g.eval_samples, method=g.method,
        bit=g.bit, group_size=g.group_size, symmetric=symmetric, act_bit=g.act_bit, export=g.export,
        placement=g.placement, save_path=str(Path(g.out_dir or "runs") / f"{mod}-{g.method.lower()}"),
        calib_algo=g.calib_algo,
        special=method.generated_special(rotate=g.rotate, true_sequential=g.true_sequential)))
    _check_config(config)
    hooks = models_dir / "hooks" / f"{mod}.py" if custom else None
    return RenderPlan(adapter_path, adapter, config_path, config, mod, cls, cls, answers_path, hooks_path=hooks)


#: where the user sets what a config key says (the Run step asks for the data; Generate for the rest)
WHERE = {
    "calib.path": "the Calibration set field of the Run step (generate.calib_path in the answers)",
    "eval.path": "the Evaluation set field of the Run step (generate.eval_path in the answers)",
}


def _check_config(text: str) -> None:
    """The engine must accept what we render: its one-line error names the choice to change."""
    import yaml

    from llmc.config import ConfigError, load_config

    try:
        load_config(yaml.safe_load(text))
    except ConfigError as exc:
        key = str(exc).split(":", 1)[0].strip()
        where = next((w for k, w in WHERE.items() if key == k or key.startswith(k + ".")), None)
        raise WizardError(f"the engine rejects these choices: {exc}",
                          f"set {where}" if where else "change the choice it names in the Generate step") from None


def _code_package(code_dir) -> str | None:
    """The importable package of a code checkout: the top-level dir holding ``model/builder.py``."""
    if not code_dir:
        return None
    root = Path(code_dir)
    for p in sorted(root.glob("*/model/builder.py")):
        return p.parent.parent.name
    for p in sorted(root.glob("*/__init__.py")):
        return p.parent.name
    return None


def write(plan_: RenderPlan, answers) -> list[WriteResult]:
    from .answers import save_answers

    results = [safe_write(plan_.adapter_path, plan_.adapter_text), safe_write(plan_.config_path, plan_.config_text)]
    if plan_.hooks_path is not None and not plan_.hooks_path.exists():  # the user's file once it exists
        plan_.hooks_path.parent.mkdir(parents=True, exist_ok=True)
        plan_.hooks_path.write_text((templates_dir() / "hooks_lineage.py.j2").read_text(encoding="utf-8"),
                                    encoding="utf-8")
    answers.template_version = TEMPLATE_VERSION
    save_answers(answers, plan_.answers_path)
    return results
