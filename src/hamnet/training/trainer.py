"""Supervised training with early stopping, and the evaluation helpers stages share.

:func:`train_model` trains any classifier ``[batch, features] -> [batch, classes]`` on a
:class:`~hamnet.training.data.Dataset`. The options, all fields of
:class:`~hamnet.core.config.TrainStageConfig`:

- AdamW with a per-step learning-rate schedule (``cosine``, ``linear``, ``constant``)
  after a linear warm-up (``warmup_epochs``);
- weight decay (``weight_decay_type``): AdamW's decoupled decay, or a coupled ``l2``,
  ``l1`` or ``elastic`` (``l1_ratio``) penalty added to the loss; never applied to
  biases, norms or the tensors a model lists in ``no_weight_decay()``;
- batch augmentation (``augment``): ``mixup`` or ``cutmix`` with a Beta(``mixup_alpha``,
  ``mixup_alpha``) mixing weight; validation is never augmented;
- gradient accumulation (``grad_accum_steps``), clipping (``max_grad_norm``), label
  smoothing, mixed precision on CUDA (``amp``) and gradient checkpointing;
- early stopping on validation accuracy (``patience``), restoring the best weights.

The kind of dropout is part of the model (``HAMNetConfig.dropout_type``), not of training.

Later stages (e.g. distillation) reuse the trainer through two hooks: ``loss_fn`` gets
each :class:`Batch` (inputs, labels, the samples' positions in the train split and their
mixing partners), and ``extra_modules`` are trained together with the model (e.g. learned
feature projections).

The run's parts live apart: :func:`~hamnet.training.optim.build_optimizer`,
:func:`~hamnet.training.optim.build_scheduler` and
:class:`~hamnet.training.optim.EarlyStopping` in :mod:`hamnet.training.optim`, the epoch
loop here.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from hamnet.core.config import TrainStageConfig
from hamnet.core.errors import ConfigError, DataError
from hamnet.models.hamnet import HAMNet, save_checkpoint
from hamnet.training.data import Dataset
from hamnet.training.optim import EarlyStopping, build_optimizer, build_scheduler

logger = logging.getLogger("hamnet.training")


@dataclass(frozen=True)
class Batch:
    """One training batch, as the loss sees it.

    In a mixed batch (``augment`` is ``mixup`` or ``cutmix``) sample ``i`` of ``x``
    combines the primary sample ``index[i]`` (weight ``lam``) with its partner
    ``index_mix[i]`` (weight ``1 - lam``); a loss should mix its targets the same way, as
    :meth:`mixed_cross_entropy` does. All tensors are on the training device.

    Attributes:
        x: Inputs ``[batch, features]`` after augmentation.
        y: Labels of the primary samples ``[batch]``.
        index: ``int64`` positions of the primary samples in ``dataset.x_train``.
        lam: Mixing weight of the primary samples (``1.0``: not mixed).
        y_mix: Labels of the partner samples when mixed, else ``None``.
        index_mix: Positions of the partner samples in ``dataset.x_train``, else ``None``.
    """

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor
    lam: float = 1.0
    y_mix: torch.Tensor | None = None
    index_mix: torch.Tensor | None = None

    def mixed_cross_entropy(
        self, logits: torch.Tensor, label_smoothing: float = 0.0
    ) -> torch.Tensor:
        """Cross-entropy against the mixed labels.

        Args:
            logits: Model outputs ``[batch, classes]`` for :attr:`x`.
            label_smoothing: As in :func:`torch.nn.functional.cross_entropy`.

        Returns:
            ``lam * CE(logits, y) + (1 - lam) * CE(logits, y_mix)``, or ``CE(logits, y)``
            for an unmixed batch; each CE is the mean over the samples that have a label
            (see :func:`labelled_cross_entropy`).
        """
        loss = labelled_cross_entropy(logits, self.y, label_smoothing)
        if self.y_mix is None or self.lam == 1.0:
            return loss
        partner = labelled_cross_entropy(logits, self.y_mix, label_smoothing)
        return self.lam * loss + (1.0 - self.lam) * partner


UNLABELLED = -1
"""Label of a training sample without a label (e.g. a distillation transfer set): the
cross-entropy skips it; teacher-based loss terms still use it."""


def labelled_cross_entropy(
    logits: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Mean cross-entropy over the samples that have a label (``y >= 0``).

    Args:
        logits: ``[batch, classes]``.
        y: ``int64 [batch]`` class indices, :data:`UNLABELLED` where there is none.
        label_smoothing: As in :func:`torch.nn.functional.cross_entropy`.

    Returns:
        The mean over labelled samples; a zero that keeps the graph when none is.
    """
    labelled = y >= 0
    if bool(labelled.all()):
        return F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    if not bool(labelled.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[labelled], y[labelled], label_smoothing=label_smoothing)


