"""Training: configuration dataclasses, the resumable trainer, checkpoints and DDP."""
