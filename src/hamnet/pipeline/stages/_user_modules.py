"""The stages' path for a user's own torch module (format ``"torch-module"``).

A user's module (an ``nn.Module`` the API was given, a whole-module file, a
torchvision/timm architecture with weights, a Hugging Face directory, or an ONNX file
that onnx2torch converts) is stored as a module artifact
(:mod:`hamnet.models.sources`): where its root comes from, its inputs, and, for pruned
or distilled children, the replayable pruning plan and the new weights. This module is
what the ``load``, ``prune``, ``distill`` and ``export`` stages do with such models:

* :func:`ingest_model_ref` turns ``model.path`` (a source reference) into a baseline
  module artifact, its inputs read from the data;
* :func:`prune_candidate` prunes it with torch-pruning's dependency graph
  (:func:`hamnet.compress.pruning.modules.prune_module`);
* :func:`recover_candidate` recovers a pruned child by distillation from its parent
  (:func:`hamnet.compress.distill.modules.distill_module`), on the training split plus
  any unlabelled transfer set;
* :func:`student_candidate` builds a smaller student of the module's own architecture
  (:func:`hamnet.compress.students.shrink.shrink_module`: width/depth multipliers) and
  distills it from the original the same way;
* :func:`export_arguments` gives the exporter the module's example inputs and names.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from hamnet.core.candidate import Candidate
from hamnet.core.config import DistillStageConfig, PruneStageConfig, TrainStageConfig
from hamnet.pipeline.stages.base import StageContext, child_name, pruned_suffix, store_plan

if TYPE_CHECKING:
    import numpy as np

    from hamnet.models.sources import InputSpec
    from hamnet.training.data import Dataset

MODULE_FORMAT = "torch-module"
"""The artifact format of a user's module."""

CALIBRATION_SAMPLES = 256
"""Training rows the pruning criteria and allocations read (gradients, sensitivity)."""

CALIBRATION_BATCH = 32


def is_module(candidate: Candidate) -> bool:
    """Whether ``candidate`` is a user's torch module (not a HAMNet, not ONNX)."""
    return candidate.artifact.format == MODULE_FORMAT


def input_spec(dataset: Dataset) -> InputSpec:
    """The model inputs the data feeds: one array, or one field per named input."""
    from hamnet.models.sources import InputSpec

    return InputSpec.of(dataset.x_train[:1])


def check_model_ref(ctx: StageContext) -> Path:
    """Load ``model.path`` (a module source reference) and run it on the data, before any
    stage runs; return the path it names (the reference itself for a name).

    Raises:
        ModelLoadError, ConfigError, MissingDependencyError, DataError: As
            :func:`ingest_model_ref`.
    """
    _load_ref(ctx)
    ref = str(ctx.config.model.path)
    return Path(ref) if ":" in ref.split("/")[0] else ctx.resolve(ref)


def _load_ref(ctx: StageContext) -> tuple[Any, Any]:
    """The source ``model.path`` names and its module, checked to run on the data."""
    from hamnet.models.sources import load_source, parse_model_ref

    cfg = ctx.config.model
    assert cfg.path is not None
    ref = cfg.path
    if ":" not in ref.split("/")[0]:
        ref = str(ctx.resolve(ref))
    weights = str(ctx.resolve(cfg.weights)) if cfg.weights else None
    source = parse_model_ref(ref, weights=weights, task=cfg.task)
    module = load_source(source, base_dir=ctx.base_dir, trust_checkpoint=cfg.trust_checkpoint)
    check_runs(module, ctx.dataset)
    return source, module


def check_module_student(ctx: StageContext) -> None:
    """Build ``stages.distill.student`` from ``model.path`` (a module source) once, so a
    student that cannot be built fails before any stage runs (for a preflight).

    Does nothing when no student is configured or the model is not a module source.

    Raises:
        ConfigError: The student cannot be built (no repeated blocks for a depth below
            1, a width that leaves a group empty, a module that does not trace).
    """
    from hamnet.compress.students.shrink import shrink_module
    from hamnet.models.sources import example_inputs

    distill = ctx.config.stages.distill
    if distill is None or distill.student is None or not ctx.config.model.path:
        return
    _, module = _load_ref(ctx)
    section = distill.student
    shrink_module(
        module, example_inputs(input_spec(ctx.dataset)), width=section.width,
        depth=section.depth, keep=list(section.keep), criterion=section.criterion,
        calibration=calibration_batches(ctx.dataset, ctx.config.seed),
        seed=ctx.config.seed,
    )  # fmt: skip


