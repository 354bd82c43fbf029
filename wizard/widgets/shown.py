"""Text from a repository, a child process or a model is shown, never executed by the terminal.

:class:`ShownLog` writes every line through :func:`llmc.textsafe.shown` (an ESC appears as
``\\x1b``); :class:`TerminalSafe` is the app-wide guarantee behind it: every line any widget
renders (a table cell, a label, a model's answer) reaches the terminal without a control
character, whatever code put the text there.
"""

from __future__ import annotations

from typing import Iterable

from rich.segment import Segment
from textual.filter import LineFilter
from textual.widgets import Log

from llmc.textsafe import rendered_safe, shown


class ShownLog(Log):
    """A :class:`textual.widgets.Log` that shows control characters as escapes."""

    def write(self, data: str, scroll_end: bool | None = None):
        return super().write(shown(data), scroll_end)

    def write_lines(self, lines: Iterable[str], scroll_end: bool | None = None):
        return super().write_lines([shown(line) for line in lines], scroll_end)


class TerminalSafe(LineFilter):
    """Drops every control character from rendered text (they occupy no cell, so the layout stays)."""

    def apply(self, segments: list[Segment], background) -> list[Segment]:
        return [s if s.control or rendered_safe(s.text) == s.text else Segment(rendered_safe(s.text), s.style, s.control)
                for s in segments]
