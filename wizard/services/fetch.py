"""Clone (or update) a model's weights or code repository, with live progress, LFS, pinning and cancel.

:func:`fetch_repo` is the whole Source step for one repository:

1. the source (URL or local path) is checked; local paths become ``file://`` URLs so git reports
   progress; credentials are split off the URL and never stored or shown (see below);
2. ``dest`` is cloned — or, when it already holds a clone of the same remote, fetched
   (``resumed=True``); anything else in ``dest`` is an error;
3. ``commit`` (sha, short sha, tag or branch) is checked out detached; without one a fresh
   clone stays on the default branch and a resumed one is fast-forwarded to it;
4. LFS files are downloaded one by one with ``git lfs pull`` (each file is reported), and
   the working tree is checked for left-over LFS pointer files, which would otherwise look
   like weights.

Progress arrives as :class:`FetchProgress` events (git's own counters, parsed by a
``git.RemoteProgress`` subclass, then one event per LFS file); ``cancelled`` (an Event or a
callable) stops git at once and removes whatever this call created.

Credentials: userinfo in the URL (``https://user:TOKEN@host/...``) is removed from the URL git
stores and sent as an ``http.<origin>.extraHeader`` instead; ``HF_TOKEN`` is sent the same way
to ``huggingface.co`` (``GITHUB_TOKEN`` to ``github.com``). The header is passed through git's
``GIT_CONFIG_*`` environment (not the command line, so it is not visible in ``ps``), and every
message, error and returned value goes through :func:`wizard.services.answers.redact`.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import git

from .answers import redact
from .errors import WizardError
from .git_run import FetchProgress, _Cancelled, _Git
from .git_source import HF_HOSTS, _net_fix, _resolve_source, _same_remote, _Source
from .install import as_cancel_check
from .lfs import LFS_INSTALL, LFS_INSTALL_HINT, LFS_POINTER_PREFIX, _lfs, find_lfs_pointers, have_git_lfs

__all__ = ["HF_HOSTS", "LFS_INSTALL", "LFS_INSTALL_HINT", "LFS_POINTER_PREFIX", "FetchProgress", "FetchResult",
           "destination", "fetch_repo", "find_lfs_pointers", "have_git_lfs"]


@dataclass
class FetchResult:
    path: Path  #: the clone's working tree
    commit: str  #: full sha of HEAD
    branch: str | None  #: the checked-out branch, or None when HEAD is detached (a pinned commit)
    lfs_files: list[str] = field(default_factory=list)  #: LFS-tracked files (relative paths), downloaded
    resumed: bool = False  #: dest already held a clone of this remote: it was fetched, not cloned


# ---------------------------------------------------------------------------------------------
# the steps


def _check_dest(dest: Path, src: _Source) -> bool:
    """True when ``dest`` holds a clone of the same remote (resume); False when absent or empty."""
    if not dest.exists():
        return False
    if not dest.is_dir():
        raise WizardError(f"destination {dest} exists and is not a folder", "choose a folder path for the clone")
    if not any(dest.iterdir()):
        return False
    try:
        repo = git.Repo(dest)
        top = Path(repo.working_tree_dir).resolve() if repo.working_tree_dir else None
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        top = None
    if top != dest:
        raise WizardError(f"destination {dest} is not empty and is not a git clone",
                          f"choose another destination folder, or empty {dest}")
    origin = next((r for r in repo.remotes if r.name == "origin"), None)
    stored = next(iter(origin.urls), None) if origin is not None else None
    if stored is None:
        raise WizardError(f"destination {dest} is a git repository without an 'origin' remote",
                          f"choose another destination folder, or delete {dest}")
    if not _same_remote(stored, src):
        raise WizardError(f"destination {dest} already holds a clone of {redact(stored)}, not {src.display}",
                          f"choose another destination folder, or delete {dest}")
    if stored != src.url:  # e.g. a token stored in the remote URL by an earlier plain `git clone`
        with repo.config_writer() as cw:
            cw.set_value('remote "origin"', "url", src.url)
    return True


#: folder names that say nothing about the model: the one above them is named too
GENERIC_NAMES = ("repo", "weights", "model", "checkpoint", "main", "hf", "files", "code")


def repo_name(url_or_path) -> str:
    """A repository's name from its URL or path: the last part without ``.git``, or the two last
    ones when the last is a generic folder name (``weights/repo`` -> ``weights-repo``)."""
    parts = [p for p in str(url_or_path).strip().replace("\\", "/").rstrip("/").split("/") if p]
    parts = [p.rsplit(":", 1)[-1] for p in parts]
    parts = [p[:-4] if p.endswith(".git") else p for p in parts]
    parts = [p for p in parts if p] or ["repo"]
    if len(parts) > 1 and parts[-1].lower() in GENERIC_NAMES:
        return f"{parts[-2]}-{parts[-1]}"
    return parts[-1]


def destination(url_or_path, root: Path, stored: str | None = None) -> Path:
    """Where a clone of ``url_or_path`` goes: ``stored`` when it holds a clone of that very
    repository (or nothing yet), else ``root/<repo name>``, suffixed with a digest of the URL when
    that folder already holds something else. A changed URL never reuses another repository's clone."""
    import hashlib

    src = _resolve_source(url_or_path)

    def fits(d: Path) -> bool:
        try:
            _check_dest(d, src)
            return True
        except WizardError:
            return False

    if stored and fits(Path(stored).expanduser()):
        return Path(stored).expanduser()
    name = repo_name(url_or_path)
    dest = Path(root) / name
    if fits(dest):
        return dest
    return Path(root) / f"{name}-{hashlib.sha256(src.url.encode()).hexdigest()[:8]}"


