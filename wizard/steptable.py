"""The one table of the wizard's steps: each headless step's name, the TUI step it belongs to, its
help line, whether it runs where the model's code is installed, and whether ``onboard`` runs it.
Every other list of steps (the onboard order, the TUI's step bar and screens, the subcommands, the
hand-over to the model's environment) is read from here."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    name: str  #: the headless subcommand (and :data:`wizard.steps.STEP_FUNCS` key)
    screen: str  #: the TUI step that does it
    help: str
    model_env: bool  #: imports the model's code: runs in the model's own environment
    onboard: bool  #: part of ``llmc-wizard onboard``, in this order


TABLE: tuple[Step, ...] = (
    Step("fetch", "Source", "clone/fetch the weights and code repositories", False, True),
    Step("install", "Install", "pip-install the model's code (custom-code models)", False, True),
    Step("inspect", "Inspect", "report a model's structure: from a folder, or the inspect step of an answers file",
         True, True),
    Step("generate", "Generate", "render the model declaration and config", True, True),
    Step("register", "Generate", "check that the engine discovers the generated declaration", True, True),
    Step("smoke", "Generate", "smoke-test the generated declaration", True, True),
    Step("run", "Run", "quantize and evaluate with the engine", True, True),
    Step("evaluate", "Run", "evaluate the latest run's quantized model data-parallel (accelerate, one process "
         "per GPU)", True, False),
    Step("try", "Try", "ask the float and the quantized model one question (the latest run)", True, False),
)

#: what ``onboard`` runs, in order
ONBOARD: tuple[str, ...] = tuple(s.name for s in TABLE if s.onboard)
#: the TUI's steps, in order
SCREENS: tuple[str, ...] = tuple(dict.fromkeys(s.screen for s in TABLE))
#: headless steps that run in the model's own environment
IN_MODEL_ENV: frozenset[str] = frozenset(s.name for s in TABLE if s.model_env)


def by_name(name: str) -> Step:
    return next(s for s in TABLE if s.name == name)


def screen_in_model_env(title: str) -> bool:
    """A TUI step any of whose work imports the model's code (case-insensitive title)."""
    return any(s.model_env for s in TABLE if s.screen.lower() == title.lower())
