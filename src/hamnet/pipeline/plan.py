"""Pipeline stages: each takes the candidates so far and returns new candidates.

A stage owns one config section (``config.stages.<name>``). Adding a stage means
writing one :class:`Stage` subclass and adding it to :data:`STAGES` and
:data:`PIPELINE_ORDER`; the Prefect flow and the Python API pick it up from the plan.
"""

from __future__ import annotations

import itertools
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast

from hamnet.core.artifacts import ArtifactRef, ArtifactStore
from hamnet.core.candidate import Candidate
from hamnet.core.config import OptimizeConfig, TrainStageConfig
from hamnet.core.errors import ConfigError, ModelLoadError
from hamnet.core.hardware import HardwareProfile

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

    from hamnet.models import HAMNet
    from hamnet.training.data import Dataset

logger = logging.getLogger("hamnet.stages")


@dataclass
class StageContext:
    """What a stage may use besides its input candidates.

    Attributes:
        config: The whole run configuration.
        profile: The hardware profile candidates are measured on.
        store: Where model files go.
        base_dir: Folder relative paths in the config resolve against.
        notes: Messages the stage wants the user to see (e.g. a skipped method).
        parent_run_id: The run's MLflow parent run when tracking is on (search stages
            log their trials under it).
    """

    config: OptimizeConfig
    profile: HardwareProfile
    store: ArtifactStore
    base_dir: Path
    notes: list[str] = field(default_factory=list)
    parent_run_id: str | None = None

    @cached_property
    def dataset(self) -> Dataset:
        """The configured data set, loaded once per context.

        A HAMNet (trained here, or a ``.pt`` checkpoint) takes feature vectors, so N-D
        inputs (e.g. images) are flattened for it; an ONNX model gets them as stored.
        """
        from hamnet.training.data import load_dataset

        data = load_dataset(self.config.data, base_dir=self.base_dir)
        model = self.config.model
        is_onnx = model.source == "file" and str(model.path).lower().endswith(".onnx")
        return data if is_onnx else data.flattened()

    def resolve(self, path: str) -> Path:
        """Resolve a config path against :attr:`base_dir`."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.base_dir / p


class Stage(ABC):
    """A step of the pipeline: candidates in, new candidates out."""

    name: ClassVar[str]
    section: ClassVar[str | None] = None
    """Key under ``config.stages`` that configures the stage (None: none needed)."""

    def settings(self, config: OptimizeConfig) -> Any:
        """Return this stage's config section."""
        return getattr(config.stages, self.section) if self.section else None

    def cache_scope(self, config: OptimizeConfig) -> dict[str, Any]:
        """Return everything in the config that can change this stage's output.

        The Prefect task hashes it (with the input candidates) into the cache key, so
        changing, say, the constraints does not retrain the baseline.
        """
        from hamnet.core.version import __version__

        settings = self.settings(config)
        return {
            "hamnet": __version__,
            "stage": self.name,
            "settings": settings.model_dump(mode="json") if settings is not None else None,
            "seed": config.seed,
            "model": config.model.model_dump(mode="json"),
            "data": config.data.model_dump(mode="json"),
            "measure": config.measure.model_dump(mode="json"),
            "hardware_profile": config.hardware_profile,
        }

    def input_files(self, config: OptimizeConfig) -> list[str]:
        """Files (config paths) the stage reads besides data and model: their content
        is hashed into the cache key, so editing one reruns the stage."""
        return []

    @abstractmethod
    def run(self, inputs: list[Candidate], ctx: StageContext) -> list[Candidate]:
        """Produce new candidates from ``inputs`` (which are never modified)."""


def _child_name(parent: Candidate, suffix: str) -> str:
    return suffix if parent.stage in ("train", "load") else f"{parent.name}+{suffix}"


