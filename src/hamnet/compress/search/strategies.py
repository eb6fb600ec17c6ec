"""Search strategies: Optuna samplers and pruners by name, objective directions.

Samplers and pruners are plugins (kinds ``"sampler"`` and ``"pruner"`` of
:mod:`hamnet.core.registry`), one module each under
:mod:`hamnet.compress.search.samplers` and :mod:`hamnet.compress.search.pruners`:

========================  ==================================================================
sampler                   Optuna class and settings
========================  ==================================================================
``random``                ``RandomSampler``
``grid``                  ``GridSampler`` over :func:`hamnet.compress.search.space.grid_values`
``tpe``                   ``TPESampler(multivariate=True, group=True)`` (Bayesian; handles
                          conditional and per-layer parameters by grouping them)
``gp``                    ``GPSampler`` (Gaussian-process Bayesian optimization; parameters
                          outside the space every trial shares are sampled at random)
``nsga2``                 ``NSGAIISampler`` with the space's ``evolution`` settings:
                          ``population_size``, ``mutation_prob = mutation_rate``,
                          ``crossover_prob = crossover_rate``, uniform crossover
========================  ==================================================================

All five handle single- and multi-objective studies in Optuna 5 (their
``multi_objective`` capability). Pruners (``none``, ``median``, ``successive_halving``,
``hyperband``) read intermediate values that the objective reports once per epoch
(``trial.report(value, step=epoch)``, ``epoch`` from 1), so their resource is the epoch;
Hyperband's ``max_resource`` is the largest ``epochs`` of the space. Optuna cannot prune
multi-objective studies (``Trial.report`` raises), so :func:`make_pruner` refuses any
pruner whose ``multi_objective`` capability is false for them.

Optuna and numpy are imported inside the functions, so importing this module stays light.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, cast

from hamnet.core import registry
from hamnet.core.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np
    from optuna.pruners import BasePruner
    from optuna.samplers import BaseSampler

    from hamnet.compress.search.pruners.base import Pruner
    from hamnet.compress.search.samplers.base import Sampler
    from hamnet.compress.search.space import SearchSpace


def _multi_objective_names(kind: str) -> list[str]:
    """The plugins of ``kind`` whose ``multi_objective`` capability is true."""
    return [
        name
        for name in registry.names(kind)
        if getattr(registry.load(kind, name), "multi_objective", False)
    ]


def _plugin(kind: str, name: str, multi_objective: bool, refusal: str) -> Any:
    """The ``kind`` plugin class ``name``, refused for a study it cannot serve.

    Args:
        kind: ``"sampler"`` or ``"pruner"``.
        name: The plugin's name.
        multi_objective: Whether the study has several objectives.
        refusal: The error for a plugin that cannot serve several objectives, with the
            fields ``{name}`` and ``{several}`` (the plugins that can).

    Raises:
        ConfigError: If the name is unknown or the plugin cannot serve the study.
    """
    plugin = registry.load(kind, name)
    if multi_objective and not getattr(plugin, "multi_objective", False):
        raise ConfigError(refusal.format(name=name, several=_multi_objective_names(kind)))
    return plugin


@contextlib.contextmanager
def _checked_options(kind: str, name: str, options: dict[str, Any]) -> Iterator[None]:
    """Turn a ``TypeError``/``ValueError`` of building a plugin into a ConfigError."""
    try:
        yield
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{kind} {name!r} rejects options {options}: {err}") from None


def make_sampler(
    name: str,
    space: SearchSpace,
    *,
    seed: int | None = None,
    multi_objective: bool = False,
    **options: Any,
) -> BaseSampler:
    """Build the Optuna sampler called ``name`` for ``space``.

    Args:
        name: One of ``registry.names("sampler")``.
        space: The search space (the grid, and the ``evolution`` settings of ``nsga2``).
        seed: Seed of the sampler's random numbers.
        multi_objective: Whether the study has several objectives.
        **options: Keyword arguments of the Optuna class that override hamnet's
            settings (e.g. ``n_startup_trials=5`` for ``tpe`` or ``gp``).

    Returns:
        The sampler.

    Raises:
        ConfigError: If the name is unknown, the sampler does not support several
            objectives, an option is not accepted, or (``grid``) a float parameter has
            no step.
    """
    refusal = (
        "sampler {name!r} supports single-objective studies only; for several "
        "objectives use one of {several}"
    )
    plugin = cast("type[Sampler]", _plugin("sampler", name, multi_objective, refusal))
    with _checked_options("sampler", name, options):
        return plugin().build(space, seed=seed, **options)


def make_pruner(
    name: str, space: SearchSpace, *, multi_objective: bool = False, **options: Any
) -> BasePruner:
    """Build the Optuna pruner called ``name`` for ``space``.

    Args:
        name: One of ``registry.names("pruner")``.
        space: The search space (its largest ``epochs`` is Hyperband's ``max_resource``;
            ``"auto"`` when epochs are not searched).
        multi_objective: Whether the study has several objectives.
        **options: Keyword arguments of the Optuna class that override hamnet's settings.

    Returns:
        The pruner.

    Raises:
        ConfigError: If the name is unknown, an option is not accepted, or a pruner
            that cannot handle several objectives is asked for a multi-objective study
            (Optuna cannot prune those).
    """
    refusal = (
        "pruner {name!r} cannot be used with several objectives: Optuna prunes "
        "single-objective studies only (Trial.report raises otherwise); use one of "
        "{several}"
    )
    plugin = cast("type[Pruner]", _plugin("pruner", name, multi_objective, refusal))
    with _checked_options("pruner", name, options):
        return plugin().build(space, **options)


Direction = Literal["maximize", "minimize"]

OBJECTIVE_DIRECTIONS: dict[str, Direction] = {
    "accuracy": "maximize",
    "throughput_sps": "maximize",
    "latency_ms": "minimize",
    "latency_p50_ms": "minimize",
    "size_mb": "minimize",
    "flops": "minimize",
    "params": "minimize",
}
"""Objective name to the Optuna direction of a study that optimizes it."""


def directions(objectives: Sequence[str]) -> list[Direction]:
    """Map objective names to Optuna study directions.

    Args:
        objectives: Names from :data:`OBJECTIVE_DIRECTIONS`, e.g.
            ``["accuracy", "latency_ms"]``.

    Returns:
        ``"maximize"`` or ``"minimize"`` for each objective, in order.

    Raises:
        ConfigError: If the list is empty, repeats a name, or holds an unknown one.
    """
    if not objectives:
        raise ConfigError("objectives must name at least one objective, but got none")
    repeated = sorted({o for o in objectives if list(objectives).count(o) > 1})
    if repeated:
        raise ConfigError(f"objectives must be distinct, but got {repeated} more than once")
    unknown = [o for o in objectives if o not in OBJECTIVE_DIRECTIONS]
    if unknown:
        raise ConfigError(
            f"objectives must be among {sorted(OBJECTIVE_DIRECTIONS)}, but got {unknown}"
        )
    return [OBJECTIVE_DIRECTIONS[o] for o in objectives]


def hypervolume(
    values: np.ndarray | Sequence[Sequence[float]],
    directions: Sequence[Any],
    reference_point: Sequence[float],
) -> float:
    """Exact hypervolume dominated by a set of objective vectors.

    Optuna computes hypervolumes only privately (``optuna._hypervolume``), so this is a
    small exact implementation: maximized objectives are negated, points that do not
    strictly dominate the reference point are dropped, then the volume is summed slice
    by slice (a sweep in 2-D). Fine for the few hundred points of a search.

    Args:
        values: One row per trial, one column per objective.
        directions: ``"maximize"``/``"minimize"`` per objective (or Optuna's
            ``StudyDirection``).
        reference_point: The worst acceptable value of each objective, in the objectives'
            own units (e.g. accuracy 0.0, latency 10 ms).

    Returns:
        The hypervolume (0.0 when no point dominates the reference point).

    Raises:
        ConfigError: If the shapes disagree, a direction is unknown, or a value is not
            finite.
    """
    import numpy as np

    points = np.asarray(values, dtype=float)
    if points.size == 0:
        return 0.0
    ref = np.asarray(reference_point, dtype=float)
    if points.ndim != 2 or points.shape[1] != len(directions) or ref.shape != (len(directions),):
        raise ConfigError(
            f"values must be (trials, objectives) with one direction and one reference "
            f"coordinate per objective, but got values of shape {points.shape}, "
            f"{len(directions)} directions and reference point of shape {ref.shape}"
        )
    if not (np.isfinite(points).all() and np.isfinite(ref).all()):
        raise ConfigError("values and reference_point must be finite, but got NaN or inf")
    sign = np.empty(len(directions))
    for i, direction in enumerate(directions):
        label = str(getattr(direction, "name", direction)).lower()
        if label not in ("maximize", "minimize"):
            raise ConfigError(f"directions must be 'maximize' or 'minimize', but got {direction!r}")
        sign[i] = -1.0 if label == "maximize" else 1.0
    points, ref = points * sign, ref * sign
    return _hypervolume_min(points[(points < ref).all(axis=1)], ref)


def _hypervolume_min(points: np.ndarray, ref: np.ndarray) -> float:
    """Hypervolume of minimized ``points`` that all strictly dominate ``ref``."""
    import numpy as np

    if len(points) == 0:
        return 0.0
    if points.shape[1] == 1:
        return float(ref[0] - points[:, 0].min())
    if points.shape[1] == 2:
        volume, lowest = 0.0, ref[1]
        for x, y in points[np.lexsort((points[:, 1], points[:, 0]))]:
            if y < lowest:
                volume += (ref[0] - x) * (lowest - y)
                lowest = y
        return float(volume)
    points = points[np.argsort(points[:, -1], kind="stable")]
    volume = 0.0
    for i in range(len(points)):
        top = points[i + 1, -1] if i + 1 < len(points) else ref[-1]
        if top > points[i, -1]:
            volume += (top - points[i, -1]) * _hypervolume_min(points[: i + 1, :-1], ref[:-1])
    return float(volume)
