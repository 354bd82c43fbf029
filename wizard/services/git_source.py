"""Where a fetch gets its repository from: a URL or a local path, with credentials split off.

Userinfo in the URL (``https://user:TOKEN@host/...``) is removed from the URL git stores and kept
as an ``Authorization`` header for that origin; ``HF_TOKEN`` becomes one for ``huggingface.co``
(``GITHUB_TOKEN`` for ``github.com``). :mod:`wizard.services.git_run` sends the header.
"""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import git

from .answers import redact
from .errors import WizardError

HF_HOSTS = ("huggingface.co", "hf.co")


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


def _net_fix(src: _Source) -> str:
    if src.local is not None:
        return "check that the repository path is readable"
    return ("check the URL, your network and your access (set HF_TOKEN for gated Hugging Face repos, "
            "GITHUB_TOKEN for private GitHub ones)")
