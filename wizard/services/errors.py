"""The one error type the wizard shows to users."""

from __future__ import annotations


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class WizardError(Exception):
    """A problem the user can fix: ``message`` says what went wrong (naming the bad input),
    ``fix`` says what to do about it.

    ``str(err)`` is ``"message — fix"`` on a single line (internal newlines are folded), so it fits
    a status bar or a CLI error line. ``details`` optionally carries longer text (e.g. the last
    lines of a subprocess's output) for a log view; it is not part of ``str(err)``.
    """

    def __init__(self, message: str, fix: str = "", *, details: str = ""):
        super().__init__(message, fix)
        self.message = message
        self.fix = fix
        self.details = details

    def __str__(self) -> str:
        msg = _one_line(self.message)
        return f"{msg} — {_one_line(self.fix)}" if self.fix else msg

    def __repr__(self) -> str:
        return f"WizardError({self.message!r}, {self.fix!r})"


def one_line_error(e: BaseException) -> str:
    """An exception as one line, credentials masked; OSErrors name the path (long names elided)."""
    from llmc.paths import os_error_line
    from llmc.secrets import redact

    text = os_error_line(e) if isinstance(e, OSError) and e.strerror else (str(e) or type(e).__name__)
    return redact(" ".join(text.split()))
