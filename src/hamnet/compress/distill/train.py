"""Train a student with a distillation loss, through the foundation's trainer.

:func:`distill_model` is the one entry point the pipeline stage and the benchmark use:
it builds the combined loss from a plain spec, computes every teacher's outputs on the
training set once (cached as ``.npz`` files keyed by teacher, data and captured layers,
so reruns and later epochs reuse them), and hands :func:`hamnet.training.train_model` a
loss hook that looks the teacher rows up by sample index. The loss module's learned
parts (feature projections) train alongside the student as extra modules.

With mixup/cutmix the inputs of a batch are new mixtures every epoch, so cached rows
would describe the wrong inputs: the teachers then run on each mixed batch instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hamnet.compress.distill.capture import model_outputs
from hamnet.compress.distill.kd import DistillPlan, build_distill_loss
from hamnet.compress.distill.outputs import DistillOutputs
from hamnet.compress.distill.teacher_cache import TeacherOutputs, cache_key, compute_teacher_outputs
from hamnet.core.config import TrainStageConfig
from hamnet.core.errors import ConfigError, DataError
from hamnet.core.hashing import sha256
from hamnet.training.data import Dataset
from hamnet.training.trainer import UNLABELLED, Batch, TrainResult, train_model

logger = logging.getLogger("hamnet.distill")


@dataclass
class DistillResult:
    """What a distillation run did.

    Attributes:
        train: The trainer's result (history, best epoch, validation accuracy).
        methods: The loss terms' method names, in spec order.
        teacher_cache_files: The cached teacher-output files used (empty when the
            teachers ran live on every batch).
        teacher_cache_hits: How many of those files already existed before this run.
        last_terms: Each loss term's value on the last training batch (unweighted),
            plus ``ce`` and ``total``.
    """

    train: TrainResult
    methods: list[str]
    teacher_cache_files: list[Path] = field(default_factory=list)
    teacher_cache_hits: int = 0
    last_terms: dict[str, float] = field(default_factory=dict)


def model_digest(model: nn.Module) -> str:
    """A sha256 of a model's parameters and buffers (for cache keys of in-memory teachers)."""
    digest = sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def array_digest(x: np.ndarray) -> str:
    """A sha256 of an array's shape, dtype and bytes."""
    digest = sha256(f"{x.shape}{x.dtype}")
    digest.update(np.ascontiguousarray(x).tobytes())
    return digest.hexdigest()


