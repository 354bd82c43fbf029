"""Orthogonal matrices for rotating a residual stream: randomized Hadamard and random orthogonal."""

from __future__ import annotations

import math

import torch

KINDS = ("hadamard", "random")




def is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def hadamard_matrix(d: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The ``d×d`` Sylvester Hadamard matrix (entries ±1, ``H·Hᵀ = d·I``); ``d`` a power of two."""
    if not is_power_of_two(d):
        raise ValueError(f"a Sylvester Hadamard matrix needs a power-of-two size, got {d}")
    h = torch.ones(1, 1, dtype=dtype)
    while h.shape[0] < d:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def random_hadamard(d: int, seed: int = 0) -> torch.Tensor:
    """Randomized Hadamard rotation ``H·diag(s)/sqrt(d)`` with seeded random signs ``s``."""
    g = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (d,), generator=g, dtype=torch.int64).to(torch.float64) * 2 - 1
    return hadamard_matrix(d) * signs / math.sqrt(d)


def random_orthogonal(d: int, seed: int = 0) -> torch.Tensor:
    """A random orthogonal matrix: QR of a seeded Gaussian, signs fixed so the draw is Haar."""
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, torch.ones(d, dtype=torch.float64))


def rotation_matrix(d: int, kind: str = "hadamard", seed: int = 0) -> tuple[torch.Tensor, str, list[str]]:
    """``(Q, kind used, notes)``: an orthogonal ``d×d`` float64 matrix of the requested kind."""
    if kind not in KINDS:
        raise ValueError(f"rotation kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind == "hadamard":
        if is_power_of_two(d):
            return random_hadamard(d, seed), "hadamard", []
        note = (f"hidden size {d} is not a power of two: no Sylvester Hadamard matrix; "
                "fell back to a random orthogonal matrix (QR of a Gaussian)")
        return random_orthogonal(d, seed), "random", [note]
    return random_orthogonal(d, seed), "random", []
