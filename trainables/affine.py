"""The misalignment knob of docs/STUDY.md ("The model"): a fixed random affine map x -> A x + b, A = Q S.

Q is orthogonal (QR of a Gaussian matrix, signs fixed so the draw is unique),
S is diagonal with entries uniform in [1-s, 1+s], b is uniform in [-s, s]^d.
s = 0 is the identity. The map is seeded, saved with the run (`affine.pt`) and
invertible (s < 1), so generated features can be mapped back for decoding and scoring.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class AffineMap(nn.Module):
    """y = x @ A^T + b over the last dimension. Buffers only: never trained."""

    def __init__(self, dim: int, strength: float, seed: int):
        super().__init__()
        if not 0.0 <= strength < 1.0:
            raise ValueError(f"affine strength must be in [0, 1), got {strength}")
        self.strength = strength
        if strength == 0.0:
            A, b = torch.eye(dim), torch.zeros(dim)
        else:
            g = torch.Generator().manual_seed(seed)
            q, r = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
            q = q * torch.sign(torch.diagonal(r))  # unique Q: positive diagonal of R
            s = 1.0 + strength * (2.0 * torch.rand(dim, generator=g, dtype=torch.float64) - 1.0)
            A = (q * s).float()  # Q @ diag(s): column j of Q scaled by s_j
            b = (strength * (2.0 * torch.rand(dim, generator=g, dtype=torch.float64) - 1.0)).float()
        self.register_buffer("A", A)  # (D, D)
        self.register_buffer("b", b)  # (D,)

    @property
    def identity(self) -> bool:
        return self.strength == 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., D) -> (..., D)
        if self.identity:
            return x
        return x @ self.A.to(x.dtype).T + self.b.to(x.dtype)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:  # (..., D) -> (..., D)
        if self.identity:
            return y
        flat = y.reshape(-1, y.shape[-1]).double() - self.b.double()  # (N, D)
        x = torch.linalg.solve(self.A.double(), flat.T).T  # A x = y - b
        return x.reshape(y.shape).to(y.dtype)

    def save(self, path: Path) -> None:
        torch.save({"A": self.A, "b": self.b, "strength": self.strength}, path)
