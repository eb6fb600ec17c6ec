"""Datasets and the trainer every stage that trains (prune, distill, search) builds on."""

from hamnet.core.moved import forward_old_names as _forward_old_names

__getattr__ = _forward_old_names(__name__, ("trainer", "optim"))
"""Names of the former ``hamnet.training`` module, found in their new modules (deprecated)."""