def ingest_model_ref(ctx: StageContext) -> Path:
    """Store ``model.path`` (a module source reference) as the baseline module artifact.

    Returns:
        The artifact's main file, in a staging folder of the store.

    Raises:
        ModelLoadError: The source does not load (e.g. a whole-module file without
            ``model.trust_checkpoint``, a Hugging Face directory that needs remote code).
        ConfigError: An unknown torchvision/timm name.
        DataError: The data's inputs do not run the module.
    """
    from hamnet.models.sources import save_module_artifact

    cfg = ctx.config.model
    source, module = _load_ref(ctx)
    spec = input_spec(ctx.dataset)
    from hamnet.families.base import ModelSource, detect_family

    dims = {name: [None, *shape[1:]] for name, shape in spec.shapes().items()}
    family = detect_family(ModelSource(module=module, input_dims=dims))
    return save_module_artifact(
        ctx.store.staging_dir(), source=source, inputs=spec, output_kind=_task_kind(cfg.task),
        family=family.name,
    )  # fmt: skip


def declared_output_kind(ctx: StageContext) -> str | None:
    """What the run's model says its output is: a module artifact's ``output_kind``, a
    Hugging Face directory's task, ``model.task``; None when nothing says."""
    cfg = ctx.config.model
    if cfg.source != "file" or not cfg.path:
        return None
    if cfg.task != "auto":
        return _task_kind(cfg.task)
    if cfg.path.startswith(("torchvision:", "timm:")):
        return None
    path = ctx.resolve(cfg.path)
    if path.suffix.lower() == ".json" and path.is_file():
        from hamnet.models.sources import read_module_artifact

        return read_module_artifact(path).output_kind
    if path.is_dir():
        from hamnet.models.sources import hf_task

        return _task_kind(hf_task(path))
    return None


def _task_kind(task: str) -> Literal["class_scores", "embedding"] | None:
    if task == "embedding":
        return "embedding"
    return "class_scores" if task == "classification" else None


def check_runs(module: Any, dataset: Dataset) -> None:
    """Run ``module`` on two training rows.

    Raises:
        DataError: The data's inputs do not fit the module (names, shapes, dtypes).
    """
    from hamnet.core.errors import DataError
    from hamnet.models.replay import check_module_runs

    check_module_runs(
        module, to_torch(dataset.x_train[:2]), what="the data's inputs", error=DataError
    )


def _describe(x: np.ndarray) -> str:
    if x.dtype.names:
        return "named inputs " + ", ".join(
            f"{n} {list(x[n].shape)} {x[n].dtype}" for n in x.dtype.names
        )
    return f"an input of shape {list(x.shape)} ({x.dtype})"


def to_torch(x: np.ndarray) -> Any:
    """A batch as the module takes it: a tensor, or a dict of tensors for named inputs."""
    import numpy as np
    import torch

    if x.dtype.names:
        return {n: torch.from_numpy(np.ascontiguousarray(x[n])) for n in x.dtype.names}
    return torch.from_numpy(np.ascontiguousarray(x))


def calibration_batches(dataset: Dataset, seed: int) -> list[tuple[Any, Any]]:
    """``(inputs, labels or None)`` batches of training rows for the pruning criteria.

    Label-free data (reference outputs) gives None: the criteria then compare with the
    unpruned model's outputs.
    """
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    count = min(CALIBRATION_SAMPLES, len(dataset.x_train))
    index = np.sort(rng.choice(len(dataset.x_train), size=count, replace=False))
    labelled = dataset.targets == "labels"
    batches = []
    for start in range(0, count, CALIBRATION_BATCH):
        rows = index[start : start + CALIBRATION_BATCH]
        y = torch.from_numpy(dataset.y_train[rows]) if labelled else None
        batches.append((to_torch(dataset.x_train[rows]), y))
    return batches


