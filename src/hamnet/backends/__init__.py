"""Runtimes (PyTorch, ONNX Runtime, OpenVINO) and the exporters that produce their files."""