def distill_model(
    student: nn.Module,
    teachers: Sequence[nn.Module],
    dataset: Dataset,
    spec: Sequence[Mapping[str, Any]] | Mapping[str, Any],
    cfg: TrainStageConfig,
    *,
    ce_weight: float = 0.5,
    cache_dir: str | Path | None = None,
    teacher_ids: Sequence[str] | None = None,
    seed: int = 0,
    device: str = "cpu",
    checkpoint_path: str | Path | None = None,
    progress: bool = True,
    unlabelled_x: np.ndarray | None = None,
    on_epoch_end: Callable[[dict[str, float]], None] | None = None,
) -> DistillResult:
    """Train ``student`` in place on ``dataset`` with a distillation loss.

    The loss is ``ce_weight * CE(labels) + sum(weight_i * term_i)``; with mixup/cutmix
    the cross-entropy is mixed like the labels. Teachers stay in eval mode, never updated.

    Args:
        student: The model to train (e.g. a pruned model or a fresh small HAMNet).
        teachers: One or more trained models on the same inputs and classes; the first
            one's layers are the ones feature/attention terms match.
        dataset: Training data (train split for updates, validation for early stopping).
        spec: The loss terms, e.g. ``[{"method": "soft", "temperature": 4.0}]``.
        cfg: Trainer settings (epochs, learning rate, augmentation, ...).
        ce_weight: Weight of the cross-entropy on the labels.
        cache_dir: Folder for teacher-output files; None keeps them in memory only.
        teacher_ids: A stable id per teacher (e.g. its artifact sha256) for the cache
            key; default a digest of the teacher's weights.
        seed: Seeds the trainer.
        device: Torch device.
        checkpoint_path: Where the trainer writes the student's best weights.
        progress: Show the trainer's progress bar.
        unlabelled_x: A transfer set: inputs without labels (preprocessed like
            ``dataset``), added to the training split. The teacher terms use them; the
            cross-entropy skips them. This is where distillation pays most: the teacher
            labels inputs nobody has labelled.
        on_epoch_end: Passed to :func:`~hamnet.training.train_model`: called with each
            epoch's history record (a student search reports validation accuracy to its
            pruner there; an exception it raises ends training and propagates).

    Returns:
        The run's :class:`DistillResult`.

    Raises:
        ConfigError: If there is no teacher where a term needs one, a term is invalid,
            ``teacher_ids`` does not match ``teachers``, or layers cannot be mapped.
    """
    _check_teacher_ids(teachers, teacher_ids)
    dev = torch.device(device)
    student.to(dev)
    if unlabelled_x is not None:
        dataset = with_transfer_set(dataset, unlabelled_x)
    methods = spec_methods(spec)
    live = cfg.augment != "none"
    with _in_eval_mode(teachers, dev):
        plan = build_distill_loss(spec, student=student, teachers=teachers, ce_weight=0.0)
        caches, files, hits = (
            ([], [], 0)
            if live
            else _cached_teacher_outputs(
                teachers, dataset.x_train, plan, teacher_ids, cache_dir, dev
            )
        )
        _log_start(methods, ce_weight, len(teachers), live=live, hits=hits)
        loss_fn = _DistillLossFn(
            plan, teachers, caches, live=live, ce_weight=ce_weight,
            label_smoothing=cfg.label_smoothing,
        )  # fmt: skip
        result = train_model(
            student, dataset, cfg, seed=seed, device=str(dev), checkpoint_path=checkpoint_path,
            progress=progress, loss_fn=loss_fn, extra_modules=[plan.loss],
            on_epoch_end=on_epoch_end,
        )  # fmt: skip
    return DistillResult(
        train=result,
        methods=methods,
        teacher_cache_files=files,
        teacher_cache_hits=hits,
        last_terms=dict(plan.loss.last_terms),
    )


def spec_methods(spec: Sequence[Mapping[str, Any]] | Mapping[str, Any]) -> list[str]:
    """Return the method name of each loss term of ``spec``, in spec order.

    Args:
        spec: One term (a mapping) or a sequence of terms, each with a ``method`` key.

    Returns:
        The methods as strings (``"None"`` for a term without one; the loss builder
        reports that term).
    """
    terms = [spec] if isinstance(spec, Mapping) else spec
    return [str(term.get("method")) for term in terms]


def _log_start(
    methods: list[str], ce_weight: float, teachers: int, *, live: bool, hits: int
) -> None:
    logger.info(
        "distilling with %s (ce_weight=%s) from %d teacher(s); teacher outputs %s",
        "+".join(methods),
        ce_weight,
        teachers,
        "computed live per batch (augmentation on)" if live else f"cached ({hits} reused)",
    )


def _check_teacher_ids(teachers: Sequence[nn.Module], teacher_ids: Sequence[str] | None) -> None:
    if teacher_ids is not None and len(teacher_ids) != len(teachers):
        raise ConfigError(
            f"expected one teacher id per teacher ({len(teachers)}), but got {len(teacher_ids)}"
        )