class TrainStage(Stage):
    """Train the baseline HAMNet described by ``model.hamnet`` on the configured data."""

    name = "train"
    section = "train"

    def run(self, inputs: list[Candidate], ctx: StageContext) -> list[Candidate]:
        from hamnet.models import HAMNet, HAMNetConfig
        from hamnet.training.trainer import set_seed, train_model

        cfg = ctx.config
        dataset = ctx.dataset
        model_cfg = HAMNetConfig.from_section(
            cfg.model.hamnet, input_size=dataset.num_features, num_classes=dataset.num_classes
        )
        set_seed(cfg.seed)
        model = HAMNet(model_cfg)
        checkpoint = ctx.store.staging_dir() / "model.pt"
        device = "cuda" if ctx.profile.device == "cuda" else "cpu"
        result = train_model(
            model,
            dataset,
            cfg.stages.train,  # type: ignore[arg-type]
            seed=cfg.seed,
            device=device,
            checkpoint_path=checkpoint,
        )
        ref = ctx.store.put(checkpoint, "torch")
        return [
            Candidate.create(
                name="baseline",
                stage=self.name,
                method="hamnet",
                artifact=ref,
                runtime="torch",
                params={
                    "architecture": model_cfg.model_dump(mode="json"),
                    "best_epoch": result.best_epoch,
                    "epochs_run": result.epochs_run,
                    "best_val_accuracy": round(result.best_val_accuracy, 6),
                    "train_seconds": round(result.seconds, 2),
                },
            )
        ]


class LoadStage(Stage):
    """Take a user's model file (hamnet ``.pt`` checkpoint or ``.onnx``) as the baseline.

    An ONNX model may have several named inputs of any rank; their names, ranks and
    static sizes must match the data's (see :mod:`hamnet.training.data` for named inputs).
    """

    name = "load"

    @staticmethod
    def check_model_file(ctx: StageContext) -> tuple[Path, str]:
        """Check the model file exists, has a known format and fits the data.

        Returns:
            The resolved path and its artifact format ("torch" or "onnx").

        Raises:
            ModelLoadError: If the file is missing, unreadable or of an unknown format.
            DataError: If its inputs (names, ranks, sizes) differ from the data's.
        """
        cfg = ctx.config.model
        assert cfg.path is not None
        path = ctx.resolve(cfg.path)
        if not path.is_file():
            raise ModelLoadError(
                f"model file {str(path)!r} does not exist (model.path; expected a hamnet "
                f".pt checkpoint or an .onnx file)"
            )
        suffix = path.suffix.lower()
        if suffix in (".pt", ".pth"):
            from hamnet.models import load_checkpoint

            got: int | None = load_checkpoint(path, trust=cfg.trust_checkpoint).config.input_size
            fmt = "torch"
        elif suffix == ".onnx":
            got = None
            _check_onnx_inputs(path, ctx.dataset)
            fmt = "onnx"
        else:
            raise ModelLoadError(
                f"model file {str(path)!r} has suffix {suffix!r}, but expected .pt, .pth or .onnx"
            )
        if got is not None:
            ctx.dataset.check_input_size(got)
        return path, fmt

    def run(self, inputs: list[Candidate], ctx: StageContext) -> list[Candidate]:
        path, fmt = self.check_model_file(ctx)
        ref = ctx.store.put(path, fmt)  # type: ignore[arg-type]
        return [
            Candidate.create(
                name="baseline",
                stage=self.name,
                method=fmt,
                artifact=ref,
                runtime="torch" if fmt == "torch" else "onnxruntime",
                params={"source_file": str(path)},
            )
        ]


def onnx_inputs(path: Path) -> dict[str, list[int | None]]:
    """The graph inputs of an ONNX file: ``{name: dims}`` (None for a dynamic axis).

    Raises:
        ModelLoadError: If the file is not a readable ONNX model or has no input.
    """
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:
        raise ModelLoadError(
            f"model file {str(path)!r} is not a readable ONNX model: {err}"
        ) from None
    initializers = {t.name for t in model.graph.initializer}
    inputs = {
        str(i.name): [d.dim_value or None for d in i.type.tensor_type.shape.dim]
        for i in model.graph.input
        if i.name not in initializers
    }
    if not inputs:
        raise ModelLoadError(f"ONNX model {str(path)!r} must have at least one input, but has none")
    return inputs