LossFn = Callable[[nn.Module, Batch], torch.Tensor]


@dataclass
class TrainResult:
    """What a training run achieved.

    Attributes:
        best_val_accuracy: Validation accuracy of the weights the model ends with.
        best_epoch: The (1-based) epoch those weights come from.
        epochs_run: Epochs actually run.
        stopped_early: Whether early stopping ended the run before ``epochs``.
        seconds: Wall time of the run.
        history: One record per epoch: ``epoch``, ``train_loss`` (the mean of the loss
            hook over the epoch's batches, without a coupled weight penalty),
            ``val_loss``, ``val_accuracy`` and ``lr`` (the learning rate at the end of
            the epoch).
    """

    best_val_accuracy: float
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


def set_seed(seed: int) -> None:
    """Seed Python's, NumPy's and torch's random number generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train_model(
    model: nn.Module,
    dataset: Dataset,
    cfg: TrainStageConfig,
    *,
    seed: int = 0,
    device: str = "cpu",
    checkpoint_path: str | Path | None = None,
    progress: bool = True,
    loss_fn: LossFn | None = None,
    extra_modules: Sequence[nn.Module] = (),
    on_epoch_end: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place and leave it holding its best validation weights.

    An epoch improves on the best so far when its validation accuracy is higher, or
    equal with a lower validation loss. Training stops after ``cfg.patience`` epochs
    without improvement; the best weights are then restored and the model is left in
    eval mode on ``device``. Runs are deterministic for a given ``seed`` on the CPU,
    augmentation included.

    A coupled weight penalty (``cfg.weight_decay_type`` ``l2``, ``l1`` or ``elastic``)
    is added once per optimizer step, i.e. to the mean loss of the step's accumulated
    micro-batches. With ``cfg.gradient_checkpointing`` the model recomputes activations
    in the backward pass during this run only; the previous setting is restored after.

    Args:
        model: Maps float ``[batch, num_features]`` to logits ``[batch, num_classes]``.
        dataset: The data; the train split is used for updates, validation for
            early stopping.
        cfg: Optimizer, schedule and stopping settings.
        seed: Seeds weight updates (shuffling, dropout).
        device: Torch device to train on, e.g. ``"cpu"`` or ``"cuda"``.
        checkpoint_path: Where to write the best weights at the end: a hamnet checkpoint
            for a :class:`~hamnet.models.HAMNet`, otherwise a ``state_dict``.
        progress: Show a progress bar.
        loss_fn: ``loss_fn(model, batch) -> scalar loss`` replacing
            ``batch.mixed_cross_entropy(model(batch.x), cfg.label_smoothing)`` for the
            updates (see :class:`Batch`). Validation loss is always plain cross-entropy.
        extra_modules: Modules trained together with the model, e.g. learned
            projections a ``loss_fn`` uses. They are moved to ``device``, put in train
            mode for the run, optimized with the same decay rules as the model, restored
            to their state at the best epoch and left in eval mode. They are not written
            to ``checkpoint_path``.
        on_epoch_end: Called with each epoch's history record (``epoch``,
            ``train_loss``, ``val_loss``, ``val_accuracy``, ``lr``), e.g. to report
            intermediate values to a search; an exception it raises (such as a pruned
            trial) ends training and propagates.

    Returns:
        The run's :class:`TrainResult`.

    Raises:
        ConfigError: If ``cfg.amp`` is ``"on"`` without a CUDA device, the device is
            not available, or ``cfg.gradient_checkpointing`` is set for a model that
            supports none (not a HAMNet and no ``gradient_checkpointing_enable()``).
        DataError: If the data does not fit the model.
    """
    start = time.perf_counter()
    dev, use_amp = _check_run(model, dataset, cfg, device)
    extras = list(extra_modules)
    set_seed(seed)
    model.to(dev)
    for module in extras:
        module.to(dev)
    loader = _train_loader(dataset, cfg.batch_size, seed)
    run = _make_run(model, extras, cfg, len(loader), loss_fn, seed, dev, use_amp)
    stopper = EarlyStopping([model, *extras], cfg.patience, cfg.epochs)
    with (
        _gradient_checkpointing(model, cfg.gradient_checkpointing),
        _progress_bar(progress) as bar,
    ):
        history = _fit(model, extras, loader, dataset, run, stopper, bar, on_epoch_end)
    stopper.restore()
    if checkpoint_path is not None:
        _save(model, stopper.best_states[0], checkpoint_path)
    return TrainResult(
        best_val_accuracy=stopper.best_accuracy,
        best_epoch=stopper.best_epoch,
        epochs_run=len(history),
        stopped_early=stopper.should_stop(len(history)),
        seconds=time.perf_counter() - start,
        history=history,
    )


