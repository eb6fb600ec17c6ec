"""The ask/tell loop in the driver: ask Optuna, evaluate on Ray, tell the outcome.

The driver (:func:`run_search`) asks the study for a trial, runs the ``suggest``
function on it, and ships the suggested parameters to a Ray task
(:func:`~hamnet.compress.search.worker.evaluate`) that calls the objective. Several
tasks are in flight at once; the first one to finish is told to the study. Workers
reach the study themselves, through the same RDB storage URL, to report intermediate
values and ask the pruner, so the study must come from
:func:`~hamnet.compress.search.storage.open_study`.

A search is resumable: the budget counts the finished trials of the study, including
those finished by earlier runs. While a trial is in flight the driver records its
heartbeat in the storage; a killed driver's trials stop beating, and the next run
waits for them to go stale so that Optuna fails them and queues their retries
(:class:`optuna.storages.RetryHeartbeatStaleTrialCallback`). Such *interrupted*
trials are not counted, so a restarted search ends with the same number of finished
trials and no completed trial is run twice.

Example:
    >>> handle = connect_ray(RaySettings(max_concurrent=2))
    >>> study = open_study("sqlite:///search.db", "digits", ["minimize"], None, None)
    >>> report = run_search(study, objective, suggest, SearchBudget(n_trials=20), handle)
    >>> handle.shutdown()
"""

from __future__ import annotations

import logging
import math
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from hamnet.compress.search.cluster import RayHandle
from hamnet.compress.search.progress import ProgressBar
from hamnet.compress.search.storage import StudyAddress, study_address, study_storage
from hamnet.compress.search.worker import (
    ERROR_ATTR,
    ERROR_TYPE_ATTR,
    PRUNE_REASON_ATTR,
    ObjectiveFn,
    PrunedTrial,
    SuggestFn,
    TrialResult,
    clip,
    evaluate,
    probe_worker,
)
from hamnet.core.errors import ConfigError

if TYPE_CHECKING:
    import optuna
    from optuna.storages import RDBStorage
    from optuna.trial import FrozenTrial

logger = logging.getLogger(__name__)

INTERRUPTED_ATTR = "interrupted"
"""User attribute ``True`` on trials that earlier hamnet versions failed as interrupted."""
RETRY_OF_ATTR = "retry_of"
"""User attribute of a retry queued by earlier hamnet versions: the trial it redoes."""

_FINISHED_STATES = ("COMPLETE", "PRUNED", "FAIL")


@dataclass(frozen=True)
class SearchBudget:
    """When a search stops: after ``n_trials`` finished trials or ``timeout_seconds``.

    Whichever comes first. ``n_trials`` counts the study's finished trials (COMPLETE,
    PRUNED, FAIL; interrupted ones excepted), including those of earlier runs. When the
    time is up no new trial is asked, and the trials in flight are waited for, so a
    search can overrun ``timeout_seconds`` by up to one trial's duration.
    """

    n_trials: int | None = None
    timeout_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.n_trials is None and self.timeout_seconds is None:
            raise ConfigError(
                "a search budget needs n_trials or timeout_seconds (or both), but got neither."
            )
        if self.n_trials is not None and self.n_trials < 1:
            raise ConfigError(f"n_trials must be positive, but got {self.n_trials}.")
        if self.timeout_seconds is not None and not self.timeout_seconds > 0:
            raise ConfigError(f"timeout_seconds must be positive, but got {self.timeout_seconds}.")


