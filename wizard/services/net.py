"""Bounds on network waits, shared by git, pip and uv."""

from __future__ import annotations

import os


def stall_seconds() -> int:
    """How long a network transfer may go without a byte (``$LLMC_WIZARD_NET_STALL_S``, default 120)."""
    try:
        return max(1, int(os.environ.get("LLMC_WIZARD_NET_STALL_S", "120")))
    except ValueError:
        return 120


def net_env(env: dict | None = None) -> dict:
    """``env`` (default: this process's) with pip's and uv's network timeouts bounded by
    :func:`stall_seconds`: a package index that accepts the connection and never answers fails the
    install instead of hanging it. Timeouts the user set stay unless ``$LLMC_WIZARD_NET_STALL_S`` is set."""
    out = dict(os.environ if env is None else env)
    ours = "LLMC_WIZARD_NET_STALL_S" in os.environ
    for key in ("UV_HTTP_TIMEOUT", "PIP_DEFAULT_TIMEOUT"):
        if ours or key not in out:
            out[key] = str(stall_seconds())
    return out
