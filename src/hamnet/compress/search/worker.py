"""What runs inside a Ray task: one trial of the objective, and what the objective sees.

The driver ships the trial's number and parameters; the task re-opens the study from
its storage URL (:class:`~hamnet.compress.search.storage.StudyAddress`), hands the
objective a :class:`TrialContext` to report intermediate values and ask the pruner
through the study's database, and sends back a :class:`TrialResult` (it never raises).
"""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from hamnet.compress.search.storage import StudyAddress

if TYPE_CHECKING:
    import optuna
    from optuna.storages import RDBStorage

ERROR_ATTR = "error"
"""User attribute of a failed trial: the formatted traceback (last ``ERROR_ATTR_LIMIT`` chars)."""
ERROR_TYPE_ATTR = "error_type"
"""User attribute of a failed trial: the exception's class name."""
PRUNE_REASON_ATTR = "prune_reason"
"""User attribute of a pruned trial: why it was pruned."""
ERROR_ATTR_LIMIT = 4000


@dataclass
class TrialOutcome:
    """What an objective may return: the objective values plus attributes to record.

    Attributes:
        values: One value per study direction.
        user_attrs: JSON-serialisable extras stored on the trial (e.g. metrics).
    """

    values: list[float]
    user_attrs: dict[str, Any] = field(default_factory=dict)


class PrunedTrial(Exception):
    """Raised by an objective to prune its trial; ``reason`` is recorded on the trial.

    ``optuna.TrialPruned`` works too (its message becomes the reason).
    """

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


class TrialContext:
    """The objective's view of its trial, inside the Ray worker.

    The worker re-opens the study from the same storage URL, so intermediate values and
    attributes land in the study's database while the trial runs, and the study's
    pruner sees every other trial's reports.

    Attributes:
        trial_id: Optuna's storage id of the trial.
        number: The trial's number in the study.
        params: The parameters the driver's ``suggest`` chose.
    """

    def __init__(
        self,
        study: optuna.Study,
        storage: RDBStorage,
        number: int,
        params: dict[str, Any],
        *,
        multi_objective: bool,
    ) -> None:
        study_id = storage.get_study_id_from_name(study.study_name)
        self.trial_id: int = storage.get_trial_id_from_study_id_trial_number(study_id, number)
        self.number: int = number
        self.params: dict[str, Any] = params
        self._study = study
        self._storage = storage
        self._multi_objective = multi_objective
        self._reported: set[int] = set()

    def report(self, value: float, step: int) -> None:
        """Store an intermediate value of the trial (used by the pruner).

        Multi-objective studies store it too, but Optuna's pruners never use it.

        Args:
            value: The value at ``step`` (castable to float).
            step: A non-negative step (epoch); a step reported twice keeps its first value.

        Raises:
            ValueError: ``step`` is negative.
        """
        step = int(step)
        if step < 0:
            raise ValueError(f"step must be >= 0, but got {step}")
        if step in self._reported:
            return
        self._storage.set_trial_intermediate_value(self.trial_id, step, float(value))
        self._reported.add(step)

    def should_prune(self) -> bool:
        """Ask the study's pruner about this trial; always ``False`` for multi-objective."""
        if self._multi_objective:
            return False
        return bool(self._study.pruner.prune(self._study, self._storage.get_trial(self.trial_id)))

    def best_value(self) -> float | None:
        """The study's best value so far, read from its storage now (single objective).

        Returns:
            The best completed trial's value; None for a multi-objective study or when
            no trial has completed.
        """
        if self._multi_objective:
            return None
        try:
            return float(self._study.best_value)
        except ValueError:
            return None

    def set_user_attr(self, key: str, value: Any) -> None:
        """Store a JSON-serialisable attribute on the trial now."""
        self._storage.set_trial_user_attr(self.trial_id, key, value)


ObjectiveFn: TypeAlias = Callable[
    [TrialContext, dict[str, Any]], "float | Sequence[float] | TrialOutcome"
]
"""Objective run in a Ray worker: ``(context, params) -> value(s) | TrialOutcome``.

It is pickled once per search and must be loadable on the workers: a module-level
function (or a dataclass with ``__call__``) in an installed module. Raise
:class:`PrunedTrial` (or ``optuna.TrialPruned``) to prune; any other exception fails the
trial and the search goes on.
"""

