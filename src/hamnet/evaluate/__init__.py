"""One measurement path for every candidate (accuracy, latency, size); selection; reports."""
