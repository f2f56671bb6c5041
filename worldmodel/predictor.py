"""Causal transformer over past representations.

`PastEncoder` turns representations s_1..s_t into a summary h_t of everything up to t (causal attention, so h_t
never sees s_{t+1}). The next representation is then predicted from (h_t, z_t) by `TransitionHead`; the latent
z_t enters only there, so prior and posterior can both condition on the same h_t. A rollout feeds each prediction
back as the next input (see `WorldModel.rollout`).

With `PredictorConfig.keypoint_dynamics`, h_t also carries each keypoint's last two moves (raw, appended after
the transformer's state), and `TransitionHead` moves every keypoint with one MLP shared by all of them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .config import PredictorConfig


class CausalSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.to_qkv = nn.Linear(width, 3 * width)
        self.to_out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = rearrange(self.to_qkv(x), "b t (three h d) -> three b h t d", three=3, h=self.heads)
        out = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )  # (B, heads, T, head_dim)
        return self.to_out(rearrange(out, "b h t d -> b t (h d)"))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, config: PredictorConfig) -> None:
        super().__init__()
        hidden = int(config.width * config.mlp_ratio)
        self.norm_attention = nn.LayerNorm(config.width)
        self.attention = CausalSelfAttention(config.width, config.heads, config.dropout)
        self.norm_mlp = nn.LayerNorm(config.width)
        self.mlp = nn.Sequential(
            nn.Linear(config.width, hidden), nn.GELU(), nn.Linear(hidden, config.width), nn.Dropout(config.dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm_attention(x))
        return x + self.mlp(self.norm_mlp(x))


class PastEncoder(nn.Module):
    """(B, T, D) representations [+ (B, T, A) actions] -> (B, T, width) causal summaries h_t.

    The action a_t taken after frame t is added to token t, so h_t (and with it the prior, the posterior and the
    transition to t+1) knows what was done; frames alone cannot tell a pushed cart from a coasting one. With
    `change_inputs`, the change s_t - s_{t-1} is added too (see PredictorConfig.change_inputs). With `keypoints`
    K > 0 (keypoint_dynamics), the output is (B, T, width + 4K): the last 4K are the moves of each keypoint's
    coordinates into t and into t-1, read from the inputs (0 where the sequence has no earlier input).
    """

    def __init__(self, config: PredictorConfig, *, dim: int, action_dim: int = 0, keypoints: int = 0) -> None:
        super().__init__()
        self.max_len = config.max_len
        self.action_dim = action_dim
        self.keypoints = keypoints
        self.out_width = config.width + 4 * keypoints
        self.to_width = nn.Linear(dim, config.width)
        self.from_change = nn.Linear(dim, config.width) if config.change_inputs else None
        self.from_action = nn.Linear(action_dim, config.width) if action_dim > 0 else None
        self.position = nn.Parameter(torch.zeros(config.max_len, config.width))
        nn.init.normal_(self.position, std=0.02)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.width)

    def forward(self, representations: torch.Tensor, actions: torch.Tensor | None = None) -> torch.Tensor:
        length = representations.shape[1]
        if length > self.max_len:
            raise ValueError(
                f"sequence of {length} frames is longer than model.predictor.max_len={self.max_len}; "
                "use a shorter context + horizon or a model with a larger max_len"
            )
        x = self.to_width(representations) + self.position[:length]
        if self.from_change is not None:
            x = x + self.from_change(change_since_previous(representations))
        if self.from_action is not None:
            if actions is None or actions.shape[:2] != representations.shape[:2]:
                shape = None if actions is None else tuple(actions.shape)
                raise ValueError(
                    f"this model is action-conditioned (model.action_dim={self.action_dim}): actions must be laid "
                    f"out {(*representations.shape[:2], self.action_dim)} (batch, time, action), got {shape}"
                )
            x = x + self.from_action(actions.to(x.dtype))
        for block in self.blocks:
            x = block(x)
        summary = self.norm(x)
        if self.keypoints == 0:
            return summary
        return torch.cat([summary, keypoint_moves(representations, self.keypoints).to(summary.dtype)], dim=-1)


def change_since_previous(sequence: torch.Tensor) -> torch.Tensor:
    """(B, T, ...) -> (B, T, ...): x_t - x_{t-1}; the first input has no predecessor in the sequence, so its change
    is 0 (as in training)."""
    return sequence - torch.cat([sequence[:, :1], sequence[:, :-1]], dim=1)


def keypoint_moves(representations: torch.Tensor, keypoints: int) -> torch.Tensor:
    """(B, T, D) inputs whose first 2K dims are keypoint coordinates -> (B, T, 4K): per keypoint, its move into t
    and its move into t-1 (x, y each), 0 where the sequence does not reach back that far."""
    last = change_since_previous(rearrange(representations[..., : 2 * keypoints], "b t (k xy) -> b t k xy", xy=2))
    before = torch.cat([torch.zeros_like(last[:, :1]), last[:, :-1]], dim=1)  # (B, T, K, 2): the move into t-1
    return rearrange(torch.stack([last, before], dim=-2), "b t k two xy -> b t (k two xy)")


class TransitionHead(nn.Module):
    """(h_t, z_t, base) -> predicted s̄_{t+1} as a residual on base = s̄_t (motion is a small change of a frame).

    With `keypoints` K > 0 the first 2K dims (keypoint coordinates) move by `KeypointMotion` and the MLP over the
    summary predicts only the other D - 2K; h_t is then (..., width + 4K) as `PastEncoder` makes it."""

    def __init__(self, *, width: int, latent_dim: int, dim: int, hidden: int, keypoints: int = 0) -> None:
        super().__init__()
        self.width, self.keypoints = width, keypoints
        self.net = nn.Sequential(
            nn.Linear(width + 4 * keypoints + latent_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
            nn.Linear(hidden, dim - 2 * keypoints),
        )
        self.motion = KeypointMotion(keypoints, width + latent_dim, hidden) if keypoints > 0 else None

    def forward(self, summary: torch.Tensor, z: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        change = self.net(torch.cat([summary, z], dim=-1))
        if self.motion is None:
            return current + change
        state, moves = summary.split([self.width, 4 * self.keypoints], dim=-1)  # h_t itself, the keypoints' moves
        moved = self.motion(current[..., : 2 * self.keypoints], moves, torch.cat([state, z], dim=-1))
        return current + torch.cat([moved.to(change.dtype), change], dim=-1)


class KeypointMotion(nn.Module):
    """Each keypoint's next move from its position, its last two moves, a learned identity and a shared context,
    by one MLP for all keypoints: (..., 2K) coordinates, (..., 4K) moves, (..., C) context -> (..., 2K) move."""

    IDENTITY = 8
    CONTEXT = 32

    def __init__(self, keypoints: int, context: int, hidden: int) -> None:
        super().__init__()
        self.keypoints = keypoints
        self.identity = nn.Parameter(torch.randn(keypoints, self.IDENTITY) * 0.1)
        self.from_context = nn.Linear(context, self.CONTEXT)
        self.net = nn.Sequential(
            nn.Linear(2 + 4 + self.IDENTITY + self.CONTEXT, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
            nn.Linear(hidden, 2),
        )

    def forward(self, coordinates: torch.Tensor, moves: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        k = self.keypoints
        shared = self.from_context(context)  # (..., CONTEXT)
        tokens = torch.cat([
            rearrange(coordinates, "... (k xy) -> ... k xy", k=k),
            rearrange(moves, "... (k four) -> ... k four", k=k),
            self.identity.expand(*coordinates.shape[:-1], k, self.IDENTITY),
            shared.unsqueeze(-2).expand(*shared.shape[:-1], k, self.CONTEXT),
        ], dim=-1)  # (..., K, 2 + 4 + IDENTITY + CONTEXT)
        return rearrange(self.net(tokens), "... k xy -> ... (k xy)")


def least_squares_slope(window: torch.Tensor) -> torch.Tensor:
    """(..., n, D) points at equal time steps -> (..., D) slope of the least-squares line through them (0 if n = 1)."""
    n = window.shape[-2]
    if n < 2:
        return torch.zeros_like(window[..., 0, :])
    tau = torch.arange(n, device=window.device, dtype=window.dtype) - (n - 1) / 2  # centred times
    return (tau[:, None] * window).sum(-2) / tau.pow(2).sum()


def extrapolated(history: torch.Tensor, frames: int) -> torch.Tensor:
    """(B, T, D) -> (B, T, D): each x_t plus the least-squares slope of x over its last min(frames, t + 1) points,
    i.e. where x goes next if it keeps moving as it has (the transition's starting point: see
    PredictorConfig.trend_frames). frames < 2: x_t itself."""
    if frames < 2:
        return history
    length = history.shape[1]
    slopes = torch.zeros_like(history)
    for n in range(2, min(frames, length) + 1):
        windows = rearrange(history.unfold(1, n, 1), "b t d n -> b t n d")  # (B, T - n + 1, n, D)
        slope = least_squares_slope(windows)  # the line through the n points ending at t = n - 1 + index
        if n < frames:
            slopes[:, n - 1] = slope[:, 0]  # only position n - 1 has exactly n points behind it
        else:
            slopes[:, n - 1 :] = slope  # every later position uses the last `frames` points
    return history + slopes


def extrapolated_last(history: torch.Tensor, frames: int) -> torch.Tensor:
    """(B, T, D) -> (B, D): `extrapolated` at the last time step only."""
    if frames < 2:
        return history[:, -1]
    window = history[:, -frames:]
    return window[:, -1] + least_squares_slope(window)
