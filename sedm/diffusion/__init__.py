"""Diffusion outside the network: noise schedules, the sampling pipeline, training and checkpoints."""
