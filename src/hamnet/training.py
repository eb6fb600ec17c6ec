"""Supervised training with early stopping, and the evaluation helpers stages share.

:func:`train_model` trains any classifier ``[batch, features] -> [batch, classes]`` on a
:class:`~hamnet.data.Dataset`: AdamW, a per-step learning-rate schedule with linear
warm-up, gradient accumulation and clipping, mixed precision on CUDA, and early stopping
on validation accuracy. Later stages (e.g. distillation) reuse it by passing ``loss_fn``.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from hamnet.config import TrainStageConfig
from hamnet.data import Dataset
from hamnet.errors import ConfigError, DataError
from hamnet.models.hamnet import HAMNet, save_checkpoint

logger = logging.getLogger("hamnet.training")

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class TrainResult:
    """What a training run achieved.

    Attributes:
        best_val_accuracy: Validation accuracy of the weights the model ends with.
        best_epoch: The (1-based) epoch those weights come from.
        epochs_run: Epochs actually run.
        stopped_early: Whether early stopping ended the run before ``epochs``.
        seconds: Wall time of the run.
        history: One record per epoch: ``epoch``, ``train_loss``, ``val_loss``,
            ``val_accuracy`` and ``lr`` (the learning rate at the end of the epoch).
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
) -> TrainResult:
    """Train ``model`` in place and leave it holding its best validation weights.

    An epoch improves on the best so far when its validation accuracy is higher, or
    equal with a lower validation loss. Training stops after ``cfg.patience`` epochs
    without improvement; the best weights are then restored and the model is left in
    eval mode on ``device``. Runs are deterministic for a given ``seed`` on the CPU.

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
        loss_fn: ``loss_fn(model, x, y) -> scalar loss`` replacing cross-entropy for the
            updates. Validation loss is always plain cross-entropy.

    Returns:
        The run's :class:`TrainResult`.

    Raises:
        ConfigError: If ``cfg.amp`` is ``"on"`` without a CUDA device, or the device
            is not available.
        DataError: If the data does not fit the model.
    """
    start = time.perf_counter()
    dev = _resolve_device(device)
    use_amp = dev.type == "cuda" and cfg.amp in ("auto", "on")
    if cfg.amp == "on" and dev.type != "cuda":
        raise ConfigError(f"amp: on needs a CUDA device, but device is {device}")
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

    set_seed(seed)
    model.to(dev)
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        TensorDataset(torch.from_numpy(dataset.x_train), torch.from_numpy(dataset.y_train)),
        batch_size=cfg.batch_size,
        shuffle=True,
        generator=generator,
    )
    compute_loss = loss_fn or _make_ce_loss(cfg.label_smoothing)
    optimizer = torch.optim.AdamW(
        _param_groups(model, cfg.weight_decay), lr=cfg.learning_rate, weight_decay=0.0
    )
    steps_per_epoch = math.ceil(len(loader) / cfg.grad_accum_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        _lr_lambda(
            cfg.scheduler, cfg.warmup_epochs * steps_per_epoch, cfg.epochs * steps_per_epoch
        ),
    )
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    x_val = torch.from_numpy(dataset.x_val)
    y_val = torch.from_numpy(dataset.y_val)

    history: list[dict[str, float]] = []
    best_acc, best_loss, best_epoch = -1.0, math.inf, 0
    best_state = _copy_state(model)
    stopped_early = False
    with _progress_bar(progress) as bar:
        task = bar.add_task("training", total=cfg.epochs, status="")
        for epoch in range(1, cfg.epochs + 1):
            train_loss = _train_epoch(
                model, loader, optimizer, scheduler, scaler, compute_loss, cfg, dev, use_amp
            )
            val_loss, val_acc = _validate(model, x_val, y_val, dev, use_amp)
            lr = float(optimizer.param_groups[0]["lr"])
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
            if val_acc > best_acc or (val_acc == best_acc and val_loss < best_loss):
                best_acc, best_loss, best_epoch = val_acc, val_loss, epoch
                best_state = _copy_state(model)
            bar.update(
                task,
                advance=1,
                status=f"loss {train_loss:.4f}  val_acc {val_acc:.4f}  best {best_acc:.4f}",
            )
            if epoch - best_epoch >= cfg.patience and epoch < cfg.epochs:
                stopped_early = True
                logger.info(
                    "early stopping at epoch %d: no improvement for %d epochs (best %.4f at "
                    "epoch %d)",
                    epoch,
                    cfg.patience,
                    best_acc,
                    best_epoch,
                )
                break

    model.load_state_dict(best_state)
    model.eval()
    if checkpoint_path is not None:
        if isinstance(model, HAMNet):
            save_checkpoint(model, checkpoint_path)
        else:
            Path(checkpoint_path).parent.mkdir(parents=True, exist_ok=True)
            torch.save(best_state, checkpoint_path)
    return TrainResult(
        best_val_accuracy=best_acc,
        best_epoch=best_epoch,
        epochs_run=len(history),
        stopped_early=stopped_early,
        seconds=time.perf_counter() - start,
        history=history,
    )


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


def _make_ce_loss(label_smoothing: float) -> LossFn:
    def ce_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x), y, label_smoothing=label_smoothing)

    return ce_loss


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, object]]:
    exempt: set[str] = set(getattr(model, "no_weight_decay", set)())
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim >= 2 and name not in exempt:
            decay.append(param)
        else:
            no_decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _lr_lambda(schedule: str, warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _train_epoch(
    model: nn.Module,
    loader: DataLoader[tuple[torch.Tensor, ...]],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    compute_loss: LossFn,
    cfg: TrainStageConfig,
    device: torch.device,
    use_amp: bool,
) -> float:
    model.train()
    total, seen = 0.0, 0
    batches = len(loader)
    optimizer.zero_grad(set_to_none=True)
    for i, (x, y) in enumerate(loader):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
            loss = compute_loss(model, x, y)
        scaler.scale(loss / cfg.grad_accum_steps).backward()
        total += float(loss.detach()) * len(y)
        seen += len(y)
        if (i + 1) % cfg.grad_accum_steps == 0 or i + 1 == batches:
            if cfg.max_grad_norm is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
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


def _copy_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


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
