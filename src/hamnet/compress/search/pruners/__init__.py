"""Optuna pruners as plugins of kind ``"pruner"``: one module per pruner.

Each module exposes ``PLUGIN``, a :class:`~hamnet.compress.search.pruners.base.Pruner`
whose :meth:`~hamnet.compress.search.pruners.base.Pruner.build` creates the Optuna
pruner (importing Optuna only then). Their resource is the epoch: the objective
reports validation accuracy once per epoch. List them with
``hamnet.core.registry.names("pruner")``.
"""
