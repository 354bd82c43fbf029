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

import base64
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import git

from .answers import redact
from .errors import WizardError
from .install import as_cancel_check, run_streaming

LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/v1"
_POINTER_MAX_BYTES = 1024  # the LFS spec caps pointer files at 1024 bytes
LFS_INSTALL = ("install git-lfs (`apt-get install git-lfs` on Debian/Ubuntu, `brew install git-lfs` on macOS) "
               "and run `git lfs install`")
LFS_INSTALL_HINT = LFS_INSTALL + ", then fetch again"
HF_HOSTS = ("huggingface.co", "hf.co")


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


@dataclass
class FetchResult:
    path: Path  #: the clone's working tree
    commit: str  #: full sha of HEAD
    branch: str | None  #: the checked-out branch, or None when HEAD is detached (a pinned commit)
    lfs_files: list[str] = field(default_factory=list)  #: LFS-tracked files (relative paths), downloaded
    resumed: bool = False  #: dest already held a clone of this remote: it was fetched, not cloned


class _Cancelled(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# LFS pointers


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


# ---------------------------------------------------------------------------------------------
# the source: URL, credentials


@dataclass
class _Source:
    url: str  #: what git is given and stores (no credentials)
    display: str  #: safe to show
    header: str | None = None  #: an Authorization header to send to ``scope``
    scope: str | None = None  #: ``scheme://host[:port]/``
    local: Path | None = None


_SCP_LIKE = re.compile(r"^[\w.\-]+@[\w.\-]+:")


def _resolve_source(url_or_path) -> _Source:
    raw = str(url_or_path).strip()
    if not raw:
        raise WizardError("the repository URL is empty", "enter a URL (https://...) or a local repository path")
    if "://" not in raw and not _SCP_LIKE.match(raw):
        return _local_source(Path(raw).expanduser(), raw)
    if _SCP_LIKE.match(raw):  # git@host:org/repo — ssh handles authentication
        return _Source(raw, redact(raw))
    parts = urlsplit(raw)
    scheme = parts.scheme.lower()
    if scheme == "file":
        return _local_source(Path(unquote(parts.path)), raw)
    host = parts.hostname or ""
    if not host:
        raise WizardError(f"{redact(raw)} has no host name", "use a URL like https://huggingface.co/org/model")
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    if ":" in host:  # IPv6 literal
        netloc = f"[{host}]" if parts.port is None else f"[{host}]:{parts.port}"
    clean = urlunsplit((scheme, netloc, parts.path, parts.query, ""))
    src = _Source(clean, redact(clean))
    if scheme not in ("http", "https"):
        return src  # ssh://, git:// ...: no header injection
    src.scope = f"{scheme}://{netloc}/"
    is_hf = host.lower() in HF_HOSTS or host.lower().endswith(".huggingface.co")
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if user is not None:
        if is_hf:
            src.header = f"Authorization: Bearer {password or user}"
        else:
            creds = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
            src.header = f"Authorization: Basic {creds}"
    elif scheme == "https" and is_hf and os.environ.get("HF_TOKEN", "").strip():
        src.header = f"Authorization: Bearer {os.environ['HF_TOKEN'].strip()}"
    elif scheme == "https" and host.lower() == "github.com" and os.environ.get("GITHUB_TOKEN", "").strip():
        creds = base64.b64encode(f"x-access-token:{os.environ['GITHUB_TOKEN'].strip()}".encode()).decode()
        src.header = f"Authorization: Basic {creds}"
    return src


def _local_source(path: Path, raw: str) -> _Source:
    if not path.exists():
        raise WizardError(f"repository path {path} does not exist",
                          "check the path, or give a URL such as https://huggingface.co/org/model")
    try:
        git.Repo(path)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise WizardError(f"{path} is not a git repository",
                          "give the folder that contains .git (or a bare repository), or a URL") from None
    resolved = path.resolve()
    return _Source(resolved.as_uri(), str(resolved), local=resolved)


def _same_remote(stored: str, src: _Source) -> bool:
    def norm(u: str) -> str:
        u = u.strip()
        if "://" not in u and not _SCP_LIKE.match(u):
            return str(Path(u).expanduser().resolve())
        p = urlsplit(u)
        if p.scheme.lower() == "file":
            return str(Path(unquote(p.path)).resolve())
        host = (p.hostname or "").lower() + (f":{p.port}" if p.port else "")
        path = p.path.rstrip("/")
        path = path[:-4] if path.endswith(".git") else path
        return f"{p.scheme.lower()}://{host}{path}"

    return norm(stored) == norm(src.url)


# ---------------------------------------------------------------------------------------------
# running git


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
        configs: list[tuple[str, str]] = []
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


def _net_fix(src: _Source) -> str:
    if src.local is not None:
        return "check that the repository path is readable"
    return ("check the URL, your network and your access (set HF_TOKEN for gated Hugging Face repos, "
            "GITHUB_TOKEN for private GitHub ones)")


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
    name = str(url_or_path).rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    name = (name[:-4] if name.endswith(".git") else name) or "repo"
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
    except WizardError:
        if not resumed and not (dest / ".git").exists():
            _remove_created(dest, created, was_empty)  # a failed clone leaves nothing behind
        raise
    except BaseException:
        if not resumed:
            _remove_created(dest, created, was_empty)
        raise
    repo = git.Repo(dest)
    sha = repo.head.commit.hexsha
    branch = None if repo.head.is_detached else repo.active_branch.name
    return FetchResult(dest, sha, branch, lfs_files, resumed)


def _pointers_error(dest: Path, src: _Source, pointers: list[str], lfs, use_lfs: bool,
                    created: list[Path], was_empty: bool) -> None:
    """LFS pointer files must never stay behind looking like weights: remove them, then raise."""
    owned = bool(created) or was_empty
    if owned:
        _remove_created(dest, created, was_empty)
        kept = "nothing was kept"
    else:
        for rel in pointers:
            (dest / rel).unlink(missing_ok=True)
        kept = f"the pointer files were removed from {dest}"
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