def _check_onnx_inputs(path: Path, dataset: Dataset) -> None:
    """Check an ONNX model's inputs against the data's (names, ranks, static sizes)."""
    import numpy as np

    from hamnet.core.errors import DataError

    inputs = onnx_inputs(path)
    x = dataset.x_test
    if dataset.input_names is not None:
        if sorted(inputs) != sorted(dataset.input_names):
            raise DataError(
                f"the data's named inputs must match the inputs of ONNX model {str(path)!r} "
                f"{sorted(inputs)}, but got {sorted(dataset.input_names)}"
            )
        shapes = {n: (len(x), *x.dtype[n].shape) for n in dataset.input_names}
    else:
        if len(inputs) != 1:
            raise DataError(
                f"data with one input array must match an ONNX model with one input, but "
                f"{str(path)!r} has inputs {sorted(inputs)}: store named inputs as "
                f"'x__<name>' arrays"
            )
        shapes = {next(iter(inputs)): tuple(np.shape(x))}
    for name, dims in inputs.items():
        shape = shapes[name]
        if len(dims) != len(shape):
            raise DataError(
                f"input {name!r} of ONNX model {str(path)!r} must be {len(dims)}-D "
                f"{['?' if d is None else d for d in dims]}, but the data has shape "
                f"{['N', *shape[1:]]}"
            )
        if len(dims) == 2 and dataset.input_names is None and dims[1] is not None:
            dataset.check_input_size(int(dims[1]))
        for axis, (want, got) in enumerate(zip(dims, shape, strict=True)):
            if axis > 0 and want is not None and want != got:
                raise DataError(
                    f"input {name!r} of ONNX model {str(path)!r} must have size {want} on "
                    f"axis {axis}, but the data has {got}"
                )


class SearchStage(Stage):
    """An Optuna study whose trials (HAMNets trained on Ray workers) become candidates.

    The driver asks Optuna for parameters, Ray trains and measures each trial
    (:class:`~hamnet.compress.search.objective.HAMNetObjective`), and every finished trial is
    logged as an MLflow nested run of the optimization. The study lives in an RDB, so
    the same config rerun after a crash resumes it. The ``top_k`` best trials (the
    Pareto front first when there are several objectives) become candidates with no
    parent: they are alternatives to the baseline, measured like every candidate and
    flowing on to pruning, distillation, export and quantization.
    """

    group: ClassVar[str]
    """Which group of the search space this stage samples."""

    def input_files(self, config: OptimizeConfig) -> list[str]:
        """The search-space file."""
        return [self.settings(config).space]

    def study_name(self, config: OptimizeConfig) -> str:
        """The study's name: given, or run name + stage + a hash of what defines the study.

        The budget (``n_trials``, ``timeout_seconds``), ``top_k`` and Ray settings are
        left out of the hash, so raising the budget continues the same study.
        """
        from hamnet.core.hashing import hash_json

        cfg = self.settings(config)
        if cfg.study_name:
            return str(cfg.study_name)
        defining = cfg.model_dump(
            mode="json", exclude={"n_trials", "timeout_seconds", "top_k", "ray", "storage"}
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
            open_study,
            run_search,
        )
        from hamnet.compress.search.objective import HAMNetObjective
        from hamnet.compress.search.space import load_search_space, suggest
        from hamnet.compress.search.strategies import directions, make_pruner, make_sampler

        config = ctx.config
        cfg = self.settings(config)
        space_file = ctx.resolve(cfg.space)
        full = load_search_space(space_file)
        other = "training" if self.group == "architecture" else "architecture"
        space = full.model_copy(update={other: {}})
        if not getattr(space, self.group):
            raise ConfigError(
                f"stages.{self.name}.space: {space_file} has no {self.group!r} parameters to "
                f"search, but the {self.name} stage samples that group"
            )
        workdir = ctx.store.root.parent
        storage = cfg.storage or f"sqlite:///{(workdir / 'optuna.db').resolve()}"
        name = self.study_name(config)
        multi = len(cfg.objectives) > 1
        study = open_study(
            storage,
            name,
            directions(cfg.objectives),
            make_sampler(cfg.strategy, space, seed=config.seed, multi_objective=multi),
            make_pruner(cfg.pruner, space, multi_objective=multi),
        )
        if study.trials:
            # A seeded sampler restarts its random stream in a new process: reseed it by
            # the trials already there, or a resumed study would re-propose old trials.
            study.sampler = make_sampler(
                cfg.strategy, space, seed=config.seed + len(study.trials), multi_objective=multi
            )
        objective = HAMNetObjective(
            data=config.data,
            base_dir=str(ctx.base_dir),
            base_architecture=config.model.hamnet,
            base_training=config.stages.train or TrainStageConfig(),
            objectives=tuple(cfg.objectives),
            profile=config.hardware_profile,
            out_dir=str((workdir / "trials" / name).resolve()),
            seed=config.seed,
            max_params=cfg.max_params,
            max_flops=cfg.max_flops,
            latency_threads=max(1, int(cfg.ray.cpus_per_trial)),
        )
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

    def _save_plots(
        self, study: Any, objectives: list[str], ctx: StageContext, name: str
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
                    study, target_names=objectives
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
                    zip(self.settings(ctx.config).objectives, trial.values, strict=True)
                ),
                "architecture": attrs.get("architecture"),
                "training": attrs.get("training"),
            },
        )


