"""Optuna samplers as plugins of kind ``"sampler"``: one module per sampler.

Each module exposes ``PLUGIN``, a :class:`~hamnet.compress.search.samplers.base.Sampler`
whose :meth:`~hamnet.compress.search.samplers.base.Sampler.build` creates the Optuna
sampler (importing Optuna only then). List them with
``hamnet.core.registry.names("sampler")``.
"""
