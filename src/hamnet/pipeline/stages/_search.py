"""What the ``nas`` and ``hpo`` stages share: an Optuna study run on Ray workers."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel

from hamnet.core.candidate import Candidate
from hamnet.core.config import OptimizeConfig, SearchStageConfig, TrainStageConfig
from hamnet.core.errors import ConfigError
from hamnet.pipeline.stages.base import Stage, StageContext

logger = logging.getLogger("hamnet.stages")


class SearchStage(Stage[SearchStageConfig]):
    """An Optuna study whose trials (HAMNets trained on Ray workers) become candidates.

    The driver asks Optuna for parameters, Ray trains and measures each trial
    (:class:`~hamnet.compress.search.objective.HAMNetObjective`), and every finished trial is
    logged as an MLflow nested run of the optimization. The study lives in an RDB, so
    the same config rerun after a crash resumes it. The ``top_k`` best trials (the
    Pareto front first when there are several objectives) become candidates with no
    parent: they are alternatives to the baseline, measured like every candidate and
    flowing on to pruning, distillation, export and quantization.
    """

    Options: ClassVar[type[BaseModel]] = SearchStageConfig
    group: ClassVar[str]
    """Which group of the search space this stage samples."""

    def input_files(self, config: OptimizeConfig) -> list[str]:
        """The search-space file."""
        return [self.options(config).space]

    def study_name(self, config: OptimizeConfig) -> str:
        """The study's name: given, or run name + stage + a hash of what defines the study.

        The budget (``n_trials``, ``timeout_seconds``), ``top_k``, Ray, storage and
        heartbeat settings are left out of the hash, so raising the budget continues the
        same study.
        """
        from hamnet.core.hashing import hash_json

        cfg = self.options(config)
        if cfg.study_name:
            return str(cfg.study_name)
        defining = cfg.model_dump(
            mode="json",
            exclude={
                "n_trials",
                "timeout_seconds",
                "top_k",
                "ray",
                "storage",
                "heartbeat_seconds",
                "stale_after_seconds",
                "max_retries",
            },
        )
        defining["model"] = config.model.hamnet.model_dump(mode="json")
        defining["data"] = config.data.model_dump(mode="json")
        defining["train"] = (
            config.stages.train.model_dump(mode="json") if config.stages.train else None
        )
        defining["seed"], defining["profile"] = config.seed, config.hardware_profile
        digest = hash_json(defining, length=8)
        return f"{config.name}-{self.name}-{digest}"

    def run(self, inputs: list[Candidate], ctx: StageContext) -> list[Candidate]:
        from hamnet.compress.search.executor import (
            RaySettings,
            SearchBudget,
            connect_ray,
            run_search,
        )
        from hamnet.compress.search.space import suggest

        cfg = self.options(ctx.config)
        space = self._space(ctx)
        workdir = ctx.store.root.parent
        storage = cfg.storage or f"sqlite:///{(workdir / 'optuna.db').resolve()}"
        name = self.study_name(ctx.config)
        study = self._open_study(storage, name, space, ctx)
        objective = self._objective(name, ctx)
        tracker = _tracker(ctx)
        parent = str(ctx.parent_run_id)
        on_trial_end = None
        if tracker is not None:

            def on_trial_end(trial: Any) -> None:
                tracker.log_trial(parent, self.name, name, trial)

        settings = RaySettings(
            address=cfg.ray.address,
            num_cpus=cfg.ray.num_cpus,
            cpus_per_trial=cfg.ray.cpus_per_trial,
            gpus_per_trial=cfg.ray.gpus_per_trial,
            max_concurrent=cfg.ray.max_concurrent,
        )
        with connect_ray(settings) as ray:
            report = run_search(
                study,
                objective,
                lambda trial: suggest(trial, space),
                SearchBudget(n_trials=cfg.n_trials, timeout_seconds=cfg.timeout_seconds),
                ray,
                on_trial_end=on_trial_end,
            )
        ctx.notes.append(f"{self.name}: study {name!r} in {_redact(storage)}: {report.summary()}")
        plots = self._save_plots(study, cfg.objectives, ctx, name)
        if tracker is not None:
            for path in plots:
                tracker.client.log_artifact(parent, str(path), f"{self.name}/{name}")
        best = _best_trials(study, cfg.objectives, cfg.top_k)
        if not best:
            ctx.notes.append(f"{self.name}: no trial completed, so no candidate was added")
        return [self._candidate(trial, name, storage, cfg.strategy, ctx) for trial in best]

    def _space(self, ctx: StageContext) -> Any:
        """The search space file's group this stage samples (the other group emptied).

        Raises:
            ConfigError: The file has no parameters in that group.
        """
        from hamnet.compress.search.space import load_search_space

        space_file = ctx.resolve(self.options(ctx.config).space)
        other = "training" if self.group == "architecture" else "architecture"
        space = load_search_space(space_file).model_copy(update={other: {}})
        if not getattr(space, self.group):
            raise ConfigError(
                f"stages.{self.name}.space: {space_file} has no {self.group!r} parameters to "
                f"search, but the {self.name} stage samples that group"
            )
        return space

    def _open_study(self, storage: str, name: str, space: Any, ctx: StageContext) -> Any:
        """Create or resume the study, its sampler reseeded past the trials it has."""
        from hamnet.compress.search.executor import open_study
        from hamnet.compress.search.strategies import directions, make_pruner, make_sampler

        cfg = self.options(ctx.config)
        seed = ctx.config.seed
        multi = len(cfg.objectives) > 1
        study = open_study(
            storage,
            name,
            directions(cfg.objectives),
            make_sampler(cfg.strategy, space, seed=seed, multi_objective=multi),
            make_pruner(cfg.pruner, space, multi_objective=multi),
            heartbeat_interval=cfg.heartbeat_seconds,
            grace_period=cfg.stale_after_seconds,
            max_retry=cfg.max_retries,
        )
        if study.trials:
            # A seeded sampler restarts its random stream in a new process: reseed it by
            # the trials already there, or a resumed study would re-propose old trials.
            study.sampler = make_sampler(
                cfg.strategy, space, seed=seed + len(study.trials), multi_objective=multi
            )
        return study

    def _objective(self, study_name: str, ctx: StageContext) -> Any:
        """The trial objective: train, then measure, one HAMNet on a Ray worker."""
        from hamnet.compress.search.objective import HAMNetObjective

        config = ctx.config
        cfg = self.options(config)
        return HAMNetObjective(
            data=config.data,
            base_dir=str(ctx.base_dir),
            base_architecture=config.model.hamnet,
            base_training=config.stages.train or TrainStageConfig(),
            objectives=tuple(cfg.objectives),
            profile=config.hardware_profile,
            out_dir=str((ctx.store.root.parent / "trials" / study_name).resolve()),
            seed=config.seed,
            max_params=cfg.max_params,
            max_flops=cfg.max_flops,
            latency_threads=max(1, int(cfg.ray.cpus_per_trial)),
        )

    def _save_plots(
        self, study: Any, objectives: Sequence[str], ctx: StageContext, name: str
    ) -> list[Path]:
        """Optuna's own plots (history, importances, Pareto front) as PNG files."""
        import warnings

        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from optuna.visualization import matplotlib as ovm

        out = ctx.store.root.parent / "reports" / name
        out.mkdir(parents=True, exist_ok=True)
        plots: dict[str, Any] = {}
        if len(objectives) == 1:
            plots["history"] = lambda: ovm.plot_optimization_history(study)
            plots["param_importances"] = lambda: ovm.plot_param_importances(study)
        else:
            for i, objective in enumerate(objectives):
                plots[f"history_{objective}"] = lambda i=i, o=objective: (
                    ovm.plot_optimization_history(
                        study, target=lambda t: t.values[i], target_name=o
                    )
                )
            plots["param_importances"] = lambda: ovm.plot_param_importances(
                study, target=lambda t: t.values[0], target_name=objectives[0]
            )
            if len(objectives) in (2, 3):
                plots["pareto_front"] = lambda: ovm.plot_pareto_front(
                    study, target_names=list(objectives)
                )
        files = []
        for plot_name, draw in plots.items():
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # Optuna marks these plots experimental
                    axes = draw()
                figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
                path = out / f"{plot_name}.png"
                figure.savefig(path, dpi=110, bbox_inches="tight")
                plt.close(figure)
                files.append(path)
            except Exception as err:  # too few trials for a plot is not an error
                logger.info("optuna plot %s skipped: %s", plot_name, err)
        return files

    def _candidate(
        self, trial: Any, study_name: str, storage: str, strategy: str, ctx: StageContext
    ) -> Candidate:
        attrs = trial.user_attrs
        checkpoint = Path(attrs["checkpoint"])
        return Candidate.create(
            name=f"{self.name}-trial-{trial.number}",
            stage=self.name,
            method=strategy,
            artifact=ctx.store.put(checkpoint, "torch"),
            runtime="torch",
            params={
                "study": study_name,
                "storage": _redact(storage),
                "trial_number": trial.number,
                "sampled": dict(trial.params),
                "objectives": dict(
                    zip(self.options(ctx.config).objectives, trial.values, strict=True)
                ),
                "training": attrs.get("training"),
            },
            architecture=attrs.get("architecture"),
        )


def _tracker(ctx: StageContext) -> Any:
    """The run's MLflow tracker for a stage that logs runs of its own, or None."""
    if ctx.parent_run_id is None or not ctx.config.tracking.enabled:
        return None
    from hamnet.tracking.tracker import Tracker

    return Tracker(ctx.config.tracking, base_dir=ctx.base_dir)


def _best_trials(study: Any, objectives: Sequence[str], top_k: int) -> list[Any]:
    """The ``top_k`` best completed trials: Pareto front first, then by the first objective."""
    from optuna.trial import TrialState

    from hamnet.compress.search.strategies import directions

    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not done:
        return []
    sign = 1.0 if directions(objectives)[0] == "minimize" else -1.0
    front = {t.number for t in study.best_trials}
    done.sort(key=lambda t: (t.number not in front, sign * t.values[0], t.number))
    return done[:top_k]


def _redact(url: str) -> str:
    """A storage URL without its password."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url
