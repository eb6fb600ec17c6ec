"""Hooks called before every stage attempt, in the process that runs the stage.

A stage runs wherever its driver runs it: in this process (:func:`run_pipeline`), or in
a Prefect task of the flow process. Observers of a :class:`~hamnet.pipeline.run.PipelineRun`
see a stage only once it is done; a :class:`StageHook` sees every attempt before the
stage starts, in the same process and thread, so it can time, trace or (in tests)
make the attempt fail or hang. Hooks are added per process with :func:`stage_hooks`.

Example:
    >>> class Trace(StageHook):
    ...     def before_stage(self, stage, ctx):
    ...         print("starting", stage)
    >>> with stage_hooks(Trace()):  # doctest: +SKIP
    ...     run_pipeline(config)
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hamnet.pipeline.plan import StageContext

_hooks: list[StageHook] = []
_lock = threading.Lock()


class StageHook:
    """Something to do before each attempt of each stage.

    Subclasses override :meth:`before_stage`. An exception it raises is the attempt's
    failure, retried like any other when the driver retries stages.
    """

    def before_stage(self, stage: str, ctx: StageContext) -> None:
        """Called before ``stage`` runs with ``ctx`` (its config, store and workdir)."""


def add_stage_hook(hook: StageHook) -> None:
    """Call ``hook`` before every stage attempt in this process from now on.

    Raises:
        TypeError: ``hook`` is not a :class:`StageHook`.
    """
    if not isinstance(hook, StageHook):
        raise TypeError(f"a stage hook must be a StageHook, but got {type(hook).__name__}")
    with _lock:
        _hooks.append(hook)


def remove_stage_hook(hook: StageHook) -> None:
    """Stop calling ``hook`` (no-op when it was not added)."""
    with _lock:
        if hook in _hooks:
            _hooks.remove(hook)


@contextmanager
def stage_hooks(*hooks: StageHook) -> Iterator[None]:
    """Add ``hooks`` for the duration of a ``with`` block."""
    for hook in hooks:
        add_stage_hook(hook)
    try:
        yield
    finally:
        for hook in hooks:
            remove_stage_hook(hook)


def before_stage(stage: str, ctx: StageContext) -> None:
    """Call every added hook's :meth:`StageHook.before_stage`, in the order added."""
    with _lock:
        hooks = list(_hooks)
    for hook in hooks:
        hook.before_stage(stage, ctx)
