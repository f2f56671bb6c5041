"""Typed configuration of the world model, one dataclass per component.

Every field is documented where it is declared, so this file is the reference for what the model is.
The training side (`training/config.py`) nests `ModelConfig` inside its own run config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class EncoderConfig:
    """Convolutional frame encoder: (3, H, W) frame -> D-dim representation."""

    channels: tuple[int, ...] = (32, 64, 128, 128)
    """Output channels of each stride-2 conv stage; the image side must be divisible by 2**len(channels)."""
    dim: int = 128
    """D, the size of a frame's representation (what the predictor predicts)."""
    groups: int = 8
    """GroupNorm groups per conv stage (GroupNorm, not BatchNorm, so EMA targets and DDP need no buffer syncing)."""
    keypoints: int = 32
    """Channels read out as spatial-softmax keypoints (expected x, y and a presence score per channel, Levine et
    al. 2016) next to the flattened feature map; 0 disables them. Keypoint coordinates move linearly with the
    objects, which makes motion easy to extrapolate in representation space."""
    keypoint_passthrough: bool = True
    """Put the keypoints' coordinates (x and y of each, times `keypoint_scale`) into the representation as they are,
    as its first 2 * keypoints dimensions, with the linear projection of the flattened map and the presences
    filling the rest; False: one linear projection of everything. Passed through, positions are linear in the
    representation by construction, and the predictor, the energy and the VICReg terms act on them directly (mixed
    into one projection, they drowned in the much larger flattened map: a linear probe read ball positions from
    the keypoints with R2 0.51 and from the representation with 0.14). Needs dim > 2 * keypoints."""
    keypoint_scale: float = 2.0
    """Factor on the passed-through coordinates (in [-1, 1]), so that a keypoint sweeping the image has a std near
    the variance hinge's target_std of 1."""
    keypoint_stage: int = 1
    """Which conv stage's output the keypoints are read from (0 = the first, -1 = the last). An early stage has a
    fine map (image_size / 2**(stage + 1) per side), so an expected position is precise to a fraction of a pixel;
    the last stage's map is only 4x4 at 64x64 and quantises positions coarsely. Saved models that predate this
    field were built with -1 and load as such."""


@dataclass
class PredictorConfig:
    """Causal transformer over the past representations; its state at t summarises frames <= t."""

    width: int = 192
    """Hidden size of the transformer."""
    depth: int = 3
    """Number of transformer blocks."""
    heads: int = 4
    """Attention heads (width must be divisible by heads)."""
    max_len: int = 32
    """Longest sequence (context + rollout) the learned positional embedding supports."""
    mlp_ratio: float = 4.0
    """Hidden size of each block's MLP as a multiple of width."""
    dropout: float = 0.0
    """Dropout inside attention and MLPs during training."""
    change_inputs: bool = True
    """Also feed each input's change since the previous input (s_t - s_{t-1}; 0 for the first input of a sequence)
    into its token, through a linear map of its own. Motion is then a linear function of the token rather than
    something attention has to compute from two tokens: with frames alone, a 2,000-step small model predicted
    the next target representation worse than extrapolating the last two at constant velocity did (0.0101 vs
    0.0069 per dim). Saved models that predate this field were built without it and load as such."""
    trend_frames: int = 0
    """Where the transition starts from: the last representation plus its least-squares trend over the last
    `trend_frames` representations (inertia: what keeps moving keeps moving), so the learned residual f(h_t, z_t)
    only says what changes that (a bounce, a kick, a fork's way). 0 or 1: the last representation alone (saved
    models that predate this field were built so). Measured on a trained small encoder: extrapolating the
    representation by its 4-frame trend put straight-moving balls 0.021 from their true position at h = 10 (the
    learned transition without it: 0.27; copy-last 0.28)."""
    keypoint_dynamics: bool = False
    """Move the encoder's passed-through keypoint coordinates (the first 2K representation dimensions) with one
    small MLP shared by all K keypoints, instead of with the transition's MLP over the whole summary. Each keypoint's
    next step is computed from its own position, its last two moves (read from the predictor's inputs), a learned
    identity and a projection of the summary and z (what the other balls, walls and the fork say). The same rule of
    motion is then learned from every keypoint at once, rather than once per keypoint. Needs
    model.encoder.keypoints > 0 with keypoint_passthrough=true. The summary the prior, posterior and transition read
    grows by the 4K move features."""