def prune_candidate(
    parent: Candidate, criterion: str, allocation: str, ratio: float, ctx: StageContext,
    cfg: PruneStageConfig, allocation_options: dict[str, Any],
) -> Candidate:  # fmt: skip
    """Prune a module candidate; the child stores the plan and the pruned weights.

    A parent that is itself pruned or shrunk (a student of a search) has a plan: the
    child's plan is the parent's followed by the new one, so it replays from the root.

    Raises:
        ConfigError: The module does not trace, has no prunable layer group, is too
            small for ``ratio``, or ``keep`` names an unknown module (before any work).
    """
    from hamnet.compress.pruning.modules import prune_module
    from hamnet.models.sources import (
        example_inputs,
        load_module_artifact,
        read_module_artifact,
        save_module_artifact,
    )

    path = Path(parent.artifact.path)
    artifact = read_module_artifact(path)
    model = load_module_artifact(path, trust_checkpoint=ctx.config.model.trust_checkpoint)
    result = prune_module(
        model,
        example_inputs(artifact.inputs),
        ratio=ratio,
        criterion=criterion,
        allocation=allocation,
        keep=list(cfg.keep),
        calibration=calibration_batches(ctx.dataset, ctx.config.seed),
        seed=ctx.config.seed,
        allocation_options=allocation_options or None,
    )
    plan = result.plan
    if artifact.plan:  # a pruned or shrunk parent: the child's plan starts from the root
        from hamnet.models.replay import ModulePlan

        plan = ModulePlan.load(path.parent / artifact.plan).followed_by(result.plan)
    main = save_module_artifact(
        ctx.store.staging_dir(), source=_source(path, artifact), inputs=artifact.inputs,
        module=result.model, plan=plan, output_kind=artifact.output_kind,
        family=artifact.family,
    )  # fmt: skip
    ref = ctx.store.put(main, MODULE_FORMAT)
    plan_file = store_plan(ctx, plan, ref)
    suffix = pruned_suffix(ratio, criterion, allocation, cfg)
    return Candidate.create(
        name=child_name(parent, suffix),
        stage="prune",
        method=f"{criterion}-{allocation}",
        artifact=ref,
        runtime="torch",
        parent=parent,
        params={
            "ratio": ratio,
            "criterion": criterion,
            "allocation": allocation,
            "groups": [g.name for g in result.groups],
            "layer_ratios": result.layer_ratios,
            "params_before": result.params_before,
            "params_after": result.params_after,
            "finetune_epochs": 0,
        },
        plan_file=str(plan_file),
    )


def recover_candidate(
    pruned: Candidate, teacher: Candidate, ctx: StageContext, cfg: DistillStageConfig,
    transfer: np.ndarray | None,
) -> Candidate:  # fmt: skip
    """Recover a pruned module by distillation from ``teacher`` (its unpruned parent).

    The student trains on the training split (labels when the data has them) and, when
    given, the unlabelled transfer set, which the teacher labels by its outputs.
    """
    from hamnet.core.candidate import TeacherRef
    from hamnet.models.sources import load_module_artifact, read_module_artifact

    trust = ctx.config.model.trust_checkpoint
    teacher_model = load_module_artifact(Path(teacher.artifact.path), trust_checkpoint=trust)
    path = Path(pruned.artifact.path)
    artifact = read_module_artifact(path)
    student = load_module_artifact(path, trust_checkpoint=trust)
    result = _distill(
        teacher_model, student, artifact.output_kind, ctx, cfg, cfg.train, transfer,
        hidden_map="auto" if cfg.hidden_states else None,
    )  # fmt: skip
    main = _save_child(ctx, path, artifact, result.model, path.parent / artifact.plan
                       if artifact.plan else None)  # fmt: skip
    return Candidate.create(
        name=f"{pruned.name}+kd-{result.objective}",
        stage="distill",
        method=f"kd-{result.objective}" + ("+hidden" if result.mapped_layers else ""),
        artifact=ctx.store.put(main, MODULE_FORMAT),
        runtime="torch",
        parent=pruned,
        teachers=[TeacherRef(name=teacher.name, candidate_id=teacher.id)],
        params={
            "recovery_of": pruned.name,
            **_distill_params(result, cfg.train.epochs, transfer),
        },
        plan_file=pruned.plan_file,
    )


