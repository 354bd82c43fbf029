"""Transactional run directories: a run is complete or absent.

* **Lock.** The engine holds ``<run_dir>/.lock`` (``fcntl.flock``, exclusive) for the whole run;
  the kernel releases it when the process ends, even by SIGKILL. The file holds the holder's pid
  and start time (JSON) while it is held. A second run into a locked directory is refused.
* **Fresh or overwritten.** A run starts only in an empty directory (the lock and the files a
  launcher writes just before starting the engine, :data:`LAUNCHER_FILES`, do not count);
  ``overwrite=True`` (``llmc run --overwrite``) removes the old contents, under the lock, before
  anything new is written.
* **Staged outputs.** Saved models are written under a temporary name (``.fake.partial``) and
  moved into place with :func:`os.replace`; ``results.json`` and ``config.yml`` are replaced
  atomically.
* **Marker.** :data:`MARKER_NAME` (``COMPLETE``) is written last, atomically, as JSON::

      {"format": "llmc-run-complete/1", "run_id": ..., "started": ISO, "finished": ISO,
       "seconds": ..., "pid": ..., "results": "results.json",
       "outputs": [{"kind": "config", "path": "config.yml"}, {"kind": "results", ...},
                   {"kind": "fake", "path": "fake" or an absolute path outside the run dir}, ...]}

  Readers trust only the marker (:func:`read_marker`, :func:`complete_results`): a directory
  with events and results but no valid marker is not a finished run.

Nothing here imports torch: the checks run before anything is loaded.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from .paths import PROBE_PREFIX, RunDirError, check_folder, os_error_line, short  # noqa: F401

LOCK_NAME = ".lock"
MARKER_NAME = "COMPLETE"
MARKER_FORMAT = "llmc-run-complete/1"
#: written by a launcher (the wizard) just before it starts the engine: they do not make a directory "used"
LAUNCHER_FILES = frozenset({"command.txt", "source-config.yml", "process.log"})
#: ``save.save_<kind>`` -> the folder ``<save_path>/<kind>``
OUTPUT_KINDS = ("trans", "fake", "vllm", "autoawq")


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))


# ---------------------------------------------------------------------------------------------
# The lock
# ---------------------------------------------------------------------------------------------


def _read_holder(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, 4096)
        return json.loads(data) if data.strip() else {}
    except (OSError, ValueError):
        return {}


def describe_holder(holder: dict | None) -> str:
    if not holder:
        return "another run (pid unknown)"
    started = holder.get("started")
    when = f", started {_iso(started)}" if isinstance(started, (int, float)) else ""
    host = holder.get("host")
    where = f" on {host}" if host and host != socket.gethostname() else ""
    return f"another run (pid {holder.get('pid', '?')}{where}{when})"


def lock_holder(run_dir) -> dict | None:
    """``None`` when nobody holds ``run_dir``'s lock, else what the holder wrote (pid, started; ``{}``
    when it has not written yet). Asks the kernel (a shared, non-blocking ``flock`` probe)."""
    path = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd)
        except OSError:
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def is_locked(run_dir) -> bool:
    return lock_holder(run_dir) is not None


class RunLock:
    """The exclusive lock of one run directory, held by this process until :meth:`release` (or exit)."""

    def __init__(self, run_dir):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.fd: int | None = None

    def acquire(self, tries: int = 25, wait: float = 0.02) -> RunLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise RunDirError(f"run directory {short(self.run_dir)} is not writable "
                              f"({e.strerror or type(e).__name__}); choose another --run-dir") from None
        for i in range(tries):  # a reader's shared probe lasts microseconds: retry briefly
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if i == tries - 1:
                    holder = _read_holder(fd)
                    for _ in range(50):  # the holder may not have written its pid yet
                        if holder:
                            break
                        time.sleep(0.02)
                        holder = _read_holder(fd)
                    os.close(fd)
                    raise RunDirError(f"run directory {short(self.run_dir)} is in use by {describe_holder(holder)}; "
                                      "wait for it to finish, or choose another --run-dir") from None
                time.sleep(wait)
        info = {"pid": os.getpid(), "started": round(time.time(), 3), "host": socket.gethostname()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode() + b"\n", 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0)
        os.close(self.fd)  # closing the last descriptor releases the flock
        self.fd = None


# ---------------------------------------------------------------------------------------------
# Preparing a run directory
# ---------------------------------------------------------------------------------------------


def contents(run_dir) -> list[str]:
    """What a directory holds besides the lock, launcher files and write probes (sorted names)."""
    try:
        names = os.listdir(run_dir)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n != LOCK_NAME and n not in LAUNCHER_FILES and not n.startswith(PROBE_PREFIX))


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif os.path.lexists(p):
        p.unlink()


def clear(run_dir) -> None:
    """Remove everything in ``run_dir`` but its lock."""
    for name in os.listdir(run_dir):
        if name != LOCK_NAME:
            _remove(Path(run_dir) / name)


def planned_outputs(cfg, run_dir) -> dict[str, Path]:
    """``{kind: folder}`` the config saves (``save.save_<kind>``), under ``save.save_path`` or the run dir."""
    save = getattr(cfg, "save", None)
    if save is None:
        return {}
    root = Path(save.save_path or run_dir)
    return {k: root / k for k in OUTPUT_KINDS if getattr(save, f"save_{k}", False)}


def _inside(p: Path, root: Path) -> bool:
    p, root = Path(os.path.abspath(p)), Path(os.path.abspath(root))
    return p == root or root in p.parents


class RunDir:
    """A run directory held for one run: the lock, the planned output folders; :meth:`close` releases."""

    def __init__(self, path: Path, lock: RunLock, outputs: dict[str, Path]):
        self.path = path
        self.lock = lock
        self.outputs = outputs

    def close(self) -> None:
        self.lock.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_RUN_DIR_FIX = "choose another --run-dir"
_SAVE_FIX = "choose another save.save_path (or --save-path)"


def open_run_dir(run_dir, *, outputs: dict[str, Path] | None = None, overwrite: bool = False) -> RunDir:
    """Check, create and lock ``run_dir`` for a new run, before anything is loaded.

    Refused (:class:`RunDirError`, one line) when a path cannot be written or created, when another
    process holds the lock, or when the directory (or a separate save path's output folders) already
    holds something and ``overwrite`` is false. With ``overwrite`` the old contents are removed only
    after the lock is taken. A refusal changes nothing on disk."""
    run_dir = Path(run_dir)
    outputs = dict(outputs or {})
    # 1. every path can be written or created (nothing is created yet)
    check_folder(run_dir, "run directory", _RUN_DIR_FIX, probe=False)  # creating the lock file is its probe
    outside = {k: p for k, p in outputs.items() if not _inside(p, run_dir)}
    for root in sorted({p.parent for p in outside.values()}):
        check_folder(root, "save path", _SAVE_FIX)

    def stale_outputs() -> list[Path]:
        return [x for p in outside.values() for x in (p, p.with_name(f".{p.name}.partial")) if os.path.lexists(x)]

    def refuse_used(held_ok: bool) -> None:
        old = contents(run_dir) if run_dir.is_dir() else []
        if old:
            holder = None if held_ok else lock_holder(run_dir)
            if holder is not None:
                raise RunDirError(f"run directory {short(run_dir)} is in use by {describe_holder(holder)}; "
                                  "wait for it to finish, or choose another --run-dir")
            raise RunDirError(_holds_a_run(run_dir, old))
        stale = stale_outputs()
        if stale:
            raise RunDirError(f"save path {short(stale[0].parent)} already holds {stale[0].name}/ from an earlier "
                              f"run; pass --overwrite to replace it, or {_SAVE_FIX}")

    # 2. without --overwrite a used directory is refused before anything is touched (not even the lock file)
    if not overwrite:
        refuse_used(held_ok=False)
    # 3. create and lock; check again under the lock; with --overwrite, empty it now
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"cannot create run directory {short(run_dir)} ({e.strerror or type(e).__name__}); "
                          f"{_RUN_DIR_FIX}") from None
    lock = RunLock(run_dir).acquire()
    try:
        check_folder(run_dir, "run directory", _RUN_DIR_FIX)  # an existing .lock proves nothing about new files
        if overwrite:
            clear(run_dir)
            for x in stale_outputs():
                _remove(x)
        else:
            refuse_used(held_ok=True)  # somebody ran in between
    except BaseException:
        lock.release()
        raise
    return RunDir(run_dir, lock, outputs)


def _holds_a_run(run_dir: Path, old: list[str]) -> str:
    what = ", ".join(old[:4]) + (", …" if len(old) > 4 else "")
    state = "a complete run" if read_marker(run_dir) else "an incomplete run"
    return (f"run directory {short(run_dir)} already holds {state} ({what}); pass --overwrite to replace it, "
            f"or {_RUN_DIR_FIX}")


# ---------------------------------------------------------------------------------------------
# Atomic writes and staged folders
# ---------------------------------------------------------------------------------------------


def _fsync_dir(d: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_text(path, text: str) -> None:
    """Write ``path`` whole or not at all (a temporary file beside it, fsync, :func:`os.replace`)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _fsync_tree(root: Path) -> None:
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(root)


@contextlib.contextmanager
def staged(out) -> Iterator[Path]:
    """Yield ``.<name>.partial`` beside ``out`` to write into; on success move it to ``out``
    (:func:`os.replace`); on failure remove it. ``out`` never holds a partly written folder."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.partial")
    if os.path.lexists(tmp):
        _remove(tmp)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
        _fsync_tree(tmp)
        if os.path.lexists(out):  # os.replace cannot replace a non-empty folder: swap through a side name
            old = out.with_name(f".{out.name}.old")
            if os.path.lexists(old):
                _remove(old)
            os.replace(out, old)
            os.replace(tmp, out)
            _remove(old)
        else:
            os.replace(tmp, out)
        _fsync_dir(out.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            _remove(tmp)
        raise


# ---------------------------------------------------------------------------------------------
# The completeness marker
# ---------------------------------------------------------------------------------------------


def _rel(p: Path, run_dir: Path) -> str:
    p = Path(os.path.abspath(p))
    root = Path(os.path.abspath(run_dir))
    return str(p.relative_to(root)) if _inside(p, root) else str(p)


def write_marker(run_dir, *, run_id: str, started: float, outputs: dict[str, Path],
                 results: str = "results.json") -> Path:
    """Write ``<run_dir>/COMPLETE`` atomically: call it LAST, after every output is in place."""
    run_dir = Path(run_dir)
    now = time.time()
    data = {"format": MARKER_FORMAT, "run_id": run_id, "started": _iso(started), "finished": _iso(now),
            "finished_t": round(now, 3), "seconds": round(now - started, 3), "pid": os.getpid(),
            "results": results,
            "outputs": [{"kind": k, "path": _rel(p, run_dir)} for k, p in outputs.items()]}
    path = run_dir / MARKER_NAME
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return path


def read_marker(run_dir) -> dict | None:
    """The marker of a complete run (output paths resolved), or ``None``: no marker, an unreadable
    one, a results file that is missing or belongs to another run, or a listed output gone."""
    run_dir = Path(run_dir)
    try:
        data = json.loads((run_dir / MARKER_NAME).read_text())
        if not isinstance(data, dict) or data.get("format") != MARKER_FORMAT:
            return None
        results = json.loads((run_dir / data["results"]).read_text())
        if results.get("run_id", data["run_id"]) != data["run_id"]:
            return None
        paths = {}
        for o in data["outputs"]:
            p = Path(o["path"]) if os.path.isabs(o["path"]) else run_dir / o["path"]
            if not p.exists():
                return None
            paths[o["kind"]] = p
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return {**data, "paths": paths, "results_data": results}


def is_complete(run_dir) -> bool:
    return read_marker(run_dir) is not None


def complete_results(run_dir) -> dict | None:
    """``results.json`` of a complete run, or ``None`` when the run is not complete."""
    m = read_marker(run_dir)
    return None if m is None else m["results_data"]


__all__ = ["LAUNCHER_FILES", "LOCK_NAME", "MARKER_FORMAT", "MARKER_NAME", "OUTPUT_KINDS", "RunDir", "RunDirError",
           "RunLock", "atomic_write_text", "check_folder", "clear", "complete_results", "contents",
           "describe_holder", "is_complete", "is_locked", "lock_holder", "open_run_dir", "os_error_line",
           "planned_outputs", "read_marker", "short", "staged", "write_marker"]