@dataclass
class LatentConfig:
    """The latent z_t that carries what the past cannot determine about frame t+1.

    Three capacity regimes:
    - `mixture`: z is one of `classes` discrete values, each a component of a Gaussian mixture over the next
      representation with a learned per-dimension std (worldmodel/likelihood.py). There is no posterior network:
      the posterior over the K components is computed exactly from the likelihood, the loss is the mixture's
      negative log-likelihood, and z can carry at most log K nats per step by construction.
    - `kl`: Gaussian posterior q(z | past, next target) and learned prior p(z | past); the capacity cost is
      KL(q || p) in nats, floored at `free_bits` per step or on the batch mean (`free_bits_scope`; below the
      floor z is free, so it is not squeezed to nothing).
    - `sparse`: deterministic z from an amortised encoder, projected into an L2 ball of radius `max_norm`, with an L1
      penalty; at inference z is refined by a few projected gradient steps on the energy (LeCun's latent-variable
      EBM). A Gaussian prior is fitted to the (detached) posterior codes only so that futures can be sampled.
    """

    capacity: Literal["mixture", "kl", "sparse"] = "kl"
    """Which capacity regime limits z (see the class docstring)."""
    dim: int = 8
    """Size of z_t: its dimensions (Gaussian), or its number of categorical groups (categorical)."""
    distribution: Literal["gaussian", "categorical"] = "gaussian"
    """kl: the family of z. `gaussian`: a diagonal Gaussian of `dim` dimensions. `categorical`: `dim` groups of
    one-hot codes over `classes` values each (z has dim * classes entries, trained with straight-through gradients):
    a fork that goes one of k ways is one class drawn, so prior samples land on a way, never between ways (a
    Gaussian z must be bent into a step by the transition first; until then its samples fill the gap). At 800
    small-preset steps it did not beat the Gaussian (README, "Numbers")."""
    classes: int = 8
    """categorical: values each group of z can take. mixture: K, the number of components (z's values)."""
    keypoint_mixture: bool = True
    """mixture, with passthrough keypoints (model.encoder.keypoint_passthrough): the components differ only in how
    the keypoint coordinates (the first 2K dims) move. Component 0 is "nothing happens": the keypoints stay exactly
    on their trend (model.predictor.trend_frames); the others learn what can happen instead (a bounce, a collision,
    a kick). The other dimensions are predicted once for all components (the mean of the K heads), so they cancel
    out of the responsibilities. Measured (docs/experiments/2026-12-08-calibrated-scales.md): with every dimension
    in the mixture, the 32 appearance dims (smaller std, not linear in position) decided the responsibilities, the
    learned components all damped the keypoints' trend on quiet steps (error 0.0032 against the trend's 0.0018),
    and a rollout compounds that into a lag. No effect without passthrough keypoints."""
    min_std: float = 0.02
    """mixture: floor of the learned per-dimension std of the prediction error (representations have std ~1 per
    dimension). A dimension that training found perfectly predictable cannot make the energy of a slightly
    different frame explode."""
    hidden: int = 192
    """Hidden size of the prior/posterior MLPs."""
    free_bits: float = 0.5
    """kl: nats per step below which the KL is not penalised (Kingma et al. 2016, 'free bits'); see
    `free_bits_scope` for what the floor applies to."""
    free_bits_scope: Literal["step", "batch"] = "step"
    """kl: `step` floors each step's KL at `free_bits`, so every step may carry up to that many nats for nothing.
    `batch` floors the mean over the batch's steps instead: a budget of `free_bits` nats per step on average, free
    while the mean stays under it and above it charged to every step alike, so z keeps the nats that buy the most
    error and spends them where the past cannot tell (a bounce's fork) rather than a little on every step."""
    kl_weight: float = 0.05
    """kl: weight of the (floored) KL in the loss and in the energy."""
    l1_weight: float = 0.01
    """sparse: weight of |z|_1 in the loss and in the energy."""
    max_norm: float = 3.0
    """sparse: z is projected into the L2 ball of this radius."""
    infer_steps: int = 0
    """Gradient steps refining z when computing the energy (0: amortised posterior only; sparse mode uses >= 1)."""
    infer_lr: float = 0.1
    """Step size of that refinement."""
    posterior_input: Literal["target", "innovation", "scaled_innovation"] = "innovation"
    """What the posterior is shown of the next frame besides the past summary h_t. `innovation`: the next target
    representation minus the prior mean's prediction of it (what the past did not predict, the only thing z
    should carry), so the posterior need not first learn to subtract the predictable part. `scaled_innovation`:
    the same vector divided by its RMS, beside the log of that RMS: a trained predictor's innovation is about a
    tenth of h_t's scale (RMS 0.09 against 0.9 on the small preset), so the posterior's first layer barely hears
    it; scaled, its pattern arrives at unit size and its size as one number. `target`: the next target
    representation itself (saved models that predate this field were built so, and load as such)."""

    @property
    def sees_innovation(self) -> bool:
        """The posterior is shown the innovation (scaled or not), so it needs the prior mean's prediction."""
        return self.posterior_input != "target"

    @property
    def mixture(self) -> bool:
        """z picks one component of a mixture likelihood (exact posterior, no KL)."""
        return self.capacity == "mixture"

    @property
    def categorical(self) -> bool:
        """z is one-hot codes: the mixture's component, or a categorical z under the kl capacity."""
        return self.mixture or (self.capacity == "kl" and self.distribution == "categorical")

    @property
    def groups(self) -> int:
        """Independent one-hot groups of a categorical z (a mixture has one: its component)."""
        return 1 if self.mixture else self.dim

    @property
    def code_size(self) -> int:
        """Entries of one step's z as the transition sees it: dim, or groups * classes when categorical."""
        return self.groups * self.classes if self.categorical else self.dim


