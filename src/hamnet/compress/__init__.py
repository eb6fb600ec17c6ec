"""The compression algorithms: quantization, structured pruning, distillation and search."""
