"""Pair student layers with teacher layers, by relative depth or by name, and check shapes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from hamnet.compress.distill.capture import (
    FeatureCapture,
    attention_layers,
    block_layers,
    check_layers,
)
from hamnet.core.errors import ConfigError

LayerKind = Literal["feature", "attention"]
LayerSpec = str | Mapping[str, str]
"""``"depth"`` or an explicit ``{student_layer: teacher_layer}`` mapping."""

_KINDS = ("feature", "attention")
_PROBE_BATCH = 2


@dataclass(frozen=True)
class LayerPair:
    """A student layer that learns from a teacher layer.

    Attributes:
        student: Module name in the student.
        teacher: Module name in the teacher.
        kind: ``"feature"`` (module outputs, e.g. block outputs ``[B, T, width]``) or
            ``"attention"`` (attention maps ``[B, heads, T, T]``).
        student_shape: Per-sample output shape in the student (without the batch dim).
        teacher_shape: Per-sample output shape in the teacher.
    """

    student: str
    teacher: str
    kind: LayerKind = "feature"
    student_shape: tuple[int, ...] = ()
    teacher_shape: tuple[int, ...] = ()


def depth_pairs(n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """Pair blocks by relative depth.

    Student block ``i`` of ``n`` learns from teacher block ``round((i + 1) * m / n) - 1`` of
    ``m`` (halves round up; a student deeper than twice the teacher clamps its first blocks
    to teacher block 0), so the last blocks always pair.

    Args:
        n_student: Student blocks ``n``.
        n_teacher: Teacher blocks ``m``.

    Returns:
        ``(student_index, teacher_index)`` pairs, one per student block.
    """
    if n_student < 1 or n_teacher < 1:
        raise ConfigError(
            f"depth mapping needs at least one block on each side, but got student "
            f"{n_student} and teacher {n_teacher}"
        )
    return [
        (i, max(((i + 1) * n_teacher * 2 + n_student) // (2 * n_student), 1) - 1)
        for i in range(n_student)
    ]


def map_layers(
    student_model: nn.Module,
    teacher_model: nn.Module,
    spec: LayerSpec = "depth",
    kind: LayerKind = "feature",
    *,
    input_size: int | None = None,
) -> list[LayerPair]:
    """Pair student and teacher layers and check that their outputs can be compared.

    Shapes are read from one forward pass of each model (in eval mode, without gradients)
    on a zero input. Features must agree on every dim but the last; widths may differ (the
    feature loss learns a projection). Attention maps must be ``[B, heads, T, T]`` with the
    same token count ``T``; head counts may differ (the loss compares head-averaged maps).

    Args:
        student_model: The student.
        teacher_model: The teacher.
        spec: ``"depth"`` (HAMNet-like models: blocks paired by :func:`depth_pairs`) or an
            explicit ``{student_layer: teacher_layer}`` mapping of module names.
        kind: ``"feature"`` pairs block outputs, ``"attention"`` pairs attention probes
            (``blocks.{i}.attn.attn_probe``) under ``"depth"``.
        input_size: Features per sample of the zero input; defaults to
            ``model.config.input_size``.

    Returns:
        The pairs, with their per-sample shapes.

    Raises:
        ConfigError: If ``spec`` or ``kind`` is invalid, a layer is unknown on either side
            (the message names the side and the layer), or two paired outputs cannot be
            compared (the message gives both shapes).
    """
    if kind not in _KINDS:
        raise ConfigError(f"layer kind must be one of {list(_KINDS)}, but got {kind!r}")
    if isinstance(spec, str):
        if spec != "depth":
            raise ConfigError(
                f"layers must be 'depth' or a {{student_layer: teacher_layer}} mapping, but "
                f"got {spec!r}"
            )
        layers = block_layers if kind == "feature" else attention_layers
        s_layers, t_layers = layers(student_model), layers(teacher_model)
        names = [(s_layers[i], t_layers[j]) for i, j in depth_pairs(len(s_layers), len(t_layers))]
    elif isinstance(spec, Mapping):
        if not spec:
            raise ConfigError("layers mapping must name at least one student layer")
        names = [(str(s), str(t)) for s, t in spec.items()]
    else:
        raise ConfigError(
            f"layers must be 'depth' or a {{student_layer: teacher_layer}} mapping, but got "
            f"{type(spec).__name__}"
        )
    check_layers(student_model, [s for s, _ in names], side="student")
    check_layers(teacher_model, [t for _, t in names], side="teacher")
    size = _input_size(student_model, teacher_model, input_size)
    s_shapes = _output_shapes(student_model, [s for s, _ in names], size)
    t_shapes = _output_shapes(teacher_model, [t for _, t in names], size)
    pairs = [LayerPair(s, t, kind, s_shapes[s], t_shapes[t]) for s, t in names]
    for pair in pairs:
        _check_shapes(pair)
    return pairs


def _input_size(student: nn.Module, teacher: nn.Module, input_size: int | None) -> int:
    if input_size is not None:
        return input_size
    sizes = {
        side: getattr(getattr(model, "config", None), "input_size", None)
        for side, model in (("student", student), ("teacher", teacher))
    }
    known = {v for v in sizes.values() if v is not None}
    if len(known) > 1:
        raise ConfigError(
            f"student and teacher must read the same inputs, but the student expects "
            f"{sizes['student']} features and the teacher {sizes['teacher']}"
        )
    if not known:
        raise ConfigError(
            "cannot tell the input size of the models (no config.input_size); pass input_size"
        )
    return int(known.pop())


def _output_shapes(
    model: nn.Module, names: list[str], input_size: int
) -> dict[str, tuple[int, ...]]:
    was_training = model.training
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    model.eval()
    try:
        with torch.no_grad(), FeatureCapture(model, names, detach=True) as capture:
            model(torch.zeros(_PROBE_BATCH, input_size, device=device))
    finally:
        model.train(was_training)
    return {name: tuple(capture.outputs[name].shape[1:]) for name in names}


def _check_shapes(pair: LayerPair) -> None:
    s, t = pair.student_shape, pair.teacher_shape
    where = (
        f"student layer {pair.student!r} (shape {list(s)} per sample) and teacher layer "
        f"{pair.teacher!r} (shape {list(t)} per sample)"
    )
    if pair.kind == "attention":
        for shape in (s, t):
            if len(shape) != 3 or shape[1] != shape[2]:
                raise ConfigError(
                    f"attention transfer needs attention maps [heads, T, T], but got {where}"
                )
        if s[1] != t[1]:
            raise ConfigError(
                f"attention maps must cover the same number of tokens, but got {where}"
            )
    elif len(s) != len(t) or len(s) < 1 or s[:-1] != t[:-1]:
        raise ConfigError(f"features must agree on every dim but the last (width), but got {where}")