class NASStage(SearchStage):
    """Neural architecture search over the space's ``architecture`` genes."""

    name = "nas"
    section = "nas"
    group = "architecture"


class HPOStage(SearchStage):
    """Hyperparameter search over the space's ``training`` group for ``model.hamnet``."""

    name = "hpo"
    section = "hpo"
    group = "training"


def _tracker(ctx: StageContext) -> Any:
    """The run's MLflow tracker for a stage that logs runs of its own, or None."""
    if ctx.parent_run_id is None or not ctx.config.tracking.enabled:
        return None
    from hamnet.tracking.tracker import Tracker

    return Tracker(ctx.config.tracking, base_dir=ctx.base_dir)


def _best_trials(study: Any, objectives: list[str], top_k: int) -> list[Any]:
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


class PruneStage(Stage):
    """Physically remove attention heads and FFN channels from the baseline HAMNet.

    One candidate per configured ratio; each is fine-tuned after pruning and carries
    its pruning plan (kept head / channel indices) as a JSON file beside the store, so
    the pruned model can be rebuilt from the original with ``apply_plan``.
    """

    name = "prune"
    section = "prune"

    def run(self, inputs: list[Candidate], ctx: StageContext) -> list[Candidate]:

        cfg = ctx.config.stages.prune
        assert cfg is not None
        sources = [
            c
            for c in inputs
            if c.stage in ("train", "load", "nas", "hpo")
            and c.artifact.format == "torch"
            and not c.rejected
        ]
        if not sources:
            ctx.notes.append("prune: skipped, the baseline is not a PyTorch HAMNet checkpoint")
            return []
        out: list[Candidate] = []
        for parent in sources:
            for criterion, allocation, ratio in itertools.product(
                cfg.criteria, cfg.allocations, cfg.ratios
            ):
                out.append(self._prune(parent, criterion, allocation, ratio, ctx))
            if cfg.unstructured_sparsity:
                out.append(self._sparsify(parent, cfg.unstructured_sparsity, ctx))
        return out

    def _sparsify(self, parent: Candidate, sparsity: float, ctx: StageContext) -> Candidate:
        from hamnet.compress.pruning.unstructured import unstructured_sparsity
        from hamnet.models import load_checkpoint, save_checkpoint

        model = load_checkpoint(parent.artifact.path, trust=ctx.config.model.trust_checkpoint)
        report = unstructured_sparsity(model, sparsity)
        sparse = cast("HAMNet", report.model)
        checkpoint = save_checkpoint(sparse, ctx.store.staging_dir() / "model.pt")
        return Candidate.create(
            name=_child_name(parent, f"sparse-{round(100 * sparsity)}"),
            stage=self.name,
            method="unstructured-l1",
            artifact=ctx.store.put(checkpoint, "torch"),
            runtime="torch",
            parent=parent,
            params={
                "sparsity": sparsity,
                "sparsity_achieved": round(report.sparsity_achieved, 4),
                "dense_onnx_bytes": report.dense_onnx_bytes,
                "zipped_onnx_bytes": report.zipped_onnx_bytes,
            },
            notes=list(report.notes),
        )

    def _prune(
        self, parent: Candidate, criterion: str, allocation: str, ratio: float, ctx: StageContext
    ) -> Candidate:
        from hamnet.compress.pruning import prune_hamnet
        from hamnet.models import load_checkpoint, save_checkpoint

        cfg = ctx.config.stages.prune
        assert cfg is not None
        options: dict[str, Any] = {}
        if allocation == "rspar":
            recovery = (cfg.finetune or TrainStageConfig()).model_copy(
                update={"epochs": cfg.rspar.recovery_epochs}
            )
            options = {
                "target": cfg.rspar.target,
                "profile": ctx.profile,
                "episodes": cfg.rspar.episodes,
                "recovery": recovery,
                "tolerance": cfg.rspar.tolerance,
            }
        model = load_checkpoint(parent.artifact.path, trust=ctx.config.model.trust_checkpoint)
        result = prune_hamnet(
            model,
            ctx.dataset,
            ratio=ratio,
            criterion=criterion,
            allocation=allocation,
            schedule=cfg.schedule,
            steps=cfg.steps,
            finetune=cfg.finetune,
            seed=ctx.config.seed,
            allocation_options=options,
        )
        checkpoint = save_checkpoint(result.model, ctx.store.staging_dir() / "model.pt")
        ref = ctx.store.put(checkpoint, "torch")
        plan_dir = ctx.store.root / "plans"
        plan_dir.mkdir(parents=True, exist_ok=True)
        plan_file = result.plan.save(plan_dir / f"{ref.sha256}.json")
        suffix = f"pruned-{round(100 * ratio)}"
        if (len(cfg.criteria), len(cfg.allocations)) != (1, 1):
            suffix += f"-{criterion}-{allocation}"
        return Candidate.create(
            name=_child_name(parent, suffix),
            stage=self.name,
            method=f"{criterion}-{allocation}",
            artifact=ref,
            runtime="torch",
            parent=parent,
            params={
                "ratio": ratio,
                "criterion": criterion,
                "allocation": allocation,
                "schedule": cfg.schedule,
                "steps": cfg.steps,
                "finetune_epochs": cfg.finetune.epochs if cfg.finetune else 0,
                "layer_ratios": result.layer_ratios,
                "layer_heads": result.model.config.layer_heads,
                "layer_ffn": result.model.config.layer_ffn,
                "params_before": result.params_before,
                "params_after": result.params_after,
                "plan_file": str(plan_file),
            },
        )


