"""One screen per wizard step."""

from .generate import GenerateScreen
from .inspect import InspectScreen
from .install import InstallScreen
from .run import RunScreen
from .source import SourceScreen
from .try_ import TryScreen

STEP_SCREENS = {"Source": SourceScreen, "Install": InstallScreen, "Inspect": InspectScreen,
                "Generate": GenerateScreen, "Run": RunScreen, "Try": TryScreen}

__all__ = ["STEP_SCREENS", "SourceScreen", "InstallScreen", "InspectScreen", "GenerateScreen", "RunScreen",
           "TryScreen"]
