"""Text from a repository is shown, never executed by the terminal.

A ``config.json`` may carry ESC / BEL / OSC sequences (clear the screen, write the clipboard) or
bidirectional overrides in any string. :func:`shown` makes every such character visible as an
escape (``\\x1b``); :func:`guard_std_streams` routes everything a command prints through it;
:func:`identity_problem` refuses a config whose ``architectures`` / ``model_type`` are not names at all.
"""

from __future__ import annotations

import io
import re
import sys

#: C0 controls but tab, newline and carriage return (progress bars), DEL, C1 controls, and the
#: bidirectional embeddings, overrides and isolates
_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
#: in text already laid out for the screen nothing is a control, not even tab or newline
_RENDERED_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*\Z")


def shown(text: str) -> str:
    """``text`` with every character a terminal would act on written as a visible escape."""
    return _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}",
                       str(text))


def rendered_safe(text: str) -> str:
    """``text`` laid out for the screen, without the characters a terminal would act on."""
    return _RENDERED_UNSAFE.sub("", text)


class EscapingStream(io.TextIOBase):
    """A text stream that writes :func:`shown` text to ``inner``."""

    def __init__(self, inner):
        self.inner = inner

    def write(self, s: str) -> int:
        self.inner.write(shown(s))
        return len(s)

    def flush(self) -> None:
        self.inner.flush()

    def isatty(self) -> bool:
        return self.inner.isatty()

    def fileno(self) -> int:
        return self.inner.fileno()

    @property
    def encoding(self):
        return getattr(self.inner, "encoding", "utf-8")


def guard_std_streams() -> None:
    """Route ``sys.stdout`` and ``sys.stderr`` through :class:`EscapingStream` (once)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, EscapingStream):
            setattr(sys, name, EscapingStream(stream))


def identity_problem(raw: dict) -> str | None:
    """Why a ``config.json``'s ``architectures`` or ``model_type`` cannot be what they say (class and
    type names), in one line with the value shown escaped; None when they are names or absent."""
    archs = raw.get("architectures")
    if archs is not None:
        if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
            return f"config.json's architectures is {shown(ascii(archs))[:120]}, not a list of class names"
        bad = [a for a in archs if not _NAME.match(a)]
        if bad:
            return f"config.json's architectures holds {shown(ascii(bad[0]))[:120]}, which is not a class name"
    mt = raw.get("model_type")
    if mt is not None and not (isinstance(mt, str) and _NAME.match(mt)):
        return f"config.json's model_type is {shown(ascii(mt))[:120]}, which is not a model type name"
    return None
