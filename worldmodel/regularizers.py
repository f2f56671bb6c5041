"""Anti-collapse regularisation (VICReg variance/covariance, Bardes et al. 2022) and collapse telemetry.

Joint-embedding predictors can trivially minimise prediction error by mapping every frame to the same point;
the variance hinge keeps each dimension spread out and the covariance term keeps dimensions from copying each
other. Effective rank (Roy & Vetterli 2007) and per-dimension std are the telemetry that shows collapse early.
"""

from __future__ import annotations

import torch
from einops import rearrange


def _flatten(representations: torch.Tensor) -> torch.Tensor:
    if representations.ndim == 3:
        return rearrange(representations, "b t d -> (b t) d")
    return representations


def variance_loss(representations: torch.Tensor, target_std: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """Mean over dimensions of relu(target_std - std_d); representations (N, D) or (B, T, D)."""
    x = _flatten(representations).float()
    std = torch.sqrt(x.var(dim=0) + eps)
    return torch.relu(target_std - std).mean()


def covariance_loss(representations: torch.Tensor) -> torch.Tensor:
    """Sum of squared off-diagonal covariances divided by D."""
    x = _flatten(representations).float()
    x = x - x.mean(dim=0)
    n, dim = x.shape
    covariance = (x.T @ x) / max(n - 1, 1)  # (D, D)
    off_diagonal = covariance - torch.diag(torch.diagonal(covariance))
    return off_diagonal.pow(2).sum() / dim


def temporal_loss(representations: torch.Tensor) -> torch.Tensor:
    """Mean squared change between consecutive frames, per dimension: (B, T, D) -> scalar."""
    return (representations[:, 1:] - representations[:, :-1]).float().pow(2).mean()


def acceleration_loss(representations: torch.Tensor) -> torch.Tensor:
    """Mean squared second difference s_{t+1} - 2 s_t + s_{t-1}, per dimension: (B, T, D) -> scalar (0 if T < 3)."""
    if representations.shape[1] < 3:
        return representations.new_zeros(())
    second = representations[:, 2:] - 2 * representations[:, 1:-1] + representations[:, :-2]  # (B, T-2, D)
    return second.float().pow(2).mean()


@torch.no_grad()
def effective_rank(representations: torch.Tensor) -> float:
    """exp(entropy of the normalised singular values) of the centred representations: 1 (collapsed) .. D."""
    x = _flatten(representations).float()
    x = x - x.mean(dim=0)
    singular_values = torch.linalg.svdvals(x)
    p = singular_values / singular_values.sum().clamp(min=1e-12)
    entropy = -(p * torch.log(p.clamp(min=1e-12))).sum()
    return float(entropy.exp())


@torch.no_grad()
def per_dim_std(representations: torch.Tensor) -> torch.Tensor:
    """Std of each dimension over samples: (D,)."""
    return _flatten(representations).float().std(dim=0)
