"""Training: the method-agnostic loop, optimiser and schedule, checkpoints, distributed set-up, logging."""
