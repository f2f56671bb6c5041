"""The latent variable z_t: amortised posterior, learned prior, and the capacity cost that keeps z small.

z_t is meant to carry only what the past cannot determine about the next frame (a random kick, which way a fork
goes). The posterior sees the true next target representation (by default as the innovation: its difference from
what the prior mean predicts), so without a capacity limit it could simply copy the future into z; the capacity
cost is what stops that leak:
- `kl`:     cost = KL(q(z | h_t, s_{t+1}) || p(z | h_t)) in nats, floored at `free_bits` per step (or on the
            batch mean, `free_bits_scope`).
- `sparse`: cost = l1_weight * |z|_1 with z projected into an L2 ball of radius max_norm.
Under `kl`, z is either Gaussian or categorical (LatentConfig.distribution): `dim` groups of one-hot codes over
`classes` values each, flattened, as in DreamerV2 (Hafner et al. 2021). A fork that goes one of k ways is then one
draw of a class, and a prior sample lands on one way, never between two.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .config import LatentConfig
from .likelihood import LikelihoodScale

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


@dataclass
class Gaussian:
    """Diagonal Gaussian, mean and std of shape (..., Z)."""

    mean: torch.Tensor
    std: torch.Tensor

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * noise

    def rsample(self) -> torch.Tensor:
        return self.mean + self.std * torch.randn_like(self.mean)

    @property
    def code(self) -> torch.Tensor:
        """The single most likely z (the mean): what a deterministic prediction and the energy use."""
        return self.mean

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Sum over the last axis: (...,)."""
        normalized = (value - self.mean) / self.std
        return (-0.5 * normalized**2 - self.std.log() - 0.5 * math.log(2 * math.pi)).sum(-1)


UNIFORM_MIX = 0.01
"""Categorical probabilities are mixed with this much of the uniform distribution (DreamerV3's 'unimix'), so no
class has probability 0 and every KL stays finite."""


@dataclass
class Categorical:
    """`groups` independent categoricals over `classes` values; codes are one-hot per group, flattened to (..., G*K).

    It answers to the same names as `Gaussian` where the model uses them: `mean` is the expected code (the class
    probabilities, flattened; the KL reads it), `code` the most likely one-hot code (the transition only ever sees
    one-hot codes, so deterministic predictions and the energy use this, not the mean), `std` each entry's standard
    deviation, `sample` draws one-hot codes and `rsample` draws them with straight-through gradients (the one-hot
    forward, the probabilities' gradient backward).
    """

    probs: torch.Tensor  # (..., G, K), each row sums to 1

    @property
    def mean(self) -> torch.Tensor:
        return self.probs.flatten(-2)

    @property
    def std(self) -> torch.Tensor:
        """Standard deviation of each entry of the flattened code: an entry is a 0/1 indicator of its class, so
        sqrt(p (1 - p)). The KL reads the probabilities; analysis measures distances between codes in these units."""
        probs = self.mean
        return (probs * (1.0 - probs)).sqrt()

    def _one_hot(self, index: torch.Tensor) -> torch.Tensor:
        """(..., G) class indices -> (..., G, K) one-hot codes in the probabilities' dtype."""
        return F.one_hot(index, self.probs.shape[-1]).to(self.probs.dtype)

    @property
    def code(self) -> torch.Tensor:
        return self._one_hot(self.probs.argmax(-1)).flatten(-2)

    def _draw(self, generator: torch.Generator | None) -> torch.Tensor:
        """(..., G, K) one-hot codes drawn from the probabilities."""
        flat = self.probs.reshape(-1, self.probs.shape[-1]).float()  # (N*G, K)
        index = torch.multinomial(flat, 1, generator=generator).reshape(self.probs.shape[:-1])  # (..., G)
        return self._one_hot(index)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self._draw(generator).flatten(-2)

    def rsample(self) -> torch.Tensor:
        hard = self._draw(None)
        return (hard + self.probs - self.probs.detach()).flatten(-2)


def categorical_kl(q_probs: torch.Tensor, p: Categorical) -> torch.Tensor:
    """KL(q || p) in nats, summed over groups: q_probs (..., G*K) flattened codes or probabilities -> (...,)."""
    q = q_probs.reshape(p.probs.shape).clamp(min=1e-8)
    return (q * (q.log() - p.probs.clamp(min=1e-8).log())).sum((-2, -1))