def student_candidate(
    original: Candidate, ctx: StageContext, cfg: DistillStageConfig,
    transfer: np.ndarray | None,
) -> Candidate:  # fmt: skip
    """A smaller student of ``original``'s own architecture, distilled from it.

    The student is built by :func:`~hamnet.compress.students.shrink.shrink_module` from
    ``stages.distill.student`` (``width``/``depth`` multipliers, initialised from the
    original's weights), then trained by distillation from the original as a pruned
    child is (logits for class scores, cosine/MSE for embeddings), hidden states matched
    on the kept blocks and their teacher blocks. It is stored like a pruned child: the
    original's source, the plan (dropped blocks, then torch-pruning's history) and the
    weights.

    Raises:
        ConfigError: Before any training: the original has no repeated blocks for a
            depth below 1, a width leaves a group empty, or it does not trace.
    """
    from hamnet.compress.students.shrink import shrink_module
    from hamnet.core.candidate import TeacherRef
    from hamnet.models.sources import example_inputs, load_module_artifact, read_module_artifact

    section = cfg.student
    assert section is not None
    trust = ctx.config.model.trust_checkpoint
    path = Path(original.artifact.path)
    artifact = read_module_artifact(path)
    teacher = load_module_artifact(path, trust_checkpoint=trust)
    shrunk = shrink_module(
        teacher, example_inputs(artifact.inputs), width=section.width, depth=section.depth,
        keep=list(section.keep), criterion=section.criterion,
        calibration=calibration_batches(ctx.dataset, ctx.config.seed), seed=ctx.config.seed,
    )  # fmt: skip
    train = section.train or cfg.train
    hidden: Any = None
    if cfg.hidden_states:
        hidden = dict(shrunk.layer_map) if shrunk.layer_map else "auto"
    result = _distill(
        teacher, shrunk.model, artifact.output_kind, ctx, cfg, train, transfer, hidden_map=hidden
    )
    main = _save_child(ctx, path, artifact, result.model, shrunk.plan)
    ref = ctx.store.put(main, MODULE_FORMAT)
    plan_file = store_plan(ctx, shrunk.plan, ref)
    tag = f"w{section.width:g}-d{section.depth:g}"
    return Candidate.create(
        name=f"{original.name}-student-{tag}+kd-{result.objective}",
        stage="distill",
        method=f"student-{tag}+kd-{result.objective}" + ("+hidden" if result.mapped_layers else ""),
        artifact=ref,
        runtime="torch",
        parent=original,
        teachers=[TeacherRef(name=original.name, candidate_id=original.id)],
        params={
            "student_of": original.name,
            "width": section.width,
            "depth": section.depth,
            "criterion": section.criterion,
            "params_before": shrunk.params_before,
            "params_after": shrunk.params_after,
            "stacks": {s.container or "<root>": s.size for s in shrunk.stacks},
            "kept_blocks": {
                s.container or "<root>": k for s, k in zip(shrunk.stacks, shrunk.kept, strict=True)
            },
            **_distill_params(result, train.epochs, transfer),
        },
        plan_file=str(plan_file),
    )


def _distill(
    teacher: Any, student: Any, output_kind: str | None, ctx: StageContext,
    cfg: DistillStageConfig, train: TrainStageConfig, transfer: np.ndarray | None, *,
    hidden_map: Any,
) -> Any:  # fmt: skip
    """Distill ``student`` from ``teacher`` on the training split (plus the transfer set)."""
    import numpy as np

    from hamnet.compress.distill.modules import distill_module

    data = ctx.dataset
    labelled = data.targets == "labels"
    train_x, train_y = data.x_train, (data.y_train if labelled else None)
    if transfer is not None:
        train_x, train_y = np.concatenate([train_x, transfer]), None
    return distill_module(
        teacher,
        student,
        train_x,
        train_y,
        objective=cfg.objective,
        class_scores=output_kind == "class_scores" or labelled,
        hidden_map=hidden_map,
        epochs=train.epochs,
        lr=train.learning_rate,
        batch_size=train.batch_size,
        val_x=data.x_val,
        val_y=data.y_val if labelled else None,
        seed=ctx.config.seed,
    )


