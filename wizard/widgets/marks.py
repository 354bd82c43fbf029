"""Toggles whose state reads without colour: an unticked box is empty, a ticked one holds an X
(Textual draws the X in both states and tells them apart by colour alone)."""

from __future__ import annotations

from rich.segment import Segment
from textual.strip import Strip
from textual.widgets import Checkbox, SelectionList
from textual.widgets._toggle_button import ToggleButton

TICK = ToggleButton.BUTTON_INNER


class Tickbox(Checkbox):
    """A Checkbox whose box is empty when off."""

    @property
    def BUTTON_INNER(self) -> str:  # noqa: N802 - the name ToggleButton reads
        return TICK if self.value else " "


class TickList(SelectionList):
    """A SelectionList whose unselected items show an empty box."""

    def render_line(self, y: int) -> Strip:
        line = super().render_line(y)
        segments = list(line)
        index = self.scroll_offset.y + y
        if index >= self.option_count or len(segments) < 3 or segments[1].text != TICK:
            return line
        if self.get_option_at_index(index).value in self._selected:
            return line
        segments[1] = Segment(" ", segments[1].style)
        return Strip(segments, line.cell_length)