def _resolve_commit(g: _Git, dest: Path, ref: str) -> str | None:
    # tags, then the remote's branches (a local branch may be stale after a fetch), then anything
    # else git understands (a full or short sha, HEAD~1, ...)
    for cand in (f"refs/tags/{ref}", f"refs/remotes/origin/{ref}", ref):
        out = g.query(["rev-parse", "--verify", "--quiet", f"{cand}^{{commit}}"], dest)
        if out:
            return out.strip()
    return None


def _recent_refs(g: _Git, dest: Path) -> str:
    tags = (g.query(["for-each-ref", "--sort=-creatordate", "--count=5", "--format=%(refname:short)",
                     "refs/tags"], dest) or "").split()
    branches = [b.removeprefix("origin/") for b in (g.query(
        ["for-each-ref", "--sort=-committerdate", "--count=6", "--format=%(refname:short)", "refs/remotes/origin"],
        dest) or "").split() if b not in ("origin", "origin/HEAD")]
    return f"recent tags: {', '.join(tags) or 'none'}; branches: {', '.join(branches[:5]) or 'none'}"


def _checkout(g: _Git, dest: Path, commit: str | None, resumed: bool) -> None:
    emit = g.emit
    if commit is not None:
        ref = str(commit).strip()
        if not ref or ref.startswith("-") or any(c.isspace() for c in ref):
            raise WizardError(f"commit {ref!r} is not a valid commit, tag or branch name",
                              "give a commit sha, a tag (e.g. v1.0) or a branch name")
        sha = _resolve_commit(g, dest, ref)
        if sha is None and re.fullmatch(r"[0-9a-fA-F]{7,40}", ref):
            # a commit no branch points at: servers allowing it can send it by sha
            try:
                g.run(["fetch", "--progress", "origin", ref], dest, what="fetch", fix="")
            except WizardError:
                pass
            sha = _resolve_commit(g, dest, ref)
        if sha is None:
            raise WizardError(f"commit '{ref}' not found in {g.src.display}",
                              f"use a commit sha, tag or branch of that repository; {_recent_refs(g, dest)}")
        emit(FetchProgress("checkout", None, None, f"checking out {ref} ({sha[:12]})"))
        g.run(["checkout", "--detach", sha], dest, what=f"checkout of {ref} in {dest}",
              fix=f"commit or discard your local changes in {dest}, then fetch again")
        return
    if not resumed:
        return  # a fresh clone is on the default branch already
    default = g.query(["symbolic-ref", "--short", "refs/remotes/origin/HEAD"], dest)
    branch = g.query(["symbolic-ref", "--short", "-q", "HEAD"], dest)
    if not branch and default:
        branch = default.removeprefix("origin/")
        emit(FetchProgress("checkout", None, None, f"checking out {branch}"))
        g.run(["checkout", branch], dest, what=f"checkout of {branch} in {dest}",
              fix=f"commit or discard your local changes in {dest}, then fetch again")
    if branch and g.query(["rev-parse", "--abbrev-ref", "--symbolic-full-name", "@{u}"], dest):
        g.run(["merge", "--ff-only", "@{u}"], dest, what=f"updating branch {branch} in {dest}",
              fix=f"your local branch has diverged or has local changes: resolve them in {dest}, "
                  "or pin source.code_commit")