class DistillStage(Stage):
    """Knowledge distillation: KD recovery of pruned candidates, and fresh students.

    Teachers are candidates of this run (by name, usually ``baseline``) or hamnet
    checkpoint files. For every pruned candidate (``recover_pruned``), the pruning plan
    is replayed on its baseline and the pruned model is recovered with the KD loss
    instead of cross-entropy, for ``train.epochs``; every configured student is a fresh
    HAMNet trained with the KD loss. Each result is a candidate whose parent is the
    pruned candidate (or, for a student, the first teacher) and whose params and MLflow
    tags name the teachers and methods.
    """

    name = "distill"
    section = "distill"

    def input_files(self, config: OptimizeConfig) -> list[str]:
        """Teachers given as checkpoint files (names of candidates are not files), and
        the unlabelled transfer set."""
        cfg = config.stages.distill
        assert cfg is not None
        files = [t for t in cfg.teachers if t.endswith((".pt", ".pth", ".onnx")) or "/" in t]
        return files + ([cfg.unlabelled_data] if cfg.unlabelled_data else [])

    def run(self, inputs: list[Candidate], ctx: StageContext) -> list[Candidate]:
        from hamnet.compress.pruning import PruningPlan, apply_plan
        from hamnet.models import HAMNet, HAMNetConfig, load_checkpoint
        from hamnet.training.trainer import set_seed

        cfg = ctx.config.stages.distill
        assert cfg is not None
        teachers = [self._teacher(ref, inputs, ctx) for ref in cfg.teachers]
        transfer = None
        if cfg.unlabelled_data:
            from hamnet.compress.distill.transfer import load_transfer_set

            transfer = load_transfer_set(
                ctx.resolve(cfg.unlabelled_data), ctx.dataset, ctx.config.data.label_column
            )
            ctx.notes.append(
                f"distill: {len(transfer)} unlabelled inputs from {cfg.unlabelled_data} "
                f"added for the distillation terms"
            )
        recipe = "+".join(str(term["method"]) for term in cfg.methods)
        out: list[Candidate] = []
        if cfg.recover_pruned:
            by_id = {c.id: c for c in inputs}
            for pruned in inputs:
                plan_file = pruned.params.get("plan_file")
                parent = by_id.get(pruned.parent_id or "")
                if pruned.stage != "prune" or not plan_file or parent is None:
                    continue
                trust = ctx.config.model.trust_checkpoint
                base = load_checkpoint(parent.artifact.path, trust=trust)
                student = apply_plan(base, PruningPlan.load(plan_file))
                out.append(
                    self._distill(
                        student, pruned, f"{pruned.name}+kd-{recipe}", teachers, cfg.train, ctx,
                        {"recovery_of": pruned.name, "started_from": "pruning plan replayed "
                         "on the baseline (KD instead of cross-entropy fine-tuning)"},
                        transfer,
                    )
                )  # fmt: skip
        dataset = ctx.dataset
        students = [
            (section.name, HAMNetConfig.from_section(
                section.hamnet, input_size=dataset.num_features, num_classes=dataset.num_classes
            ))
            for section in cfg.students
        ]  # fmt: skip
        found = [c for c in inputs if c.stage == "nas" and c.params.get("architecture")]
        students += [
            (c.name, HAMNetConfig.model_validate(c.params["architecture"]))
            for c in found[: cfg.nas_students]
        ]
        if cfg.nas_students and not found:
            ctx.notes.append("distill: nas_students is set, but no nas candidate exists")
        for student_name, model_cfg in students:
            set_seed(ctx.config.seed)
            out.append(
                self._distill(
                    HAMNet(model_cfg), teachers[0][0], f"student-{student_name}+kd-{recipe}",
                    teachers, cfg.student_train, ctx,
                    {"student": student_name, "architecture": model_cfg.model_dump(mode="json")},
                    transfer,
                )
            )  # fmt: skip
        if not out:
            ctx.notes.append(
                "distill: nothing to distill (no pruned candidates and no students configured)"
            )
        return out

    def _teacher(
        self, ref: str, inputs: list[Candidate], ctx: StageContext
    ) -> tuple[Candidate, nn.Module]:
        """A teacher by candidate name or file: a HAMNet checkpoint is loaded as a torch
        model; any other model (e.g. the ONNX baseline of a conv net) teaches through its
        logits, run in its runtime (see
        :class:`~hamnet.compress.distill.session_teacher.SessionTeacher`).
        """
        from hamnet.models import load_checkpoint

        trust = ctx.config.model.trust_checkpoint
        named = [c for c in inputs if c.name == ref]
        if named:
            candidate = named[0]
            if candidate.artifact.format != "torch":
                return candidate, self._session_teacher(candidate, ctx)
            return candidate, load_checkpoint(candidate.artifact.path, trust=trust)
        path = ctx.resolve(ref)
        if not path.is_file():
            raise ConfigError(
                f"distill teacher {ref!r} is neither a candidate of this run (candidates: "
                f"{sorted({c.name for c in inputs})}) nor an existing hamnet checkpoint or "
                f"ONNX file"
            )
        if path.suffix == ".onnx":
            candidate = Candidate.create(
                name=f"teacher-{path.stem}", stage="load", method="onnx",
                artifact=ctx.store.put(path, "onnx"), runtime="onnxruntime",
                params={"source_file": str(path)},
            )  # fmt: skip
            return candidate, self._session_teacher(candidate, ctx)
        model = load_checkpoint(path, trust=trust)
        ctx.dataset.check_input_size(model.config.input_size)
        ref_file = ctx.store.put(path, "torch")
        return (
            Candidate.create(
                name=f"teacher-{path.stem}", stage="load", method="torch", artifact=ref_file,
                runtime="torch", params={"source_file": str(path)},
            ),
            model,
        )  # fmt: skip

    @staticmethod
    def _session_teacher(candidate: Candidate, ctx: StageContext) -> nn.Module:
        from hamnet.backends.session import load_session
        from hamnet.compress.distill.session_teacher import LAYER_METHODS, SessionTeacher

        cfg = ctx.config.stages.distill
        assert cfg is not None
        layered = sorted({str(t["method"]) for t in cfg.methods} & LAYER_METHODS)
        if layered:
            raise ConfigError(
                f"distill methods {layered} read the teacher's hidden layers, but teacher "
                f"{candidate.name!r} is a {candidate.artifact.format} model that gives logits "
                f"only; use logit-based methods (soft, relational, multi_teacher)"
            )
        session = load_session(candidate.artifact, candidate.runtime, ctx.profile)
        return SessionTeacher(session, candidate.artifact.sha256)

    def _distill(
        self,
        student: HAMNet,
        parent: Candidate,
        name: str,
        teachers: list[tuple[Candidate, nn.Module]],
        train_cfg: TrainStageConfig,
        ctx: StageContext,
        extra: dict[str, Any],
        transfer: np.ndarray | None = None,
    ) -> Candidate:
        from hamnet.compress.distill.train import distill_model

        cfg = ctx.config.stages.distill
        assert cfg is not None
        checkpoint = ctx.store.staging_dir() / "model.pt"
        device = "cuda" if ctx.profile.device == "cuda" else "cpu"
        result = distill_model(
            student,
            [model for _, model in teachers],
            ctx.dataset,
            cfg.methods,
            train_cfg,
            ce_weight=cfg.ce_weight,
            cache_dir=ctx.store.root / "teacher-outputs" if cfg.cache_teacher_outputs else None,
            teacher_ids=[c.artifact.sha256 for c, _ in teachers],
            seed=ctx.config.seed,
            device=device,
            checkpoint_path=checkpoint,
            unlabelled_x=transfer,
        )
        return Candidate.create(
            name=name,
            stage=self.name,
            method="kd-" + "+".join(result.methods),
            artifact=ctx.store.put(checkpoint, "torch"),
            runtime="torch",
            parent=parent,
            params={
                **extra,
                "teachers": [c.name for c, _ in teachers],
                "teacher_ids": [c.id for c, _ in teachers],
                "methods": cfg.methods,
                "ce_weight": cfg.ce_weight,
                "epochs": train_cfg.epochs,
                "augment": train_cfg.augment,
                "epochs_run": result.train.epochs_run,
                "best_val_accuracy": round(result.train.best_val_accuracy, 6),
                "teacher_cache_files": [str(p) for p in result.teacher_cache_files],
                "teacher_cache_hits": result.teacher_cache_hits,
                "unlabelled_samples": 0 if transfer is None else len(transfer),
                "layer_heads": student.config.layer_heads,
                "layer_ffn": student.config.layer_ffn,
            },
        )


