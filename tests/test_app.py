"""The wizard's welcome screen, driven by Pilot."""

from pathlib import Path

from textual.widgets import DataTable, Static

from wizard.app import WelcomeScreen, WizardApp
from wizard.demo.facts import all_facts


async def test_welcome_lists_demo_models_with_facts(zoo):
    app = WizardApp(zoo_root=zoo.root)
    async with app.run_test(size=(140, 36)) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, WelcomeScreen)
        table = app.screen.query_one("#models", DataTable)
        assert table.row_count == 2
        names = [table.get_row_at(i)[0] for i in range(table.row_count)]
        assert names == ["tiny-llava", "tiny-vila"]
        facts = {f.name: f for f in all_facts()}
        for i, name in enumerate(names):
            row = table.get_row_at(i)
            assert row[1] == ("transformers" if name == "tiny-llava" else "custom code")
            assert row[3].startswith(f"{facts[name].llm_layers} × {facts[name].llm_hidden}")
            assert row[-1] == f"{facts[name].total:.1f}"
        status = str(app.screen.query_one("#zoo-status", Static).render())
        assert str(zoo.root) in status
        await pilot.press("down")
        assert table.cursor_row == 1
        await pilot.press("q")
    assert app.return_code == 0


async def test_welcome_without_zoo_says_how_to_build_it():
    app = WizardApp(zoo_root=None)
    async with app.run_test(size=(140, 36)) as pilot:
        await pilot.pause()
        status = str(app.screen.query_one("#zoo-status", Static).render())
        assert "llmc-wizard demo build" in status


def test_welcome_snapshot(snap_compare):
    assert snap_compare(WizardApp(zoo_root=Path("/home/user/.cache/llmc-wizard/demo")), terminal_size=(140, 30))