@dataclass(frozen=True)
class SearchReport:
    """How a :func:`run_search` call went.

    Attributes:
        study_name: The study searched.
        state_counts: Trials per Optuna state name at the end (``FAIL`` includes
            interrupted ones).
        n_finished: Finished trials counted by the budget (interrupted ones excepted).
        n_interrupted: Interrupted trials of the study (see :func:`is_interrupted`).
        trials_run: Trials finished by this call.
        resumed: Counted trials found finished at the start (from earlier runs).
        requeued: Trials left running by a killed run that this call failed as stale
            (Optuna queued their retries).
        wall_seconds: Duration of the call.
        stopped_by: ``"n_trials"`` or ``"timeout"``.
        best_trials: ``study.best_trials`` at the end (the Pareto front if
            multi-objective; empty if no trial completed).
    """

    study_name: str
    state_counts: dict[str, int]
    n_finished: int
    n_interrupted: int
    trials_run: int
    resumed: int
    requeued: int
    wall_seconds: float
    stopped_by: Literal["n_trials", "timeout"]
    best_trials: list[FrozenTrial]

    def summary(self) -> str:
        """One line for logs."""
        counts = ", ".join(f"{k.lower()} {v}" for k, v in sorted(self.state_counts.items()))
        return (
            f"study {self.study_name!r}: {self.trials_run} trials run in "
            f"{self.wall_seconds:.1f} s (stopped by {self.stopped_by}); {counts}; "
            f"{self.resumed} resumed, {self.requeued} requeued"
        )


# --------------------------------------------------------------------------- interrupted trials


def is_interrupted(trial: FrozenTrial) -> bool:
    """Whether ``trial`` failed because its run stopped, not because of its objective.

    Every failure hamnet tells carries an ``error`` attribute; a ``FAIL`` trial without
    one was failed by Optuna's heartbeat check (its driver was killed) or by an aborted
    :func:`run_search`. Its retry was queued; the budget does not count it.
    """
    if trial.state.name != "FAIL":
        return False
    return bool(trial.user_attrs.get(INTERRUPTED_ATTR)) or ERROR_ATTR not in trial.user_attrs


def retry_of(trial: FrozenTrial) -> int | None:
    """The number of the interrupted trial that ``trial`` redoes, or ``None``."""
    from optuna.exceptions import ExperimentalWarning
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        history = RetryHeartbeatStaleTrialCallback.retry_history(trial)
    if history:
        return int(history[-1])
    legacy = trial.user_attrs.get(RETRY_OF_ATTR)
    return None if legacy is None else int(legacy)


def _is_counted(trial: FrozenTrial) -> bool:
    return trial.state.name in _FINISHED_STATES and not is_interrupted(trial)


def _running(study: optuna.Study) -> dict[int, FrozenTrial]:
    from optuna.trial import TrialState

    return {t.number: t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}


def _fail_stale(study: optuna.Study) -> None:
    import optuna
    from optuna.exceptions import ExperimentalWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def requeue_interrupted(study: optuna.Study, *, poll_seconds: float = 0.5) -> int:
    """Wait for the trials a killed run left ``RUNNING`` to go stale, so Optuna retries them.

    Each running trial gets one more heartbeat (so one killed before its first beat goes
    stale too); then Optuna's :func:`optuna.storages.fail_stale_trials` fails those whose
    heartbeat stops for the storage's grace period, and its
    :class:`~optuna.storages.RetryHeartbeatStaleTrialCallback` queues their parameters
    again. Trials still beating after the grace period belong to a live driver and are
    left alone.

    Args:
        study: A study from :func:`~hamnet.compress.search.storage.open_study`.
        poll_seconds: How often to check for stale trials while waiting.

    Returns:
        How many trials were failed as stale.
    """
    storage = study_storage(study)
    interval = storage.get_heartbeat_interval()
    before = set(_running(study))
    if not before or interval is None:
        return 0
    _fail_stale(study)  # those whose driver died long ago
    left = before & set(_running(study))
    if left:
        _wait_until_stale(study, storage, left, interval, poll_seconds)
        left &= set(_running(study))
    if left:
        logger.warning("trials %s are still beating: another driver runs them", sorted(left))
    return len(before - left)


def _wait_until_stale(
    study: optuna.Study, storage: RDBStorage, numbers: set[int], interval: int, poll: float
) -> None:
    grace = storage.grace_period or 2 * interval
    for number in numbers:
        storage.record_heartbeat(_trial_id(storage, study, number))
    logger.warning(
        "trials %s were left running by an earlier run: waiting up to %d s for them to go "
        "stale so they are failed and queued again",
        sorted(numbers),
        grace + interval,
    )
    deadline = time.monotonic() + grace + interval + 1
    while numbers & set(_running(study)) and time.monotonic() < deadline:
        time.sleep(poll)
        _fail_stale(study)