def _distill_params(result: Any, epochs: int, transfer: np.ndarray | None) -> dict[str, Any]:
    """The candidate params every distilled module records."""
    return {
        "objective": result.objective,
        "mapped_layers": dict(result.mapped_layers),
        "epochs": epochs,
        "best_epoch": max((r["epoch"] for r in result.history if r.get("kept")), default=0),
        "distill_loss_before": round(float(result.loss_before), 6),
        "distill_loss_after": round(float(result.loss_after), 6),
        "unlabelled_samples": 0 if transfer is None else len(transfer),
    }


def _save_child(ctx: StageContext, path: Path, artifact: Any, module: Any, plan: Any) -> Path:
    """Store ``module`` as a child of the artifact at ``path`` (same source, ``plan``)."""
    from hamnet.models.sources import save_module_artifact

    return save_module_artifact(
        ctx.store.staging_dir(), source=_source(path, artifact), inputs=artifact.inputs,
        module=module, plan=plan, output_kind=artifact.output_kind, family=artifact.family,
    )  # fmt: skip


def _source(path: Path, artifact: Any) -> Any:
    """The artifact's source with a path inside the artifact (its root pickle) made
    absolute, so a child artifact written elsewhere finds (and copies) it."""
    source = artifact.source
    if source.path and not Path(source.path).is_absolute():
        return source.model_copy(update={"path": str(path.parent / source.path)})
    return source


def load_module_transfer(path: Path, dataset: Dataset) -> np.ndarray:
    """The unlabelled transfer set of a user's module: an ``.npz`` with ``x`` or named
    ``x__<input>`` arrays laid out like the data's inputs (labels, if any, are ignored).

    Raises:
        DataError: A missing or unreadable file, or inputs unlike the data's.
    """
    import numpy as np

    from hamnet.backends.session import pack_inputs
    from hamnet.core.errors import DataError

    if not path.is_file() or path.suffix.lower() != ".npz":
        raise DataError(
            f"distill.unlabelled_data must be an existing .npz file for a user's model, "
            f"but got {str(path)!r}"
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            named = {k[3:]: archive[k] for k in archive.files if k.startswith("x__")}
            x = pack_inputs(named) if named else archive["x"] if "x" in archive.files else None
    except (OSError, ValueError) as err:
        raise DataError(f"distill.unlabelled_data {str(path)!r} is not readable: {err}") from None
    want = dataset.x_train
    if x is None or x.dtype.names != want.dtype.names or x.shape[1:] != want.shape[1:]:
        raise DataError(
            f"distill.unlabelled_data must hold inputs like the data ({_describe(want[:0])}), "
            f"but {str(path)!r} holds "
            + ("no 'x' or 'x__<input>' array" if x is None else _describe(x[:0]))
        )
    if not x.dtype.names:
        x = x.astype(want.dtype)
    return x


def export_arguments(path: Path) -> tuple[Any, list[str] | None, dict[str, dict[int, str]]]:
    """Example inputs, input names and dynamic axes to export a module artifact with.

    The batch axis is dynamic; for named integer inputs of two or more axes (token ids,
    masks) the sequence axis too.
    """
    from hamnet.models.sources import example_inputs, read_module_artifact

    spec = read_module_artifact(path).inputs
    example = example_inputs(spec)
    if isinstance(example, dict):
        names = list(example)
        axes: dict[str, dict[int, str]] = {}
        for name, tensor in example.items():
            axes[name] = {0: "batch"}
            if not tensor.is_floating_point() and tensor.dim() >= 2:
                axes[name][1] = "sequence"
        return example, names, axes
    return example, ["input"], {"input": {0: "batch"}}