class _DistillLossFn:
    """The trainer's loss hook: the distillation terms plus the weighted cross-entropy.

    Teacher outputs come from the caches (looked up by sample index) or, when ``live``,
    from running each teacher on the batch without gradients.
    """

    def __init__(
        self,
        plan: DistillPlan,
        teachers: Sequence[nn.Module],
        caches: Sequence[TeacherOutputs],
        *,
        live: bool,
        ce_weight: float,
        label_smoothing: float,
    ) -> None:
        self.plan = plan
        self.teachers = teachers
        self.caches = caches
        self.live = live
        self.ce_weight = ce_weight
        self.label_smoothing = label_smoothing

    def teacher_outputs(self, batch: Batch) -> list[DistillOutputs]:
        """Every teacher's outputs on ``batch``, from the caches or computed live."""
        if not self.live:
            return [cache.batch(batch.index, batch.x.device) for cache in self.caches]
        with torch.no_grad():
            return [
                model_outputs(t, batch.x, self.plan.teacher_spec(i)).detach()
                for i, t in enumerate(self.teachers)
            ]

    def __call__(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        student_out = model_outputs(model, batch.x, self.plan.student)
        kd = self.plan.loss(student_out, self.teacher_outputs(batch), batch.y)
        if self.ce_weight == 0.0:
            return kd
        ce = batch.mixed_cross_entropy(student_out.logits, self.label_smoothing)
        return kd + self.ce_weight * ce


def with_transfer_set(dataset: Dataset, unlabelled_x: np.ndarray) -> Dataset:
    """``dataset`` with ``unlabelled_x`` appended to its training split as unlabelled.

    Args:
        dataset: The labelled data.
        unlabelled_x: Inputs of the same per-sample shape and dtype as ``x_train``.

    Returns:
        A copy whose ``y_train`` is :data:`~hamnet.training.UNLABELLED` for the new rows.

    Raises:
        DataError: If the shapes do not match or the set is empty.
    """
    x = np.asarray(unlabelled_x)
    if x.ndim < 1 or len(x) == 0 or x.shape[1:] != dataset.x_train.shape[1:]:
        raise DataError(
            f"the unlabelled transfer set must hold at least one sample of shape "
            f"{list(dataset.x_train.shape[1:])}, but got shape {list(x.shape)}"
        )
    x = x.astype(dataset.x_train.dtype, copy=False)
    y = np.full(len(x), UNLABELLED, dtype=dataset.y_train.dtype)
    return dataclasses.replace(
        dataset,
        x_train=np.concatenate([dataset.x_train, x]),
        y_train=np.concatenate([dataset.y_train, y]),
    )


@contextlib.contextmanager
def _in_eval_mode(models: Sequence[nn.Module], device: torch.device) -> Iterator[None]:
    """Move ``models`` to ``device`` in eval mode; give each its train/eval mode back after."""
    modes = [m.training for m in models]
    for model in models:
        model.to(device).eval()
    try:
        yield
    finally:
        for model, mode in zip(models, modes, strict=True):
            model.train(mode)


def _cached_teacher_outputs(
    teachers: Sequence[nn.Module],
    x: np.ndarray,
    plan: DistillPlan,
    teacher_ids: Sequence[str] | None,
    cache_dir: str | Path | None,
    device: torch.device,
) -> tuple[list[TeacherOutputs], list[Path], int]:
    """Every teacher's outputs on ``x``: read from ``cache_dir`` or computed (and stored).

    Returns:
        The outputs per teacher, the cache files used, and how many already existed.
    """
    ids = list(teacher_ids) if teacher_ids is not None else [model_digest(t) for t in teachers]
    fingerprint = array_digest(x)
    outputs: list[TeacherOutputs] = []
    files: list[Path] = []
    hits = 0
    for i, teacher in enumerate(teachers):
        spec = plan.teacher_spec(i)
        path = None
        if cache_dir is not None:
            key = cache_key(
                ids[i], fingerprint, feature_layers=spec.features,
                attention_layers=spec.attentions, need_embedding=spec.embedding,
            )  # fmt: skip
            path = Path(cache_dir) / f"{key}.npz"
            files.append(path)
            if path.is_file():
                outputs.append(TeacherOutputs.load(path))
                hits += 1
                continue
        computed = compute_teacher_outputs(
            teacher, x, feature_layers=spec.features, attention_layers=spec.attentions,
            need_embedding=spec.embedding, device=device,
        )  # fmt: skip
        if path is not None:
            computed.save(path)
        outputs.append(computed)
    return outputs, files, hits


__all__ = [
    "DistillOutputs",
    "DistillResult",
    "array_digest",
    "distill_model",
    "model_digest",
    "spec_methods",
    "with_transfer_set",
]
