"""The latent-variable joint-embedding world model.

Pieces (see README "Architecture"):
    frames --encoder--> s_t (online)        frames --target encoder (EMA, no grad)--> s̄_t
    s_1..s_t --causal transformer--> h_t
    z_t ~ q(z | h_t, s̄_{t+1} - ŝ_{t+1}(prior mean)) in training, ~ p(z | h_t) when sampling
    ŝ_{t+1} = s̄_t + f(h_t, z_t)      (residual from the target representation; rollouts start from ŝ_t)
Energy of a future given a context:
    F(context, future) = Σ_t min_z [ ||ŝ_{t+1}(z) - s̄_{t+1}||² / D + weight * capacity(z) ]
where the min over z is taken over two candidates per step: the amortised posterior's code (plus optional
gradient refinement) and the prior's own code (z carries nothing; no KL), as in LeCun's latent-variable
energy-based models. Lower energy = the model finds that future more plausible.

Frames everywhere are torch tensors laid out (B, T, 3, H, W): uint8 in [0, 255] or float in [0, 1].
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from einops import rearrange
from torch import nn

from . import regularizers
from .config import ModelConfig
from .decoder import PixelDecoder
from .encoder import FrameEncoder
from .latent import Categorical, Gaussian, Latent
from .likelihood import categorical_information, mixture_log_likelihood, one_hot_codes
from .predictor import PastEncoder, TransitionHead, extrapolated, extrapolated_last


@dataclass
class SampledFutures:
    """Futures sampled from the prior for each context.

    representations: (B, N, H, D) predicted target-space representations of the H future frames.
    energies:        (B, N) energy of each sampled trajectory (lower = more plausible); see `WorldModel.sample_futures`.
    latents:         (B, N, H, Z) the z used at each step (Z = model.latent.dim, or dim * classes one-hot entries
                     for a categorical z).
    """

    representations: torch.Tensor
    energies: torch.Tensor
    latents: torch.Tensor

    def ranking(self) -> torch.Tensor:
        """(B, N) sample indices ordered from lowest to highest energy."""
        return self.energies.argsort(dim=-1)


def component_of(means: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The chosen component's mean: means (..., K, D), index (...) -> (..., D)."""
    return means.gather(-2, index[..., None, None].expand(*index.shape, 1, means.shape[-1]))[..., 0, :]


def zero_loss(like: torch.Tensor) -> torch.Tensor:
    """A scalar 0 on like's device, for loss terms that are switched off."""
    return like.new_zeros((), dtype=torch.float32)


