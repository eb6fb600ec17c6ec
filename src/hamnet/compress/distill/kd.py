"""The torch side of distillation: one loss module per method, and the combined loss.

The methods are plugins (registry kind ``"kd_loss"``, package
:mod:`hamnet.compress.distill.losses`): a plugin validates a term's options without
torch and builds the :class:`DistillTerm` defined here.

Every loss reads the student's and the teachers' :class:`DistillOutputs` of one batch and
returns a scalar. Teacher tensors are detached inside every loss, so gradients reach the
student (and the loss's own parameters, e.g. feature projections) only. A loss says which
layers it reads through :attr:`DistillTerm.student_capture` and
:attr:`DistillTerm.teacher_capture`.

:func:`build_distill_loss` turns a plain spec such as::

    [{"method": "soft", "weight": 1.0, "temperature": 4.0},
     {"method": "feature", "weight": 0.5, "layers": "depth"}]

into a :class:`CombinedDistillLoss` (weighted terms plus cross-entropy on the labels)
and the layers to capture.
"""

from __future__ import annotations

import abc
import copy
import functools
import math
import operator
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from hamnet.compress.distill.losses.base import parse_term
from hamnet.compress.distill.mapping import LayerKind, LayerPair, LayerSpec, map_layers
from hamnet.compress.distill.outputs import CaptureSpec, DistillOutputs
from hamnet.core.errors import ConfigError
from hamnet.training.trainer import labelled_cross_entropy

_LOG_EPS = 1e-12


@dataclass
class BuildContext:
    """The models a loss is built for.

    Attributes:
        student: The model being trained.
        teachers: The teacher models (``teachers[0]`` provides features, attention maps
            and embeddings; the others only logits).
        input_size: Features per sample, for the shape check of layer mappings (defaults
            to ``model.config.input_size``).
    """

    student: nn.Module
    teachers: Sequence[nn.Module] = ()
    input_size: int | None = None

    def first_teacher(self, method: str) -> nn.Module:
        """``teachers[0]``, or an error saying that ``method`` needs a teacher."""
        if not self.teachers:
            raise ConfigError(f"distillation method {method!r} needs a teacher, but got none")
        return self.teachers[0]

    def layer_pairs(self, method: str, spec: LayerSpec, kind: LayerKind) -> list[LayerPair]:
        """The student layers ``method`` compares with ``teachers[0]``'s (see :func:`map_layers`).

        Raises:
            ConfigError: If there is no teacher, or the layers cannot be paired.
        """
        return map_layers(
            self.student, self.first_teacher(method), spec, kind, input_size=self.input_size
        )


class DistillTerm(nn.Module, abc.ABC):
    """A distillation objective between a student and its teachers on one batch.

    Subclasses set :attr:`name`, implement :meth:`forward`, and set
    :attr:`student_capture`/:attr:`teacher_capture` to the layers they read.
    """

    name: ClassVar[str]
    min_teachers: int = 1
    student_capture: CaptureSpec = CaptureSpec()
    teacher_capture: CaptureSpec = CaptureSpec()

    @abc.abstractmethod
    def forward(
        self, student: DistillOutputs, teachers: Sequence[DistillOutputs], batch_y: torch.Tensor
    ) -> torch.Tensor:
        """The loss of one batch.

        Args:
            student: The student's outputs (with gradients).
            teachers: The teachers' outputs (detached here whatever the caller passes).
            batch_y: Class labels ``[B]``.

        Returns:
            A scalar tensor.
        """

    def _teacher(self, teachers: Sequence[DistillOutputs]) -> DistillOutputs:
        if not teachers:
            raise ConfigError(f"distillation method {self.name!r} needs a teacher, but got none")
        return teachers[0].detach()


