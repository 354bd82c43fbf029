"""Running git for one fetch: credentials and LFS switches in the environment, progress, cancel."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import git

from .answers import redact
from .errors import WizardError
from .git_source import _Source
from .install import run_streaming
from .net import stall_seconds


@dataclass(frozen=True)
class FetchProgress:
    """One progress event. ``op``: ``clone``/``fetch``/``checkout`` (a step starts), a git phase
    (``counting``, ``compressing``, ``receiving``, ``resolving``, ...), ``git`` (another line of
    git's output) or ``lfs``; ``cur``/``max``: counters when known (objects, or LFS files);
    ``file``: the LFS file concerned. Messages never contain credentials."""

    op: str
    cur: float | None
    max: float | None
    message: str
    file: str | None = None

    def __str__(self) -> str:
        count = f" {self.cur:g}/{self.max:g}" if self.cur is not None and self.max else ""
        return f"{self.op}{count}: {self.message}" if self.message else f"{self.op}{count}"


class _Cancelled(Exception):
    pass


class _GitProgress(git.RemoteProgress):
    """Forwards git's progress lines as :class:`FetchProgress` events (credentials masked)."""

    OPS = {
        git.RemoteProgress.COUNTING: "counting",
        git.RemoteProgress.COMPRESSING: "compressing",
        git.RemoteProgress.WRITING: "writing",
        git.RemoteProgress.RECEIVING: "receiving",
        git.RemoteProgress.RESOLVING: "resolving",
        git.RemoteProgress.FINDING_SOURCES: "finding sources",
        git.RemoteProgress.CHECKING_OUT: "checking out",
    }

    def __init__(self, emit: Callable[[FetchProgress], None]):
        super().__init__()
        self._emit = emit

    def update(self, op_code, cur_count, max_count=None, message=""):
        op = self.OPS.get(op_code & self.OP_MASK, "git")
        self._emit(FetchProgress(op, _num(cur_count), _num(max_count), redact(message or "")))

    def line_dropped(self, line: str) -> None:
        self._emit(FetchProgress("git", None, None, redact(line.strip())))


def _num(v) -> float | None:
    try:
        return None if v in (None, "") else float(v)
    except (TypeError, ValueError):
        return None


class _Git:
    """Runs git for one fetch: environment (credentials, LFS switches), streaming, cancel."""

    def __init__(self, src: _Source, use_lfs: bool, emit, cancelled):
        self.src, self.emit, self.cancelled = src, emit, cancelled
        self.exe = git.Git.GIT_PYTHON_GIT_EXECUTABLE or "git"
        # a server that accepts the connection and then sends nothing is given up on after STALL_S
        # seconds without a byte (git's HTTP transport; git-lfs has its own activity timeout)
        configs: list[tuple[str, str]] = [("http.lowSpeedLimit", "1"), ("http.lowSpeedTime", str(stall_seconds()))]
        if src.header and src.scope:
            configs.append((f"http.{src.scope}.extraHeader", src.header))
        if not use_lfs:
            # no git-lfs (or LFS turned off): keep pointer files as they are instead of failing on
            # a globally configured but missing filter; find_lfs_pointers() catches them afterwards
            configs += [("filter.lfs.required", "false"), ("filter.lfs.process", ""),
                        ("filter.lfs.smudge", ""), ("filter.lfs.clean", "")]
        env = dict(os.environ)
        env.update(GIT_TERMINAL_PROMPT="0", GCM_INTERACTIVE="never", LC_ALL="C", LANGUAGE="C",
                   GIT_LFS_SKIP_SMUDGE="1")
        self.config_args: list[str] = []
        if git.Git().version_info >= (2, 31):
            n = int(env.get("GIT_CONFIG_COUNT", "0") or 0)
            for i, (k, v) in enumerate(configs):
                env[f"GIT_CONFIG_KEY_{n + i}"], env[f"GIT_CONFIG_VALUE_{n + i}"] = k, v
            if configs:
                env["GIT_CONFIG_COUNT"] = str(n + len(configs))
        else:  # older git: -c on the command line (still never shown: errors are redacted)
            for k, v in configs:
                self.config_args += ["-c", f"{k}={v}"]
        self.env = env
        # for `git lfs pull` the smudge filter must run
        self.pull_env = {k: v for k, v in env.items() if k != "GIT_LFS_SKIP_SMUDGE"}

    def run(self, args: list[str], cwd: Path, *, what: str, fix: str, progress: bool = True,
            env: dict | None = None) -> list[str]:
        """Run ``git args`` in ``cwd``; returns the output lines; raises _Cancelled or WizardError."""
        handler = _GitProgress(self.emit).new_message_handler() if progress else None
        try:
            res = run_streaming([self.exe, *self.config_args, *args], cwd=cwd, env=env or self.env,
                                on_line=handler, cancelled=self.cancelled)
        except OSError as e:
            raise WizardError(f"cannot run git: {e.strerror or e}",
                              "install git (e.g. `apt-get install git`) and make sure it is on PATH") from None
        if res.cancelled:
            raise _Cancelled()
        if res.returncode != 0:
            lines = [redact(t) for t in res.tail]
            errs = [t for t in lines if t.startswith(("fatal:", "error:"))] or lines[-2:] or ["no output"]
            raise WizardError(f"{what} failed: {' '.join(errs[-2:])}", fix, details="\n".join(lines))
        return res.tail

    def query(self, args: list[str], cwd: Path) -> str | None:
        """Quick read-only git call: stdout, or None on failure."""
        try:
            return git.Git(str(cwd)).execute([self.exe, *self.config_args, *args], env=self.env,
                                             with_extended_output=False, strip_newline_in_stdout=True)
        except git.GitCommandError:
            return None
