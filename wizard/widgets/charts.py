"""Pictures where people look: text bar charts with values, and the run report viewer."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import ModalScreen
from textual.widgets import MarkdownViewer, Static


def bar_lines(rows: list[tuple[str, float]], fmt: str, width: int = 30, top: float | None = None) -> str:
    """Text bars with their values: ``label  ██████░░░░  0.0123`` (scaled to ``top``, else the max)."""
    top = top if top is not None else max((v for _, v in rows), default=0.0)
    out = []
    for label, v in rows:
        n = 0 if top <= 0 else round(width * max(v, 0.0) / top)
        out.append(f"{label:<14.14} {'█' * n}{'░' * (width - n)} {fmt.format(v)}")
    return "\n".join(out)


def score_bars(results: dict) -> str:
    """Original vs quantized per category (max 200), one pair of bars each."""
    from llmc.report import score_rows as category_scores

    rows = []
    for cat, orig, quant in category_scores(results):
        rows += [(f"{cat.split(': ', 1)[-1]} orig", orig or 0.0), ("  quantized", quant or 0.0)]
    return bar_lines(rows, "{:.1f}", top=200.0)


class ReportScreen(ModalScreen):
    """A run's report.md, read in the terminal (the PNG charts sit beside it)."""

    BINDINGS = [Binding("escape,q", "app.pop_screen", "Close")]

    def __init__(self, path: Path):
        super().__init__()
        self.path = path

    def compose(self) -> ComposeResult:
        yield Static(f"[b]{self.path}[/b]  (escape closes; the charts are the PNG files beside it)")
        yield MarkdownViewer(self.path.read_text(), show_table_of_contents=False, id="report-view")


def score_rows(results: dict) -> list[tuple[str, str, str, str]]:
    """Rows of the score table: (name, original, quantized, delta) for every eval and category."""
    from llmc.report import score_values

    def cell(v):
        return "-" if v is None else f"{v:.2f}"

    return [(f"{name}: {k}", cell(a), cell(b), f"{b - a:+.2f}" if a is not None and b is not None else "-")
            for name, k, a, b in score_values(results, totals=True)]