def soft_target_kl(
    student_logits: torch.Tensor, teacher_log_probs: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Hinton's soft-target loss ``KL(p_t || softmax(s / T)) * T²``, averaged over the batch.

    Args:
        student_logits: ``[B, C]``.
        teacher_log_probs: Log-probabilities of the (already softened) targets ``[B, C]``.
        temperature: ``T``.
    """
    log_q = F.log_softmax(student_logits / temperature, dim=-1)
    kl = F.kl_div(log_q, teacher_log_probs, reduction="batchmean", log_target=True)
    return kl * temperature**2


class SoftTargetLoss(DistillTerm):
    """Soft targets (Hinton et al. 2015): ``KL(softmax(t/T) || softmax(s/T)) * T²``.

    With several teachers the target is built from the mean of their logits (use
    ``multi_teacher`` to mix their probabilities instead).

    Args:
        temperature: Softening temperature ``T``.
    """

    name = "soft"

    def __init__(self, temperature: float = 4.0) -> None:
        super().__init__()
        self.temperature = _positive("temperature", temperature)

    def forward(
        self, student: DistillOutputs, teachers: Sequence[DistillOutputs], batch_y: torch.Tensor
    ) -> torch.Tensor:
        if not teachers:
            raise ConfigError(f"distillation method {self.name!r} needs a teacher, but got none")
        logits = torch.stack([t.logits.detach() for t in teachers]).mean(dim=0)
        target = F.log_softmax(logits / self.temperature, dim=-1)
        return soft_target_kl(student.logits, target, self.temperature)


class FeatureLoss(DistillTerm):
    """Feature matching (FitNets-style hints): MSE between paired layer outputs.

    When a student width differs from its teacher's, a learned ``nn.Linear(student_width,
    teacher_width)`` (a submodule of this loss, so train it with the student) maps the
    student feature first. The loss is the mean over pairs.

    Args:
        pairs: Feature pairs from :func:`~hamnet.compress.distill.mapping.map_layers` (their shapes
            size the projections).
        normalize: Normalise both features over the last dim (``F.layer_norm`` without
            affine parameters) before comparing, so scale differences do not dominate.
    """

    name = "feature"

    def __init__(self, pairs: Sequence[LayerPair], *, normalize: bool = False) -> None:
        super().__init__()
        if not pairs:
            raise ConfigError("feature distillation needs at least one layer pair")
        self.pairs = list(pairs)
        for pair in self.pairs:
            if pair.kind != "feature" or not pair.student_shape or not pair.teacher_shape:
                raise ConfigError(
                    f"feature distillation needs feature pairs with shapes (from map_layers), "
                    f"but got {pair}"
                )
        self.projections = nn.ModuleList(
            nn.Linear(p.student_shape[-1], p.teacher_shape[-1])
            if p.student_shape[-1] != p.teacher_shape[-1]
            else nn.Identity()
            for p in self.pairs
        )
        self.normalize = normalize
        self.student_capture = CaptureSpec(features=tuple(p.student for p in self.pairs))
        self.teacher_capture = CaptureSpec(features=tuple(p.teacher for p in self.pairs))

    def forward(
        self, student: DistillOutputs, teachers: Sequence[DistillOutputs], batch_y: torch.Tensor
    ) -> torch.Tensor:
        teacher = self._teacher(teachers)
        losses = []
        for pair, projection in zip(self.pairs, self.projections, strict=True):
            s = projection(student.features[pair.student])
            t = teacher.features[pair.teacher]
            if self.normalize:
                s, t = F.layer_norm(s, s.shape[-1:]), F.layer_norm(t, t.shape[-1:])
            losses.append(F.mse_loss(s, t))
        return torch.stack(losses).mean()


def activation_map(a: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Zagoruyko & Komodakis' spatial attention of an activation, L2-normalised per sample.

    ``mean_c |a|^p`` over channels: the last dim for token features ``[B, T, C]``, dim 1
    for conv activations ``[B, C, H, W, ...]``; flattened to ``[B, N]``.
    """
    if a.dim() == 3:
        energy = a.abs().pow(p).mean(dim=-1)
    elif a.dim() >= 4:
        energy = a.abs().pow(p).mean(dim=1).flatten(1)
    else:
        raise ConfigError(
            f"attention transfer on activations needs [B, T, C] or [B, C, H, W] outputs, but "
            f"got shape {list(a.shape)}"
        )
    return F.normalize(energy, dim=1)