def gaussian_kl(q: Gaussian, p: Gaussian) -> torch.Tensor:
    """KL(q || p) in nats, summed over the last axis: (...,)."""
    variance_ratio = (q.std / p.std) ** 2
    mean_term = ((q.mean - p.mean) / p.std) ** 2
    return 0.5 * (variance_ratio + mean_term - 1.0 - variance_ratio.log()).sum(-1)


def free_bits_floor(kl: torch.Tensor, free_bits: float) -> torch.Tensor:
    """Floor: a KL (per step, or a batch mean) below `free_bits` costs exactly `free_bits` and passes no gradient."""
    return kl.clamp(min=free_bits)


def project_to_ball(z: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Scale each z (last axis) into the L2 ball of radius max_norm (identity inside it)."""
    norm = z.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    return z * (max_norm / norm).clamp(max=1.0)


class GaussianHead(nn.Module):
    """MLP -> diagonal Gaussian; log-std is squashed into a bounded range so KLs stay finite."""

    def __init__(self, in_features: int, latent_dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
            nn.Linear(hidden, 2 * latent_dim),
        )

    def forward(self, x: torch.Tensor) -> Gaussian:
        mean, raw_log_std = self.net(x).chunk(2, dim=-1)
        log_std = LOG_STD_MIN + (LOG_STD_MAX - LOG_STD_MIN) * torch.sigmoid(raw_log_std)
        return Gaussian(mean, log_std.exp())


class CategoricalHead(nn.Module):
    """MLP -> `groups` categoricals over `classes` values, mixed with a little of the uniform (UNIFORM_MIX)."""

    def __init__(self, in_features: int, groups: int, classes: int, hidden: int) -> None:
        super().__init__()
        self.groups, self.classes = groups, classes
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
            nn.Linear(hidden, groups * classes),
        )

    def forward(self, x: torch.Tensor) -> Categorical:
        logits = rearrange(self.net(x), "... (g k) -> ... g k", g=self.groups)
        probs = (1 - UNIFORM_MIX) * logits.float().softmax(-1) + UNIFORM_MIX / self.classes
        return Categorical(probs.to(x.dtype))


class Latent(nn.Module):
    """Prior p(z_t | h_t) and posterior q(z_t | h_t, s_{t+1}) for one capacity regime. A mixture also holds the
    likelihood's learned scales: `scale` for one step, `rollout_scale` with a row for each of `rollout_steps`
    open-loop steps."""

    def __init__(self, config: LatentConfig, *, width: int, dim: int, rollout_steps: int = 1) -> None:
        super().__init__()
        self.config = config
        self.scale: LikelihoodScale | None = None
        self.rollout_scale: LikelihoodScale | None = None
        shown = dim + (1 if config.posterior_input == "scaled_innovation" else 0)  # + the log-RMS
        if config.mixture:
            # The posterior over the components is exact (WorldModel computes it from the likelihood): no network.
            self.prior = CategoricalHead(width, 1, config.classes, config.hidden)
            self.posterior = None
            self.scale = LikelihoodScale(dim, min_std=config.min_std)
            self.rollout_scale = LikelihoodScale(dim, min_std=config.min_std, steps=rollout_steps)
        elif config.categorical:
            self.prior = CategoricalHead(width, config.dim, config.classes, config.hidden)
            self.posterior = CategoricalHead(width + shown, config.dim, config.classes, config.hidden)
        else:
            self.prior = GaussianHead(width, config.dim, config.hidden)
            self.posterior = GaussianHead(width + shown, config.dim, config.hidden)

    def infer(self, summary: torch.Tensor, next_target: torch.Tensor,
              expected: torch.Tensor | None = None) -> Gaussian | Categorical:
        """Posterior over z_t given the past summary h_t and the true next target representation.

        expected: the prior mean's prediction of next_target (same shape), needed when the posterior is shown the
        innovation next_target - expected (LatentConfig.posterior_input); it is detached, so this path trains
        neither the prior nor the transition.
        """
        if self.posterior is None:
            raise ValueError("a mixture latent's posterior is exact: WorldModel computes it from the likelihood")
        shown = next_target
        if self.config.sees_innovation:
            if expected is None:
                raise ValueError(f"this model's posterior sees the innovation (model.latent.posterior_input="
                                 f"{self.config.posterior_input}): pass the prior mean's prediction as `expected`")
            shown = next_target - expected.detach()
            if self.config.posterior_input == "scaled_innovation":
                rms = shown.float().pow(2).mean(-1, keepdim=True).add(1e-12).sqrt()  # (..., 1)
                shown = torch.cat([shown / rms.to(shown.dtype), rms.log().to(shown.dtype)], dim=-1)
        posterior = self.posterior(torch.cat([summary, shown], dim=-1))
        if self.config.capacity == "sparse":
            # Deterministic code: the std is meaningless here and is fixed so that shapes stay uniform.
            return Gaussian(project_to_ball(posterior.mean, self.config.max_norm), torch.ones_like(posterior.std))
        return posterior

    def training_code(self, posterior: Gaussian) -> torch.Tensor:
        """The z used in the training loss: a reparameterised sample (kl) or the code itself (sparse)."""
        return posterior.rsample() if self.config.capacity == "kl" else posterior.mean

    def cost(self, z_mean: torch.Tensor, posterior_std: torch.Tensor, prior: Gaussian | Categorical) -> torch.Tensor:
        """Unweighted capacity in natural units per step (..., ): nats of KL, or |z|_1."""
        if self.config.categorical:
            return categorical_kl(z_mean, prior)
        if self.config.capacity == "kl":
            return gaussian_kl(Gaussian(z_mean, posterior_std), prior)
        return z_mean.abs().sum(-1)

    @property
    def cost_weight(self) -> float:
        """What a unit of capacity costs in the energy: kl_weight, l1_weight, or 1 for the mixture (nats priced
        as nats: the likelihood is calibrated)."""
        if self.config.mixture:
            return 1.0
        return self.config.kl_weight if self.config.capacity == "kl" else self.config.l1_weight

    def capacity_loss(self, cost: torch.Tensor) -> torch.Tensor:
        """Weighted, free-bits-floored capacity term for the training loss (scalar). 0 for the mixture: the
        price of its component is inside the likelihood (log pi_k)."""
        if self.config.mixture:
            return cost.new_zeros(())
        if self.config.capacity == "kl":
            if self.config.free_bits_scope == "batch":
                cost = cost.mean()
            cost = free_bits_floor(cost, self.config.free_bits)
        return self.cost_weight * cost.mean()

    def prior_fit_loss(self, prior: Gaussian, posterior: Gaussian) -> torch.Tensor:
        """sparse only: fit the sampling prior to the detached codes by maximum likelihood; 0 for kl (the KL trains
        it) and the mixture (its likelihood trains it)."""
        if self.config.capacity != "sparse":
            return prior.mean.new_zeros(())
        return -prior.log_prob(posterior.mean.detach()).mean() / self.config.dim

    def sample_prior(self, prior: Gaussian | Categorical, *, generator: torch.Generator | None,
                     deterministic: bool) -> torch.Tensor:
        z = prior.code if deterministic else prior.sample(generator)
        if self.config.capacity == "sparse":
            z = project_to_ball(z, self.config.max_norm)
        return z

    def refine(
        self,
        z: torch.Tensor,
        posterior_std: torch.Tensor,
        prior: Gaussian,
        distance_fn,
    ) -> torch.Tensor:
        """A few projected gradient steps on distance_fn(z) + weight * cost(z): the 'min over z' of the energy.

        Everything but z is detached, so this never trains the model; it runs under enable_grad so it also works
        inside torch.no_grad() evaluation code.
        """
        steps = self.config.infer_steps
        if steps == 0:
            return z
        prior = Gaussian(prior.mean.detach(), prior.std.detach())
        posterior_std = posterior_std.detach()
        with torch.enable_grad():
            z = z.detach().clone().requires_grad_(True)
            for _ in range(steps):
                objective = distance_fn(z) + self.cost_weight * self.cost(z, posterior_std, prior)
                (grad,) = torch.autograd.grad(objective.sum(), z)
                with torch.no_grad():
                    z -= self.config.infer_lr * grad
                    if self.config.capacity == "sparse":
                        z.copy_(project_to_ball(z, self.config.max_norm))
        return z.detach()
