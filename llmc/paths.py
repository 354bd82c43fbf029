"""Paths the engine will write: can a folder be written (or created), and how to name a path in
one line. Checked before anything is loaded; nothing here imports torch."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

PROBE_PREFIX = ".llmc-probe-"


class RunDirError(Exception):
    """A run directory or save path that cannot be used; ``str()`` is one line with the path and the fix."""


def short(path, limit: int = 96) -> str:
    """``path`` as text, middle elided when longer than ``limit`` (a 5,000-character name stays readable)."""
    s = str(path)
    if len(s) <= limit:
        return s
    half = (limit - 1) // 2
    return f"{s[:half]}…{s[-half:]}"


def _nearest_existing(p: Path) -> Path:
    q = p
    while not os.path.lexists(q) and q != q.parent:  # lexists is False on ENAMETOOLONG / ENOTDIR too
        q = q.parent
    return q


def check_folder(path, what: str, fix: str, *, probe: bool = True) -> None:
    """Raise :class:`RunDirError` (one line: ``what``, the path, the problem, ``fix``) unless ``path`` is
    a writable folder or can be created below its nearest existing parent. Every name is checked
    against the file system's limits; with ``probe`` a temporary entry is created and removed to
    prove the write (permissions, read-only mounts, and root all answer truthfully that way).
    Nothing else is created."""
    p = Path(os.path.abspath(os.path.expanduser(str(path))))
    q = _nearest_existing(p)
    base = q if q.is_dir() else q.parent
    try:
        name_max = os.pathconf(base, "PC_NAME_MAX")
        path_max = os.pathconf(base, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    for part in p.relative_to(q).parts:
        n = len(os.fsencode(part))
        if n > name_max:
            raise RunDirError(f"{what} {short(p)}: the name {short(part, 24)} is {n} bytes long, more than the "
                              f"file system allows ({name_max}); {fix}")
    n = len(os.fsencode(str(p)))
    if n >= path_max:
        raise RunDirError(f"{what} {short(p)}: the path is {n} bytes long, more than the file system allows "
                          f"({path_max - 1}); {fix}")
    if not q.is_dir():
        kind = "a broken link" if q.is_symlink() and not q.exists() else "a file"
        if q == p:
            raise RunDirError(f"{what} {short(p)} is {kind}, not a folder; {fix}")
        raise RunDirError(f"cannot create {what} {short(p)}: {short(q)} is {kind}, not a folder; {fix}")
    if not probe:
        return
    try:
        if q == p:
            fd, name = tempfile.mkstemp(prefix=PROBE_PREFIX, dir=q)
            os.close(fd)
            os.unlink(name)
        else:
            os.rmdir(tempfile.mkdtemp(prefix=PROBE_PREFIX, dir=q))
    except OSError as e:
        why = e.strerror or type(e).__name__
        if q == p:
            raise RunDirError(f"{what} {short(p)} is not writable ({why}); {fix}") from None
        raise RunDirError(f"cannot create {what} {short(p)}: {short(q)} is not writable ({why}); {fix}") from None


def os_error_line(e: OSError) -> str:
    """An :class:`OSError` as one short line (long file names elided)."""
    what = e.strerror or str(e) or type(e).__name__
    names = [short(n) for n in (e.filename, e.filename2) if n is not None]
    return f"{what}: {' -> '.join(names)}" if names else what
