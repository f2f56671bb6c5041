"""Causal transformer over past representations.

`PastEncoder` turns representations s_1..s_t into a summary h_t of everything up to t (causal attention, so h_t
never sees s_{t+1}). The next representation is then predicted from (h_t, z_t) by `TransitionHead`; the latent
z_t enters only there, so prior and posterior can both condition on the same h_t. A rollout feeds each prediction
back as the next input (see `WorldModel.rollout`).
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
    `change_inputs`, the change s_t - s_{t-1} is added too (see PredictorConfig.change_inputs).
    """

    def __init__(self, config: PredictorConfig, *, dim: int, action_dim: int = 0) -> None:
        super().__init__()
        self.max_len = config.max_len
        self.action_dim = action_dim
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
            # (B, T, D): the first input has no predecessor in the sequence, so its change is 0 (as in training).
            change = representations - torch.cat([representations[:, :1], representations[:, :-1]], dim=1)
            x = x + self.from_change(change)
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
        return self.norm(x)


class TransitionHead(nn.Module):
    """(h_t, z_t, base) -> predicted s̄_{t+1} as a residual on base = s̄_t (motion is a small change of a frame)."""

    def __init__(self, *, width: int, latent_dim: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(width + latent_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
            nn.Linear(hidden, dim),
        )

    def forward(self, summary: torch.Tensor, z: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        return current + self.net(torch.cat([summary, z], dim=-1))
