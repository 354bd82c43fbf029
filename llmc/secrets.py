"""Credentials never reach what the project writes or shows.

:func:`redact` masks URL userinfo (``https://***@host``), Hugging Face tokens (``hf_***``) and the
values of token environment variables wherever they occur in a text; :func:`scrub` is what may
be saved (userinfo removed, remaining tokens masked). The engine's log and events, the wizard's
answers, configs and messages all pass through these.
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import quote

#: environment variables whose values are secrets; masked by :func:`redact` wherever they appear
TOKEN_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "GITHUB_TOKEN", "GH_TOKEN")
MASK = "***"

# scheme://userinfo@ — userinfo cannot contain '/', '@', '?', '#' or whitespace (RFC 3986)
_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^\s/@?#]+)@")
_HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{10,}")
_MIN_SECRET_LEN = 6  # shorter env values would mask ordinary words


def _env_secrets() -> list[str]:
    values = []
    for var in TOKEN_ENV_VARS:
        v = os.environ.get(var, "").strip()
        if len(v) >= _MIN_SECRET_LEN:
            values.append(v)
            if quote(v, safe="") != v:
                values.append(quote(v, safe=""))
    # longest first, so a secret containing another one is masked whole
    return sorted(set(values), key=len, reverse=True)


def redact(text: Any) -> str:
    """``text`` with credentials masked: URL userinfo (``https://***@host``), Hugging Face tokens
    (``hf_***``) and the values of ``HF_TOKEN``/``GITHUB_TOKEN`` (and their aliases in
    :data:`TOKEN_ENV_VARS`) wherever they occur. Safe to call on any object (it is ``str()``-ed)."""
    s = "" if text is None else str(text)
    for secret in _env_secrets():
        s = s.replace(secret, MASK)
    s = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", s)
    return _HF_TOKEN.sub(f"hf_{MASK}", s)


def strip_userinfo(text: str) -> str:
    """Remove the ``user:password@`` part of every URL in ``text`` (``https://u:t@h/x`` -> ``https://h/x``)."""
    return _URL_USERINFO.sub(lambda m: m["scheme"], text)


def scrub(text: str) -> str:
    """What may be saved: URL userinfo removed, remaining tokens masked."""
    return redact(strip_userinfo(text))
