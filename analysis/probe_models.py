"""Readout models for probing frozen features: ridge regression (closed form), multinomial logistic regression
(full-batch L-BFGS in torch) and a small MLP, each with its regularisation picked on a held-out validation split.

Targets may have several slots (one per ball) that are present or absent row by row, so every target comes with a
mask: regression targets are (n, k) with an (n, k) mask, classification targets are (n, s) labels with an (n, s)
mask, one independent head per slot. Features are standardised with training statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .metrics import balanced_accuracy, r2_score

RIDGE_ALPHAS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
"""Ridge penalties tried, as multiples of the number of training rows (features are standardised)."""
LOGISTIC_DECAYS = (1e-4, 1e-3, 1e-2)
"""L2 penalties tried for the logistic probe."""


@dataclass
class Split:
    """Features and a target for one split. values: (n, k) float (regression) or (n, s) int (classification)."""

    features: np.ndarray
    values: np.ndarray
    mask: np.ndarray


class Standardizer:
    """Per-feature z-scoring with statistics of the training rows.

    The std is floored at 1% of the average one: a pixel that a ball covers in three training frames would otherwise
    become a feature of enormous values, fitted to noise.
    """

    def __init__(self, x: np.ndarray) -> None:
        self.mean = x.mean(0)
        std = x.std(0)
        self.std = np.maximum(std, 0.01 * std.mean() + 1e-12)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std


def score(kind: str, prediction: np.ndarray, split: Split) -> float:
    """R2 (regression, averaged over columns) or balanced accuracy (classification, averaged over slots)."""
    if kind == "regression":
        return r2_score(prediction, split.values, split.mask)
    scores = [balanced_accuracy(prediction[split.mask[:, j], j], split.values[split.mask[:, j], j])
              for j in range(split.values.shape[1]) if split.mask[:, j].any()]
    return float(np.mean(scores)) if scores else float("nan")


# --------------------------------------------------------------------------------------------------- ridge


class RidgeProbe:
    """Closed-form ridge per group of columns that share a mask; the penalty chosen on validation R2.

    Each group is centred on its own rows (so the intercept is not penalised) and solved through one
    eigendecomposition of the smaller Gram matrix (features x features, or rows x rows when there are more features
    than rows, e.g. the pixel control), which then serves every penalty.
    """

    def __init__(self, train: Split, val: Split) -> None:
        self.scale = Standardizer(train.features)
        x, xv = self.scale(train.features), self.scale(val.features)
        k = train.values.shape[1]
        self.weights = np.zeros((x.shape[1], k))
        self.intercept = np.zeros(k)
        self.alphas = np.zeros(k)
        groups: dict[bytes, list[int]] = {}
        for j in range(k):
            groups.setdefault(np.packbits(train.mask[:, j]).tobytes(), []).append(j)
        for columns in groups.values():
            rows = train.mask[:, columns[0]]
            n = int(rows.sum())
            if n < 2:
                continue
            x_mean, y_mean = x[rows].mean(0), train.values[rows][:, columns].mean(0)
            xc, yc = x[rows] - x_mean, train.values[rows][:, columns] - y_mean
            solve = _ridge_solver(xc, yc)
            best: tuple[float, np.ndarray | None, float] = (-np.inf, None, 0.0)
            for alpha in RIDGE_ALPHAS:
                w = solve(alpha * n)
                val_score = r2_score((xv - x_mean) @ w + y_mean, val.values[:, columns], val.mask[:, columns])
                val_score = -np.inf if np.isnan(val_score) else val_score
                if best[1] is None or val_score > best[0]:
                    best = (val_score, w, alpha)
            self.weights[:, columns] = best[1]
            self.intercept[columns] = y_mean - x_mean @ best[1]
            self.alphas[columns] = best[2]

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self.scale(features) @ self.weights + self.intercept


def _ridge_solver(x: np.ndarray, y: np.ndarray):
    """penalty -> argmin_w |xw - y|^2 + penalty |w|^2, sharing one eigendecomposition across penalties."""
    n, d = x.shape
    if d <= n:
        evals, evecs = np.linalg.eigh(x.T @ x)
        projected = evecs.T @ (x.T @ y)
        return lambda penalty: evecs @ (projected / (evals + penalty)[:, None])
    # Dual form: w = X' (XX' + penalty I)^-1 y.
    evals, evecs = np.linalg.eigh(x @ x.T)
    projected = evecs.T @ y
    return lambda penalty: x.T @ (evecs @ (projected / (evals + penalty)[:, None]))


# --------------------------------------------------------------------------------------------------- logistic


def _class_weights(labels: np.ndarray, mask: np.ndarray, num_classes: int) -> torch.Tensor:
    """(s, C) inverse-frequency weights per slot, so the loss targets balanced accuracy."""
    weights = np.zeros((labels.shape[1], num_classes))
    for j in range(labels.shape[1]):
        counts = np.bincount(labels[mask[:, j], j], minlength=num_classes).astype(np.float64)
        present = counts > 0
        weights[j, present] = counts[present].sum() / (present.sum() * counts[present])
    return torch.as_tensor(weights, dtype=torch.float32)


def _masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
                          weights: torch.Tensor) -> torch.Tensor:
    """logits (n, s, C); labels, mask (n, s); weights (s, C): class-weighted mean over valid entries."""
    logp = logits.log_softmax(-1)
    picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1))[..., 0]  # (n, s)
    w = weights.gather(1, labels.clamp(min=0).T).T * mask  # (n, s)
    return -(w * picked).sum() / w.sum().clamp(min=1e-8)


class LogisticProbe:
    """Multinomial logistic regression, one head per slot, L-BFGS; the L2 penalty chosen on validation balanced
    accuracy."""

    @torch.enable_grad()
    def __init__(self, train: Split, val: Split, num_classes: int, *, max_iter: int = 100) -> None:
        self.scale = Standardizer(train.features)
        self.num_classes = num_classes
        x = torch.as_tensor(self.scale(train.features), dtype=torch.float32)
        y = torch.as_tensor(train.values, dtype=torch.int64)
        m = torch.as_tensor(train.mask, dtype=torch.float32)
        weights = _class_weights(train.values, train.mask, num_classes)
        slots = train.values.shape[1]
        self.layer = nn.Linear(x.shape[1], slots * num_classes)
        nn.init.zeros_(self.layer.weight)
        nn.init.zeros_(self.layer.bias)
        best: tuple[float, dict | None] = (-np.inf, None)
        # Strongest penalty first, each fit warm-started from the previous one: the path is cheap to follow.
        for decay in sorted(LOGISTIC_DECAYS, reverse=True):
            optimizer = torch.optim.LBFGS(self.layer.parameters(), lr=1.0, max_iter=max_iter, history_size=10,
                                          tolerance_grad=1e-5, tolerance_change=1e-7, line_search_fn="strong_wolfe")

            def closure(decay: float = decay) -> torch.Tensor:
                optimizer.zero_grad()
                logits = self.layer(x).reshape(-1, slots, num_classes)
                loss = _masked_cross_entropy(logits, y, m, weights) + decay * self.layer.weight.pow(2).sum()
                loss.backward()
                return loss

            optimizer.step(closure)
            val_score = score("classification", self.predict(val.features), val)
            if best[1] is None or val_score > best[0]:
                best = (val_score, {k: v.clone() for k, v in self.layer.state_dict().items()})
        self.layer.load_state_dict(best[1])

    @torch.no_grad()
    def predict(self, features: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(self.scale(features), dtype=torch.float32)
        logits = self.layer(x).reshape(x.shape[0], -1, self.num_classes)
        return logits.argmax(-1).numpy()

    @torch.no_grad()
    def probabilities(self, features: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(self.scale(features), dtype=torch.float32)
        return self.layer(x).reshape(x.shape[0], -1, self.num_classes).softmax(-1).numpy()


# --------------------------------------------------------------------------------------------------- MLP


class _LinearPlusMLP(nn.Module):
    """A linear readout plus a one-hidden-layer GELU correction. For regression the linear part starts as the ridge
    solution and the correction at zero, so the probe starts as the linear probe and early stopping on validation
    keeps it unless the MLP really adds something. A plain MLP has to rebuild even a linear target (a velocity is
    the difference of two positions) from its hidden units, and with the epochs it gets it did so poorly: R2 -0.27
    on velocity from the true positions, where ridge gets 1.0."""

    def __init__(self, features: int, hidden: int, outputs: int) -> None:
        super().__init__()
        self.linear = nn.Linear(features, outputs)
        self.mlp = nn.Sequential(nn.Linear(features, hidden), nn.GELU(), nn.Linear(hidden, outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.mlp(x)


class MLPProbe:
    """One hidden layer (GELU) trained with AdamW; validation is scored every 10 epochs, the best weights are kept and
    training stops after `patience` checks without improvement."""

    @torch.enable_grad()
    def __init__(self, train: Split, val: Split, kind: str, num_classes: int = 0, *, hidden: int = 256,
                 epochs: int = 150, lr: float = 2e-3, batch_size: int = 256, patience: int = 4,
                 seed: int = 0) -> None:
        self.kind, self.num_classes = kind, num_classes
        self.scale = Standardizer(train.features)
        generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        x = torch.as_tensor(self.scale(train.features), dtype=torch.float32)
        m = torch.as_tensor(train.mask, dtype=torch.float32)
        slots = train.values.shape[1]
        if kind == "regression":
            # Column statistics over the rows where each column exists (a colour absent from training gets 0 / 1).
            counts = np.maximum(train.mask.sum(0), 1)
            self.y_mean = (train.values * train.mask).sum(0) / counts
            variance = (((train.values - self.y_mean) * train.mask) ** 2).sum(0) / counts
            self.y_std = np.where(variance > 1e-16, np.sqrt(variance), 1.0)
            y = torch.as_tensor(np.nan_to_num((train.values - self.y_mean) / self.y_std), dtype=torch.float32)
            outputs = slots
        else:
            y = torch.as_tensor(train.values, dtype=torch.int64)
            weights = _class_weights(train.values, train.mask, num_classes)
            outputs = slots * num_classes
        self.net = _LinearPlusMLP(x.shape[1], hidden, outputs)
        best, stale = (-np.inf, None), 0
        if kind == "regression":
            ridge = RidgeProbe(train, val)  # same feature standardisation (both use the training rows)
            with torch.no_grad():
                # ridge: y = x_s @ W + b; here in standardised target units: (y - mean) / std.
                self.net.linear.weight.copy_(torch.as_tensor((ridge.weights / self.y_std).T, dtype=torch.float32))
                self.net.linear.bias.copy_(torch.as_tensor((ridge.intercept - self.y_mean) / self.y_std,
                                                           dtype=torch.float32))
                self.net.mlp[-1].weight.zero_()
                self.net.mlp[-1].bias.zero_()
            best = (score(kind, self.predict(val.features), val),
                    {k: v.clone() for k, v in self.net.state_dict().items()})
        optimizer = torch.optim.AdamW(self.net.parameters(), lr=lr, weight_decay=1e-3)
        for epoch in range(epochs):
            self.net.train()
            order = torch.randperm(x.shape[0], generator=generator)
            for start in range(0, x.shape[0], batch_size):
                idx = order[start : start + batch_size]
                out = self.net(x[idx])
                if kind == "regression":
                    loss = ((out - y[idx]) ** 2 * m[idx]).sum() / m[idx].sum().clamp(min=1.0)
                else:
                    loss = _masked_cross_entropy(out.reshape(-1, slots, num_classes), y[idx], m[idx], weights)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            if epoch % 10 == 9 or epoch == epochs - 1:
                val_score = score(kind, self.predict(val.features), val)
                if best[1] is None or val_score > best[0]:
                    best = (val_score, {k: v.clone() for k, v in self.net.state_dict().items()})
                    stale = 0
                else:
                    stale += 1
                    if stale >= patience:  # no better validation score for `patience` checks in a row
                        break
        self.net.load_state_dict(best[1])

    @torch.no_grad()
    def predict(self, features: np.ndarray) -> np.ndarray:
        self.net.eval()
        out = self.net(torch.as_tensor(self.scale(features), dtype=torch.float32)).numpy()
        if self.kind == "regression":
            return out * self.y_std + self.y_mean
        return out.reshape(out.shape[0], -1, self.num_classes).argmax(-1)


def fit_probe(model: str, kind: str, train: Split, val: Split, num_classes: int = 0, **kwargs):
    """`model` in {'linear', 'mlp'}: ridge / logistic for 'linear' depending on `kind`."""
    if model == "linear":
        return RidgeProbe(train, val) if kind == "regression" else LogisticProbe(train, val, num_classes)
    if model == "mlp":
        return MLPProbe(train, val, kind, num_classes, **kwargs)
    raise ValueError(f"probe model must be 'linear' or 'mlp', got {model!r}")