FUSED_NOTE = (
    "Attention exported as ONNX Runtime's com.microsoft.Attention (one node per block instead "
    "of ~17): runs in ONNX Runtime only."
)


class ExportStage(Stage):
    """Export every torch candidate to ONNX and OpenVINO IR, each checked for parity."""

    name = "export"
    section = "export"

    def run(self, inputs: list[Candidate], ctx: StageContext) -> list[Candidate]:
        from hamnet.backends.export import check_parity, convert_openvino, export_onnx
        from hamnet.backends.session import load_session
        from hamnet.models import load_checkpoint

        cfg = ctx.config.stages.export
        assert cfg is not None
        runtimes = ctx.profile.runtime_names
        x = ctx.dataset.x_test[: cfg.parity_samples]
        out: list[Candidate] = []
        for parent in inputs:
            # A rejected parent (e.g. a pruned model no faster in eager PyTorch, where
            # Python overhead dominates) is still exported: its exports can be faster.
            if parent.artifact.format != "torch":
                continue
            model = load_checkpoint(parent.artifact.path, trust=ctx.config.model.trust_checkpoint)
            reference = load_session(parent.artifact, "torch", ctx.profile)
            staging = ctx.store.staging_dir()
            onnx_path = export_onnx(
                model, model.config.input_size, staging / "model.onnx", opset=cfg.opset
            )
            onnx_ref = ctx.store.put(onnx_path, "onnx")
            # (runtime, model, attention fused into ORT contrib ops)
            targets: list[tuple[str, ArtifactRef, bool]] = []
            ort = "onnx" in cfg.formats and "onnxruntime" in runtimes
            if ort:
                targets.append(("onnxruntime", onnx_ref, False))
            if "openvino" in cfg.formats and "openvino" in runtimes:
                xml = convert_openvino(onnx_ref.path, staging / "model.xml", compress_to_fp16=False)
                targets.append(("openvino", ctx.store.put(xml, "openvino"), False))
            # One token: attention is already one linear map, there is nothing to fuse.
            if ort and cfg.ort_fused_attention and model.config.num_tokens > 1:
                fused_path = export_onnx(
                    model,
                    model.config.input_size,
                    ctx.store.staging_dir() / "model.onnx",
                    opset=cfg.opset,
                    ort_fused_attention=True,
                )
                targets.append(("onnxruntime", ctx.store.put(fused_path, "onnx"), True))
            for runtime, ref, fused in targets:
                session = load_session(ref, runtime, ctx.profile)
                diff = check_parity(reference, session, x, atol=cfg.parity_atol)
                out.append(
                    Candidate.create(
                        name=_child_name(parent, f"{runtime}{'-fused' if fused else ''}-fp32"),
                        stage=self.name,
                        method=f"export_{ref.format}{'_ort_fused' if fused else ''}",
                        artifact=ref,
                        runtime=runtime,  # type: ignore[arg-type]
                        parent=parent,
                        params={
                            "opset": cfg.opset,
                            "parity_atol": cfg.parity_atol,
                            "ort_fused_attention": fused,
                        },
                        parity_max_abs_diff=diff,
                        notes=[FUSED_NOTE] if fused else [],
                    )
                )
        skipped = [f for f in cfg.formats if {"onnx": "onnxruntime"}.get(f, f) not in runtimes]
        if skipped:
            ctx.notes.append(
                f"export: {skipped} skipped, the profile {ctx.profile.name!r} lists runtimes "
                f"{runtimes}"
            )
        return out


