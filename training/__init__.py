"""Training: typed run configs and presets, the training loop, checkpoints, experiment tracking and the CLI."""
