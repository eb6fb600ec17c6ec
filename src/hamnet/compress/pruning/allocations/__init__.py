"""Pruning allocations (registry kind ``"allocation"``): how a budget is spread over layers.

Each module's ``PLUGIN`` is an
:class:`~hamnet.compress.pruning.allocations.base.Allocation`; the heavy per-layer
searches are imported only when ratios are computed.
"""