def _remove_created(dest: Path, created: list[Path], was_empty: bool) -> None:
    """Undo this call's creations: ``dest`` (or its contents when it existed empty) and the
    parent folders it had to create (only while they are empty)."""
    if was_empty:
        for child in dest.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
    elif created:
        shutil.rmtree(dest, ignore_errors=True)
        for d in created[1:]:
            try:
                d.rmdir()
            except OSError:
                break


def fetch_repo(url_or_path, dest, commit: str | None = None, progress: Callable[[FetchProgress], None] | None = None,
               cancelled=None, lfs="auto") -> FetchResult:
    """Clone ``url_or_path`` into ``dest`` (or fetch, if ``dest`` already holds a clone of it).

    ``commit``: sha (short or full), tag or branch to check out detached; ``progress``: called with
    :class:`FetchProgress` events; ``cancelled``: ``threading.Event`` or callable, checked on every
    progress line (and every 0.1 s); ``lfs``: ``"auto"``/``None`` (use git-lfs when the repository
    has LFS files), ``True`` (require git-lfs) or ``False`` (never download LFS content: a
    repository with LFS files is then an error).

    Raises :class:`WizardError` for a bad source, an occupied ``dest``, an unknown commit, LFS files
    without git-lfs, git failures and cancel (``"clone cancelled"``, after removing what this call
    created). Credentials never appear in events, errors or the result.
    """
    emit = progress if progress is not None else (lambda p: None)
    is_cancelled = as_cancel_check(cancelled)
    if lfs not in ("auto", None, True, False):
        raise WizardError(f"lfs={lfs!r} is not a valid LFS setting", "use 'auto', True or False")
    src = _resolve_source(url_or_path)
    dest = Path(dest).expanduser().resolve()
    lfs_available = have_git_lfs()
    if lfs is True and not lfs_available:
        raise WizardError(f"git-lfs is required to fetch {src.display} but is not installed", LFS_INSTALL_HINT)
    use_lfs = lfs is not False and lfs_available
    resumed = _check_dest(dest, src)
    if is_cancelled():
        raise WizardError("clone cancelled", "nothing was changed; fetch again when ready")

    created: list[Path] = []  # dest and the parents this call creates, innermost first
    p = dest
    while not p.exists():
        created.append(p)
        p = p.parent
    was_empty = dest.exists() and not resumed
    g = _Git(src, use_lfs, emit, is_cancelled)
    try:
        if resumed:
            emit(FetchProgress("fetch", None, None, f"fetching {src.display} into existing clone {dest}"))
            g.run(["fetch", "--progress", "--tags", "--force", "--prune", "origin"], dest,
                  what=f"git fetch of {src.display}", fix=_net_fix(src))
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            emit(FetchProgress("clone", None, None, f"cloning {src.display} into {dest}"))
            g.run(["clone", "--progress", "--origin", "origin", "--", src.url, str(dest)], dest.parent,
                  what=f"git clone of {src.display}", fix=_net_fix(src))
        if g.query(["rev-parse", "--verify", "--quiet", "HEAD^{commit}"], dest) is None:
            raise WizardError(f"{src.display} has no commits", "push at least one commit, or check the URL")
        _checkout(g, dest, commit, resumed)
        _refuse_links_leaving(dest, src, created, was_empty)
        if use_lfs:
            lfs_files = _lfs(g, dest)
        else:
            lfs_files = []
        pointers = find_lfs_pointers(dest)
        if pointers:
            _pointers_error(dest, src, pointers, lfs, use_lfs, created, was_empty)
    except _Cancelled:
        if not resumed:
            _remove_created(dest, created, was_empty)
        raise WizardError("fetch cancelled" if resumed else "clone cancelled",
                          f"{'the clone in ' + str(dest) + ' was kept' if resumed else 'nothing was kept'}; "
                          "fetch again to continue") from None
    except WizardError as e:
        if not resumed and not (dest / ".git").exists():
            _remove_created(dest, created, was_empty)  # a failed clone leaves nothing behind
        elif use_lfs and find_lfs_pointers(dest):  # an LFS download failed: no pointer stays named as weights
            kept = _drop_pointers(dest, find_lfs_pointers(dest), created, was_empty)
            raise WizardError(f"{e.message}; {kept}", e.fix, details=e.details) from None
        raise
    except BaseException:
        if not resumed:
            _remove_created(dest, created, was_empty)
        raise
    repo = git.Repo(dest)
    sha = repo.head.commit.hexsha
    branch = None if repo.head.is_detached else repo.active_branch.name
    return FetchResult(dest, sha, branch, lfs_files, resumed)


