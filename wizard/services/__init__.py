"""The wizard's services: plain Python, no UI imports.

Every step of the wizard (fetch, install, inspect, generate, register, smoke, run) is implemented
here so that the Textual screens, the headless ``llmc-wizard <step>`` commands and the tests share
one code path. Long operations take a ``progress``/``on_line`` callback and a ``cancelled``
callable; failures are raised as :class:`wizard.services.errors.WizardError` (what went wrong, and
how to fix it, on one line).
"""

from .errors import WizardError

__all__ = ["WizardError"]