class QuantizeStage(Stage):
    """Quantize every FP32 ONNX candidate with each configured method."""

    name = "quantize"
    section = "quantize"

    def run(self, inputs: list[Candidate], ctx: StageContext) -> list[Candidate]:
        from hamnet.backends.export import max_abs_diff
        from hamnet.backends.session import load_session
        from hamnet.compress.quantize.base import get_quantizer

        cfg = ctx.config.stages.quantize
        assert cfg is not None
        sources = [c for c in inputs if c.artifact.format == "onnx" and c.precision == "fp32"]
        if not sources:
            ctx.notes.append("quantize: no FP32 ONNX candidate to quantize (is export enabled?)")
            return []
        calibration = ctx.dataset.calibration_samples(cfg.calibration_samples, ctx.config.seed)
        x = ctx.dataset.x_test[:64]
        out: list[Candidate] = []
        for source in sources:
            source_session = load_session(source.artifact, source.runtime, ctx.profile)
            for method_name in cfg.methods:
                method = get_quantizer(method_name)
                reason = method.supported(ctx.profile) or method.applicable(
                    Path(source.artifact.path)
                )
                if reason:
                    ctx.notes.append(f"quantize: {method_name} skipped for {source.name}: {reason}")
                    continue
                main = method.quantize(
                    Path(source.artifact.path),
                    ctx.store.staging_dir(),
                    calibration=calibration if method.needs_calibration else None,
                    cfg=cfg,
                    profile=ctx.profile,
                )
                ref = ctx.store.put(main, method.output_format)  # type: ignore[arg-type]
                parent = _runtime_sibling(source, inputs, method.runtime)
                session = load_session(ref, method.runtime, ctx.profile)
                out.append(
                    Candidate.create(
                        name=_child_name(parent, method_name.replace("_", "-")),
                        stage=self.name,
                        method=method_name,
                        artifact=ref,
                        runtime=method.runtime,  # type: ignore[arg-type]
                        parent=parent,
                        precision=method.precision,  # type: ignore[arg-type]
                        params=_quantize_params(method_name, cfg, ctx.profile),
                        parity_max_abs_diff=max_abs_diff(source_session, session, x),
                        notes=[*method.notes, *method.extra_notes],
                    )
                )
        return out