def _trial_id(storage: RDBStorage, study: optuna.Study, number: int) -> int:
    study_id = storage.get_study_id_from_name(study.study_name)
    return storage.get_trial_id_from_study_id_trial_number(study_id, number)


class _Heartbeat:
    """Records the heartbeat of the driver's trials in flight, every interval."""

    def __init__(self, study: optuna.Study, storage: RDBStorage) -> None:
        self.interval: int | None = storage.get_heartbeat_interval()
        self._storage = storage
        self._study_id = storage.get_study_id_from_name(study.study_name)
        self._trial_ids: dict[int, int] = {}
        self._last = -math.inf

    def add(self, trial: optuna.Trial) -> None:
        """Beat for ``trial`` now and at every interval until :meth:`remove`."""
        if self.interval is None:
            return
        trial_id = self._storage.get_trial_id_from_study_id_trial_number(
            self._study_id, trial.number
        )
        self._trial_ids[trial.number] = trial_id
        self._storage.record_heartbeat(trial_id)

    def remove(self, trial: optuna.Trial) -> None:
        """Stop beating for ``trial`` (it was told)."""
        self._trial_ids.pop(trial.number, None)

    def beat(self) -> None:
        """Record the heartbeats if an interval has passed since the last ones."""
        if self.interval is None or time.monotonic() - self._last < self.interval:
            return
        self._last = time.monotonic()
        for trial_id in self._trial_ids.values():
            self._storage.record_heartbeat(trial_id)


# --------------------------------------------------------------------------- telling


def _is_prune_request(exc: BaseException) -> bool:
    import optuna

    return isinstance(exc, PrunedTrial | optuna.TrialPruned) or any(
        cls.__name__ == "InfeasibleParams" for cls in type(exc).__mro__
    )


def _set_attr(trial: optuna.Trial, key: str, value: Any) -> None:
    try:
        trial.set_user_attr(key, value)
    except (TypeError, ValueError):  # not JSON-serialisable
        trial.set_user_attr(key, repr(value))


def tell(study: optuna.Study, trial: optuna.Trial, result: TrialResult) -> FrozenTrial:
    """Tell ``study`` how ``trial`` ended, recording the reason of a prune or failure.

    Args:
        study: The study the trial was asked from.
        trial: The asked trial.
        result: What the worker (or the driver) found.

    Returns:
        The finished trial: COMPLETE, PRUNED (``prune_reason`` attribute) or FAIL
        (``error`` and ``error_type`` attributes; invalid values fail the trial too).
    """
    from optuna.trial import TrialState

    for key, value in result.user_attrs.items():
        _set_attr(trial, key, value)
    if result.state == "complete":
        try:
            return study.tell(trial, result.values, state=TrialState.COMPLETE)
        except ValueError as err:  # NaN, or not one value per direction
            result = TrialResult(
                "fail", message=f"invalid objective values: {err}", error_type="ValueError"
            )
    if result.state == "pruned":
        trial.set_user_attr(PRUNE_REASON_ATTR, result.message)
        return study.tell(trial, state=TrialState.PRUNED)
    trial.set_user_attr(ERROR_ATTR, result.message)
    trial.set_user_attr(ERROR_TYPE_ATTR, result.error_type)
    return study.tell(trial, state=TrialState.FAIL)


def _fetch(ref: Any) -> TrialResult:
    import ray

    try:
        result: TrialResult = ray.get(ref)
        return result
    except ray.exceptions.RayError as err:  # worker process died, task cancelled, node lost
        return TrialResult("fail", message=clip(str(err)), error_type=type(err).__name__)


def _suggest_failure(exc: Exception) -> TrialResult:
    text = "".join(traceback.format_exception(exc))
    return TrialResult("fail", message=clip(text), error_type=type(exc).__name__)


def _check_workers(remote: Any, address: StudyAddress, objective_ref: Any) -> None:
    import ray

    try:
        ray.get(remote.remote(address, objective_ref))
    except ray.exceptions.RayError as err:
        raise ConfigError(
            f"a Ray worker cannot load the objective or open study {address.study_name!r}: "
            f"{clip(str(err), 2000)}\nThe objective must be importable on the workers "
            "(a module-level function of an installed module) and the storage reachable "
            "from them."
        ) from None


