"""Quantization methods: each turns an exported model file into a smaller or faster one."""
