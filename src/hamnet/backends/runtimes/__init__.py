"""The runtimes, one module each: its :class:`~hamnet.backends.runtimes.base.Runtime`, its
session class, the file formats it writes and loads, and its converter where it owns one.

Each public module is the registry's ``runtime`` plugin of the same name (see
:mod:`hamnet.core.registry`); adding a runtime is adding a module here.
"""
