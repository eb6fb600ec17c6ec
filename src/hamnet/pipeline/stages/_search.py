"""What the ``nas`` and ``hpo`` stages share: an Optuna study run on Ray workers."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel

from hamnet.core.candidate import Candidate, TeacherRef
from hamnet.core.config import OptimizeConfig, SearchStageConfig, TrainStageConfig
from hamnet.core.errors import ConfigError
from hamnet.pipeline.stages.base import Stage, StageContext, store_plan

SEARCH_STORAGE_ENV = "HAMNET_SEARCH_STORAGE"
"""Environment variable naming the Optuna storage of searches whose config sets none."""

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
        space = defining["students"]["space"]
        for key, unset in (("kind", "auto"), ("width_multipliers", None),
                           ("depth_multipliers", None)):  # fmt: skip
            if space.get(key) == unset:  # studies named before these settings still resume
                space.pop(key, None)
        defining["model"] = config.model.hamnet.model_dump(mode="json")
        defining["data"] = config.data.model_dump(mode="json")
        defining["train"] = (
            config.stages.train.model_dump(mode="json") if config.stages.train else None
        )
        defining["seed"], defining["profile"] = config.seed, config.hardware_profile
        digest = hash_json(defining, length=8)
        return f"{config.name}-{self.name}-{digest}"

    def input_files(self, config: OptimizeConfig) -> list[str]:
        """The search-space file (a student search reads its space from the config)."""
        cfg = self.options(config)
        if cfg.mode == "students":
            teacher = cfg.students.teacher
            return [teacher] if teacher.endswith((".pt", ".pth", ".onnx", ".json")) else []
        return [cfg.space]

    def run(self, inputs: list[Candidate], ctx: StageContext) -> list[Candidate]:
        from hamnet.compress.search.executor import (
            RaySettings,
            SearchBudget,
            connect_ray,
            run_search,
        )

        cfg = self.options(ctx.config)
        job = self._student_job(inputs, ctx) if cfg.mode == "students" else self._train_job(ctx)
        name = job.name
        workdir = ctx.store.root.parent
        # The config's storage, else the team database a stack hands its flows
        # (`hamnet stack up --database postgresql`), else SQLite in the workdir.
        storage = (
            cfg.storage
            or os.environ.get(SEARCH_STORAGE_ENV)
            or f"sqlite:///{(workdir / 'optuna.db').resolve()}"
        )
        study = self._open_study(
            storage, job.name, job.space, ctx, directions=job.directions,
            pruner_options=job.pruner_options_for(cfg),
        )  # fmt: skip
        if job.warm_start and not study.trials:
            for params in job.warm_start:
                study.enqueue_trial(params, skip_if_exists=True)
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
                job.objective,
                job.suggest,
                SearchBudget(
                    n_trials=job.trial_cap(cfg.n_trials), timeout_seconds=cfg.timeout_seconds
                ),
                ray,
                on_trial_end=on_trial_end,
            )
        ctx.notes.append(f"{self.name}: study {name!r} in {_redact(storage)}: {report.summary()}")
        plots = self._save_plots(study, job.objective_names, ctx, name)
        if tracker is not None:
            for path in plots:
                tracker.client.log_artifact(parent, str(path), f"{self.name}/{name}")
        best = _best_trials(study, job.directions, cfg.top_k, job.key_of)
        if not best:
            ctx.notes.append(f"{self.name}: no trial completed, so no candidate was added")
        if job.teacher is not None:
            feasible = [t for t in best if t.user_attrs.get("feasible")]
            ctx.notes.append(
                f"{self.name}: {len(best)} student(s) kept, {len(feasible)} within the "
                f"accuracy budget of teacher {job.teacher.name!r} on validation"
            )
        return [self._candidate(trial, name, storage, job, ctx) for trial in best]

    def _train_job(self, ctx: StageContext) -> _SearchJob:
        """Trials train HAMNets on the labels (the ``train`` mode)."""
        from hamnet.compress.search.strategies import directions

        cfg = self.options(ctx.config)
        name = self.study_name(ctx.config)
        return _SearchJob(
            name=name,
            space=self._space(ctx),
            objective=self._objective(name, ctx),
            objective_names=list(cfg.objectives),
            directions=list(directions(cfg.objectives)),
            method=cfg.strategy,
        )

    def _student_job(self, inputs: list[Candidate], ctx: StageContext) -> _SearchJob:
        """Trials distill students from the teacher (the ``students`` mode): fresh HAMNets,
        or width/depth multipliers of the teacher's own architecture (a user's module)."""
        from hamnet.compress.search.students import TeacherSource

        config = ctx.config
        cfg = self.options(config)
        recipe = cfg.students
        teacher_candidate = self._teacher(recipe.teacher, inputs, ctx)
        source = TeacherSource(
            artifact=teacher_candidate.artifact,
            runtime=teacher_candidate.runtime if teacher_candidate.runtime != "torch" else "torch",
            profile=config.hardware_profile,
            trust_checkpoint=config.model.trust_checkpoint,
        )
        space = recipe.space
        kind = space.kind
        if kind == "auto":
            given = space.width_multipliers is not None or space.depth_multipliers is not None
            kind = "multipliers" if source.is_module or given else "hamnet"
        if kind == "multipliers":
            return self._multiplier_job(inputs, ctx, teacher_candidate, source)
        return self._hamnet_job(inputs, ctx, teacher_candidate, source)

    def _study_and_budget(
        self, ctx: StageContext, teacher_candidate: Candidate
    ) -> tuple[str, float]:
        """The student study's name (resumable: a teacher file is named by its content)
        and the accuracy budget of the constrained score."""
        config = ctx.config
        cfg = self.options(config)
        budget = cfg.students.max_accuracy_drop
        if budget is None:
            budget = config.constraints.max_accuracy_drop
        budget = 0.01 if budget is None else budget
        # A baseline trained by this run is defined by the config (already in the name's
        # hash): a rerun after a crash retrains it, maybe not bit for bit, and must resume
        # the same study. A teacher from a file is named by its content.
        trained = teacher_candidate.stage == "train"
        teacher_key = "trained" if trained else teacher_candidate.artifact.sha256[:8]
        name = cfg.study_name or f"{self.study_name(config)}-students-{teacher_key}"
        return name, budget

    def _objective_kwargs(self, ctx: StageContext, name: str) -> dict[str, Any]:
        """What every student objective shares."""
        config = ctx.config
        cfg = self.options(config)
        return {
            "recipe": cfg.students,
            "objectives": tuple(cfg.objectives),
            "profile": config.hardware_profile,
            "out_dir": str((ctx.store.root.parent / "trials" / name).resolve()),
            "seed": config.seed,
            "latency_threads": max(1, int(cfg.ray.cpus_per_trial)),
            "latency_tie": config.selection.latency_tie,
        }

    def _job(
        self, ctx: StageContext, name: str, objective: Any, space: Any, teacher: Candidate,
        inputs: list[Candidate], *, warm: list[dict[str, Any]], check: Any,
    ) -> _SearchJob:  # fmt: skip
        """The search job of a student objective (constrained: one latency score)."""
        from hamnet.compress.search.strategies import directions

        cfg = self.options(ctx.config)
        recipe = cfg.students
        constrained = recipe.selection == "constrained"
        return _SearchJob(
            name=name,
            space=space,
            objective=objective,
            objective_names=["latency_score"] if constrained else list(cfg.objectives),
            directions=["minimize"] if constrained else list(directions(cfg.objectives)),
            method=f"students-{cfg.strategy}",
            teacher=teacher,
            warm_start=warm if constrained else [],
            teacher_in_run=any(c.id == teacher.id for c in inputs),
            check=check,
            pruner_options={"min_resource": recipe.report_every}
            | ({"max_resource": recipe.train.epochs} if cfg.pruner == "hyperband" else {}),
        )

    def _note_search(
        self, ctx: StageContext, teacher: Candidate, reference: float, budget: float,
        what: str,
    ) -> None:  # fmt: skip
        cfg = self.options(ctx.config)
        recipe = cfg.students
        ctx.notes.append(
            f"{self.name}: student search from teacher {teacher.name!r} (validation "
            f"accuracy {reference:.4f}) over {what}, {recipe.selection}: "
            + (
                f"fastest measured student within {budget:g} of it"
                if recipe.selection == "constrained"
                else f"Pareto front of {cfg.objectives}"
            )
        )

    def _hamnet_job(
        self, inputs: list[Candidate], ctx: StageContext, teacher_candidate: Candidate,
        source: Any,
    ) -> _SearchJob:  # fmt: skip
        """Fresh HAMNet students (flat feature vectors with class labels)."""
        from hamnet.compress.search.students import (
            StudentObjective,
            check_student,
            search_split,
            student_choices,
            student_key,
            validation_accuracy,
            warm_start,
        )
        from hamnet.core.config import HAMNetSection

        cfg = self.options(ctx.config)
        recipe = cfg.students
        dataset = ctx.dataset
        if dataset.x_train.ndim != 2 or dataset.input_names is not None or not dataset.num_classes:
            raise ConfigError(
                f"stages.{self.name}.mode 'students' trains HAMNet students on labelled flat "
                f"feature vectors, but the data has inputs of shape "
                f"{list(dataset.x_train.shape[1:])}"
                f"{' named ' + str(list(dataset.input_names)) if dataset.input_names else ''}"
                f" and {dataset.num_classes} classes"
            )
        choices = student_choices(recipe.space, dataset.num_features, source.architecture())
        reference = validation_accuracy(source.load(), dataset)
        name, budget = self._study_and_budget(ctx, teacher_candidate)
        self._note_search(ctx, teacher_candidate, reference, budget, "fresh HAMNet students")
        objective = StudentObjective(
            dataset=search_split(dataset),
            teacher=source,
            base_architecture=HAMNetSection(dropout_rate=0.0),
            reference_accuracy=reference,
            max_accuracy_drop=budget,
            **self._objective_kwargs(ctx, name),
        )
        job = self._job(
            ctx, name, objective, choices.to_search_space(), teacher_candidate, inputs,
            warm=warm_start(choices, dataset.num_features),
            check=functools.partial(
                check_student, base=objective.base_architecture,
                input_size=dataset.num_features, num_classes=dataset.num_classes,
            ),
        )  # fmt: skip
        # A student already trained (or stopped) is not trained again: samplers re-propose
        # the shapes they like, and one-token students differ in heads only by name.
        job.skip_repeats = True
        job.student_key = functools.partial(student_key, input_size=dataset.num_features)
        return job

    def _multiplier_job(
        self, inputs: list[Candidate], ctx: StageContext, teacher_candidate: Candidate,
        source: Any,
    ) -> _SearchJob:  # fmt: skip
        """Width x depth multipliers of the teacher's own architecture (a user's module,
        or an ONNX file that converts with onnx2torch), scored by validation accuracy on
        labels, else by fidelity to the teacher (top-1 agreement for class scores,
        cosine for embeddings)."""
        from hamnet.compress.distill.module_outputs import ModuleInputs
        from hamnet.compress.search.students import (
            StudentObjective,
            check_multipliers,
            module_fidelity,
            multiplier_choices,
            multiplier_warm_start,
            search_split,
            teacher_labelled,
        )
        from hamnet.core.config import HAMNetSection

        cfg = self.options(ctx.config)
        declared = None
        if source.is_module:
            from hamnet.models.sources import read_module_artifact

            declared = read_module_artifact(source.artifact.path).output_kind
        dataset, fidelity = teacher_labelled(ctx.dataset, declared)
        teacher = source.module()
        example = ModuleInputs(dataset.x_val[:1], "validation inputs").batch(slice(0, 1))
        choices = multiplier_choices(cfg.students.space, teacher, example)
        reference = module_fidelity(teacher, dataset.x_val, dataset.y_val, fidelity)
        name, budget = self._study_and_budget(ctx, teacher_candidate)
        self._note_search(
            ctx, teacher_candidate, reference, budget,
            f"students of the teacher's own {type(teacher).__name__}: {choices.describe()}; "
            f"scored by {fidelity}" + ("" if fidelity == "accuracy" else " with the teacher"),
        )  # fmt: skip
        objective = StudentObjective(
            dataset=search_split(dataset),
            teacher=source,
            base_architecture=HAMNetSection(dropout_rate=0.0),
            reference_accuracy=reference,
            max_accuracy_drop=budget,
            student_kind="multipliers",
            fidelity=fidelity,
            **self._objective_kwargs(ctx, name),
        )
        job = self._job(
            ctx, name, objective, choices.to_search_space(), teacher_candidate, inputs,
            warm=multiplier_warm_start(choices), check=check_multipliers,
        )  # fmt: skip
        # A small categorical space: a repeated student would train to the same weights,
        # so repeats are pruned in the driver and the study stops after a few times the
        # number of students (the samplers keep proposing repeats once it is exhausted).
        job.skip_repeats = True
        job.max_trials = 3 * len(choices.widths) * len(choices.depths)
        return job

    def _teacher(self, ref: str, inputs: list[Candidate], ctx: StageContext) -> Candidate:
        """The teacher: a candidate of this run by name, or a model file.

        Raises:
            ConfigError: ``ref`` is neither.
        """
        named = [c for c in inputs if c.name == ref]
        if named:
            return named[0]
        path = ctx.resolve(ref)
        if not path.is_file():
            raise ConfigError(
                f"stages.{self.name}.students.teacher must be a candidate of this run "
                f"({sorted({c.name for c in inputs})}) or a model file, but got {ref!r}"
            )
        suffix = path.suffix.lower()
        fmt = {".onnx": "onnx", ".json": "torch-module"}.get(suffix, "torch")
        return Candidate.create(
            name=f"teacher-{path.stem}", stage="load", method=fmt,
            artifact=ctx.store.put(path, fmt),
            runtime="onnxruntime" if fmt == "onnx" else "torch",
            params={"source_file": str(path)},
        )  # fmt: skip

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

    def _open_study(
        self,
        storage: str,
        name: str,
        space: Any,
        ctx: StageContext,
        *,
        directions: list[Any] | None = None,
        pruner_options: dict[str, Any] | None = None,
    ) -> Any:
        """Create or resume the study, its sampler reseeded past the trials it has.

        ``directions`` default to the stage's objectives'; ``pruner_options`` override
        the pruner's settings (a student search's fidelity steps).
        """
        from hamnet.compress.search.executor import open_study
        from hamnet.compress.search.strategies import directions as directions_of
        from hamnet.compress.search.strategies import make_pruner, make_sampler

        cfg = self.options(ctx.config)
        seed = ctx.config.seed
        directions = directions or list(directions_of(cfg.objectives))
        multi = len(directions) > 1
        study = open_study(
            storage,
            name,
            directions,
            make_sampler(cfg.strategy, space, seed=seed, multi_objective=multi),
            make_pruner(cfg.pruner, space, multi_objective=multi, **(pruner_options or {})),
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
        self, trial: Any, study_name: str, storage: str, job: _SearchJob, ctx: StageContext
    ) -> Candidate:
        attrs = trial.user_attrs
        checkpoint = Path(attrs["checkpoint"])
        fmt = str(attrs.get("format", "torch"))
        student = job.teacher is not None
        params: dict[str, Any] = {
            "study": study_name,
            "storage": _redact(storage),
            "trial_number": trial.number,
            "sampled": dict(trial.params),
            "objectives": dict(zip(job.objective_names, trial.values, strict=True)),
            "training": attrs.get("training"),
        }
        if student:
            params |= {
                "search_metrics": attrs.get("metrics"),
                "feasible": attrs.get("feasible"),
                "teacher": job.teacher.name if job.teacher else None,
                "epochs_run": attrs.get("epochs_run"),
            }
            if attrs.get("student"):
                params["student"] = attrs["student"]
        artifact = ctx.store.put(checkpoint, fmt)
        plan_file = None
        if fmt == "torch-module":
            from hamnet.models.replay import ModulePlan
            from hamnet.models.sources import read_module_artifact

            plan_name = read_module_artifact(artifact.path).plan
            if plan_name:
                plan = ModulePlan.load(Path(artifact.path).parent / plan_name)
                plan_file = str(store_plan(ctx, plan, artifact))
        return Candidate.create(
            name=f"{self.name}-{'student' if student else 'trial'}-{trial.number}",
            stage=self.name,
            method=job.method,
            artifact=artifact,
            runtime="torch",
            plan_file=plan_file,
            parent=job.teacher if job.teacher_in_run else None,
            params=params,
            architecture=attrs.get("architecture"),
            teachers=(
                [TeacherRef(name=job.teacher.name, candidate_id=job.teacher.id)]
                if job.teacher is not None
                else None
            ),
        )


@dataclass
class _SearchJob:
    """What one search runs: its study, space, objective and how trials become candidates."""

    name: str
    space: Any
    objective: Any
    objective_names: list[str]
    directions: list[Any]
    method: str
    teacher: Candidate | None = None
    teacher_in_run: bool = False
    pruner_options: dict[str, Any] = field(default_factory=dict)
    warm_start: list[dict[str, Any]] = field(default_factory=list)
    """Parameters the study tries first (enqueued when it has no trial yet)."""
    check: Any = None
    """Called on the sampled parameters in the driver: raises ``InfeasibleParams``."""
    skip_repeats: bool = False
    """Prune a trial whose student an earlier trial (not failed) already had."""
    student_key: Callable[[dict[str, Any]], Any] | None = None
    """The student a parameter dict builds (two dicts that build the same network share
    a key); None: the parameters themselves."""
    max_trials: int | None = None
    """At most this many trials, whatever the config's ``n_trials``."""

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Sample a trial's parameters; an infeasible combination prunes it undispatched."""
        from hamnet.compress.search.space import InfeasibleParams, suggest

        params = suggest(trial, self.space)
        if self.check is not None:
            self.check(params)
        if self.skip_repeats:
            from optuna.trial import TrialState

            key = self.key_of(params)
            for other in trial.study.get_trials(deepcopy=False):
                settled = other.number != trial.number and other.state != TrialState.FAIL
                if settled and self.key_of(other.params) == key:
                    raise InfeasibleParams(
                        f"the same student as trial {other.number} ({params}): not trained again"
                    )
        return params

    def key_of(self, params: dict[str, Any]) -> Any:
        """What identifies the student ``params`` build (see :attr:`student_key`)."""
        return params if self.student_key is None else self.student_key(params)

    def trial_cap(self, n_trials: int | None) -> int | None:
        """The search's trial budget: ``n_trials`` bounded by :attr:`max_trials`."""
        if self.max_trials is None:
            return n_trials
        return self.max_trials if n_trials is None else min(n_trials, self.max_trials)

    def pruner_options_for(self, cfg: SearchStageConfig) -> dict[str, Any]:
        """The pruner's options: the fidelity steps of a student search (epoch chunks)."""
        if cfg.pruner in ("hyperband", "successive_halving"):
            return dict(self.pruner_options)
        return {}


def _tracker(ctx: StageContext) -> Any:
    """The run's MLflow tracker for a stage that logs runs of its own, or None."""
    if ctx.parent_run_id is None or not ctx.config.tracking.enabled:
        return None
    from hamnet.tracking.tracker import Tracker

    return Tracker(ctx.config.tracking, base_dir=ctx.base_dir)


def _best_trials(
    study: Any, directions: Sequence[str], top_k: int, key: Callable[[dict[str, Any]], Any]
) -> list[Any]:
    """The ``top_k`` best completed trials: Pareto front first, then by the first
    objective; of trials whose parameters build the same model (same ``key``), the best."""
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not done:
        return []
    sign = 1.0 if directions[0] == "minimize" else -1.0
    front = {t.number for t in study.best_trials}
    done.sort(key=lambda t: (t.number not in front, sign * t.values[0], t.number))
    kept: list[Any] = []
    for trial in done:  # the same model twice: keep the first
        if all(key(trial.params) != key(other.params) for other in kept):
            kept.append(trial)
    return kept[:top_k]


def _redact(url: str) -> str:
    """A storage URL without its password."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url