@dataclass
class RegularizerConfig:
    """VICReg-style anti-collapse terms on the online encoder's representations (Bardes et al. 2022)."""

    variance_weight: float = 1.0
    """Weight of the hinge pushing every dimension's std above `target_std`."""
    covariance_weight: float = 0.04
    """Weight of the squared off-diagonal covariance (decorrelates dimensions)."""
    temporal_weight: float = 2.0
    """Weight of the time-similarity term mean ||s_{t+1} - s_t||^2 / D on online representations (as in PLDM,
    Sobal et al. 2025). The targets get no gradient, so without it nothing stops the encoder from filling its
    variance budget with features that jump between consecutive frames, which no predictor can extrapolate."""
    acceleration_weight: float = 0.0
    """Weight of mean ||s_{t+1} - 2 s_t + s_{t-1}||^2 / D on online representations (0: off). The temporal term
    makes features slow; this one makes their changes persist, as a ball's moves do between bounces. A one-step
    predictor fitted by squared error scales the last change by about the lag-1 autocorrelation of the changes, and
    an open-loop rollout compounds that factor, so features whose changes flicker make rollouts lag."""
    target_std: float = 1.0
    """The per-dimension std the variance hinge asks for."""


@dataclass
class DecoderConfig:
    """Pixel decoder used only to look at predictions; trained on detached target representations."""

    channels: tuple[int, ...] = (128, 64, 32, 32)
    """Channels of each upsampling stage (same count as the encoder's stages, mirrored)."""
    weight: float = 1.0
    """Weight of the pixel MSE in the total loss (its gradient never reaches the encoder)."""
    train_frames: int = 2
    """Frames per window the decoder is trained on at each step, picked at random (0: every frame). Decoding is
    the most expensive part of a CPU step (a small-preset window of 8 frames: 0.87 s of ~1.5 s); a frame or two per
    window gives the decoder the same frames over a run, and it never shapes the representation anyway."""