SuggestFn: TypeAlias = Callable[["optuna.Trial"], Mapping[str, Any]]
"""Runs in the driver on the asked trial and returns the parameters to evaluate.

An ``optuna.TrialPruned``, :class:`PrunedTrial` or an exception of a class named
``InfeasibleParams`` (see :mod:`hamnet.compress.search.space`) prunes the trial with its message
without dispatching it; any other exception fails the trial and stops the search.
"""


@dataclass
class TrialResult:
    """What a worker sends back to the driver."""

    state: Literal["complete", "pruned", "fail"]
    values: list[float] | None = None
    message: str = ""
    error_type: str = ""
    user_attrs: dict[str, Any] = field(default_factory=dict)


_WORKER_STORAGES: dict[str, RDBStorage] = {}


def _worker_storage(address: StudyAddress) -> RDBStorage:
    import optuna

    key = address.url + json.dumps(address.engine_kwargs, sort_keys=True, default=str)
    storage = _WORKER_STORAGES.get(key)
    if storage is None:
        storage = optuna.storages.RDBStorage(address.url, engine_kwargs=address.engine_kwargs)
        _WORKER_STORAGES[key] = storage
    return storage


def load_study_in_worker(address: StudyAddress) -> tuple[optuna.Study, RDBStorage]:
    """Open the study the driver runs, with its pruner, in this worker process."""
    import optuna

    storage = _worker_storage(address)
    study = optuna.load_study(
        study_name=address.study_name,
        storage=storage,
        sampler=optuna.samplers.RandomSampler(),  # workers never sample
        pruner=address.pruner,
    )
    return study, storage


def probe_worker(address: StudyAddress, objective: Any) -> str:
    """Run in a Ray task before any trial: can a worker load the objective and the study?"""
    del objective  # unpickling it is the check
    load_study_in_worker(address)
    import ray

    return str(ray.get_runtime_context().get_node_id())


def values_of(outcome: Any) -> tuple[list[float], dict[str, Any]]:
    """Normalise what an objective returned into (values, user attributes).

    Raises:
        TypeError: The outcome is not a float, a sequence of floats or a TrialOutcome.
    """
    if isinstance(outcome, TrialOutcome):
        return [float(v) for v in outcome.values], dict(outcome.user_attrs)
    if isinstance(outcome, Sequence) and not isinstance(outcome, str):
        return [float(v) for v in outcome], {}
    try:
        return [float(outcome)], {}
    except (TypeError, ValueError):
        raise TypeError(
            "the objective must return a float, a sequence of floats or a TrialOutcome, "
            f"but returned {type(outcome).__name__}: {outcome!r:.200}"
        ) from None


def clip(text: str, limit: int = ERROR_ATTR_LIMIT) -> str:
    """Keep the last ``limit`` characters of ``text`` (tracebacks end with the error)."""
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


def evaluate(
    address: StudyAddress,
    objective: ObjectiveFn,
    number: int,
    params: dict[str, Any],
) -> TrialResult:
    """The Ray task: evaluate trial ``number`` and report how it ended (never raises)."""
    import optuna
    import ray

    attrs: dict[str, Any] = {
        "worker_started_at": time.time(),
        "worker_node_id": str(ray.get_runtime_context().get_node_id()),
        "worker_pid": os.getpid(),
    }
    try:
        study, storage = load_study_in_worker(address)
        context = TrialContext(
            study, storage, number, params, multi_objective=address.multi_objective
        )
        values, user_attrs = values_of(objective(context, dict(params)))
        result = TrialResult("complete", values=values, user_attrs=user_attrs)
    except (PrunedTrial, optuna.TrialPruned) as exc:
        reason = exc.reason if isinstance(exc, PrunedTrial) else str(exc)
        result = TrialResult("pruned", message=reason or type(exc).__name__)
    except Exception as exc:
        result = TrialResult(
            "fail", message=clip(traceback.format_exc()), error_type=type(exc).__name__
        )
    attrs["worker_finished_at"] = time.time()
    result.user_attrs = {**attrs, **result.user_attrs}
    return result
