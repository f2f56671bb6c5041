"""A calibrated likelihood for the next representation: a mixture of K Gaussians with a learned per-dim scale.

Squared error averaged over dimensions prices a nat of z at an arbitrary exchange rate (with MSE / D and a KL
weight of 0.05 the implied variance was ~1.6 per dim against a residual variance of ~0.007, so a nat cost ~200x what
it buys). Here the error is a Gaussian log-likelihood whose std sigma_d per dimension is learned (with a floor), so
the error and the choice of a component are both in nats:

    log p(s̄_{t+1} | past) = log sum_k pi_k(h_t) N(s̄_{t+1}; mu_k(h_t), diag sigma^2)

The K components are the K values of a discrete z; their responsibilities are computed exactly (no amortised
posterior, no free bits), and knowing which one happened is worth at most log K nats per step, by construction.
Squared error also averages over events: a ball that may bounce at the next step or not gets a prediction between
the two, and an open-loop rollout compounds that shortfall. A mixture puts "bounces" and "does not" on separate
components and the most likely one moves the ball the whole way.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def gaussian_log_density(target: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(target; mean, diag std^2), summed over the last axis: broadcastable (..., D) -> (...)."""
    normalized = (target.float() - mean.float()) / std.float()
    return (-0.5 * normalized.pow(2) - std.float().log() - 0.5 * math.log(2 * math.pi)).sum(-1)


def mixture_log_likelihood(
    target: torch.Tensor, means: torch.Tensor, log_weights: torch.Tensor, std: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """log sum_k w_k N(target; means_k, diag std^2) and the exact responsibilities.

    target (..., D); means (..., K, D); log_weights (..., K) (log-probabilities, summing to 1 in probability);
    std (D,) or broadcastable to means. Returns (log-likelihood (...), responsibilities (..., K)), the latter
    p(k | target) = w_k N_k / sum_j w_j N_j.
    """
    joint = log_weights.float() + gaussian_log_density(target.unsqueeze(-2), means, std)  # (..., K)
    log_likelihood = joint.logsumexp(-1)
    return log_likelihood, (joint - log_likelihood.unsqueeze(-1)).exp()


class LikelihoodScale(nn.Module):
    """Learned per-dimension stds of the prediction error, one row per step ahead: sigma_{k,d} = sqrt(min_std^2 +
    exp(2 SPEED r_{k,d})). `steps` = 1 for the one-step (teacher-forced) likelihood; an open-loop rollout's error
    grows with every step it runs blind, so its likelihood has a row per step (the k-th prediction uses row
    min(k, steps - 1)).

    Why separate scales: one shared sigma was set by the large late-horizon rollout errors (0.28 on the keypoint
    dims against a one-step error of ~0.06), so the one-step components were all but indistinguishable (their
    responsibilities equalled the prior) and z carried nothing. SPEED: Adam moves a parameter about lr per step, and
    a scale has to travel a few nats (0.3 -> 0.05) within a stage of a few thousand steps; the factor lets it.
    The floor keeps a dimension that happens to be perfectly predictable in training (a static background feature)
    from dominating the energy of frames where it moves a little (another renderer, sensor noise)."""

    SPEED = 10.0

    def __init__(self, dim: int, *, min_std: float, init_std: float = 0.3, steps: int = 1) -> None:
        super().__init__()
        if not 0 < min_std < init_std:
            raise ValueError(f"the likelihood's min_std must be in (0, {init_std}), got {min_std}")
        if steps < 1:
            raise ValueError(f"a likelihood scale needs steps >= 1, got {steps}")
        self.min_std = min_std
        self.raw = nn.Parameter(torch.full((steps, dim), 0.5 * math.log(init_std**2 - min_std**2) / self.SPEED))

    def forward(self, step: int = 0) -> torch.Tensor:
        """(D,) std per dimension for the prediction `step` steps past the last observed frame (0: the next)."""
        raw = self.raw[min(step, self.raw.shape[0] - 1)]
        return (self.min_std**2 + (2 * self.SPEED * raw.float()).exp()).sqrt()


def one_hot_codes(classes: int, like: torch.Tensor) -> torch.Tensor:
    """(K, K) identity: the code of each component, in like's dtype and device."""
    return F.one_hot(torch.arange(classes, device=like.device), classes).to(like.dtype)


def categorical_information(posterior: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """KL(posterior || prior) in nats between probability vectors over the last axis: (..., K) -> (...). For the
    mixture it is what knowing the component (z) is worth at a step; at most log K."""
    posterior, prior = posterior.float(), prior.float()
    return (posterior * (posterior.clamp(min=1e-12).log() - prior.clamp(min=1e-12).log())).sum(-1)
