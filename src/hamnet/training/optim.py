"""The pieces of a training run around its loop: optimizer, schedule and early stopping.

:func:`~hamnet.training.trainer.train_model` builds its AdamW optimizer with
:func:`build_optimizer`, its per-step learning-rate schedule with :func:`build_scheduler`
and decides when to stop (and which weights to keep) with :class:`EarlyStopping`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from hamnet.core.config import TrainStageConfig


def split_decay(
    modules: Sequence[nn.Module],
) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Split trainable parameters into those to decay and those to leave alone.

    Args:
        modules: The modules trained together; a parameter shared by several is
            counted once.

    Returns:
        ``(decay, no_decay)``: matrices, then biases, norms and the tensors a module
        lists in ``no_weight_decay()``.
    """
    decay, no_decay = [], []
    seen: set[int] = set()
    for module in modules:
        exempt: set[str] = set(getattr(module, "no_weight_decay", set)())
        for name, param in module.named_parameters():
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            if param.ndim >= 2 and name not in exempt:
                decay.append(param)
            else:
                no_decay.append(param)
    return decay, no_decay


def build_optimizer(modules: Sequence[nn.Module], cfg: TrainStageConfig) -> torch.optim.AdamW:
    """AdamW over ``modules`` with two parameter groups: decayed, then not decayed.

    AdamW's own (decoupled) decay is used only when ``cfg.weight_decay_type`` is
    ``decoupled``; a coupled penalty is added to the loss by the trainer instead.

    Args:
        modules: The modules to optimize (see :func:`split_decay`).
        cfg: ``learning_rate``, ``weight_decay`` and ``weight_decay_type``.

    Returns:
        The optimizer; ``param_groups[0]`` holds the decayed parameters.
    """
    decoupled = cfg.weight_decay_type == "decoupled"
    decay, no_decay = split_decay(modules)
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay if decoupled else 0.0},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.learning_rate,
        weight_decay=0.0,
    )


def lr_factor(schedule: str, warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """The learning-rate multiplier at each optimizer step.

    Args:
        schedule: ``cosine``, ``linear`` or ``constant`` after the warm-up.
        warmup_steps: Steps of linear warm-up from ``1 / warmup_steps`` to 1.
        total_steps: Steps of the whole run, warm-up included.

    Returns:
        ``step -> factor``, as :class:`torch.optim.lr_scheduler.LambdaLR` takes it.
    """

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


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainStageConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-optimizer-step schedule: warm-up for ``cfg.warmup_epochs``, then ``cfg.scheduler``.

    Args:
        optimizer: The optimizer whose learning rate is scheduled.
        cfg: ``scheduler``, ``warmup_epochs`` and ``epochs``.
        steps_per_epoch: Optimizer steps per epoch (after gradient accumulation).

    Returns:
        The scheduler, stepped once per optimizer step.
    """
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lr_factor(cfg.scheduler, cfg.warmup_epochs * steps_per_epoch, cfg.epochs * steps_per_epoch),
    )


def copy_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of ``module``'s ``state_dict``."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class EarlyStopping:
    """Keeps the best epoch's weights and says when to stop.

    An epoch improves on the best so far when its validation accuracy is higher, or
    equal with a lower validation loss. The run stops after ``patience`` epochs without
    improvement (never at the last epoch, which ends the run anyway).

    Args:
        modules: The modules whose weights are kept at the best epoch (the model first).
        patience: Epochs without improvement before stopping.
        max_epochs: Epochs of the whole run.
    """

    def __init__(self, modules: Sequence[nn.Module], patience: int, max_epochs: int) -> None:
        self.modules = list(modules)
        self.patience = patience
        self.max_epochs = max_epochs
        self.best_accuracy = -1.0
        self.best_loss = math.inf
        self.best_epoch = 0
        self.best_states = [copy_state(m) for m in self.modules]

    def update(self, epoch: int, val_loss: float, val_accuracy: float) -> bool:
        """Record an epoch's validation result; keep its weights if it is the best.

        Returns:
            Whether the epoch improved on the best so far.
        """
        improved = val_accuracy > self.best_accuracy or (
            val_accuracy == self.best_accuracy and val_loss < self.best_loss
        )
        if improved:
            self.best_accuracy, self.best_loss, self.best_epoch = val_accuracy, val_loss, epoch
            self.best_states = [copy_state(m) for m in self.modules]
        return improved

    def should_stop(self, epoch: int) -> bool:
        """Whether the run stops after ``epoch``, ``patience`` epochs past the best."""
        return epoch - self.best_epoch >= self.patience and epoch < self.max_epochs

    def restore(self) -> None:
        """Load the best weights into every module and put them in eval mode."""
        for module, state in zip(self.modules, self.best_states, strict=True):
            module.load_state_dict(state)
            module.eval()
