"""The wizard's whole state as a typed answers file (YAML).

Every screen of the TUI and every headless step reads and updates one :class:`Answers` object;
:func:`save_answers` writes it atomically and :func:`load_answers` reads it back with errors that
name the bad key or value and suggest a fix. Credentials never reach the file: URL userinfo
(``https://user:TOKEN@host``) is stripped and tokens are masked on save (see :meth:`Answers.redacted`).

:func:`redact` is the general-purpose scrubber used for anything shown to the user (progress
messages, errors, logs): it masks URL userinfo, Hugging Face tokens and the values of token
environment variables wherever they appear in a text.
"""

from __future__ import annotations

import difflib
import os
import tempfile
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from llmc.config import ACT_BITS, WEIGHT_BITS
from llmc.secrets import MASK, TOKEN_ENV_VARS, redact, scrub, strip_userinfo  # noqa: F401
from llmc.yamlload import BoundedLoader

from .errors import WizardError
from .pins import DEFAULT_RELAX

ANSWERS_VERSION = 1

# ---------------------------------------------------------------------------------------------
# the model


class _Section(BaseModel):
    # unknown keys are errors (typos would otherwise be silently ignored)
    model_config = ConfigDict(extra="forbid")


class Source(_Section):
    """Where the weights (and, for custom-code models, the code) come from, and where they went."""

    weights_url: str = ""  #: URL or local path of the weights repository
    weights_dir: str | None = None  #: local clone of the weights
    code_url: str | None = None  #: URL or local path of the model's code repository
    code_commit: str | None = None  #: commit/tag/branch to pin the code at (the full sha once fetched)
    code_dir: str | None = None  #: local clone of the code
    lfs: bool | None = None  #: use git-lfs (None: when the repository has LFS files)


class Consent(_Section):
    """What the user agreed to install: that code, at that commit, with those pip options."""

    code_url: str
    commit: str
    options: list[str] = Field(default_factory=list)


class Install(_Section):
    """pip-installing the model's code."""

    needed: bool | None = None  #: None: detect from the weights' config.json
    editable: bool = True
    no_deps: bool = False
    extra_packages: list[str] = Field(default_factory=list)
    #: where the code goes: ``auto`` = an environment of its own when its pins conflict with this
    #: one's (and ``no_deps`` is off), else this environment; ``isolated``; ``shared``
    environment: Literal["auto", "isolated", "shared"] = "auto"
    #: in the model's own environment, pins not honoured beyond the built-in ones (the packages
    #: built for the local CUDA: torch, torchvision, ...): they keep this environment's version,
    #: or are left out when it has none
    relax: list[str] = Field(default_factory=list)
    #: built-in relaxations to drop: the code's own pin of these is installed (e.g. ``torch``)
    keep_pins: list[str] = Field(default_factory=list)
    #: in the model's own environment: import names the code imports but only needs for training (e.g.
    #: ``flash_attn``), served as stand-ins that fail when called. Packages the code declares only in
    #: an extra, or declares but cannot be installed here, get one without being named.
    stand_ins: list[str] = Field(default_factory=list)
    env_dir: str | None = None  #: the model's environment, once built (its Python runs the later steps)
    #: the install the user reviewed and accepted; a different code URL, commit or option asks again
    consent: Consent | None = None

    @model_validator(mode="before")
    @classmethod
    def _legacy_confirmed(cls, data: Any) -> Any:
        # older answers said `confirmed: true` without saying what for: that consent is void
        if isinstance(data, dict) and "confirmed" in data:
            data = {k: v for k, v in data.items() if k != "confirmed"}
        return data

    def consent_for(self, source: Source) -> Consent:
        """The consent that installing ``source``'s code with these options needs."""
        options = (["--editable"] if self.editable else []) + (["--no-deps"] if self.no_deps else []) \
            + [str(x) for x in self.extra_packages] + [f"--stand-in={x}" for x in self.stand_ins] \
            + ([f"--environment={self.environment}", "--relax=" + ",".join(self.effective_relax())]
               if self.environment != "auto" or self.relax or self.keep_pins else [])
        return Consent(code_url=scrub(source.code_url or ""), commit=source.code_commit or "", options=options)

    def effective_relax(self) -> list[str]:
        """The pins the model's environment does not honour: the built-in ones but ``keep_pins``,
        and ``relax``."""
        keep = {k.lower() for k in self.keep_pins}
        return [n for n in DEFAULT_RELAX if n not in keep] + [n for n in self.relax if n not in DEFAULT_RELAX]

    def consented(self, source: Source) -> bool:
        return self.consent is not None and self.consent == self.consent_for(source)


