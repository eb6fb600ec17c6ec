"""MLflow: one parent run per optimization, a nested run per candidate, the model registry."""
