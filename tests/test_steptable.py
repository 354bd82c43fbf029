"""The steps are one table (:mod:`wizard.steptable`): the onboard order, the TUI's screens, the
subcommands and the hand-over to the model's environment are read from it, and no other file of
``wizard/`` spells two step names in a row (a second list of steps)."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

from wizard import steptable

ROOT = Path(__file__).resolve().parents[1]


def test_every_list_of_steps_is_the_tables():
    from wizard.cli import IN_MODEL_ENV, build_parser
    from wizard.screens import STEP_SCREENS
    from wizard.screens.base import STEP_TITLES
    from wizard.steps import STEP_FUNCS, STEPS

    assert list(STEP_FUNCS) == list(STEPS) == [s.name for s in steptable.TABLE if s.onboard]
    assert list(STEP_SCREENS) == list(STEP_TITLES) == list(steptable.SCREENS)
    assert all(cls.TITLE_TEXT == title for title, cls in STEP_SCREENS.items())
    assert {s.name for s in steptable.TABLE if s.model_env} <= IN_MODEL_ENV
    assert not {s.name for s in steptable.TABLE if not s.model_env} & IN_MODEL_ENV
    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    assert {s.name for s in steptable.TABLE} <= set(sub.choices)
    helps = {a.dest: a.help for a in sub._choices_actions}
    assert all(helps[s.name] == s.help for s in steptable.TABLE)


def test_no_other_file_lists_steps():
    names = {s.name for s in steptable.TABLE} | {s.screen for s in steptable.TABLE}
    names |= {n.lower() for n in names}
    found = []
    for path in sorted((ROOT / "wizard").rglob("*.py")):
        if path.name == "steptable.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in node.targets):
                node.value.elts = []  # an export list names functions, not steps
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                items = [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
                for a, b in itertools.pairwise(items):
                    if a in names and b in names:
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {a!r}, {b!r}")
    assert not found, "step names listed outside wizard/steptable.py:\n" + "\n".join(found)


def test_a_step_that_imports_the_models_code_runs_in_its_environment():
    assert not steptable.screen_in_model_env("Source") and not steptable.screen_in_model_env("install")
    assert all(steptable.screen_in_model_env(t) for t in ("Inspect", "Generate", "Run", "Try"))
