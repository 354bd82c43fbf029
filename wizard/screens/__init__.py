"""One screen per wizard step."""

from .generate import GenerateScreen
from .inspect import InspectScreen
from .install import InstallScreen
from .run import RunScreen
from .source import SourceScreen
from .try_ import TryScreen

from ..steptable import SCREENS

_ALL = (SourceScreen, InstallScreen, InspectScreen, GenerateScreen, RunScreen, TryScreen)
#: the step screens by title, in :data:`wizard.steptable.SCREENS` order
STEP_SCREENS = {title: next(cls for cls in _ALL if cls.TITLE_TEXT == title) for title in SCREENS}

__all__ = ["STEP_SCREENS", "SourceScreen", "InstallScreen", "InspectScreen", "GenerateScreen", "RunScreen",
           "TryScreen"]
