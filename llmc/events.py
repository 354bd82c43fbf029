"""The engine's progress events, typed: defined here once, checked when written, parsed once.

:class:`llmc.progress.Progress` writes each event as one JSON line ``{"t", "event", ...fields}``
and checks the fields of every kind below against its class (a writer cannot drop a field a
reader needs). Readers — the wizard's headless steps and its Run screen — turn lines into these
classes with :func:`parse_event` and never interpret raw dicts. Fields beyond a class's own stay
in ``extra``; kinds without a class (``placement``, ``cache_hit``, ``clip_verdict``, ...) parse
to :class:`Other`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar


@dataclass(frozen=True, kw_only=True)
class Event:
    t: float = 0.0
    extra: dict = field(default_factory=dict, compare=False)
    EVENT: ClassVar[str] = ""

    @classmethod
    def from_dict(cls, d: dict) -> Event:
        names = {f.name for f in fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names and k != "event"}
        return cls(**known, extra=extra)


@dataclass(frozen=True, kw_only=True)
class Start(Event):
    EVENT: ClassVar[str] = "start"
    run_dir: str
    device: str
    pid: int
    run_id: str = ""


@dataclass(frozen=True, kw_only=True)
class Phase(Event):
    """A phase starts or ends (``state``); an end carries ``seconds``; ``quantize`` carries ``n_blocks``."""

    EVENT: ClassVar[str] = "phase"
    name: str
    state: str
    seconds: float | None = None
    n_blocks: int | None = None


@dataclass(frozen=True, kw_only=True)
class Block(Event):
    """Block ``i`` of ``n`` quantized: its relative output error over every token and at the last
    (``None`` for RTN without calibration data: nothing was measured)."""

    EVENT: ClassVar[str] = "block"
    i: int
    n: int
    seconds: float
    block_error: float | None
    last_error: float | None = 0.0


@dataclass(frozen=True, kw_only=True)
class LayerError(Event):
    EVENT: ClassVar[str] = "layer_error"
    block: int
    layer: str
    error: float
    #: GPTQ's own loss for the layer (sum over rows of the error its column updates minimise)
    gptq_loss: float | None = None


@dataclass(frozen=True, kw_only=True)
class EvalProgress(Event):
    EVENT: ClassVar[str] = "eval_progress"
    pos: str
    name: str
    done: int
    total: int


@dataclass(frozen=True, kw_only=True)
class Scores(Event):
    EVENT: ClassVar[str] = "scores"
    pos: str
    name: str
    scores: dict


@dataclass(frozen=True, kw_only=True)
class Saved(Event):
    EVENT: ClassVar[str] = "saved"
    kind: str
    path: str


@dataclass(frozen=True, kw_only=True)
class Done(Event):
    """The engine got to its end; only the run's ``COMPLETE`` marker says the run is complete."""

    EVENT: ClassVar[str] = "done"
    seconds: float
    results: str
    complete: str = ""


@dataclass(frozen=True, kw_only=True)
class Error(Event):
    EVENT: ClassVar[str] = "error"
    message: str


@dataclass(frozen=True, kw_only=True)
class Warned(Event):
    EVENT: ClassVar[str] = "warning"
    message: str


@dataclass(frozen=True, kw_only=True)
class Cancelled(Event):
    EVENT: ClassVar[str] = "cancelled"


@dataclass(frozen=True, kw_only=True)
class Other(Event):
    """A kind without a class of its own: its name and every field (in ``extra``)."""

    event: str = ""

    @classmethod
    def from_dict(cls, d: dict) -> Event:
        return cls(t=d.get("t", 0.0), event=str(d.get("event", "")),
                   extra={k: v for k, v in d.items() if k not in ("t", "event")})


EVENTS: dict[str, type[Event]] = {c.EVENT: c for c in (Start, Phase, Block, LayerError, EvalProgress, Scores, Saved,
                                                       Done, Error, Warned, Cancelled)}


def check_fields(kind: str, fields_: dict[str, Any]) -> None:
    """Raise TypeError when an event of a known ``kind`` lacks a field its class requires."""
    cls = EVENTS.get(kind)
    if cls is not None:
        cls.from_dict(fields_)


def parse_event(d: dict) -> Event:
    """One event line (already JSON-decoded) as its class; a malformed known kind becomes :class:`Other`."""
    cls = EVENTS.get(d.get("event"), Other)
    try:
        return cls.from_dict(d)
    except TypeError:
        return Other.from_dict(d)


def load_events(path: Path) -> list[Event]:
    """Every complete event of an events file, typed (a partly written last line is skipped)."""
    from .progress import read_events

    return [parse_event(d) for d in read_events(path)]


def decode_lines(data: bytes) -> list[Event]:
    """Complete JSON lines of ``data`` as events (undecodable lines are skipped)."""
    out = []
    for line in data.split(b"\n"):
        try:
            d = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(d, dict):
            out.append(parse_event(d))
    return out