# --------------------------------------------------------------------------- the loop


class _Search:
    """One :func:`run_search` call: the budget, the trials in flight and the tally."""

    def __init__(
        self,
        study: optuna.Study,
        budget: SearchBudget,
        ray: RayHandle,
        on_trial_end: Callable[[FrozenTrial], None] | None,
        progress: bool,
    ) -> None:
        self.started = time.monotonic()
        self.study = study
        self.budget = budget
        self.ray = ray
        self.on_trial_end = on_trial_end
        storage = study_storage(study)
        self.address = study_address(study)
        self.requeued = requeue_interrupted(study)
        self.finished = sum(1 for t in study.get_trials(deepcopy=False) if _is_counted(t))
        self.resumed = self.finished
        self.deadline = (
            None if budget.timeout_seconds is None else self.started + budget.timeout_seconds
        )
        self.in_flight: dict[Any, optuna.Trial] = {}
        self.stopped_by: Literal["n_trials", "timeout"] = "n_trials"
        self.heartbeat = _Heartbeat(study, storage)
        self.bar = ProgressBar(study, budget.n_trials, self.finished, progress)

    def run(self, objective: ObjectiveFn, suggest: SuggestFn) -> SearchReport:
        """Probe the workers, then ask, dispatch and tell until the budget is spent."""
        import ray

        options = {
            "num_cpus": self.ray.settings.cpus_per_trial,
            "num_gpus": self.ray.settings.gpus_per_trial,
            "max_retries": 0,
        }
        remote = ray.remote(evaluate).options(name="hamnet-trial", **options)
        probe = ray.remote(probe_worker).options(name="hamnet-probe", **options)
        objective_ref = ray.put(objective)
        address_ref = ray.put(self.address)
        _check_workers(probe, self.address, objective_ref)
        if self.budget.timeout_seconds is not None:
            # The time budget is for trials: a worker's first start (imports, loading the
            # study) can take longer than a short budget on a loaded machine.
            self.deadline = time.monotonic() + self.budget.timeout_seconds
        with self.bar.running():
            try:
                while True:
                    while len(self.in_flight) < self.ray.max_concurrent and self._may_ask():
                        asked = self._ask(suggest)
                        if asked is not None:
                            trial, params = asked
                            ref = remote.remote(address_ref, objective_ref, trial.number, params)
                            self.in_flight[ref] = trial
                    if not self.in_flight:
                        break
                    self._collect()
            except BaseException:
                self._abandon()
                raise
        return self._report()

    def _may_ask(self) -> bool:
        n_trials = self.budget.n_trials
        if n_trials is not None and self.finished + len(self.in_flight) >= n_trials:
            self.stopped_by = "n_trials"
            return False
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.stopped_by = "timeout"
            return False
        return True

    def _ask(self, suggest: SuggestFn) -> tuple[optuna.Trial, dict[str, Any]] | None:
        """Ask a trial and its parameters; ``None`` when ``suggest`` pruned it."""
        with warnings.catch_warnings():
            # The driver beats for its trials itself, instead of Study.optimize's threads.
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            trial = self.study.ask()
        self.heartbeat.add(trial)
        try:
            return trial, dict(suggest(trial))
        except Exception as exc:
            self.heartbeat.remove(trial)
            if not _is_prune_request(exc):
                tell(self.study, trial, _suggest_failure(exc))
                raise
            reason = str(exc) or type(exc).__name__
            self._finish(tell(self.study, trial, TrialResult("pruned", message=reason)))
            return None

    def _collect(self) -> None:
        """Tell the trials whose task ended, waiting at most one heartbeat interval."""
        import ray

        ready, _ = ray.wait(list(self.in_flight), num_returns=1, timeout=self.heartbeat.interval)
        for ref in ready:
            trial = self.in_flight.pop(ref)
            self.heartbeat.remove(trial)
            self._finish(tell(self.study, trial, _fetch(ref)))
        self.heartbeat.beat()

    def _finish(self, frozen: FrozenTrial) -> None:
        self.finished += 1
        values = f" {frozen.values}" if frozen.values else ""
        logger.info("trial %d %s%s", frozen.number, frozen.state.name, values)
        self.bar.advance(frozen)
        if self.on_trial_end is not None:
            try:
                self.on_trial_end(frozen)
            except Exception:
                logger.exception("on_trial_end failed for trial %d", frozen.number)

    def _abandon(self) -> None:
        """Cancel the tasks of an aborted search; fail their trials and queue retries."""
        import ray
        from optuna.trial import TrialState

        retry = study_storage(self.study).get_heartbeat_stale_trial_callback()
        for ref, trial in self.in_flight.items():
            try:
                ray.cancel(ref, force=True)
            except Exception:  # already finished, or Ray is gone
                logger.debug("cannot cancel the task of trial %d", trial.number, exc_info=True)
            try:
                frozen = self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                if retry is not None:
                    retry(self.study, frozen)
            except Exception:  # its heartbeat stops: the next run retries it
                logger.warning("trial %d left RUNNING", trial.number, exc_info=True)
        self.in_flight.clear()

    def _report(self) -> SearchReport:
        counts: dict[str, int] = {}
        interrupted = 0
        for t in self.study.get_trials(deepcopy=False):
            counts[t.state.name] = counts.get(t.state.name, 0) + 1
            interrupted += is_interrupted(t)
        report = SearchReport(
            study_name=self.study.study_name,
            state_counts=counts,
            n_finished=self.finished,
            n_interrupted=interrupted,
            trials_run=self.finished - self.resumed,
            resumed=self.resumed,
            requeued=self.requeued,
            wall_seconds=time.monotonic() - self.started,
            stopped_by=self.stopped_by,
            best_trials=self.study.best_trials,
        )
        logger.info(report.summary())
        return report


