"""The hamnet-optimize plan: stages, their execution and the run's state."""
