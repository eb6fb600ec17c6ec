"""Model families: what hamnet knows about a kind of network, one adapter per family.

Each module of this package (``hamnet.py``, ``transformer.py``, ``conv.py``,
``generic.py``) is one :class:`~hamnet.families.base.ModelFamily` plugin: how the
family is recognised, loaded and exported, what can be pruned in it, what distillation
reads from it and which quantizers suit it. Callers ask the adapter instead of
testing family names; :func:`~hamnet.families.base.detect_family` finds the adapter of
a model.
"""
