"""A progress bar of a search: trials done out of the budget, with the best value so far."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial


class ProgressBar:
    """Trials done out of the budget, with the best value so far."""

    def __init__(self, study: optuna.Study, total: int | None, done: int, enabled: bool) -> None:
        self._study = study
        self._enabled = enabled
        self._single = len(study.directions) == 1
        self._best: float | None = None
        if enabled and self._single:
            try:
                self._best = study.best_value
            except ValueError:
                self._best = None
        self._progress: Any = None
        self._task: Any = None
        self._total = total
        self._done = done

    def _description(self) -> str:
        if self._single:
            best = "-" if self._best is None else f"{self._best:.4g}"
            return f"trials (best {best})"
        return f"trials (pareto front {len(self._study.best_trials)})"

    @contextmanager
    def running(self) -> Iterator[ProgressBar]:
        """Show the bar (when enabled) while the ``with`` block runs."""
        if not self._enabled:
            yield self
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns) as progress:
            self._progress = progress
            self._task = progress.add_task(
                self._description(), total=self._total, completed=self._done
            )
            yield self

    def advance(self, trial: FrozenTrial) -> None:
        """Count one finished trial and update the best value."""
        if self._progress is None:
            return
        if self._single and trial.state.name == "COMPLETE" and trial.value is not None:
            minimize = self._study.direction.name == "MINIMIZE"
            if self._best is None or (trial.value < self._best) == minimize:
                self._best = trial.value
        self._progress.update(self._task, advance=1, description=self._description())