def run_search(
    study: optuna.Study,
    objective: ObjectiveFn,
    suggest: SuggestFn,
    budget: SearchBudget,
    ray: RayHandle,
    *,
    on_trial_end: Callable[[FrozenTrial], None] | None = None,
    progress: bool = True,
) -> SearchReport:
    """Run trials of ``study`` on Ray until the budget is spent.

    The driver asks a trial, calls ``suggest(trial)`` and starts one Ray task per trial
    (``num_cpus=cpus_per_trial``, ``num_gpus=gpus_per_trial``, no Ray retries), keeping
    up to ``ray.max_concurrent`` in flight; each finished task is told to the study:
    COMPLETE with its values, PRUNED (``prune_reason`` attribute) when the objective
    raised :class:`PrunedTrial` or ``optuna.TrialPruned``, FAIL (``error`` attribute:
    the traceback, clipped to ``ERROR_ATTR_LIMIT`` characters) when it raised anything
    else, returned invalid values, or its worker died. The search goes on after a
    failure. Workers record ``worker_started_at``, ``worker_finished_at`` (epoch
    seconds), ``worker_node_id`` and ``worker_pid`` on every trial.

    On start, trials left ``RUNNING`` by a killed driver are waited for until their
    heartbeat is stale; Optuna then fails them and queues their retries (see
    :func:`requeue_interrupted`). If this call itself is interrupted (Ctrl-C, an
    exception), its in-flight Ray tasks are cancelled, their trials failed and retried
    the same way, before the exception propagates. When ``timeout_seconds`` is up
    (counted from the end of the worker probe), no trial is asked any more and the ones
    in flight are waited for.

    Args:
        study: A study from :func:`~hamnet.compress.search.storage.open_study`.
        objective: Picklable objective run in the workers (see :data:`ObjectiveFn`).
        suggest: Chooses the parameters in the driver (see :data:`SuggestFn`).
        budget: When to stop.
        ray: The handle from :func:`~hamnet.compress.search.cluster.connect_ray`.
        on_trial_end: Called in the driver with each told trial (e.g. to log it); its
            exceptions are logged and do not stop the search.
        progress: Show a progress bar with the best value so far.

    Returns:
        Counts, timings and the best trials.

    Raises:
        ConfigError: If the study was not opened with ``open_study``, or a worker cannot
            load the objective or open the study (checked with one probe task before
            any trial).
        Exception: Whatever ``suggest`` raised, other than a prune request (the trial is
            failed first).
    """
    return _Search(study, budget, ray, on_trial_end, progress).run(objective, suggest)
