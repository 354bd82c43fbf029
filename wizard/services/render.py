"""Render the adapter (``llmc/models/<name>.py``) and config from Jinja templates; write safely.

Safety rules:
- every user-supplied string reaches generated Python through ``repr`` (``pyrepr``) or a
  sanitised identifier, so the generated module always parses;
- writes are atomic (temporary file + ``os.replace``);
- a generated file carries a header with the hash of its body; when a target exists and its
  body no longer matches its header (edited by hand), the old file is kept as a backup and a
  unified diff is returned before the new one is written.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import json
import keyword
import os
import re
import tempfile
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

TEMPLATES_DIR = Path(__file__).resolve().parents[1] / "templates"
TEMPLATE_VERSION = "4"
HEADER_RE = re.compile(r"^# llmc-wizard: generated; template (\S+) v(\S+); body-sha256 ([0-9a-f]{64})\s*$")


def module_name(name: str) -> str:
    """A safe Python module name from any user-supplied model name."""
    s = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    s = re.sub(r"[^0-9a-zA-Z]+", "_", s).strip("_").lower()
    if not s:
        s = "model"
    if s[0].isdigit():
        s = f"m_{s}"
    if keyword.iskeyword(s) or s.startswith("__") or s in {"base", "registry", "structure", "projector", "hf_vlm",
                                                             "llama", "llava", "vila"}:
        s = f"{s}_model"
    return s


def class_name(name: str) -> str:
    """A safe CamelCase class name."""
    parts = [p for p in module_name(name).split("_") if p]
    s = "".join(p[:1].upper() + p[1:] for p in parts) or "Model"
    if s[0].isdigit():
        s = f"M{s}"
    if keyword.iskeyword(s) or s in {"BaseModel", "Vila", "Llava", "Llama", "Qwen2", "LlmcLMM", "VQARequest",
                                       "HFVisionLanguageModel"}:
        s = f"{s}Adapter"
    return s


def _comment_safe(v) -> str:
    return str(v).replace("\r", " ").replace("\n", " ").replace('"""', "'''").replace("\\", "/")


def _yaml_quote(v) -> str:
    return json.dumps(str(v), ensure_ascii=False)  # JSON strings are valid YAML scalars


def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=False)
    env.filters["pyrepr"] = repr
    env.filters["pystr_comment"] = _comment_safe
    env.filters["yaml_comment"] = _comment_safe
    env.filters["yamlq"] = _yaml_quote
    return env


def _body_hash(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()


def render_text(template: str, context: dict) -> str:
    """Render ``template`` with a header line recording template, version and body hash."""
    env = environment()
    body = env.get_template(template).render(header="", template_name=template,
                                             template_version=TEMPLATE_VERSION, **context)
    body = body.lstrip("\n")
    return f"# llmc-wizard: generated; template {template} v{TEMPLATE_VERSION}; body-sha256 {_body_hash(body)}\n{body}"


def split_header(text: str) -> tuple[re.Match | None, str]:
    first, _, rest = text.partition("\n")
    m = HEADER_RE.match(first)
    return (m, rest) if m else (None, text)


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
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def safe_write(path: Path, text: str) -> WriteResult:
    path = Path(path)
    if not path.exists():
        atomic_write(path, text)
        return WriteResult(path, "created")
    old = path.read_text()
    if old == text:
        return WriteResult(path, "unchanged")
    diff = "".join(difflib.unified_diff(old.splitlines(True), text.splitlines(True),
                                        fromfile=f"{path.name} (on disk)", tofile=f"{path.name} (new)"))
    if is_hand_edited(old):
        backup = path.with_name(f"{path.name}.bak-{time.strftime('%Y%m%d-%H%M%S')}")
        n = 1
        while backup.exists():
            backup = path.with_name(f"{path.name}.bak-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
            n += 1
        backup.write_text(old)
        atomic_write(path, text)
        return WriteResult(path, "replaced-edited", backup, diff)
    atomic_write(path, text)
    return WriteResult(path, "updated", None, diff)


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


def plan(answers, models_dir: Path, configs_dir: Path) -> RenderPlan:
    """Render both files from the answers (nothing is written)."""
    g, src, ins = answers.generate, answers.source, answers.inspect
    if not g.name:
        from .errors import WizardError

        raise WizardError("generate.name is empty", "give the model a name, e.g. my-vlm")
    if not ins.projector_last_layers:
        from .errors import WizardError

        raise WizardError("no projector last layer chosen", "pick one in the Inspect step")
    mod = module_name(g.name)
    cls = g.class_name and class_name(g.class_name) or class_name(g.name)
    model_type = cls
    weights = src.weights_dir or src.weights_url
    custom = ins.model_kind == "custom-code"
    ctx = dict(
        display_name=g.name, weights=str(weights), model_type=model_type, class_name=cls,
        architecture=ins.architecture or "AutoModelForImageTextToText",
        code_package=getattr(ins, "code_package", None) or _code_package(src.code_dir),
        last_layers=list(ins.projector_last_layers), skip_layers=["lm_head"],
    )
    adapter = render_text("adapter_custom.py.j2" if custom else "adapter_hf.py.j2", ctx)
    config_path = Path(configs_dir) / f"{mod}_{g.method.lower()}.yml"
    if g.rotate and g.method in ("Awq", "SmoothQuant"):
        from .errors import WizardError

        raise WizardError(f"rotation is available with RTN and GPTQ, not {g.method}",
                          "choose RTN, GPTQ or Quarot, or no rotation")
    symmetric = g.symmetric if g.symmetric is not None else (g.export == "vllm" or g.method == "SmoothQuant")
    config = render_text("config.yml.j2", dict(
        display_name=g.name, model_type=model_type, weights=str(weights), calib_path=str(g.calib_path or ""),
        eval_path=str(g.eval_path or ""), n_calib=g.n_calib, eval_samples=g.eval_samples, method=g.method,
        bit=g.bit, group_size=g.group_size, symmetric=symmetric, act_bit=g.act_bit, export=g.export,
        placement=g.placement, save_path=str(Path(g.out_dir or "runs") / f"{mod}-{g.method.lower()}"),
        config_path=str(config_path), rotate=g.rotate if g.method in ("RTN", "GPTQ", "Quarot") else None))
    _check_config(config)
    ast.parse(adapter)  # generated Python always parses (names are escaped); fail loudly if not
    return RenderPlan(Path(models_dir) / f"{mod}.py", adapter, config_path, config, mod, cls, model_type,
                      Path(configs_dir) / f"{mod}.answers.yml")


def _check_config(text: str) -> None:
    """The engine must accept what we render: its one-line error names the choice to change."""
    import yaml

    from llmc.config import ConfigError, load_config

    from .errors import WizardError

    try:
        load_config(yaml.safe_load(text))
    except ConfigError as exc:
        raise WizardError(f"the engine rejects these choices: {exc}",
                          "change the method, bits, group size or export in this step") from None


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
    answers.template_version = TEMPLATE_VERSION
    save_answers(answers, plan_.answers_path)
    return results