@dataclass
class ModelConfig:
    """The whole world model."""

    image_size: int = 64
    """Frames are square image_size x image_size RGB; data sources resize to this."""
    context_frames: int = 4
    """Observed frames before the open-loop rollout in the training loss (and the default context for sampling)."""
    target: Literal["ema", "shared"] = "ema"
    """Where target representations come from: an EMA copy of the encoder, or the encoder itself (stop-gradient)."""
    ema_decay: float = 0.99
    """EMA decay of the target encoder per optimizer step."""
    action_dim: int = 0
    """Size of the action vector a_t that conditions the prediction of frame t+1 (0: no actions). With actions,
    batches carry "actions" (B, T, A) floats, actions[:, t] being what was done after frame t."""
    prediction_weight: float = 1.0
    """Weight of the teacher-forced one-step prediction error."""
    rollout_weight: float = 0.5
    """Weight of the open-loop prediction error (predictions fed back as inputs) after `context_frames`."""
    rollout_latent: Literal["closed_loop", "prior_mean", "both", "teacher_forced"] = "closed_loop"
    """Where the z of each step of the training rollout comes from. `closed_loop`: the posterior given the
    rollout's own summary h_k (what the model knows k steps into its own prediction) and the true next target, its
    capacity charged against the prior of that summary, so that z pays for whatever it corrects. `teacher_forced`:
    the codes of the teacher-forced posterior, whose summaries read the true frames; the z's then carry the true
    state into the rollout for free, and the deterministic rollout, which has no such channel, drifts (the
    behaviour before this field existed; saved models without it load as such). `prior_mean`: z at the prior's
    mean (for the mixture: its most likely component), so the rollout term trains the deterministic rollout itself
    (and z gets no say in the open loop). For the mixture every step of either path is charged the true target's
    full mixture likelihood, so the prior learns which component explains the truth at the states that path
    reaches; `both` (mixture only) runs each path once and averages them."""
    best_of_weight: float = 0.0
    """Weight of the best-of-N open-loop error with z drawn from the prior: `best_of_samples` rollouts from the
    context, each step's z sampled from p(z | h_t) (reparameterised), and only the closest one to the true future
    is penalised (the multiple-choice / best-of-many objective, Bhattacharyya et al. 2018). The posterior path
    alone teaches the prior to match posterior codes that carry little at a fork (the KL is cheaper to save than
    the fork's small one-step error); this term asks directly that some prior sample land on every future that
    happens, which is what best-of-N error and mode coverage measure. 0 disables it. Off by default: at 800
    small-preset steps, weight 4 raised mode coverage from 0.13 to 0.20 but cut VoE accuracy (README, "Numbers")."""
    best_of_samples: int = 8
    """N, the prior samples per training window of that term (it costs N extra rollouts of the predictor)."""
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    """Frame encoder."""
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    """Causal predictor."""
    latent: LatentConfig = field(default_factory=LatentConfig)
    """Latent variable z and its capacity limit."""
    regularizer: RegularizerConfig = field(default_factory=RegularizerConfig)
    """Anti-collapse regularisation."""
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    """Pixel decoder for visualisation."""

    def validate(self) -> None:
        """Cross-field checks; raises ValueError naming the field."""
        stages = len(self.encoder.channels)
        if self.rollout_latent == "both" and not self.latent.mixture:
            raise ValueError("model.rollout_latent=both needs model.latent.capacity=mixture (two paths of components)")
        if self.image_size % (2**stages) != 0:
            raise ValueError(
                f"model.image_size={self.image_size} must be divisible by 2**len(model.encoder.channels)={2**stages}"
            )
        if len(self.decoder.channels) != stages:
            raise ValueError(
                f"model.decoder.channels has {len(self.decoder.channels)} stages, expected {stages} "
                "(one per encoder stage)"
            )
        if self.predictor.width % self.predictor.heads != 0:
            raise ValueError(
                f"model.predictor.width={self.predictor.width} must be divisible by "
                f"model.predictor.heads={self.predictor.heads}"
            )
        for name, channels in (("encoder", self.encoder.channels),):
            for c in channels:
                if c % self.encoder.groups != 0:
                    raise ValueError(
                        f"model.{name}.channels={channels}: each must be divisible by model.encoder.groups="
                        f"{self.encoder.groups}"
                    )
        if self.encoder.keypoint_passthrough and self.encoder.keypoints > 0 \
                and self.encoder.dim <= 2 * self.encoder.keypoints:
            raise ValueError(
                f"model.encoder.dim={self.encoder.dim} must be > 2 * model.encoder.keypoints="
                f"{2 * self.encoder.keypoints} with model.encoder.keypoint_passthrough=true (the coordinates take "
                "2 dimensions per keypoint); lower keypoints or set keypoint_passthrough=false"
            )
        if self.predictor.keypoint_dynamics and not (self.encoder.keypoints > 0 and self.encoder.keypoint_passthrough):
            raise ValueError(
                "model.predictor.keypoint_dynamics=true moves the passed-through keypoint coordinates: it needs "
                f"model.encoder.keypoints > 0 (got {self.encoder.keypoints}) and model.encoder.keypoint_passthrough="
                f"true (got {str(self.encoder.keypoint_passthrough).lower()})"
            )
        if not -stages <= self.encoder.keypoint_stage < stages:
            raise ValueError(
                f"model.encoder.keypoint_stage={self.encoder.keypoint_stage} must index one of the {stages} conv "
                f"stages (0..{stages - 1}, or negative from the end)"
            )
        if self.decoder.train_frames < 0:
            raise ValueError(
                f"model.decoder.train_frames must be >= 0 (0: every frame), got {self.decoder.train_frames}"
            )
        if self.predictor.trend_frames < 0:
            raise ValueError(f"model.predictor.trend_frames must be >= 0, got {self.predictor.trend_frames}")
        if self.context_frames < 1:
            raise ValueError(f"model.context_frames must be >= 1, got {self.context_frames}")
        if self.context_frames >= self.predictor.max_len:
            raise ValueError(
                f"model.context_frames={self.context_frames} must be < model.predictor.max_len="
                f"{self.predictor.max_len}"
            )
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"model.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.best_of_weight < 0 or self.best_of_samples < 1:
            raise ValueError(f"model.best_of_weight must be >= 0 and model.best_of_samples >= 1, got "
                             f"{self.best_of_weight}, {self.best_of_samples}")
        if self.action_dim < 0:
            raise ValueError(f"model.action_dim must be >= 0, got {self.action_dim}")
        if self.latent.dim < 1:
            raise ValueError(f"model.latent.dim must be >= 1, got {self.latent.dim}")
        if self.latent.categorical and self.latent.classes < 2:
            raise ValueError(f"model.latent.classes must be >= 2 for a categorical z, got {self.latent.classes}")
        if self.latent.categorical and self.latent.infer_steps > 0:
            raise ValueError("model.latent.infer_steps must be 0 with a one-hot z (model.latent.capacity=mixture or "
                             "distribution=categorical): a one-hot code has no gradient steps to refine it")
        if self.latent.mixture and not 0 < self.latent.min_std < 0.3:
            raise ValueError(f"model.latent.min_std must be in (0, 0.3), got {self.latent.min_std}")
        if self.latent.capacity == "sparse" and self.latent.max_norm <= 0:
            raise ValueError(f"model.latent.max_norm must be > 0, got {self.latent.max_norm}")
        if self.latent.free_bits < 0:
            raise ValueError(f"model.latent.free_bits must be >= 0, got {self.latent.free_bits}")
