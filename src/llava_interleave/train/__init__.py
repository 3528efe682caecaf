"""Training utilities: the DPO objective and crash-safe checkpoints."""