class Inspect(_Section):
    """What inspecting the model found (and the user's picks)."""

    model_kind: Literal["transformers", "custom-code"] | None = None
    architecture: str | None = None
    projector_last_layers: list[str] = Field(default_factory=list)
    hidden_size: int | None = None
    num_blocks: int | None = None
    #: where the parts live (dotted paths from the model object), as inspect found them
    language_model_path: str | None = None
    vision_tower_path: str | None = None
    projector_path: str | None = None
    #: how prompts are built: "chat" (the processor's chat template) or "plain" (the processor's
    #: own format, e.g. PaliGemma); found from the model folder
    prompt_format: Literal["chat", "plain"] | None = None
    #: custom code: whose conventions it follows ("llava-lineage": LLaVA / VILA's loader, conversation
    #: templates and mm_utils; the demo's tiny_vila follows them too)
    code_conventions: Literal["llava-lineage"] | None = None
    #: llava-lineage: the key of the code's conversation.conv_templates the prompts use
    conv_mode: str | None = None

    @field_validator("code_conventions", mode="before")
    @classmethod
    def _one_lineage(cls, v):
        return "llava-lineage" if v == "demo-vila" else v  # answers written before tiny_vila followed VILA 1.5


def _suggested_method() -> str:
    from llmc.quant.methods import suggested

    return suggested()


class Generate(_Section):
    """The adapter and the llmc config to generate."""

    name: str | None = None  #: adapter / model type name
    class_name: str | None = None
    out_dir: str | None = None
    #: a method of llmc's registry (any case; stored in its registered spelling)
    method: str = Field(default_factory=_suggested_method)
    bit: int = Field(4, ge=WEIGHT_BITS[0], le=WEIGHT_BITS[1])  #: the engine's own range
    #: weights per scale; None: one scale per output channel (no groups). The only form a group size
    #: takes in the wizard; 0 and -1 (older answers files, the engine's old marker) read as None
    group_size: int | None = Field(32, gt=0)
    #: None: chosen for the method/export (symmetric for SmoothQuant and the vLLM export)
    symmetric: bool | None = None
    act_bit: int | None = Field(None, ge=ACT_BITS[0], le=ACT_BITS[1])  #: dynamic per-token activations; None: A16
    #: real low-bit checkpoint written after the run: compressed-tensors (vLLM) or AutoAWQ
    export: Literal["vllm", "autoawq"] | None = None
    calib_path: str | None = None
    eval_path: str | None = None
    n_calib: int = Field(64, ge=1)
    eval_samples: int | None = Field(None, ge=1)
    #: a prompt template of your own, with {question} (overrides inspect.prompt_format)
    prompt_template: str | None = None
    #: QuaRot-style rotation before RTN/GPTQ (uses the projector last-layer pick)
    rotate: Literal["hadamard", "random"] | None = None
    #: where the decoder blocks live: one device; CPU memory, each block moved to the device
    #: for its turn (``model.offload``); or spread over every GPU (``model.device_map: auto``)
    placement: Literal["single", "offload", "auto"] = "single"
    #: weight ranges: each group's min/max, or the range factor with the least error (``mse``;
    #: RTN, GPTQ, SmoothQuant, Quarot; AWQ searches its own clip)
    calib_algo: Literal["minmax", "mse"] = "minmax"
    #: GPTQ: each layer's Hessian from inputs that went through the block's already quantized
    #: layers (True), or every Hessian from the float block (False)
    true_sequential: bool = True

    @field_validator("group_size", mode="before")
    @classmethod
    def _no_groups(cls, v):
        return None if v in (0, -1) else v

    @field_validator("prompt_template")
    @classmethod
    def _has_question(cls, v: str | None) -> str | None:
        if v is not None and "{question}" not in v:
            raise ValueError("the prompt template must contain {question} (where the question goes), "
                             "e.g. 'USER: <image>\\n{question} ASSISTANT:'")
        return v

    @field_validator("method", mode="before")
    @classmethod
    def _method_case(cls, v: Any) -> Any:
        # accept "awq", "gptq", "rtn": the canonical spelling is what llmc's registry uses
        from llmc.quant.methods import canonical, names

        if not isinstance(v, str):
            return v
        canon = canonical(v)
        if canon is None:
            raise PydanticCustomError("literal_error", "unknown method; choose from {choices}",
                                      {"choices": ", ".join(names())})
        return canon


class Run(_Section):
    device: str | None = None
    run_dir: str | None = None


class Answers(_Section):
    """The wizard's whole state. Sections mirror the wizard's steps."""

    version: int = ANSWERS_VERSION
    template_version: str | None = None  #: version of the templates the generated files came from
    source: Source = Field(default_factory=Source)
    install: Install = Field(default_factory=Install)
    inspect: Inspect = Field(default_factory=Inspect)
    generate: Generate = Field(default_factory=Generate)
    run: Run = Field(default_factory=Run)

    def redacted(self) -> Answers:
        """A deep copy safe to show or save: userinfo stripped from every URL, tokens masked."""
        # copy + assign (not re-validate): redacting must work even on a half-filled state
        copy = self.model_copy(deep=True)
        _scrub_model(copy)
        return copy


def group_size_from_text(text: str) -> int | None:
    """A group-size field as typed (Inspect, Generate): empty or 0 is None (per channel), else a
    whole number > 0; anything else a WizardError naming what was typed."""
    text = text.strip()
    try:
        value = int(text) if text else None
    except ValueError:
        value = -2
    if value is not None and value < 0:
        raise WizardError(f"group size {text!r} is not a whole number ≥ 0",
                          "type a group size such as 32 or 128, or leave the field empty for per channel")
    return value or None


