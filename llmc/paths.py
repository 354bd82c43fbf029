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


def _hub_blobs(root: Path) -> Path | None:
    """The blob folder of a Hugging Face cache snapshot (``models--x/snapshots/<rev>`` links its files
    to ``models--x/blobs``): the one place outside a snapshot its links may lead."""
    parent = root.parent
    if parent.name == "snapshots" and parent.parent.name.startswith(("models--", "datasets--")):
        return parent.parent / "blobs"
    return None


def links_leaving(root, *, limit: int = 50) -> list[tuple[str, str]]:
    """Symbolic links under ``root`` (links are not followed; ``.git`` is not entered) that lead
    outside it — to another file of the user's, ``/proc``, a device, into ``.git`` — or that loop:
    ``[(path relative to root, where it leads)]``, at most ``limit``. Reading a model folder through
    such a link would copy what it points at into everything made from the model (checkpoints, a
    processor's saved templates), so every reader refuses a folder that has one."""
    root = Path(os.path.abspath(os.path.expanduser(str(root))))
    real_root = Path(os.path.realpath(root))
    allowed = [real_root] + [b for b in [_hub_blobs(root)] if b is not None]
    allowed = [Path(os.path.realpath(a)) for a in allowed]
    bad: list[tuple[str, str]] = []
    for d, dirs, files in os.walk(root):
        if Path(d) == root and ".git" in dirs:
            dirs.remove(".git")
        for name in sorted(dirs + files):
            p = Path(d) / name
            if not p.is_symlink():
                continue
            rel = p.relative_to(root).as_posix()
            try:
                target = Path(os.readlink(p))
                real = p.resolve(strict=False)
            except (OSError, RuntimeError):  # a loop, or an unreadable link
                bad.append((rel, "a link loop"))
                continue
            inside = any(real == a or a in real.parents for a in allowed)
            if not inside or real == real_root / ".git" or (real_root / ".git") in real.parents:
                bad.append((rel, str(target)))
            if len(bad) >= limit:
                return bad
    return bad


LINKS_FIX = "remove the links (or replace them with the files they should be), then try again"


def links_leaving_message(root, bad: list[tuple[str, str]], what: str = "model folder") -> str:
    """What :func:`links_leaving` found, in one line (without the fix)."""
    shown = ", ".join(f"{short(rel, 120)} -> {short(t, 160)}" for rel, t in bad[:3])
    more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
    return f"{what} {short(root)} has {len(bad)} link(s) leading outside it ({shown}{more})"


def links_leaving_line(root, bad: list[tuple[str, str]], what: str = "model folder") -> str:
    """One line naming the links :func:`links_leaving` found, why it matters and the fix."""
    return (f"{links_leaving_message(root, bad, what)}: reading through them would copy those files into what "
            f"is made from the model; {LINKS_FIX}")
