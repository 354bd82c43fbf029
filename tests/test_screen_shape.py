"""Every step reads on a small terminal without colour: no control past the body's right edge,
focus and ticks visible by shape or attribute (bold, reverse), not by colour alone."""

from __future__ import annotations

import pytest
from textual.widgets import Input

from wizard.app import WizardApp
from wizard.screens.base import STEP_TITLES

CONTROLS = "Button, Input, Select, Checkbox, SelectionList, DataTable, Tree, Log"


def _app(tmp_path, show_answers=None) -> WizardApp:
    app = WizardApp(answers_path=tmp_path / "answers.yml", workdir=tmp_path, device="cpu")
    app.show_answers = show_answers
    return app


def _shape(app) -> list[str]:
    """The screen as a monochrome terminal shows it: characters, bold, reverse and underline."""
    def cell(seg):
        st = seg.style
        flags = "".join(f for f, on in (("b", st and st.bold), ("r", st and st.reverse), ("u", st and st.underline))
                        if on)
        return f"{seg.text}[{flags}]" if flags else seg.text

    return ["".join(cell(seg) for seg in strip if not seg.control) for strip in app.screen._compositor.render_strips()]


def _controls(screen):
    body = screen.query_one("#body")
    return [w for w in screen.query(CONTROLS) if w.display and body in w.ancestors
            and all(a.display for a in w.ancestors if a is not screen and hasattr(a, "display"))]


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
async def test_every_control_lies_inside_the_body(tmp_path, size):
    """On the default layout no button or field sits past the body's right edge (Run's Open report
    button did, at 80 and 120 columns; Generate's Smoke test, Run's Reattach, Try's image field at 80)."""
    app = _app(tmp_path)
    async with app.run_test(size=size) as pilot:
        for step in STEP_TITLES:
            app.goto(step)
            await pilot.pause()
            body = app.screen.query_one("#body").content_region
            for w in _controls(app.screen):
                r = w.region
                assert r.width > 0 and body.x <= r.x and r.right <= body.right, (step, w.id, r, body)


async def test_with_the_answers_panel_on_a_small_terminal_a_focused_control_scrolls_into_view(tmp_path):
    """ctrl+t shows the panel at 80 columns: a row wider than the body scrolls to the focused control."""
    app = _app(tmp_path, show_answers=True)
    async with app.run_test(size=(80, 24)) as pilot:
        for step in STEP_TITLES:
            app.goto(step)
            await pilot.pause()
            body = app.screen.query_one("#body").content_region
            for w in _controls(app.screen):
                if not w.can_focus or w.disabled:
                    continue
                w.focus()
                for _ in range(30):  # the scroll may animate
                    await pilot.pause(0.1)
                    r = w.region
                    if body.x <= r.x and r.right <= body.right:
                        break
                assert body.x <= r.x and r.right <= body.right, (step, w.id, r, body)


async def test_the_answers_panel_shows_by_itself_only_where_it_fits(tmp_path):
    app = _app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        app.goto("Source")
        await pilot.pause()
        assert not app.screen.query_one("#side").display
        await pilot.resize_terminal(120, 40)
        await pilot.pause()
        assert app.screen.query_one("#side").display


async def test_focus_shows_without_colour(tmp_path):
    """Focusing any control of any step changes what a monochrome terminal shows (fields, lists,
    tables and logs changed colour only)."""
    app = _app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        for step in STEP_TITLES:
            app.goto(step)
            await pilot.pause()
            for w in _controls(app.screen):
                if not w.can_focus or w.disabled:
                    continue
                if isinstance(w, Input):
                    w.cursor_blink = False  # the cursor alone would read as focus half of the time
                app.set_focus(None)
                w.scroll_visible(animate=False)
                await pilot.pause(0.1)
                blurred = _shape(app)
                w.focus()
                await pilot.pause(0.1)
                assert _shape(app) != blurred, (step, w.id)


async def test_a_tick_shows_without_colour(tmp_path):
    """Install's --no-deps box and Inspect's layer picks: a ticked box holds an X, an unticked one
    is empty (both held an X in another colour)."""
    from wizard.widgets.marks import TickList, Tickbox

    app = _app(tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        app.goto("Install")
        await pilot.pause()
        box = app.screen.query_one("#no-deps", Tickbox)
        box.value = False
        await pilot.pause()
        off = str(box.render())
        box.value = True
        await pilot.pause()
        assert "X" in str(box.render()) and "X" not in off
        app.goto("Inspect")
        await pilot.pause()
        picks = app.screen.query_one("#picks", TickList)
        picks.add_options([("model.a.linear_2", "model.a.linear_2"), ("model.b.fc2", "model.b.fc2")])
        picks.select("model.b.fc2")
        await pilot.pause()
        lines = ["".join(s.text for s in picks.render_line(y)) for y in range(2)]
        assert lines[0].startswith("▐ ▌") and "linear_2" in lines[0], lines
        assert lines[1].startswith("▐X▌") and "fc2" in lines[1], lines
