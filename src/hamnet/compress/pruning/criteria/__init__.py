"""Pruning criteria (registry kind ``"criterion"``): one module per criterion.

Each module's ``PLUGIN`` is a :class:`~hamnet.compress.pruning.criteria.base.Criterion`
that builds a torch-pruning importance object; torch and torch-pruning are imported
only when one is built.
"""