def _scrub_model(model: BaseModel) -> None:
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            _scrub_model(value)
        else:
            setattr(model, name, _map_strings(value, scrub))


def _map_strings(obj: Any, fn) -> Any:
    if isinstance(obj, str):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _map_strings(v, fn) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_map_strings(v, fn) for v in obj]
    return obj


# ---------------------------------------------------------------------------------------------
# load / save


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that holds the key at ``loc`` (e.g. ``("generate", "methd")`` -> Generate)."""
    model: type[BaseModel] = Answers
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        ann = field.annotation
        if get_origin(ann) is not None:
            ann = next((a for a in get_args(ann) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def _literal_choices(ann: Any) -> list[str]:
    """The string values of a ``Literal[...]`` annotation, also inside ``Optional``/unions."""
    out: list[str] = []
    for a in get_args(ann):
        out += [a] if isinstance(a, str) else _literal_choices(a)
    return out


def _explain(err: dict, path: Path) -> WizardError:
    loc = tuple(err["loc"])
    dotted = ".".join(str(p) for p in loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        model = _model_at(loc)
        valid = list(model.model_fields) if model else []
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.6)
        where = ".".join(str(p) for p in loc[:-1]) or "the top level"
        fix = (f"did you mean '{close[0]}'?" if close else
               f"remove it; valid keys in {where}: {', '.join(valid)}" if valid else "remove it")
        return WizardError(f"{path}: unknown key '{dotted}'", fix)
    value = err.get("input")
    fix = "correct the value in the answers file"
    if err["type"] == "literal_error" and isinstance(value, str):
        model = _model_at(loc)
        field = model.model_fields.get(str(loc[-1])) if model else None
        choices = _literal_choices(field.annotation) if field else []
        if not choices and str(loc[-1]) == "method":  # the engine's registry holds the methods
            from llmc.quant.methods import names

            choices = list(names())
        close = difflib.get_close_matches(value, choices, n=1, cutoff=0.5)
        if close:
            fix = f"did you mean '{close[0]}'?"
    if err["type"] in ("model_type", "dict_type"):
        return WizardError(f"{path}: '{dotted}' must be a mapping of keys, not {value!r}",
                           "indent its keys under it (see a saved answers file for the layout)")
    return WizardError(f"{path}: {dotted} = {redact(repr(value))}: {err['msg']}", fix)


def load_answers(path: str | os.PathLike) -> Answers:
    """Read an answers file. Raises :class:`WizardError` for a missing/unreadable file, invalid
    YAML, unknown keys (with a did-you-mean) and bad values (naming the key)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise WizardError(f"answers file {path} does not exist",
                          "check the path, or start the wizard without --answers to create one") from None
    except IsADirectoryError:
        raise WizardError(f"answers file {path} is a directory", "pass the YAML file inside it") from None
    except (OSError, UnicodeDecodeError) as e:
        raise WizardError(f"cannot read answers file {path}: {e}",
                          "check the file's permissions and encoding") from None
    try:
        data = yaml.load(text, Loader=BoundedLoader)  # noqa: S506 - a SafeLoader whose aliases are bounded
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise WizardError(f"{path}: invalid YAML{where}: {problem}",
                          "fix the syntax (indentation, a missing ':' or an unclosed quote)") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise WizardError(f"{path}: expected a mapping of sections (source, install, ...), got {type(data).__name__}",
                          "see a saved answers file for the layout")
    version = data.get("version", ANSWERS_VERSION)
    if isinstance(version, int) and version > ANSWERS_VERSION:
        raise WizardError(f"{path}: answers version {version} is newer than this wizard supports ({ANSWERS_VERSION})",
                          "upgrade llmc-wizard")
    try:
        return Answers.model_validate(data)
    except ValidationError as e:
        errors = e.errors()
        err = _explain(errors[0], path)
        if len(errors) > 1:
            err.message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        raise err from None


HEADER = (f"# llmc-wizard answers (version {ANSWERS_VERSION}). Edit freely; credentials are never saved here:\n"
          "# put tokens in HF_TOKEN / GITHUB_TOKEN instead.\n")


def dump_answers(answers: Answers) -> str:
    """The YAML text :func:`save_answers` writes (credentials removed)."""
    data = answers.redacted().model_dump(mode="json")
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False)
    if yaml.safe_load(text) != data:  # a raw line separator (NEL, U+2028) would not read back: escape all
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=False, default_flow_style=False)
    return HEADER + text


def save_answers(answers: Answers, path: str | os.PathLike) -> Path:
    """Write ``answers`` to ``path`` atomically (temp file in the same folder, fsync, ``os.replace``):
    readers see the old file or the new one, never a half-written one. Returns the path."""
    path = Path(path)
    text = dump_answers(answers)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            mode = path.stat().st_mode & 0o777
        except FileNotFoundError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise WizardError(f"cannot write answers file {path}: {e.strerror or e}",
                          "check that the folder exists and is writable") from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return path
