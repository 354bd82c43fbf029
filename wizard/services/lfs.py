"""git-lfs: finding pointer files left in place of content, and pulling LFS files one by one."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from .git_run import FetchProgress, _Cancelled, _Git
from .git_source import _net_fix

LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/v1"
_POINTER_MAX_BYTES = 1024  # the LFS spec caps pointer files at 1024 bytes
LFS_INSTALL = ("install git-lfs (`apt-get install git-lfs` on Debian/Ubuntu, `brew install git-lfs` on macOS) "
               "and run `git lfs install`")
LFS_INSTALL_HINT = LFS_INSTALL + ", then fetch again"


def _is_pointer(path: Path) -> bool:
    try:
        if not path.is_file() or path.is_symlink() or path.stat().st_size > _POINTER_MAX_BYTES:
            return False
        with open(path, "rb") as f:
            return f.read(len(LFS_POINTER_PREFIX)) == LFS_POINTER_PREFIX
    except OSError:
        return False


def _pointer_size(path: Path) -> int | None:
    try:
        m = re.search(rb"^size (\d+)$", path.read_bytes(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def find_lfs_pointers(directory) -> list[str]:
    """Files under ``directory`` (``.git`` excluded) that are git-lfs pointers rather than content,
    as sorted POSIX paths relative to ``directory``."""
    root = Path(directory)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in filenames:
            p = Path(dirpath) / name
            if _is_pointer(p):
                found.append(p.relative_to(root).as_posix())
    return sorted(found)


def have_git_lfs() -> bool:
    return shutil.which("git-lfs") is not None


def _human(n: int | None) -> str:
    if n is None:
        return "size unknown"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def _lfs_pattern(path: str) -> str:
    # an anchored git-lfs include pattern for exactly this file; ',' separates patterns and
    # glob characters would widen the match, so they become '?' (matches the character itself)
    return "/" + re.sub(r"[,*?\[\]\\]", "?", path)


def _lfs(g: _Git, dest: Path) -> list[str]:
    """Download the LFS files of HEAD one by one (reporting each); return their paths."""
    out = g.run(["lfs", "ls-files", "--name-only"], dest, what=f"git lfs ls-files in {dest}",
                fix=LFS_INSTALL_HINT, progress=False)
    names = [n.strip() for n in out if n.strip()]
    if not names:
        return []
    g.run(["lfs", "install", "--local"], dest, what=f"git lfs install in {dest}", fix=LFS_INSTALL_HINT,
          progress=False)
    missing = [n for n in names if not (dest / n).exists()]
    if missing:  # e.g. pointer files removed by an earlier fetch without git-lfs: restore them
        g.run(["checkout", "HEAD", "--", *missing], dest, what=f"restoring LFS files in {dest}",
              fix=f"check {dest}", progress=False)
    total = len(names)
    for i, name in enumerate(names):
        if g.cancelled():
            raise _Cancelled()
        path = dest / name
        if not _is_pointer(path):
            g.emit(FetchProgress("lfs", i + 1, total, f"LFS {i + 1}/{total}: {name} (already downloaded)", name))
            continue
        g.emit(FetchProgress("lfs", i, total, f"LFS {i + 1}/{total}: downloading {name} "
                                              f"({_human(_pointer_size(path))})", name))
        g.run(["lfs", "pull", f"--include={_lfs_pattern(name)}", "--exclude="], dest,
              what=f"git lfs pull of {name}", fix=_net_fix(g.src), progress=False, env=g.pull_env)
        g.emit(FetchProgress("lfs", i + 1, total, f"LFS {i + 1}/{total}: {name} done", name))
    return names
