"""Latent-variable joint-embedding world model for video (encoder, causal predictor, capacity-limited z, energy).

Public API: `WorldModel(config)`, `.encode`, `.loss`, `.energy`, `.sample_futures`, `.decode`, `.save`,
`WorldModel.load`. Frames are torch tensors laid out (B, T, 3, H, W), uint8 in [0, 255] or float in [0, 1].
"""

from .config import DecoderConfig, EncoderConfig, LatentConfig, ModelConfig, PredictorConfig, RegularizerConfig
from .model import SampledFutures, WorldModel
from .serialization import CheckpointError

__all__ = [
    "WorldModel",
    "SampledFutures",
    "CheckpointError",
    "ModelConfig",
    "EncoderConfig",
    "PredictorConfig",
    "LatentConfig",
    "RegularizerConfig",
    "DecoderConfig",
]
