"""Knowledge distillation between any two torch modules.

:func:`distill_module` trains a student (a pruned or shallower copy of a user's model, or
any module reading the same inputs) to reproduce a teacher's outputs, optionally with the
labels and with hidden-state matching on paired blocks. It knows nothing about the
models: inputs are one tensor or named tensors (passed as keyword arguments), outputs
are read by :func:`~hamnet.compress.distill.module_outputs.primary_output`, and blocks are
found by :func:`~hamnet.compress.distill.module_outputs.auto_layer_map`.

Example:
    >>> result = distill_module(teacher, student, x_train, y_train, epochs=3)
    >>> result.loss_after < result.loss_before
    True
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from hamnet.compress.distill.module_losses import HiddenLoss, OutputLoss
from hamnet.compress.distill.module_outputs import (
    Batch,
    LayerCapture,
    ModuleInputs,
    auto_layer_map,
    call_module,
    check_input_names,
    check_layer_names,
    model_device,
    primary_output,
)
from hamnet.core.errors import ConfigError, DataError, StageError
from hamnet.core.registry import did_you_mean
from hamnet.training.optim import split_decay

logger = logging.getLogger("hamnet.distill")

Objective = Literal["auto", "logits", "cosine", "mse"]
OBJECTIVES: tuple[str, ...] = ("auto", "logits", "cosine", "mse")
DEFAULT_LR = 1e-4
DEFAULT_HIDDEN_WEIGHT = 0.1
WEIGHT_DECAY = 0.01
LENGTH_WINDOW = 50
"""With a padding mask, training batches group samples of similar length within windows
of this many batches (random windows, shuffled batch order)."""


@dataclass
class ModuleDistillResult:
    """What :func:`distill_module` did.

    Attributes:
        model: The trained student (the module passed in, trained in place, in eval mode).
        objective: The output objective used: ``"logits"``, ``"cosine"`` or ``"mse"``.
        mapped_layers: ``{student_layer: teacher_layer}`` whose outputs were matched (empty
            when hidden-state matching was off or found no pair).
        history: One record per epoch: ``epoch`` (1-based), ``loss`` (mean training loss,
            hidden terms included), ``val_loss`` (output loss on the validation inputs, None
            without them), ``seconds`` (since training started) and ``kept`` (its weights
            are the best on validation so far; the student ends with the best epoch's
            weights, or its starting weights when no epoch improved on them).
        loss_before: Output distillation loss (the objective's loss, hidden terms excluded:
            their projections are learned) on the validation inputs, or the training
            inputs when there are none, before training.
        loss_after: The same loss after training.
    """

    model: nn.Module
    objective: str
    mapped_layers: dict[str, str]
    history: list[dict[str, Any]] = field(default_factory=list)
    loss_before: float = math.nan
    loss_after: float = math.nan


def distill_module(
    teacher: nn.Module,
    student: nn.Module,
    train_x: Any,
    train_y: Any = None,
    *,
    objective: Objective = "auto",
    class_scores: bool = False,
    hidden_map: str | Mapping[str, str] | None = "auto",
    hidden_weight: float = DEFAULT_HIDDEN_WEIGHT,
    temperature: float = 2.0,
    alpha: float = 0.5,
    epochs: int = 3,
    lr: float = DEFAULT_LR,
    batch_size: int = 32,
    val_x: Any = None,
    val_y: Any = None,
    seed: int = 0,
    progress: Callable[[dict[str, Any]], None] | None = None,
    max_seconds: float | None = None,
    padding_mask: str | None = "auto",
) -> ModuleDistillResult:
    """Train ``student`` to reproduce ``teacher`` on the training inputs.

    The teacher runs frozen (eval mode, no gradients; its mode is restored afterwards).
    The student trains in place with AdamW (weight decay on matrices only), on the
    device its parameters are on; the run is deterministic for a given ``seed`` and does
    not disturb the caller's random state. Every check below runs before any training,
    on one batch of each model.

    Args:
        teacher: The model to imitate.
        student: The model to train; reads the same inputs as the teacher.
        train_x: One array or tensor of any rank (axis 0 is the batch), a mapping
            ``name -> array or tensor`` passed as keyword arguments (integer dtypes kept,
            e.g. ``input_ids``/``attention_mask``), or a numpy structured array with one
            field per named input.
        train_y: Integer class labels (``-1`` for an unlabelled sample), or None: the
            teacher's outputs are then the only targets.
        objective: ``"logits"`` (class scores ``[B, C]``: softened KL plus ``alpha`` times
            the cross-entropy on the labels), ``"cosine"`` (embeddings: ``1 - cos``),
            ``"mse"``, or ``"auto"``: ``logits`` when labels are given or ``class_scores``,
            else ``cosine``.
        class_scores: The outputs are class scores even without labels (for ``"auto"``).
        hidden_map: ``"auto"`` (pair blocks found by
            :func:`~hamnet.compress.distill.module_outputs.auto_layer_map`; pairs whose
            shapes cannot be compared are skipped), an explicit
            ``{student_layer: teacher_layer}`` mapping, or None for no hidden matching.
        hidden_weight: Weight of the hidden-state loss (a relative MSE, about 1 for
            unrelated features). The default 0.1 did best of 0 / 0.1 / 1 on a 75%
            channel-pruned digits CNN (3 seeds); at 1 it pulled the student away from
            the output objective.
        temperature: Softening temperature of the ``logits`` objective.
        alpha: Weight of the cross-entropy on the labels (``logits`` objective).
        epochs: Passes over the training inputs.
        lr: AdamW learning rate.
        batch_size: Samples per step (a last batch of one sample joins the one before).
        val_x: Validation inputs (same forms as ``train_x``) for ``val_loss`` and
            ``loss_before``/``loss_after``; the training inputs serve when None.
        val_y: Validation labels.
        seed: Seed of the shuffling, the projections' initial weights and dropout.
        progress: Called after each epoch with its ``history`` record.
        max_seconds: Stop after the epoch during which this many seconds have passed.
        padding_mask: A named 2-D ``[batch, tokens]`` input whose zeros mark padding
            (``"auto"``: ``attention_mask`` when there is one; None: off). Each batch is
            then cut after its last unpadded token, in every input of that
            ``[batch, tokens]`` shape: the same result for models that ignore padding
            (Hugging Face encoders), at the cost of the tokens present; batches then
            group samples of similar length (within random windows of
            :data:`LENGTH_WINDOW` batches). Checked on the most padded batch first: if
            the teacher's outputs change by more than 1e-4, it stays off.

    Returns:
        The trained student, the objective and layer pairs used, the history, and the
        output loss before and after training.

    Raises:
        ConfigError: An invalid option; a student with nothing to train; an unknown layer
            in ``hidden_map`` (with a did-you-mean hint) or one that does not run;
            ``"logits"`` on outputs that are not ``[B, C]``; teacher and student outputs
            of different shapes.
        DataError: Empty inputs; named inputs the models do not take; inputs a model
            fails to run on (the inputs' shapes and the error are reported); labels that
            are not integers, whose count differs from the inputs', or out of range.
        StageError: The loss became NaN or infinite while training.
    """
    _check_options(objective, temperature, alpha, epochs, lr, batch_size, hidden_weight)
    inputs = ModuleInputs(train_x, "training inputs")
    labels = _labels(train_y, len(inputs), "training labels")
    if val_x is None and val_y is not None:
        raise ConfigError("val_y needs val_x, but got validation labels without inputs")
    val_inputs = inputs if val_x is None else ModuleInputs(val_x, "validation inputs")
    val_labels = labels if val_x is None else _labels(val_y, len(val_inputs), "validation labels")
    for side, model in (("student", student), ("teacher", teacher)):
        check_input_names(model, inputs.names, side=side)
        if val_inputs is not inputs:
            check_input_names(model, val_inputs.names, side=side)
    pairs, strict = _layer_map(student, teacher, hidden_map)
    trainable = sum(p.numel() for p in student.parameters() if p.requires_grad)
    if trainable == 0:
        raise ConfigError(
            f"the student must have trainable parameters, but {type(student).__name__} has "
            f"none (all {sum(p.numel() for p in student.parameters())} are frozen)"
        )

    teacher_was_training = teacher.training
    teacher.eval()
    device = model_device(student)
    devices = [d.index or 0 for d in {p.device for p in student.parameters()} if d.type == "cuda"]
    try:
        probe = _probe(teacher, student, inputs, min(batch_size, len(inputs)), pairs)
        if val_inputs is not inputs:
            _probe(teacher, student, val_inputs, min(batch_size, len(val_inputs)), {})
        chosen = _resolve_objective(objective, labels is not None or class_scores, probe, inputs)
        for y in (labels, val_labels):
            if y is not None and chosen == "logits":
                _check_label_range(y, probe["student_out"].shape[-1])
        if labels is not None and chosen != "logits":
            logger.warning("objective %r does not read labels; they are ignored", chosen)
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            output_loss = OutputLoss(chosen, temperature, alpha)
            hidden = HiddenLoss(pairs, probe["shapes"], strict=strict).to(device)
            matched = hidden if hidden.pairs else None
            run = _Run(teacher, student, output_loss, matched, hidden_weight)
            run.padding_mask = _padding_mask(padding_mask, teacher, inputs, batch_size)
            loss_before = run.evaluate(val_inputs, val_labels, batch_size)
            history = run.train(
                inputs, labels, epochs, lr, batch_size, seed,
                val=(val_inputs, val_labels) if val_x is not None else None,
                progress=progress, max_seconds=max_seconds,
                best_so_far=loss_before if val_x is not None else None,
            )  # fmt: skip
            loss_after = run.evaluate(val_inputs, val_labels, batch_size)
    finally:
        teacher.train(teacher_was_training)
    student.eval()
    return ModuleDistillResult(
        model=student,
        objective=chosen,
        mapped_layers=dict(hidden.pairs),
        history=history,
        loss_before=loss_before,
        loss_after=loss_after,
    )


class _Run:
    """The training loop and the evaluation of one :func:`distill_module` call."""

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        output_loss: OutputLoss,
        hidden: HiddenLoss | None,
        hidden_weight: float,
    ) -> None:
        self.teacher = teacher
        self.student = student
        self.output_loss = output_loss
        self.hidden = hidden
        self.hidden_weight = hidden_weight
        self.device = model_device(student)
        self.padding_mask: str | None = None

    def _teacher_outputs(
        self, xb: Batch, with_hidden: bool
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        names = list(self.hidden.pairs.values()) if self.hidden and with_hidden else []
        with torch.no_grad(), LayerCapture(self.teacher, names) as capture:
            out = primary_output(call_module(self.teacher, xb), side="teacher")
        feats = {k: v.to(self.device) for k, v in capture.outputs.items()}
        return out.to(self.device), feats

    def _loss(
        self, xb: Batch, yb: torch.Tensor | None, *, with_hidden: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        xb = _trim_padding(xb, self.padding_mask)
        t_out, t_feats = self._teacher_outputs(xb, with_hidden)
        names = list(self.hidden.pairs) if self.hidden and with_hidden else []
        with LayerCapture(self.student, names) as capture:
            s_out = primary_output(call_module(self.student, xb), side="student")
        out_loss = self.output_loss(s_out, t_out, yb)
        if not names:
            return out_loss, out_loss
        assert self.hidden is not None
        total = out_loss + self.hidden_weight * self.hidden(capture.outputs, t_feats)
        return total, out_loss

    def _batches(
        self, inputs: ModuleInputs, batch_size: int, generator: torch.Generator | None
    ) -> list[torch.Tensor]:
        """Sample indices per batch; with a padding mask, of sentences of similar length."""
        if self.padding_mask is None or inputs.named is None:
            return _batches(len(inputs), batch_size, generator)
        lengths = (inputs.named[self.padding_mask] != 0).sum(dim=1)
        return _length_batches(lengths, batch_size, generator)

    def evaluate(self, inputs: ModuleInputs, labels: torch.Tensor | None, batch_size: int) -> float:
        """Mean output loss over ``inputs`` with the student in eval mode."""
        self.student.eval()
        total = 0.0
        with torch.no_grad():
            for index in self._batches(inputs, batch_size, None):
                yb = None if labels is None else labels[index].to(self.device)
                _, out_loss = self._loss(inputs.batch(index), yb, with_hidden=False)
                total += float(out_loss) * len(index)
        return total / len(inputs)

    def train(
        self,
        inputs: ModuleInputs,
        labels: torch.Tensor | None,
        epochs: int,
        lr: float,
        batch_size: int,
        seed: int,
        *,
        val: tuple[ModuleInputs, torch.Tensor | None] | None,
        progress: Callable[[dict[str, Any]], None] | None,
        max_seconds: float | None,
        best_so_far: float | None = None,
    ) -> list[dict[str, Any]]:
        """Train for ``epochs`` (fewer when ``max_seconds`` runs out); the history.

        With validation inputs and ``best_so_far`` (the loss before training), the
        student ends with the weights of its best validation loss, the starting weights
        included: distillation never returns a student worse than it started.
        """
        modules: list[nn.Module] = [self.student] + ([self.hidden] if self.hidden else [])
        decay, no_decay = split_decay(modules)
        optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": WEIGHT_DECAY},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=lr,
        )
        generator = torch.Generator().manual_seed(seed)
        history: list[dict[str, Any]] = []
        start = time.perf_counter()
        best = best_so_far
        best_state = (
            {k: v.detach().clone() for k, v in self.student.state_dict().items()}
            if best is not None
            else None
        )
        for epoch in range(1, epochs + 1):
            self.student.train()
            total, seen = 0.0, 0
            for index in self._batches(inputs, batch_size, generator):
                yb = None if labels is None else labels[index].to(self.device)
                loss, _ = self._loss(inputs.batch(index), yb, with_hidden=True)
                if not torch.isfinite(loss):
                    raise StageError(
                        f"the distillation loss must stay finite, but got {float(loss)} at "
                        f"epoch {epoch}; lower lr (got {lr})"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(index)
                seen += len(index)
            val_loss = None if val is None else self.evaluate(val[0], val[1], batch_size)
            elapsed = time.perf_counter() - start
            record = {
                "epoch": epoch,
                "loss": total / seen,
                "val_loss": val_loss,
                "seconds": elapsed,
            }
            if best is not None and val_loss is not None and val_loss < best:
                best = val_loss
                best_state = {k: v.detach().clone() for k, v in self.student.state_dict().items()}
            record["kept"] = best == val_loss
            history.append(record)
            if progress is not None:
                progress(dict(record))
            if max_seconds is not None and elapsed >= max_seconds and epoch < epochs:
                logger.info("distillation stops after epoch %d: %.1f s spent", epoch, max_seconds)
                break
        if best_state is not None:
            self.student.load_state_dict(best_state)
        self.student.eval()
        return history


def _length_batches(
    lengths: torch.Tensor, batch_size: int, generator: torch.Generator | None
) -> list[torch.Tensor]:
    """Batches of samples of similar length (so trimming padding cuts most).

    Training (``generator`` given): a random order, sorted by length within windows of
    :data:`LENGTH_WINDOW` batches, cut into batches, whose order is shuffled again.
    Evaluation: all samples sorted by length.
    """
    if generator is None:
        return _split(torch.argsort(lengths, stable=True), batch_size)
    order = torch.randperm(len(lengths), generator=generator)
    chunks: list[torch.Tensor] = []
    for window in order.split(batch_size * LENGTH_WINDOW):
        chunks += _split(window[torch.argsort(lengths[window], stable=True)], batch_size)
    shuffle = torch.randperm(len(chunks), generator=generator)
    return [chunks[int(i)] for i in shuffle]


def _split(order: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """``order`` in batches of ``batch_size``; a last batch of one sample joins the one before."""
    chunks = list(order.split(batch_size))
    if len(chunks) > 1 and len(chunks[-1]) == 1:
        chunks[-2:] = [torch.cat(chunks[-2:])]
    return chunks


def _trim_padding(xb: Batch, mask_name: str | None) -> Batch:
    """``xb`` cut after the last column where ``xb[mask_name]`` is non-zero in any row
    (every input of the mask's ``[batch, tokens]`` shape); ``xb`` itself when off."""
    if mask_name is None or not isinstance(xb, dict):
        return xb
    mask = xb[mask_name]
    used = torch.nonzero(mask.any(dim=0))
    length = int(used.max()) + 1 if len(used) else 1
    if length >= mask.shape[1]:
        return xb
    shape = tuple(mask.shape)
    return {k: v[:, :length] if tuple(v.shape[:2]) == shape else v for k, v in xb.items()}


def _padding_mask(
    setting: str | None, teacher: nn.Module, inputs: ModuleInputs, batch_size: int
) -> str | None:
    """The padding-mask input to trim batches by, or None (see ``padding_mask``)."""
    names = inputs.names or ()
    name = (
        ("attention_mask" if "attention_mask" in names else None) if setting == "auto" else setting
    )
    if name is None:
        return None
    if name not in names:
        raise ConfigError(
            f"padding_mask must name one of the named inputs {list(names)}, but got {name!r}"
        )
    assert inputs.named is not None
    mask = inputs.named[name]
    if mask.dim() != 2:
        raise ConfigError(
            f"padding_mask {name!r} must be a [batch, tokens] input, but got shape "
            f"{list(mask.shape)}"
        )
    # Checked on the most padded rows, where trimming cuts most.
    rows = torch.argsort((mask != 0).sum(dim=1))[: min(batch_size, len(inputs))]
    xb = inputs.batch(rows)
    assert isinstance(xb, dict)
    trimmed = _trim_padding(xb, name)
    if trimmed is xb:
        return name
    try:
        with torch.no_grad():
            full = primary_output(call_module(teacher, xb), side="teacher")
            cut = primary_output(call_module(teacher, trimmed), side="teacher")
        same = full.shape == cut.shape and bool(torch.allclose(full, cut, atol=1e-4))
    except Exception:  # a model that needs every column: trimming stays off
        same = False
    if not same:
        logger.info("padding is not trimmed: the teacher's outputs depend on padded tokens")
        return None
    return name


def _batches(n: int, batch_size: int, generator: torch.Generator | None) -> list[torch.Tensor]:
    order = torch.arange(n) if generator is None else torch.randperm(n, generator=generator)
    return _split(order, batch_size)


def _check_options(
    objective: str,
    temperature: float,
    alpha: float,
    epochs: int,
    lr: float,
    batch_size: int,
    hidden_weight: float,
) -> None:
    if objective not in OBJECTIVES:
        raise ConfigError(
            f"objective must be one of {list(OBJECTIVES)}, but got {objective!r}"
            f"{did_you_mean(objective, OBJECTIVES)}"
        )
    positive = {"temperature": temperature, "lr": lr}
    for name, value in positive.items():
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ConfigError(f"{name} must be a positive number, but got {value!r}")
    for name, value in {"alpha": alpha, "hidden_weight": hidden_weight}.items():
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ConfigError(f"{name} must be a non-negative number, but got {value!r}")
    for name, count in {"epochs": epochs, "batch_size": batch_size}.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ConfigError(f"{name} must be a positive integer, but got {count!r}")


def _labels(y: Any, n: int, what: str) -> torch.Tensor | None:
    if y is None:
        return None
    labels = y.detach().cpu() if isinstance(y, torch.Tensor) else torch.from_numpy(np.asarray(y))
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise DataError(f"{what} must be integer class indices, but got dtype {labels.dtype}")
    if labels.dim() != 1 or len(labels) != n:
        raise DataError(
            f"{what} must be one label per sample ({n} samples), but got shape {list(labels.shape)}"
        )
    return labels.long()


def _check_label_range(labels: torch.Tensor, classes: int) -> None:
    high = int(labels.max())
    if high >= classes:
        raise DataError(
            f"labels must be class indices below {classes} (the models' output width), but "
            f"got {high}"
        )


def _layer_map(
    student: nn.Module, teacher: nn.Module, hidden_map: str | Mapping[str, str] | None
) -> tuple[dict[str, str], bool]:
    """The layer pairs, and whether a pair that cannot be compared is an error."""
    if hidden_map is None:
        return {}, False
    if isinstance(hidden_map, str):
        if hidden_map != "auto":
            raise ConfigError(
                f"hidden_map must be 'auto', None or a {{student_layer: teacher_layer}} "
                f"mapping, but got {hidden_map!r}"
            )
        return auto_layer_map(student, teacher), False
    if not isinstance(hidden_map, Mapping) or not hidden_map:
        raise ConfigError(
            f"hidden_map must be 'auto', None or a non-empty {{student_layer: teacher_layer}} "
            f"mapping, but got {hidden_map!r}"
        )
    pairs = {str(s): str(t) for s, t in hidden_map.items()}
    check_layer_names(student, pairs, side="student")
    check_layer_names(teacher, pairs.values(), side="teacher")
    return pairs, True


def _probe(
    teacher: nn.Module,
    student: nn.Module,
    inputs: ModuleInputs,
    size: int,
    pairs: Mapping[str, str],
) -> dict[str, Any]:
    """Run one batch through both models (eval mode, no grad): outputs and layer shapes."""
    xb = inputs.batch(slice(0, size))
    shapes: dict[tuple[str, str], tuple[int, ...]] = {}
    outs: dict[str, torch.Tensor] = {}
    student_was_training = student.training
    student.eval()
    try:
        for side, model, names in (
            ("teacher", teacher, list(pairs.values())),
            ("student", student, list(pairs)),
        ):
            try:
                with torch.no_grad(), LayerCapture(model, names) as capture:
                    raw = call_module(model, xb)
            except Exception as exc:
                raise DataError(
                    f"the {side} ({type(model).__name__}) must run on the inputs it is given, "
                    f"but one batch of them ({inputs.describe()}) failed: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            outs[side] = primary_output(raw, side=side)
            for name, value in capture.outputs.items():
                shapes[(side, name)] = tuple(value.shape[1:])
    finally:
        student.train(student_was_training)
    return {"student_out": outs["student"], "teacher_out": outs["teacher"], "shapes": shapes}


def _resolve_objective(
    objective: str, scores: bool, probe: Mapping[str, Any], inputs: ModuleInputs
) -> str:
    if objective == "auto":
        objective = "logits" if scores else "cosine"
    s, t = probe["student_out"], probe["teacher_out"]
    if objective == "logits":
        for side, out in (("student", s), ("teacher", t)):
            if out.dim() != 2:
                raise ConfigError(
                    f"objective 'logits' needs class scores [batch, classes] from the {side}, "
                    f"but got an output of shape {list(out.shape)} on {inputs.describe()}; use "
                    f"'cosine' or 'mse' for embeddings and hidden states"
                )
    if s.shape != t.shape:
        raise ConfigError(
            f"teacher and student outputs must have the same shape for objective "
            f"{objective!r}, but got teacher {list(t.shape)} and student {list(s.shape)}"
        )
    if objective == "cosine" and s.dim() < 2:
        raise ConfigError(
            f"objective 'cosine' needs outputs of at least 2 dims [batch, features], but got "
            f"{list(s.shape)}; use 'mse'"
        )
    return objective