def distance(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the representation axis: (..., D) -> (...)."""
    return (prediction.float() - target.float()).pow(2).mean(-1)


class WorldModel(nn.Module):
    """Encoder + EMA target encoder + causal predictor + latent z + pixel decoder. See the module docstring."""

    # The loss terms and the config weight that scales each; `loss` asserts it produced exactly these.
    LOSS_TERMS = (
        "prediction", "rollout", "best_of_prior", "capacity", "prior_fit", "variance", "covariance", "temporal",
        "acceleration", "reconstruction",
    )

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        dim = config.encoder.dim
        self.encoder = FrameEncoder(config.encoder, image_size=config.image_size)
        self.target_encoder: FrameEncoder | None = None
        if config.target == "ema":
            self.target_encoder = copy.deepcopy(self.encoder)
            self.target_encoder.requires_grad_(False)
        keypoints = config.encoder.keypoints if config.predictor.keypoint_dynamics else 0
        self.past = PastEncoder(config.predictor, dim=dim, action_dim=config.action_dim, keypoints=keypoints)
        self.latent = Latent(config.latent, width=self.past.out_width, dim=dim,
                             rollout_steps=config.predictor.max_len)
        self.transition = TransitionHead(
            width=config.predictor.width, latent_dim=config.latent.code_size, dim=dim, hidden=config.latent.hidden,
            keypoints=keypoints,
        )
        self.decoder = PixelDecoder(config.decoder, dim=dim, image_size=config.image_size)

    # ------------------------------------------------------------------ frames and representations
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def prepare_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Check layout and convert to float in [0, 1] on the model's device: (B, T, 3, H, W)."""
        if not isinstance(frames, torch.Tensor):
            raise TypeError(f"frames must be a torch.Tensor laid out (B, T, 3, H, W), got {type(frames).__name__}")
        if frames.ndim == 4:
            frames = frames.unsqueeze(0)
        size = self.config.image_size
        if frames.ndim != 5 or frames.shape[2] != 3 or frames.shape[3] != size or frames.shape[4] != size:
            raise ValueError(
                f"frames must be laid out (B, T, 3, {size}, {size}) (or (T, 3, {size}, {size})), "
                f"got shape {tuple(frames.shape)}"
            )
        frames = frames.to(self.device, non_blocking=True)
        if frames.dtype == torch.uint8:
            return frames.float().div_(255.0)
        if not frames.is_floating_point():
            raise ValueError(f"frames must be uint8 in [0, 255] or float in [0, 1], got dtype {frames.dtype}")
        return frames.float()

    def prepare_actions(self, actions: torch.Tensor | None, batch: int, length: int) -> torch.Tensor | None:
        """Check actions against the model: None for a model without actions, else float (batch, >= length, A)
        on the model's device, cut to `length` steps. Actions[:, t] is what was done after frame t."""
        if self.config.action_dim == 0:
            if actions is not None:
                raise ValueError("actions were given but this model has model.action_dim=0 (not action-conditioned)")
            return None
        expected = f"(B={batch}, T>={length}, A={self.config.action_dim})"
        if actions is None:
            raise ValueError(f"this model is action-conditioned: pass actions laid out {expected}")
        if not isinstance(actions, torch.Tensor) or actions.ndim != 3 or actions.shape[0] != batch \
                or actions.shape[1] < length or actions.shape[2] != self.config.action_dim:
            raise ValueError(f"actions must be a tensor laid out {expected}, got {tuple(getattr(actions, 'shape', ()))}")
        return actions[:, :length].to(self.device, torch.float32)

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """Online encoder: frames (B, T, 3, H, W) -> representations (B, T, D)."""
        return self.encoder(self.prepare_frames(frames))

    @torch.no_grad()
    def encode_target(self, frames: torch.Tensor) -> torch.Tensor:
        """Target representations (EMA encoder, or the online one under stop-gradient): (B, T, D)."""
        encoder = self.target_encoder if self.target_encoder is not None else self.encoder
        return encoder(self.prepare_frames(frames)).float()

    def decode(self, representations: torch.Tensor) -> torch.Tensor:
        """Pixel decoder: (B, T, D) -> frames (B, T, 3, H, W) float in [0, 1]."""
        return self.decoder(representations)

    @torch.no_grad()
    def update_target(self) -> None:
        """EMA step of the target encoder; call after every optimizer step."""
        if self.target_encoder is None:
            return
        decay = self.config.ema_decay
        for target, online in zip(self.target_encoder.parameters(), self.encoder.parameters()):
            target.lerp_(online.detach(), 1.0 - decay)

    # ------------------------------------------------------------------ prediction
    def rollout(
        self,
        context: torch.Tensor,
        last_target: torch.Tensor,
        horizon: int,
        *,
        latents: torch.Tensor | None = None,
        actions: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        deterministic: bool = False,
        window: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Open-loop prediction: each prediction is fed back as the next input.

        context: (B, C, D) online representations of the observed frames; last_target: (B, D) the target
        representation of the last observed frame (the base the first residual prediction starts from), or
        (B, C', D) the target representations of the last C' observed frames, whose trend the transition
        continues (model.predictor.trend_frames; with (B, D) the trend builds up from the predictions).
        latents: (B, horizon, Z) to use given z's; otherwise z is drawn from the prior (its mean if
        deterministic). actions: (B, C + horizon - 1, A) for an action-conditioned model, aligned with frames.
        window: feed the predictor at most this many most recent inputs per step (the sequence length it was
        trained on: positions beyond it never got a gradient); None: up to model.predictor.max_len, so a rollout
        of any length slides over the most recent inputs it can take.
        Returns (predictions (B, horizon, D), latents (B, horizon, Z)).
        """
        if window is not None and window < 1:
            raise ValueError(f"window must be >= 1 or None, got {window}")

        def pick(k: int, summary: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
            if latents is not None:
                return latents[:, k]
            prior = self.latent.prior(summary)
            return self.latent.sample_prior(prior, generator=generator, deterministic=deterministic)

        return self._unroll(context, last_target, horizon, pick, actions=actions, window=window)

    def _unroll(self, context: torch.Tensor, last_target: torch.Tensor, horizon: int, pick, *,
                actions: torch.Tensor | None, window: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The open-loop loop itself: pick(k, h_k (B, width), base (B, D)) -> z_k (B, Z) chooses each step's z from
        the rollout's own summary, or -> (z_k, prediction (B, D)) where it has already computed what z_k predicts.
        Returns (predictions (B, horizon, D), latents (B, horizon, Z))."""
        # Never more inputs than the predictor has positions: past that, the most recent ones are kept.
        window = self.past.max_len if window is None else min(window, self.past.max_len)
        trend = self.config.predictor.trend_frames
        history = last_target if last_target.ndim == 3 else last_target.unsqueeze(1)  # (B, C', D) target space
        sequence = context
        predictions, used = [], []
        for k in range(horizon):
            known = sequence.shape[1]
            first = max(0, known - window)
            step_actions = None if actions is None else actions[:, first:known]
            # (B, width): h at the last known/predicted frame
            summary = self.past(sequence[:, first:], step_actions)[:, -1]
            base = extrapolated_last(history, trend)  # (B, D): where the last frame goes if it keeps moving
            chosen = pick(k, summary, base)
            z, prediction = chosen if isinstance(chosen, tuple) else (chosen, self.step(summary, chosen, base))
            predictions.append(prediction)
            used.append(z)
            sequence = torch.cat([sequence, prediction.unsqueeze(1).to(sequence.dtype)], dim=1)
            keep = max(trend - 1, 0)  # the trend of the next step reads the last `trend` frames
            history = torch.cat([history[:, history.shape[1] - keep :], prediction.unsqueeze(1).to(history.dtype)], 1)
        return torch.stack(predictions, dim=1), torch.stack(used, dim=1)

    def bases(self, history: torch.Tensor) -> torch.Tensor:
        """Where each step's prediction starts from, given target representations (B, T, D): s̄_t plus its trend
        over the last model.predictor.trend_frames frames (s̄_t itself when that is 0 or 1). (B, T, D)."""
        return extrapolated(history, self.config.predictor.trend_frames)

    def _training_rollout(self, online: torch.Tensor, target: torch.Tensor, teacher_z: torch.Tensor,
                          actions: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The open-loop term's rollout from the context (model.rollout_latent says where each step's z comes from).

        online, target (B, T, D); teacher_z (B, T-1, Z) the teacher-forced posterior's codes. Returns (predictions
        (B, T-C, D), the rollout's own capacity per step (B, T-C), or None where its z's cost nothing extra).
        `closed_loop`: each z is the posterior given the rollout's own summary h_k and the true next target, charged
        against the prior p(z | h_k) of that same summary. Why not the teacher-forced codes: both they and the
        teacher-forced prior are functions of the true past, so a z can carry the true state into the rollout at no
        KL cost, and the transition learns to lean on that channel. Measured on a 2,500-step small model: its
        rollout with z = the teacher-forced prior's code reached 0.072 at step 4, its own deterministic rollout 0.098.
        """
        context, mode = self.config.context_frames, self.config.rollout_latent
        future = target[:, context:]  # (B, T-C, D)
        if self.config.latent.mixture:
            return self._mixture_rollouts(online, target, actions)
        costs = []

        def pick(k: int, summary: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
            if mode == "teacher_forced":
                return teacher_z[:, context - 1 + k]
            prior = self.latent.prior(summary)
            if mode == "prior_mean":
                return self.latent.sample_prior(prior, generator=None, deterministic=True).detach()
            posterior = self._infer(summary, prior, base, future[:, k])
            costs.append(self.latent.cost(posterior.mean, posterior.std, prior))
            return self.latent.training_code(posterior)

        predictions, _ = self._unroll(online[:, :context], target[:, :context], future.shape[1], pick,
                                      actions=actions, window=None)
        return predictions, torch.stack(costs, dim=1) if costs else None

    def _mixture_rollouts(self, online: torch.Tensor, target: torch.Tensor,
                          actions: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The mixture's open-loop term from the context of online, target (B, T, D).
        Every step of a rollout is charged the true target's full mixture log-likelihood under that step's rollout
        scale (which trains the prior at the states the rollout reaches); model.rollout_latent says which
        component each step goes on with: `closed_loop` the one that explains the truth (the steered path the
        posterior can take), `prior_mean` the prior's most likely one (the deterministic rollout's own path),
        `both` each path once, averaged. Returns (the first path's predictions (B, T-C, D), log-likelihoods
        (B, T-C))."""
        context, mode = self.config.context_frames, self.config.rollout_latent
        future = target[:, context:]  # (B, T-C, D)
        paths = {"closed_loop": ["steered"], "prior_mean": ["prior"], "both": ["steered", "prior"]}[mode]
        rolled, charged = [], []
        for path in paths:
            costs = []

            def pick(k: int, summary: torch.Tensor, base: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                prior = self.latent.prior(summary)
                log_likelihood, responsibilities, means = self._mixture(summary, prior, base, future[:, k],
                                                                        scale=self.latent.rollout_scale(k))
                costs.append(log_likelihood)
                chosen = responsibilities if path == "steered" else prior.probs[..., 0, :]  # noqa: B023
                index = chosen.argmax(-1)
                return self._component_code(index, summary), component_of(means, index)

            predictions, _ = self._unroll(online[:, :context], target[:, :context],
                                          future.shape[1], pick, actions=actions, window=None)
            rolled.append(predictions)
            charged.append(torch.stack(costs, dim=1))
        return rolled[0], torch.stack(charged).mean(0)

    # ------------------------------------------------------------------ training objective
    def loss(
        self, batch: dict[str, torch.Tensor] | torch.Tensor, *, telemetry: bool = True
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss on a window of frames (B, T, 3, H, W), T > context_frames.

        Returns (total loss, metrics) where metrics holds every unweighted loss term under `loss/<name>` plus
        telemetry: KL nats, copy-last baseline error, effective rank, per-dim std. With telemetry=False the
        metrics dict is empty, which saves the host syncs and the SVD on steps that are not logged.
        """
        config = self.config
        frames = self.prepare_frames(batch["frames"] if isinstance(batch, dict) else batch)
        length = frames.shape[1]
        actions = self.prepare_actions(
            batch.get("actions") if isinstance(batch, dict) else None, frames.shape[0], length - 1
        )
        context = config.context_frames
        if length <= context:
            raise ValueError(
                f"a training window needs more than model.context_frames={context} frames, got {length}"
            )
        online = self.encode(frames)  # (B, T, D)
        target = self.encode_target(frames)  # (B, T, D), no grad
        losses, metrics = self.predictive_losses(online, target, actions, telemetry=telemetry)
        losses.update({
            "variance": regularizers.variance_loss(online, config.regularizer.target_std),
            "covariance": regularizers.covariance_loss(online),
            "temporal": regularizers.temporal_loss(online),
            "acceleration": regularizers.acceleration_loss(online),
            "reconstruction": self._reconstruction(target, frames),
        })
        weights = self.loss_weights()
        assert losses.keys() == weights.keys() == set(self.LOSS_TERMS), "loss terms and weights must match"
        total = sum(weights[name] * value for name, value in losses.items())
        if not telemetry:
            return total, {}

        with torch.no_grad():
            stds = regularizers.per_dim_std(online)
            metrics.update({f"loss/{name}": float(value) for name, value in losses.items()})
            metrics.update(
                {
                    "loss/total": float(total),
                    "collapse/effective_rank": regularizers.effective_rank(online),
                    "collapse/std_mean": float(stds.mean()),
                    "collapse/std_min": float(stds.min()),
                }
            )
        return total, metrics

    def _reconstruction(self, target: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """Pixel MSE of the decoder on `decoder.train_frames` random frames of each window (all with 0). Detached:
        the decoder learns to render representations, it never shapes them."""
        count = self.config.decoder.train_frames
        if 0 < count < frames.shape[1]:
            picked = torch.randperm(frames.shape[1], device=frames.device)[:count]
            target, frames = target[:, picked], frames[:, picked]
        return (self.decode(target.detach()) - frames).pow(2).mean()

    def loss_weights(self) -> dict[str, float]:
        """The weight of each loss term (LOSS_TERMS) in the total, from the config."""
        config = self.config
        return {
            "prediction": config.prediction_weight,
            "rollout": config.rollout_weight,
            "best_of_prior": config.best_of_weight,
            "capacity": 1.0,  # the capacity term carries its own kl_weight / l1_weight
            "prior_fit": 1.0,
            "variance": config.regularizer.variance_weight,
            "covariance": config.regularizer.covariance_weight,
            "temporal": config.regularizer.temporal_weight,
            "acceleration": config.regularizer.acceleration_weight,
            "reconstruction": config.decoder.weight,
        }

    def predictive_losses(
        self, online: torch.Tensor, target: torch.Tensor, actions: torch.Tensor | None = None, *,
        telemetry: bool = False,
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """The terms of the loss that train the predictor and z, from representations: online (B, T, D) (what the
        predictor reads) and target (B, T, D) (what it predicts), T > context_frames; actions (B, T-1, A) or None.

        Returns ({prediction, rollout, best_of_prior, capacity, prior_fit} unweighted, telemetry floats: errors
        and capacity used; empty unless telemetry)."""
        config, context = self.config, self.config.context_frames
        if config.latent.mixture:
            return self._mixture_losses(online, target, actions, telemetry=telemetry)
        # Predict s̄_{t+1} from s_{<=t}; the residual starts from s̄_t, so predictions live in target space and
        # the encoder is shaped only through the summary h_t (the JEPA way: no gradient through targets).
        current, next_target = self.bases(target[:, :-1]), target[:, 1:]
        summary, prior, posterior = self._teacher_forced(online, target, actions)
        z = self.latent.training_code(posterior)  # (B, T-1, Z)
        prediction = self.transition(summary, z, current)  # (B, T-1, D)
        capacity = self.latent.cost(posterior.mean, posterior.std, prior)  # (B, T-1) nats or |z|_1

        # Open loop from the context: predictions are fed back as inputs.
        rolled, rollout_capacity = self._training_rollout(online, target, z, actions)
        charged = capacity if rollout_capacity is None else torch.cat([capacity, rollout_capacity], dim=1)
        losses = {
            "prediction": distance(prediction, next_target).mean(),
            "rollout": distance(rolled, target[:, context:]).mean(),
            "best_of_prior": self._best_of_prior(online, target, actions) if config.best_of_weight > 0
            else zero_loss(online),
            "capacity": self.latent.capacity_loss(charged),
            "prior_fit": self.latent.prior_fit_loss(prior, posterior),
        }
        if not telemetry:
            return losses, {}
        with torch.no_grad():
            prior_prediction = self.transition(summary, prior.code, current)
            metrics = {
                "error/prediction": float(distance(prediction, next_target).mean()),
                "error/prior_mean_prediction": float(distance(prior_prediction, next_target).mean()),
                "error/copy_last": float(distance(current, next_target).mean()),
                "error/rollout": float(losses["rollout"]),
                "latent/capacity": float(capacity.mean()),
            }
            if config.latent.capacity == "kl":
                metrics["latent/kl_nats"] = metrics["latent/capacity"]
            if rollout_capacity is not None:
                metrics["latent/rollout_capacity"] = float(rollout_capacity.mean())
        return losses, metrics

    def _mixture_losses(
        self, online: torch.Tensor, target: torch.Tensor, actions: torch.Tensor | None, *, telemetry: bool
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """predictive_losses for the mixture latent: the negative log-likelihood of every next target, teacher-forced
        and along the open-loop rollout, in nats per dimension, times the detached 2 * mean sigma^2 of the scale that
        step is judged with (one-step, or the rollout's own at each step ahead: see LikelihoodScale).

        That factor is a constant at each step, so it does not move the minimum; it gives the gradient on the
        predicted means the size of a squared error's (2 (mu - x) / D), whatever the learned scale, so the balance
        between prediction and the anti-collapse terms on the encoder stays where it was tuned, and shrinking sigma
        does not turn up the encoder's learning rate."""
        context, dim = self.config.context_frames, online.shape[-1]
        last, current, next_target = target[:, :-1], self.bases(target[:, :-1]), target[:, 1:]
        summary = self.past(online[:, :-1], actions)  # (B, T-1, width)
        prior = self.latent.prior(summary)
        log_likelihood, responsibilities, means = self._mixture(summary, prior, current, next_target)  # (B, T-1)
        rolled, rolled_log_likelihood = self._training_rollout(online, target, None, actions)
        scale = self.latent.scale()
        price = 2 * scale.detach().pow(2).mean()
        rollout_scales = torch.stack([self.latent.rollout_scale(k) for k in range(rolled.shape[1])])  # (T-C, D)
        rollout_price = 2 * rollout_scales.detach().pow(2).mean(-1)  # (T-C,)
        losses = {
            "prediction": -log_likelihood.mean() / dim * price,
            "rollout": -(rolled_log_likelihood * rollout_price).mean() / dim,
            "best_of_prior": zero_loss(online),
            "capacity": zero_loss(online),
            "prior_fit": zero_loss(online),
        }
        if not telemetry:
            return losses, {}
        with torch.no_grad():
            posterior_prediction = component_of(means, responsibilities.argmax(-1))
            prior_prediction = component_of(means, prior.probs[..., 0, :].argmax(-1))
            information = categorical_information(responsibilities, prior.probs[..., 0, :])
            metrics = {
                "error/prediction": float(distance(posterior_prediction, next_target).mean()),
                "error/prior_mean_prediction": float(distance(prior_prediction, next_target).mean()),
                "error/copy_last": float(distance(last, next_target).mean()),
                "error/rollout": float(distance(rolled, target[:, context:]).mean()),
                "latent/capacity": float(information.mean()),
                "latent/rollout_nll_per_dim": float(-rolled_log_likelihood.mean() / dim),
                "likelihood/nll_per_dim": float(-log_likelihood.mean() / dim),
                "likelihood/std_mean": float(scale.mean()),
                "likelihood/std_min": float(scale.min()),
                "likelihood/rollout_std_first": float(rollout_scales[0].mean()),
                "likelihood/rollout_std_last": float(rollout_scales[-1].mean()),
            }
        return losses, metrics

    def _component_code(self, index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """(...,) component indices -> (..., K) one-hot codes (the mixture's z as the transition reads it)."""
        return one_hot_codes(self.config.latent.classes, like)[index]

    def step(self, summary: torch.Tensor, z: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        """The next representation for code z: summary (..., width), z (..., Z), current (..., D) -> (..., D). For
        the mixture, z is a one-hot component and this is that component's mean, as the likelihood has it."""
        if not self.config.latent.mixture:
            return self.transition(summary, z, current)
        return (z.unsqueeze(-1).to(current.dtype) * self.component_means(summary, current)).sum(-2)

    def component_means(self, summary: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        """The mixture's K predicted next representations: summary (..., width), current (..., D) -> (..., K, D)."""
        classes = self.config.latent.classes
        codes = one_hot_codes(classes, summary).expand(*summary.shape[:-1], classes, classes)
        expand = lambda x: x.unsqueeze(-2).expand(*x.shape[:-1], classes, x.shape[-1])  # noqa: E731
        means = self.transition(expand(summary), codes, expand(current))  # (..., K, D)
        encoder = self.config.encoder
        if not (self.config.latent.keypoint_mixture and encoder.keypoint_passthrough and encoder.keypoints > 0):
            return means
        # LatentConfig.keypoint_mixture: component 0 keeps the keypoints on their trend, the other dimensions are
        # one prediction shared by all components.
        coordinates = 2 * encoder.keypoints
        moves = torch.cat([current[..., None, :coordinates].to(means.dtype), means[..., 1:, :coordinates]], dim=-2)
        rest = means[..., coordinates:].mean(-2, keepdim=True).expand(*means.shape[:-1], means.shape[-1] - coordinates)
        return torch.cat([moves, rest], dim=-1)

    def _mixture(self, summary: torch.Tensor, prior: Categorical, current: torch.Tensor,
                 next_target: torch.Tensor, *, scale: torch.Tensor | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """log p(next_target | past) under the mixture, the exact responsibilities and the K means:
        (...), (..., K), (..., K, D) for summary (..., width), current and next_target (..., D). scale (D,): the
        components' std (default: the one-step likelihood's)."""
        means = self.component_means(summary, current)
        log_likelihood, responsibilities = mixture_log_likelihood(
            next_target, means, prior.probs[..., 0, :].log(), self.latent.scale() if scale is None else scale
        )
        return log_likelihood, responsibilities, means

    def _best_of_prior(self, online: torch.Tensor, target: torch.Tensor, actions: torch.Tensor | None) -> torch.Tensor:
        """Mean over windows of the smallest open-loop error among `best_of_samples` rollouts with prior z's.

        online, target: (B, T, D); only the sample closest to the true future gets a gradient, so the prior and
        the transition learn to put some sample on each way the future can go, not the average of the ways."""
        samples, context = self.config.best_of_samples, self.config.context_frames
        repeat = lambda x: x.repeat_interleave(samples, dim=0)  # noqa: E731  (B, ...) -> (B*N, ...)
        sampled, _ = self.rollout(
            repeat(online[:, :context]), repeat(target[:, :context]), online.shape[1] - context,
            actions=None if actions is None else repeat(actions),
        )  # (B*N, T - C, D), z ~ p(z | h) at each step, reparameterised
        errors = distance(sampled, repeat(target[:, context:])).mean(-1)  # (B*N,)
        return rearrange(errors, "(b n) -> b n", n=samples).min(dim=-1).values.mean()

    @torch.no_grad()
    def posterior(
        self,
        inputs: torch.Tensor,
        next_target: torch.Tensor,
        actions: torch.Tensor | None = None,
        *,
        last_target: torch.Tensor | None = None,
    ) -> Gaussian:
        """q(z | past, next frame) for the step after `inputs`: inputs (B, C, D) online representations,
        next_target (B, D) the target representation of the next frame; actions (B, C, A) when conditioned.
        last_target (B, D), the target representation of the last input frame (the base the prediction starts
        from), or (B, T', D) those of the last T' input frames (their trend moves the base on, see
        model.predictor.trend_frames), is required by a mixture and by a posterior that sees the innovation."""
        if self.config.latent.mixture and last_target is None:
            raise ValueError("this model's posterior is the mixture's exact one: pass last_target, the target "
                             "representation of the last input frame (the components' base)")
        if self.config.latent.sees_innovation and last_target is None:
            raise ValueError(f"this model's posterior sees the innovation (model.latent.posterior_input="
                             f"{self.config.latent.posterior_input}): pass last_target, the target representation "
                             "of the last input frame")
        actions = self.prepare_actions(actions, inputs.shape[0], inputs.shape[1])
        summary = self.past(inputs.float(), actions)[:, -1]
        current = None
        if last_target is not None:
            history = last_target.float() if last_target.ndim == 3 else last_target.float().unsqueeze(1)
            current = extrapolated_last(history, self.config.predictor.trend_frames)
        return self._infer(summary, self.latent.prior(summary), current, next_target.float())

    def _infer(self, summary: torch.Tensor, prior: Gaussian, current: torch.Tensor | None,
               next_target: torch.Tensor) -> Gaussian:
        """The posterior for the step from `current` (the target representation the prediction starts from) to
        `next_target`. A posterior that sees the innovation is shown next_target minus the prior mean's prediction;
        that prediction is only its input, so it is made without gradient (it trains neither prior nor transition)."""
        if self.config.latent.mixture:
            _, responsibilities, _ = self._mixture(summary, prior, current, next_target)
            return Categorical(responsibilities.unsqueeze(-2))  # (..., 1, K): one group, the component
        expected = None
        if self.config.latent.sees_innovation:
            with torch.no_grad():
                expected = self.transition(summary, prior.code, current)
        return self.latent.infer(summary, next_target, expected)

    @torch.no_grad()
    def capacity_per_step(self, online: torch.Tensor, target: torch.Tensor,
                          actions: torch.Tensor | None = None) -> torch.Tensor:
        """The capacity (nats of KL, or |z|_1) the posterior uses at each step of teacher-forced windows, as in
        training: online, target (B, T, D) -> (B, T - 1), step t being the prediction of frame t+1 from frames <= t.
        actions: (B, T - 1, A) for an action-conditioned model."""
        actions = self.prepare_actions(actions, online.shape[0], online.shape[1] - 1)
        _, prior, posterior = self._teacher_forced(online, target, actions)
        return self.latent.cost(posterior.mean, posterior.std, prior)

    def _teacher_forced(self, online: torch.Tensor, target: torch.Tensor, actions: torch.Tensor | None):
        """Summary h_t (B, T-1, width), prior and posterior of every step t -> t+1 of windows online, target
        (B, T, D): the predictor reads the true frames <= t, the posterior is shown target t+1."""
        summary = self.past(online[:, :-1], actions)
        prior = self.latent.prior(summary)
        return summary, prior, self._infer(summary, prior, self.bases(target[:, :-1]), target[:, 1:])

    # ------------------------------------------------------------------ energy
    def summaries(self, inputs: torch.Tensor, actions: torch.Tensor | None = None, *,
                  window: int | None = None) -> torch.Tensor:
        """h_t for every t of inputs (B, T, D) [+ actions (B, T, A)] -> (B, T, width), each from at most `window`
        (default and at most model.predictor.max_len) most recent inputs: the whole past when it fits, a sliding
        window past that."""
        length = inputs.shape[1]
        window = self.past.max_len if window is None else min(window, self.past.max_len)
        if length <= window:
            return self.past(inputs, actions)
        cut = lambda x, a, b: None if x is None else x[:, a:b]  # noqa: E731
        states = [self.past(inputs[:, :window], cut(actions, 0, window))]
        for t in range(window, length):
            states.append(self.past(inputs[:, t - window + 1 : t + 1], cut(actions, t - window + 1, t + 1))[:, -1:])
        return torch.cat(states, dim=1)

    def energy_of_representations(
        self, inputs: torch.Tensor, targets: torch.Tensor, start: int, actions: torch.Tensor | None = None, *,
        window: int | None = None,
    ) -> torch.Tensor:
        """Per-step energy of targets[:, start:] given everything before: (B, T - start).

        inputs: (B, T, D) representations fed to the predictor (online space); targets: (B, T, D) target-space
        representations the predictions start from and are compared with. Each step is predicted from the whole
        past before it, up to `window` (default: model.predictor.max_len) inputs, a sliding window past that.
        Mixture latent: the energy of a step is its negative log-likelihood in nats, -log sum_k pi_k N(s̄; mu_k,
        sigma^2): the sum over z, exactly. Other latents: the smaller of two candidates for the min over z of
        distance + weight * capacity: the posterior's code, refined by `latent.infer_steps` gradient steps, and the
        prior's own code (q = p: z carries nothing, for a KL capacity at no cost). The second makes F never exceed
        the deterministic prediction's error. actions: (B, >= T - 1, A) for an action-conditioned model.
        """
        if not 1 <= start < inputs.shape[1]:
            raise ValueError(f"start must be in [1, {inputs.shape[1] - 1}], got {start}")
        actions = self.prepare_actions(actions, inputs.shape[0], inputs.shape[1] - 1)
        summary = self.summaries(inputs[:, :-1].float(), actions, window=window)[:, start - 1 :]
        current = self.bases(targets[:, :-1].float())[:, start - 1 :]
        next_target = targets[:, start:].float()
        prior = self.latent.prior(summary)
        if self.config.latent.mixture:
            log_likelihood, _, _ = self._mixture(summary, prior, current, next_target)
            return -log_likelihood
        posterior = self._infer(summary, prior, current, next_target)

        def step_distance(z: torch.Tensor) -> torch.Tensor:
            return distance(self.transition(summary.detach(), z, current.detach()), next_target)

        weight = self.latent.cost_weight
        z = self.latent.refine(posterior.code, posterior.std, prior, step_distance)
        fitted = step_distance(z) + weight * self.latent.cost(z, posterior.std, prior)
        default = self.latent.sample_prior(prior, generator=None, deterministic=True)
        unexplained = step_distance(default) + weight * self.latent.cost(default, prior.std, prior)
        return torch.minimum(fitted, unexplained)

    @torch.no_grad()
    def energy(
        self,
        context: torch.Tensor,
        future: torch.Tensor,
        *,
        reduction: str = "sum",
        actions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """F(context, future): context (B, C, 3, H, W), future (B, F, 3, H, W) -> (B,) (or (B, F) per step
        with reduction="none"). Lower means the model finds the future more plausible given the context.
        actions: (B, C + F - 1, A), required by (and only accepted by) an action-conditioned model."""
        context, future = self.prepare_frames(context), self.prepare_frames(future)
        if context.shape[0] != future.shape[0]:
            raise ValueError(f"context batch {context.shape[0]} != future batch {future.shape[0]}")
        frames = torch.cat([context, future], dim=1)
        per_step = self.energy_of_representations(
            self.encode(frames), self.encode_target(frames), context.shape[1], actions
        )
        if reduction == "none":
            return per_step
        if reduction == "sum":
            return per_step.sum(-1)
        raise ValueError(f"reduction must be 'sum' or 'none', got {reduction!r}")

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample_futures(
        self,
        context_frames: torch.Tensor,
        num_samples: int,
        horizon: int,
        *,
        generator: torch.Generator | None = None,
        deterministic: bool = False,
        actions: torch.Tensor | None = None,
    ) -> SampledFutures:
        """Sample `num_samples` futures of `horizon` steps per context, z drawn from the learned prior.

        context_frames: (B, C, 3, H, W) or (C, 3, H, W). Each sample's energy is the energy of its own predicted
        trajectory given the context (the posterior re-infers z from the predicted representations), so
        samples that needed unlikely z's under the prior rank worse. actions: (B, C + horizon - 1, A), the
        observed and planned actions, for an action-conditioned model.
        """
        if num_samples < 1 or horizon < 1:
            raise ValueError(f"num_samples and horizon must be >= 1, got {num_samples}, {horizon}")
        context = self.encode(context_frames)  # (B, C, D)
        batch, length, dim = context.shape
        repeated = context.repeat_interleave(num_samples, dim=0)  # (B*N, C, D)
        actions = self.prepare_actions(actions, batch, length + horizon - 1)
        if actions is not None:
            actions = actions.repeat_interleave(num_samples, dim=0)  # (B*N, C+H-1, A)
        target_context = self.encode_target(context_frames).repeat_interleave(num_samples, dim=0)
        predictions, latents = self.rollout(
            repeated, target_context, horizon, generator=generator, deterministic=deterministic,
            actions=actions,
        )
        inputs = torch.cat([repeated, predictions], dim=1)  # (B*N, C+H, D)
        targets = torch.cat([target_context, predictions], dim=1)
        energies = self.energy_of_representations(inputs, targets, length, actions).sum(-1)  # (B*N,)
        return SampledFutures(
            representations=predictions.reshape(batch, num_samples, horizon, dim),
            energies=energies.reshape(batch, num_samples),
            latents=latents.reshape(batch, num_samples, horizon, -1),
        )

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path, *, step: int | None = None) -> Path:
        """Write config.json + model.safetensors into `directory` (atomically, see worldmodel.serialization);
        step, if given, is recorded as the model's training step."""
        from .serialization import save_model

        return save_model(self, directory, step=step)

    @classmethod
    def load(cls, directory: str | Path, *, map_location: str | torch.device = "cpu") -> "WorldModel":
        """Rebuild a model saved with `save` (safetensors weights only; nothing is unpickled)."""
        from .serialization import load_model

        return load_model(cls, directory, map_location=map_location)


__all__ = ["WorldModel", "SampledFutures", "Gaussian", "distance"]
