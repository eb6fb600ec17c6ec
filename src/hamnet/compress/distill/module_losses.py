"""The losses of :func:`~hamnet.compress.distill.modules.distill_module`.

:class:`OutputLoss` compares the student's and the teacher's outputs (the objective);
:class:`HiddenLoss` matches paired hidden states, through an :class:`AxisProjection`
where a pruned width differs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from hamnet.compress.distill.kd import soft_target_kl
from hamnet.core.errors import ConfigError
from hamnet.training.trainer import labelled_cross_entropy

logger = logging.getLogger("hamnet.distill")

_EPS = 1e-8


class OutputLoss(nn.Module):
    """The loss between the student's and the teacher's (primary) outputs.

    - ``logits``: ``KL(softmax(t/T) || softmax(s/T)) * T²``, plus ``alpha`` times the
      cross-entropy on the labels of the samples that have one (label ``>= 0``).
    - ``cosine``: ``1 - cos(s, t)`` over the last dim, averaged.
    - ``mse``: the mean squared error.

    Args:
        objective: ``"logits"``, ``"cosine"`` or ``"mse"``.
        temperature: ``T`` of the ``logits`` objective.
        alpha: Weight of the cross-entropy of the ``logits`` objective.
    """

    def __init__(self, objective: str, temperature: float = 2.0, alpha: float = 0.5) -> None:
        super().__init__()
        self.objective = objective
        self.temperature = temperature
        self.alpha = alpha

    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        teacher = teacher.detach().to(student.dtype)
        if self.objective == "logits":
            target = F.log_softmax(teacher / self.temperature, dim=-1)
            loss = soft_target_kl(student, target, self.temperature)
            if labels is not None and self.alpha:
                loss = loss + self.alpha * labelled_cross_entropy(student, labels)
            return loss
        if self.objective == "cosine":
            return (1.0 - F.cosine_similarity(student, teacher, dim=-1, eps=_EPS)).mean()
        return F.mse_loss(student, teacher)


class AxisProjection(nn.Module):
    """A learned linear map along one axis of a feature (e.g. channels of ``[B, C, H, W]``).

    Args:
        axis: The tensor dim to map (1 for conv channels, -1 for transformer widths).
        in_features: Its size in the student.
        out_features: Its size in the teacher.
    """

    def __init__(self, axis: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.axis = axis
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.movedim(self.axis, -1)).movedim(-1, self.axis)


class HiddenLoss(nn.Module):
    """Matching of paired hidden states: mean over pairs of ``MSE(P(s), t) / mean(t²)``.

    Dividing by the teacher feature's mean square makes layers of any scale count alike.
    ``P`` is the identity when the shapes agree, else an :class:`AxisProjection` along the
    one axis whose size differs (a pruned width), trained with the student.

    Args:
        pairs: ``{student_layer: teacher_layer}``.
        shapes: ``{layer: per-sample shape}`` for the student's and teacher's layers,
            keyed ``("student", name)`` and ``("teacher", name)``.
        strict: Raise on a pair that cannot be compared instead of dropping it.

    Raises:
        ConfigError: With ``strict``, a pair whose layer did not run (no shape) or whose
            shapes differ in rank or in more than one axis (the message gives both shapes).
    """

    def __init__(
        self,
        pairs: Mapping[str, str],
        shapes: Mapping[tuple[str, str], tuple[int, ...]],
        *,
        strict: bool,
    ) -> None:
        super().__init__()
        self.pairs: dict[str, str] = {}
        projections: dict[str, nn.Module] = {}
        for s_name, t_name in pairs.items():
            missing = [
                f"{side} layer {name!r}"
                for side, name in (("student", s_name), ("teacher", t_name))
                if (side, name) not in shapes
            ]
            if missing:
                problem = (
                    f"hidden_map layers must run in the forward pass, but {missing[0]} did not"
                )
                if strict:
                    raise ConfigError(problem)
                logger.info("hidden-state matching skips a pair: %s", problem)
                continue
            s, t = shapes[("student", s_name)], shapes[("teacher", t_name)]
            differ = [i for i, (a, b) in enumerate(zip(s, t, strict=False)) if a != b]
            if len(s) != len(t) or len(differ) > 1:
                problem = (
                    f"hidden states of paired layers must have the same shape but for one axis, "
                    f"but got student {s_name!r} {list(s)} and teacher {t_name!r} {list(t)} "
                    f"per sample"
                )
                if strict:
                    raise ConfigError(problem)
                logger.info("hidden-state matching skips a pair: %s", problem)
                continue
            self.pairs[s_name] = t_name
            projections[str(len(projections))] = (
                AxisProjection(differ[0] + 1, s[differ[0]], t[differ[0]])
                if differ
                else nn.Identity()
            )
        self.projections = nn.ModuleDict(projections)

    def forward(
        self, student: Mapping[str, torch.Tensor], teacher: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        losses = []
        for projection, (s_name, t_name) in zip(
            self.projections.values(), self.pairs.items(), strict=True
        ):
            s = projection(student[s_name])
            t = teacher[t_name].detach().to(s.dtype)
            losses.append(F.mse_loss(s, t) / (t.pow(2).mean() + _EPS))
        return torch.stack(losses).mean()
