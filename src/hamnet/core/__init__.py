"""Layer 0: config, errors, candidates, artifacts, hardware profiles, the plugin registry.

Imports no torch.
"""