def _runtime_sibling(source: Candidate, inputs: list[Candidate], runtime: str) -> Candidate:
    """The FP32 candidate in ``runtime`` made from the same model as ``source``.

    A quantized OpenVINO model is compared with the FP32 OpenVINO model, not with the
    ONNX Runtime one it was converted from, so "faster than its parent" is a fair test.
    """
    if source.runtime == runtime:
        return source
    for c in inputs:
        if c.parent_id == source.parent_id and c.runtime == runtime and c.precision == "fp32":
            return c
    return source


def _quantize_params(method: str, cfg: Any, profile: HardwareProfile) -> dict[str, Any]:
    from hamnet.compress.quantize.base import resolve_reduce_range

    params: dict[str, Any] = {"calibration_samples": cfg.calibration_samples}
    if method.startswith("ort_"):
        params["per_channel"] = cfg.per_channel
        params["reduce_range"] = resolve_reduce_range(cfg, profile)
    return params


STAGES: dict[str, type[Stage]] = {
    "load": LoadStage,
    "train": TrainStage,
    "nas": NASStage,
    "hpo": HPOStage,
    "prune": PruneStage,
    "distill": DistillStage,
    "export": ExportStage,
    "quantize": QuantizeStage,
}
"""Every stage by name."""

PIPELINE_ORDER: tuple[str, ...] = (
    "train",
    "nas",
    "hpo",
    "prune",
    "distill",
    "export",
    "quantize",
)
"""Order in which configured stages run (the baseline comes from ``load`` or ``train``)."""


def build_plan(config: OptimizeConfig) -> list[Stage]:
    """Return the ordered stages this configuration runs.

    The first stage makes the baseline: ``train`` when ``model.source`` is ``train``,
    ``load`` when it is ``file``. Every later stage runs when its section is set.
    """
    plan: list[Stage] = [LoadStage() if config.model.source == "file" else TrainStage()]
    for name in PIPELINE_ORDER:
        stage = STAGES[name]()
        if name == "train" or stage.settings(config) is None:
            continue
        plan.append(stage)
    return plan


def stage_by_name(name: str) -> Stage:
    """Instantiate a stage from :data:`STAGES`.

    Raises:
        ConfigError: If the name is unknown.
    """
    try:
        return STAGES[name]()
    except KeyError:
        raise ConfigError(f"unknown stage {name!r}: expected one of {sorted(STAGES)}") from None
