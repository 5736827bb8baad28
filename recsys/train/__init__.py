"""Training: one loop for the local and Ray backends, precision, metrics, checkpoints."""