def _make_run(
    model: nn.Module,
    extras: Sequence[nn.Module],
    cfg: TrainStageConfig,
    batches: int,
    loss_fn: LossFn | None,
    seed: int,
    dev: torch.device,
    use_amp: bool,
) -> _Run:
    """The optimizer, schedule, scaler, loss and random stream the epochs share."""
    optimizer = build_optimizer([model, *extras], cfg)
    decay, no_decay = optimizer.param_groups[0]["params"], optimizer.param_groups[1]["params"]
    return _Run(
        cfg=cfg,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, cfg, math.ceil(batches / cfg.grad_accum_steps)),
        scaler=torch.amp.GradScaler("cuda", enabled=use_amp),
        compute_loss=loss_fn or _make_ce_loss(cfg.label_smoothing),
        params=decay + no_decay,
        penalized=[] if cfg.weight_decay_type == "decoupled" else decay,
        token_size=model.config.token_size if isinstance(model, HAMNet) else 1,
        rng=np.random.default_rng(seed % 2**32),
        device=dev,
        use_amp=use_amp,
    )


def _save(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Write a hamnet checkpoint for a HAMNet, else the ``state_dict``."""
    if isinstance(model, HAMNet):
        save_checkpoint(model, path)
    else:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, path)


def _check_run(
    model: nn.Module, dataset: Dataset, cfg: TrainStageConfig, device: str
) -> tuple[torch.device, bool]:
    """Check the run can happen; return its device and whether it uses mixed precision."""
    dev = _resolve_device(device)
    use_amp = dev.type == "cuda" and cfg.amp in ("auto", "on")
    if cfg.amp == "on" and dev.type != "cuda":
        raise ConfigError(f"amp: on needs a CUDA device, but device is {device}")
    if cfg.gradient_checkpointing and not (
        isinstance(model, HAMNet) or callable(getattr(model, "gradient_checkpointing_enable", None))
    ):
        raise ConfigError(
            f"gradient_checkpointing needs a HAMNet or a model with a "
            f"gradient_checkpointing_enable() method, but got {type(model).__name__}"
        )
    if isinstance(model, HAMNet):
        dataset.check_input_size(model.config.input_size)
        if model.config.num_classes < dataset.num_classes:
            raise DataError(
                f"data has {dataset.num_classes} classes, but the model has "
                f"{model.config.num_classes} outputs (num_classes)"
            )
    if len(dataset.x_train) == 0 or len(dataset.x_val) == 0:
        raise DataError(
            f"training needs non-empty train and validation splits, but got "
            f"{len(dataset.x_train)} and {len(dataset.x_val)} samples"
        )
    return dev, use_amp


def _train_loader(
    dataset: Dataset, batch_size: int, seed: int
) -> DataLoader[tuple[torch.Tensor, ...]]:
    """Seeded shuffled batches of ``(x, y, position in the train split)``."""
    x_train = torch.from_numpy(dataset.x_train)
    return DataLoader(
        TensorDataset(x_train, torch.from_numpy(dataset.y_train), torch.arange(len(x_train))),
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )


def _fit(
    model: nn.Module,
    extras: Sequence[nn.Module],
    loader: DataLoader[tuple[torch.Tensor, ...]],
    dataset: Dataset,
    run: _Run,
    stopper: EarlyStopping,
    bar: Progress,
    on_epoch_end: Callable[[dict[str, float]], None] | None,
) -> list[dict[str, float]]:
    """The epoch loop: train, validate, record, stop early; return the history."""
    cfg = run.cfg
    x_val = torch.from_numpy(dataset.x_val)
    y_val = torch.from_numpy(dataset.y_val)
    history: list[dict[str, float]] = []
    task = bar.add_task("training", total=cfg.epochs, status="")
    for epoch in range(1, cfg.epochs + 1):
        train_loss = _train_epoch(model, extras, loader, run)
        val_loss, val_acc = _validate(model, x_val, y_val, run.device, run.use_amp)
        lr = float(run.optimizer.param_groups[0]["lr"])
        history.append(
            {
                "epoch": float(epoch),
                "train_loss": train_loss,
                "val_loss": val_loss,
                "val_accuracy": val_acc,
                "lr": lr,
            }
        )
        logger.info(
            "epoch %d/%d train_loss=%.4f val_loss=%.4f val_accuracy=%.4f lr=%.3g",
            epoch,
            cfg.epochs,
            train_loss,
            val_loss,
            val_acc,
            lr,
        )
        stopper.update(epoch, val_loss, val_acc)
        bar.update(
            task,
            advance=1,
            status=(
                f"loss {train_loss:.4f}  val_acc {val_acc:.4f}  best {stopper.best_accuracy:.4f}"
            ),
        )
        if on_epoch_end is not None:
            on_epoch_end(dict(history[-1]))
        if stopper.should_stop(epoch):
            logger.info(
                "early stopping at epoch %d: no improvement for %d epochs (best %.4f at epoch %d)",
                epoch,
                cfg.patience,
                stopper.best_accuracy,
                stopper.best_epoch,
            )
            break
    return history


def evaluate_accuracy(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int = 256,
    device: str = "cpu",
) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``.

    Args:
        model: The classifier; it is run in eval mode and its mode is restored.
        x: Features ``[n, num_features]``.
        y: Integer labels ``[n]``.
        batch_size: Samples per forward pass.
        device: Torch device to run on; the model is moved there.

    Returns:
        The fraction of samples whose highest logit is the label.

    Raises:
        DataError: If ``x`` is empty or ``x`` and ``y`` differ in length.
    """
    if len(x) == 0 or len(x) != len(y):
        raise DataError(
            f"accuracy needs as many labels as samples (at least one), but got {len(x)} "
            f"samples and {len(y)} labels"
        )
    model.to(_resolve_device(device))
    logits = predict_logits(model, x, batch_size=batch_size)
    return float((logits.argmax(axis=1) == np.asarray(y)).mean())


def predict_logits(model: nn.Module, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Run ``model`` over ``x`` in batches on the model's device.

    Args:
        model: The classifier; it is run in eval mode and its mode is restored.
        x: Features ``[n, num_features]``.
        batch_size: Samples per forward pass.

    Returns:
        ``float32 [n, num_classes]`` logits.
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    outputs = []
    try:
        with torch.inference_mode():
            for start in range(0, len(x), batch_size):
                batch = torch.as_tensor(np.asarray(x[start : start + batch_size]))
                outputs.append(model(batch.to(device, torch.float32)).float().cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), dtype=np.float32)


def _resolve_device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ConfigError(
            f"device must be a torch device such as 'cpu' or 'cuda', but got {device!r}: {err}"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device is {device!r}, but no CUDA device is available")
    return dev


@dataclass
class _Run:
    """What one training run's epochs share."""

    cfg: TrainStageConfig
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    compute_loss: LossFn
    params: list[nn.Parameter]
    penalized: list[nn.Parameter]
    token_size: int
    rng: np.random.Generator
    device: torch.device
    use_amp: bool


def _make_ce_loss(label_smoothing: float) -> LossFn:
    def ce_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
        return batch.mixed_cross_entropy(model(batch.x), label_smoothing)

    return ce_loss


def _weight_penalty(
    params: Sequence[torch.Tensor], kind: str, weight_decay: float, l1_ratio: float
) -> torch.Tensor | None:
    """The coupled penalty ``weight_decay * (a * ||w||₁ + (1 - a) / 2 * ||w||²)``.

    ``a`` is 1 for ``l1``, 0 for ``l2`` and ``l1_ratio`` for ``elastic``; ``None`` when
    there is nothing to penalise (``decoupled``, no decay or no parameters).
    """
    if kind == "decoupled" or weight_decay == 0.0 or not params:
        return None
    share = {"l1": 1.0, "l2": 0.0, "elastic": l1_ratio}[kind]
    penalty = torch.zeros((), device=params[0].device)
    if share > 0.0:
        penalty = penalty + share * torch.stack([p.abs().sum() for p in params]).sum()
    if share < 1.0:
        squares = torch.stack([p.square().sum() for p in params]).sum()
        penalty = penalty + (1.0 - share) / 2.0 * squares
    return weight_decay * penalty


def _augment(x: torch.Tensor, y: torch.Tensor, index: torch.Tensor, run: _Run) -> Batch:
    """Mix a batch with a seeded permutation of itself (``run.cfg.augment``)."""
    cfg = run.cfg
    if cfg.augment == "none":
        return Batch(x=x, y=y, index=index)
    perm = torch.from_numpy(run.rng.permutation(len(y))).to(x.device)
    lam = float(run.rng.beta(cfg.mixup_alpha, cfg.mixup_alpha))
    if cfg.augment == "mixup":
        mixed = lam * x + (1.0 - lam) * x[perm]
    else:
        units = x.shape[1] // run.token_size
        cut = round((1.0 - lam) * units)
        start = int(run.rng.integers(0, units - cut + 1))
        lo, hi = start * run.token_size, (start + cut) * run.token_size
        mixed = x.clone()
        mixed[:, lo:hi] = x[perm, lo:hi]
        lam = 1.0 - cut / units
    return Batch(x=mixed, y=y, index=index, lam=lam, y_mix=y[perm], index_mix=index[perm])


@contextmanager
def _gradient_checkpointing(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Turn on the model's gradient checkpointing for the block, then turn it back off.

    The caller has checked that the model is a HAMNet or has
    ``gradient_checkpointing_enable()``.
    """
    if not enabled:
        yield
        return
    if isinstance(model, HAMNet):
        previous = model.gradient_checkpointing
        model.gradient_checkpointing = True
        try:
            yield
        finally:
            model.gradient_checkpointing = previous
        return
    model.gradient_checkpointing_enable()  # type: ignore[operator]
    try:
        yield
    finally:
        disable = getattr(model, "gradient_checkpointing_disable", None)
        if callable(disable):
            disable()


def _train_epoch(
    model: nn.Module,
    extras: Sequence[nn.Module],
    loader: DataLoader[tuple[torch.Tensor, ...]],
    run: _Run,
) -> float:
    cfg, device = run.cfg, run.device
    model.train()
    for module in extras:
        module.train()
    total, seen = 0.0, 0
    batches = len(loader)
    run.optimizer.zero_grad(set_to_none=True)
    for i, (x, y, index) in enumerate(loader):
        batch = _augment(
            x.to(device, non_blocking=True),
            y.to(device, non_blocking=True),
            index.to(device, non_blocking=True),
            run,
        )
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=run.use_amp):
            loss = run.compute_loss(model, batch)
        run.scaler.scale(loss / cfg.grad_accum_steps).backward()
        total += float(loss.detach()) * len(y)
        seen += len(y)
        if (i + 1) % cfg.grad_accum_steps == 0 or i + 1 == batches:
            penalty = _weight_penalty(
                run.penalized, cfg.weight_decay_type, cfg.weight_decay, cfg.l1_ratio
            )
            if penalty is not None:
                run.scaler.scale(penalty).backward()
            if cfg.max_grad_norm is not None:
                run.scaler.unscale_(run.optimizer)
                nn.utils.clip_grad_norm_(run.params, cfg.max_grad_norm)
            run.scaler.step(run.optimizer)
            run.scaler.update()
            run.optimizer.zero_grad(set_to_none=True)
            run.scheduler.step()
    return total / max(seen, 1)


def _validate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device, use_amp: bool
) -> tuple[float, float]:
    model.eval()
    with (
        torch.inference_mode(),
        torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp),
    ):
        logits = torch.cat(
            [model(x[i : i + 1024].to(device)).float() for i in range(0, len(x), 1024)]
        )
    y = y.to(device)
    loss = float(F.cross_entropy(logits, y))
    accuracy = float((logits.argmax(dim=1) == y).float().mean())
    return loss, accuracy


def _progress_bar(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]epoch"),
        MofNCompleteColumn(),
        BarColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not enabled,
        transient=False,
    )