class AttentionTransferLoss(DistillTerm):
    """Attention transfer (Zagoruyko & Komodakis 2017), for attention maps and activations.

    What is compared depends on the pair's kind:

    * ``"attention"`` pairs (attention probes, maps ``[B, H, T, T]``): the head-averaged
      maps (or each head when ``per_head`` and the head counts agree), by MSE or by the KL
      divergence of the teacher's rows from the student's.
    * ``"feature"`` pairs (activations): the paper's ``normalize(mean_c |a|^p)`` maps (see
      :func:`activation_map`), by mean squared difference.

    The loss is the mean over pairs.

    Args:
        pairs: Pairs from :func:`~hamnet.compress.distill.mapping.map_layers`.
        distance: ``"mse"`` or ``"kl"`` (attention maps only).
        p: Exponent of the activation maps.
        per_head: Compare attention maps head by head (needs equal head counts).
    """

    name = "attention"
    _DISTANCES = ("mse", "kl")

    def __init__(
        self,
        pairs: Sequence[LayerPair],
        *,
        distance: str = "mse",
        p: float = 2.0,
        per_head: bool = False,
    ) -> None:
        super().__init__()
        if not pairs:
            raise ConfigError("attention transfer needs at least one layer pair")
        self.pairs = list(pairs)
        self.distance = _choice("distance", distance, self._DISTANCES)
        self.p = _positive("p", p)
        self.per_head = per_head
        if per_head:
            for pair in self.pairs:
                heads = (pair.student_shape[:1], pair.teacher_shape[:1])
                if pair.kind == "attention" and heads[0] != heads[1]:
                    raise ConfigError(
                        f"per_head attention transfer needs equal head counts, but student "
                        f"layer {pair.student!r} has {heads[0]} and teacher layer "
                        f"{pair.teacher!r} has {heads[1]}; set per_head: false to compare "
                        f"head-averaged maps"
                    )
        attn = [p for p in self.pairs if p.kind == "attention"]
        feat = [p for p in self.pairs if p.kind == "feature"]
        self.student_capture = CaptureSpec(
            features=tuple(p.student for p in feat), attentions=tuple(p.student for p in attn)
        )
        self.teacher_capture = CaptureSpec(
            features=tuple(p.teacher for p in feat), attentions=tuple(p.teacher for p in attn)
        )

    def forward(
        self, student: DistillOutputs, teachers: Sequence[DistillOutputs], batch_y: torch.Tensor
    ) -> torch.Tensor:
        teacher = self._teacher(teachers)
        losses = []
        for pair in self.pairs:
            if pair.kind == "attention":
                s = student.attentions[pair.student]
                t = teacher.attentions[pair.teacher]
                losses.append(self._map_distance(s, t))
            else:
                s = activation_map(student.features[pair.student], self.p)
                t = activation_map(teacher.features[pair.teacher], self.p)
                losses.append((s - t).pow(2).mean())
        return torch.stack(losses).mean()

    def _map_distance(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if not (self.per_head and s.shape[1] == t.shape[1]):
            s, t = s.mean(dim=1), t.mean(dim=1)
        if self.distance == "mse":
            return F.mse_loss(s, t)
        rows = t.numel() // t.shape[-1]
        log_s = s.clamp_min(_LOG_EPS).log()
        return F.kl_div(log_s, t, reduction="sum") / rows


def pairwise_distances(e: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between the rows of ``e`` ``[B, D]``, zero on the diagonal."""
    squares = e.pow(2).sum(dim=1)
    d = (squares.unsqueeze(1) + squares.unsqueeze(0) - 2 * e @ e.t()).clamp_min(_LOG_EPS).sqrt()
    return d * (1 - torch.eye(len(e), device=e.device, dtype=e.dtype))


def _normalised_distances(e: torch.Tensor) -> torch.Tensor:
    d = pairwise_distances(e)
    positive = d > 0
    return d / (d[positive].sum() / positive.sum().clamp_min(1))


def _angles(e: torch.Tensor) -> torch.Tensor:
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)
    return torch.bmm(diff, diff.transpose(1, 2)).reshape(-1)


class RelationalLoss(DistillTerm):
    """Relational KD (Park et al. 2019): RKD-distance plus RKD-angle on the embeddings.

    Distance: pairwise distances normalised by their mean, compared by smooth-L1 (Huber).
    Angle: cosines of the angles of every triplet, compared by smooth-L1. Reads
    :attr:`DistillOutputs.embedding` (the logits when a model has none), so student and
    teacher widths may differ.

    Args:
        distance_weight: Weight of the distance term (paper: 1).
        angle_weight: Weight of the angle term (paper: 2).
    """

    name = "relational"

    def __init__(self, *, distance_weight: float = 1.0, angle_weight: float = 2.0) -> None:
        super().__init__()
        self.distance_weight = _non_negative("distance_weight", distance_weight)
        self.angle_weight = _non_negative("angle_weight", angle_weight)
        self.student_capture = CaptureSpec(embedding=True)
        self.teacher_capture = CaptureSpec(embedding=True)

    def forward(
        self, student: DistillOutputs, teachers: Sequence[DistillOutputs], batch_y: torch.Tensor
    ) -> torch.Tensor:
        teacher = self._teacher(teachers)
        s = student.logits if student.embedding is None else student.embedding
        t = teacher.logits if teacher.embedding is None else teacher.embedding
        s, t = s.flatten(1), t.flatten(1)
        loss = s.new_zeros(())
        if self.distance_weight:
            d = F.smooth_l1_loss(_normalised_distances(s), _normalised_distances(t))
            loss = loss + self.distance_weight * d
        if self.angle_weight:
            loss = loss + self.angle_weight * F.smooth_l1_loss(_angles(s), _angles(t))
        return loss


class MultiTeacherLoss(DistillTerm):
    """Soft targets from an ensemble: the student matches a weighted mixture of the
    teachers' softened probabilities, ``KL(Σ_k w_k softmax(t_k/T) || softmax(s/T)) * T²``.

    Weightings:

    * ``"fixed"``: ``weights`` (one per teacher, normalised to sum to 1; uniform when
      omitted).
    * ``"confidence"``: per sample, each teacher's weight is proportional to the
      probability it gives the true label (``softmax_k log p_k(y|x)``, at ``T = 1``), so a
      teacher that is right on a sample dominates it; unlabelled samples (label ``-1``)
      fall back to ``"entropy"``.
    * ``"entropy"``: per sample, ``softmax_k(-H(p_k(x)))`` (at ``T = 1``): sharper teachers
      weigh more, without reading the label.

    Args:
        temperature: Softening temperature ``T``.
        weighting: ``"fixed"``, ``"confidence"`` or ``"entropy"``.
        weights: Teacher weights for ``"fixed"``.
    """

    name = "multi_teacher"
    _WEIGHTINGS = ("fixed", "confidence", "entropy")

    def __init__(
        self,
        *,
        temperature: float = 4.0,
        weighting: str = "fixed",
        weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.temperature = _positive("temperature", temperature)
        self.weighting = _choice("weighting", weighting, self._WEIGHTINGS)
        if weights is not None:
            if weighting != "fixed":
                raise ConfigError(f"weights apply to weighting 'fixed' only, but got {weighting!r}")
            if (
                not weights
                or any(not math.isfinite(w) or w < 0 for w in weights)
                or not sum(weights)
            ):
                raise ConfigError(
                    f"weights must be non-negative with a positive sum, but got {list(weights)}"
                )
        self.weights = None if weights is None else [float(w) for w in weights]

    def teacher_weights(
        self, teachers: Sequence[DistillOutputs], batch_y: torch.Tensor
    ) -> torch.Tensor:
        """Weights ``[K, B]`` of the ``K`` teachers on each sample (summing to 1 over K)."""
        logits = torch.stack([t.logits.detach() for t in teachers])
        k, b = logits.shape[:2]
        if self.weighting == "fixed":
            if self.weights is not None and len(self.weights) != k:
                raise ConfigError(
                    f"multi_teacher has {len(self.weights)} weights, but got {k} teachers"
                )
            w = logits.new_tensor(self.weights) if self.weights is not None else logits.new_ones(k)
            return (w / w.sum()).unsqueeze(1).expand(k, b)
        log_p = F.log_softmax(logits, dim=-1)
        neg_entropy = (log_p.exp() * log_p).sum(dim=-1)
        if self.weighting == "confidence":
            labelled = batch_y >= 0
            index = batch_y.long().clamp_min(0).view(1, b, 1).expand(k, b, 1)
            # Unlabelled samples (a transfer set) have no true label: entropy weighting.
            score = torch.where(labelled, log_p.gather(2, index).squeeze(2), neg_entropy)
        else:
            score = neg_entropy
        return torch.softmax(score, dim=0)

    def forward(
        self, student: DistillOutputs, teachers: Sequence[DistillOutputs], batch_y: torch.Tensor
    ) -> torch.Tensor:
        if not teachers:
            raise ConfigError(f"distillation method {self.name!r} needs a teacher, but got none")
        w = self.teacher_weights(teachers, batch_y)
        log_p = torch.stack(
            [F.log_softmax(t.logits.detach() / self.temperature, dim=-1) for t in teachers]
        )
        log_mix = torch.logsumexp(w.clamp_min(_LOG_EPS).log().unsqueeze(-1) + log_p, dim=0)
        return soft_target_kl(student.logits, log_mix, self.temperature)


def _key(layer: str) -> str:
    """A module name usable as an ``nn.ModuleDict`` key (no dots)."""
    return layer.replace(".", "__")


def _frozen_call(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` with the module's parameters detached (gradients reach ``x`` only)."""
    frozen = {name: p.detach() for name, p in module.named_parameters()}
    return torch.func.functional_call(module, frozen, (x,))


class SelfDistillLoss(DistillTerm):
    """Self-distillation: the student teaches itself.

    * ``"deep"`` (Be Your Own Teacher style): each shallow block's output goes through the
      student's own classifier (``head(norm(h).mean(dim=1))``) and its softened logits
      match the detached final logits; the loss is the mean over the shallow blocks. Each
      shallow block has its own auxiliary classifier (a copy of ``head``, a submodule of
      this loss, trained with it and not part of the student), and the final norm is
      applied with its weights detached: the loss shapes the shallow blocks without
      pulling the final classifier towards shallow features (sharing the trainable head
      cost 5-7 points of accuracy in benchmarks/distillation.py). Needs
      the student's ``norm`` and ``head`` (kept as plain references, not submodules, so
      their parameters stay the student's) and the block outputs in ``student.features``.
      No teacher is read.
    * ``"snapshot"`` (born-again style): soft targets from ``teachers[0]``, which the
      caller sets to an earlier checkpoint of the student (e.g. the previous generation
      or the model before this fine-tune).

    Args:
        mode: ``"deep"`` or ``"snapshot"``.
        temperature: Softening temperature ``T``.
        norm: The student's final normalisation (``"deep"``).
        head: The student's classifier (``"deep"``).
        layers: Student block names taught by the final logits (``"deep"``).
    """

    name = "self"
    _MODES = ("deep", "snapshot")

    def __init__(
        self,
        mode: str = "deep",
        *,
        temperature: float = 4.0,
        norm: nn.Module | None = None,
        head: nn.Module | None = None,
        layers: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.mode = _choice("mode", mode, self._MODES)
        self.temperature = _positive("temperature", temperature)
        self.layers = list(layers)
        self._classifier: tuple[nn.Module, nn.Module] | None = None
        if self.mode == "deep":
            if norm is None or head is None or not self.layers:
                raise ConfigError(
                    "deep self-distillation needs the student's norm and head and at least one "
                    "shallow layer"
                )
            self._classifier = (norm, head)
            # Be Your Own Teacher: each shallow block gets its own classifier (trained with
            # the loss, dropped at export), started as a copy of the final one.
            self.aux_heads = nn.ModuleDict(
                {_key(name): copy.deepcopy(head) for name in self.layers}
            )
            for aux in self.aux_heads.values():
                aux.requires_grad_(True)
            self.min_teachers = 0
            self.student_capture = CaptureSpec(features=tuple(self.layers))

    def forward(
        self, student: DistillOutputs, teachers: Sequence[DistillOutputs], batch_y: torch.Tensor
    ) -> torch.Tensor:
        T = self.temperature
        if self._classifier is None:
            target = F.log_softmax(self._teacher(teachers).logits / T, dim=-1)
            return soft_target_kl(student.logits, target, T)
        norm, _ = self._classifier
        target = F.log_softmax(student.logits.detach() / T, dim=-1)
        losses = []
        for name in self.layers:
            h = _frozen_call(norm, student.features[name])
            logits = self.aux_heads[_key(name)](h.mean(dim=1) if h.dim() == 3 else h)
            losses.append(soft_target_kl(logits, target, T))
        return torch.stack(losses).mean()


class CombinedDistillLoss(nn.Module):
    """A weighted sum of distillation terms plus cross-entropy on the labels.

    ``loss = ce_weight * CE(student.logits, y) + Σ weight_i * term_i``. Module it as an
    extra module of the trainer: its parameters (feature projections) train with the
    student.

    Args:
        terms: ``(loss, weight)`` pairs.
        ce_weight: Weight of the cross-entropy on the labels (0 drops it).

    Attributes:
        names: One name per term (the method's name, suffixed ``_2``, ``_3``... on repeats).
    """

    def __init__(self, terms: Sequence[tuple[DistillTerm, float]], ce_weight: float = 1.0) -> None:
        super().__init__()
        self.terms = nn.ModuleList(loss for loss, _ in terms)
        self.weights = [_non_negative("weight", w) for _, w in terms]
        self.ce_weight = _non_negative("ce_weight", ce_weight)
        seen: Counter[str] = Counter()
        self.names: list[str] = []
        for loss, _ in terms:
            seen[loss.name] += 1
            count = seen[loss.name]
            self.names.append(loss.name if count == 1 else f"{loss.name}_{count}")
        self._last: dict[str, torch.Tensor] = {}

    @property
    def last_terms(self) -> dict[str, float]:
        """Unweighted value of each term (and ``"ce"``, ``"total"``) of the last call."""
        return {name: float(value) for name, value in self._last.items()}

    @property
    def student_capture(self) -> CaptureSpec:
        """What the student forward must capture for every term."""
        return functools.reduce(
            operator.or_, (loss.student_capture for loss in self._losses()), CaptureSpec()
        )

    @property
    def teacher_capture(self) -> CaptureSpec:
        """What ``teachers[0]`` must provide (other teachers provide logits only)."""
        return functools.reduce(
            operator.or_, (loss.teacher_capture for loss in self._losses()), CaptureSpec()
        )

    @property
    def min_teachers(self) -> int:
        """How many teachers the terms need at least."""
        return max((loss.min_teachers for loss in self._losses()), default=0)

    def _losses(self) -> list[DistillTerm]:
        return [loss for loss in self.terms if isinstance(loss, DistillTerm)]

    def forward(
        self, student: DistillOutputs, teachers: Sequence[DistillOutputs], batch_y: torch.Tensor
    ) -> torch.Tensor:
        last: dict[str, torch.Tensor] = {}
        total = student.logits.new_zeros(())
        if self.ce_weight:
            ce = labelled_cross_entropy(student.logits, batch_y)
            last["ce"] = ce.detach()
            total = total + self.ce_weight * ce
        for name, loss, weight in zip(self.names, self._losses(), self.weights, strict=True):
            value = loss(student, teachers, batch_y)
            last[name] = value.detach()
            total = total + weight * value
        last["total"] = total.detach()
        self._last = last
        return total


@dataclass
class DistillPlan:
    """A built distillation objective and the layers its inputs must carry.

    Attributes:
        loss: The combined loss (on the student's device).
        student: What to capture from the student at every step.
        teacher: What to capture from ``teachers[0]``; other teachers provide logits only
            (see :meth:`teacher_spec`).
        min_teachers: How many teachers the terms need (0 for deep self-distillation only).
    """

    loss: CombinedDistillLoss
    student: CaptureSpec
    teacher: CaptureSpec
    min_teachers: int = 1

    def teacher_spec(self, index: int) -> CaptureSpec:
        """What to capture from ``teachers[index]``."""
        return self.teacher if index == 0 else CaptureSpec()


def build_distill_loss(
    spec: Sequence[Mapping[str, Any]] | Mapping[str, Any],
    *,
    student: nn.Module,
    teachers: Sequence[nn.Module] = (),
    ce_weight: float = 1.0,
    input_size: int | None = None,
) -> DistillPlan:
    """Build a :class:`CombinedDistillLoss` from a plain spec.

    Args:
        spec: One term or a list of terms, each ``{"method": name, "weight": w, **options}``
            with ``name`` a ``kd_loss`` plugin (see :mod:`hamnet.compress.distill.losses`;
            ``weight`` defaults to 1).
        student: The student model (its layers are mapped; deep self-distillation reads
            its ``norm`` and ``head``).
        teachers: The teacher models; ``teachers[0]`` is the one whose layers are mapped.
        ce_weight: Weight of the cross-entropy on the labels.
        input_size: Features per sample for the shape checks (default
            ``model.config.input_size``).

    Returns:
        The loss, moved to the student's device, and what to capture.

    Raises:
        ConfigError: If a method is unknown (the message lists them), an option is unknown
            for its method (the message names it), an option value is invalid, a method
            needs a teacher and none is given, or layers cannot be mapped.
    """
    terms_spec = [spec] if isinstance(spec, Mapping) else list(spec)
    if not terms_spec:
        raise ConfigError("distillation needs at least one term, but got an empty list")
    context = BuildContext(student=student, teachers=list(teachers), input_size=input_size)
    parsed = [parse_term(term) for term in terms_spec]
    loss = CombinedDistillLoss(
        [(term.build(context), term.weight) for term in parsed], ce_weight=ce_weight
    )
    device = next((p.device for p in student.parameters()), torch.device("cpu"))
    loss.to(device)
    return DistillPlan(
        loss=loss,
        student=loss.student_capture,
        teacher=loss.teacher_capture,
        min_teachers=loss.min_teachers,
    )


def _positive(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be positive, but got {value!r}")
    return float(value)


def _non_negative(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name} must be non-negative, but got {value!r}")
    return float(value)


def _choice(name: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {list(choices)}, but got {value!r}")
    return value