def _refuse_links_leaving(dest: Path, src: _Source, created: list[Path], was_empty: bool) -> None:
    """A repository whose links lead outside its clone (``x -> /proc/self/environ``, ``-> ~/.ssh/...``)
    is refused before anything reads through them: a clone this call made is removed, a resumed one
    loses those links."""
    from llmc.paths import LINKS_FIX, links_leaving, links_leaving_message

    bad = links_leaving(dest)
    if not bad:
        return
    message = links_leaving_message(dest, bad, what=f"{src.display}: the clone")
    if bool(created) or was_empty:
        _remove_created(dest, created, was_empty)
        kept = "nothing was kept"
    else:
        for rel, _ in links_leaving(dest, limit=10**6):
            (dest / rel).unlink(missing_ok=True)
        kept = "those links were removed from the clone"
    raise WizardError(f"{message}; {kept}", f"a repository has no business linking outside itself: use another "
                      f"source, or {LINKS_FIX}")


def _drop_pointers(dest: Path, pointers: list[str], created: list[Path], was_empty: bool) -> str:
    """Leave no LFS pointer file behind looking like weights: a clone this call made goes whole, a
    resumed one loses the pointer files. Says which, for the error."""
    if bool(created) or was_empty:
        _remove_created(dest, created, was_empty)
        return "nothing was kept"
    for rel in pointers:
        (dest / rel).unlink(missing_ok=True)
    return f"the pointer files were removed from {dest}"


def _pointers_error(dest: Path, src: _Source, pointers: list[str], lfs, use_lfs: bool,
                    created: list[Path], was_empty: bool) -> None:
    """LFS pointer files must never stay behind looking like weights: remove them, then raise."""
    kept = _drop_pointers(dest, pointers, created, was_empty)
    example = ", ".join(pointers[:3]) + (f" and {len(pointers) - 3} more" if len(pointers) > 3 else "")
    if use_lfs:  # git-lfs ran but some content did not arrive
        raise WizardError(f"{len(pointers)} file(s) of {src.display} are still git-lfs pointers after "
                          f"`git lfs pull` ({example}); {kept}",
                          "the LFS server may lack these objects or deny access: check HF_TOKEN/credentials, "
                          "then fetch again")
    if lfs is False:
        raise WizardError(f"{src.display} stores {len(pointers)} file(s) with git-lfs ({example}) but LFS is "
                          f"turned off; {kept}",
                          "set source.lfs to true (or leave it unset) and fetch again; if git-lfs is missing, "
                          + LFS_INSTALL + " first")
    raise WizardError(f"{src.display} stores {len(pointers)} file(s) with git-lfs ({example}) but git-lfs "
                      f"is not installed; {kept}", LFS_INSTALL_HINT)
