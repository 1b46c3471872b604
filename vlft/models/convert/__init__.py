"""Key maps between LAVIS checkpoints and vlft (transformers) models."""
