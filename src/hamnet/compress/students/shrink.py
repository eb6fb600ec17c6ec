"""Smaller students of the user's own architecture: width and depth multipliers.

:func:`shrink_module` turns ANY torch module into a smaller copy of itself, initialised
from its weights:

* **depth** (< 1): the model's repeated, shape-preserving blocks are found generically
  (:func:`find_block_stacks`): a run of children of an ``nn.ModuleList`` or
  ``nn.Sequential`` with the same classes and parameter shapes, each returning the shape
  it was given and feeding the next (a BERT encoder's ``layer`` list,
  ``nn.TransformerEncoder.layers``, the residual blocks of a CNN stage after its
  down-sampling first block, the equal-width ``Linear`` + activation blocks of an MLP).
  Of each stack of ``n`` blocks, ``ceil(depth * n)`` evenly spaced ones stay (the first
  and the last among them; every other one at 0.5; only the first when one stays); a
  stage's first block, which changes the shape, always stays. Counts that name the
  number of blocks (``config.num_hidden_layers``, ``num_layers``) and a kept block's
  ``layer_idx`` follow, so the student saves, loads and exports.
* **width** (< 1): ``1 - width`` of every prunable group (convolution filters, linear
  neurons, whole attention heads, ``nn.MultiheadAttention`` channels) is removed with
  :func:`hamnet.compress.pruning.modules.prune_module` (uniform allocation; output
  layers and ``keep`` untouched).

The result carries one :class:`~hamnet.models.replay.ModulePlan` holding both steps
(``blocks`` then torch-pruning's history), which
:func:`~hamnet.models.replay.apply_module_plan` replays on the original exactly; and
``layer_map``, the student's kept blocks paired with their teacher blocks (what
hidden-state matching in distillation reads).

Example:
    >>> result = shrink_module(bert, inputs, width=0.5, depth=0.5)
    >>> result.plan.save("student/plan.json")
    >>> again = apply_module_plan(bert, result.plan, inputs)
    >>> again.load_state_dict(result.model.state_dict())
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hamnet.compress.pruning.modules import module_groups, prune_module
from hamnet.core.errors import ConfigError
from hamnet.models.replay import (
    DroppedBlocks,
    ModuleInputs,
    ModulePlan,
    call_module,
    check_module_runs,
    drop_blocks,
    primary_output,
)

__all__ = [
    "BlockStack",
    "ShrinkResult",
    "depth_multipliers",
    "find_block_stacks",
    "kept_positions",
    "shrink_module",
]

COUNT_ATTRIBUTES = ("num_hidden_layers", "num_layers", "n_layers", "n_layer", "num_blocks")
"""Integer attributes (of a container's owners and their ``config``) that count blocks."""
INDEX_ATTRIBUTES = ("layer_idx", "layer_index", "layer_id")
"""Integer attributes inside a block that hold its position (renumbered when kept)."""
MAX_PERIOD = 3
"""A block may span this many consecutive children of an ``nn.Sequential`` (e.g.
``Linear`` + activation + dropout)."""


@dataclass(frozen=True)
class BlockStack:
    """A run of repeated blocks in one container, droppable down to its first block.

    Attributes:
        container: Qualified name of the ``nn.ModuleList`` / ``nn.Sequential``
            (``""``: the root).
        period: Children per block.
        starts: The child index each block starts at, in order.
        entry: The first block changes the shape (a stage's down-sampling block): it is
            counted in the stack and always kept, never dropped.
        block_class: The blocks' class names, joined by ``+``.
    """

    container: str
    period: int
    starts: tuple[int, ...]
    entry: bool
    block_class: str

    @property
    def size(self) -> int:
        """Blocks in the stack (the entry block included)."""
        return len(self.starts)

    def block_name(self, position: int) -> str:
        """Qualified name of the child whose output is block ``position``'s output."""
        child = str(self.starts[position] + self.period - 1)
        return f"{self.container}.{child}" if self.container else child


@dataclass
class ShrinkResult:
    """The outcome of :func:`shrink_module`.

    Attributes:
        model: The student (eval mode, gradients cleared), initialised from the teacher.
        plan: Replays depth then width on the original with ``apply_module_plan``.
        params_before: Parameters of the original module.
        params_after: Parameters of the student.
        stacks: The repeated-block stacks found (empty when ``depth`` is 1).
        kept: For every stack, the positions of its blocks that stayed.
        layer_map: ``{student_block: teacher_block}`` for every kept block of a stack
            (names in the student after its blocks were renumbered).
    """

    model: nn.Module
    plan: ModulePlan
    params_before: int
    params_after: int
    stacks: list[BlockStack] = field(default_factory=list)
    kept: list[list[int]] = field(default_factory=list)
    layer_map: dict[str, str] = field(default_factory=dict)


@dataclass
class _Call:
    """One recorded call of a container's child: its input and output tensors."""

    calls: int = 0
    x: torch.Tensor | None = None
    y: torch.Tensor | None = None


def _first_tensor(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> torch.Tensor | None:
    for value in args:
        if isinstance(value, torch.Tensor):
            return value
    for key in ("hidden_states", "x", "input", "src", "inputs"):
        if isinstance(kwargs.get(key), torch.Tensor):
            return kwargs[key]
    return next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)


def _record_calls(model: nn.Module, example_inputs: ModuleInputs) -> dict[nn.Module, _Call]:
    """Run ``model`` once with hooks on every child of every ModuleList/Sequential."""
    records: dict[nn.Module, _Call] = {}
    handles = []

    def pre(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        record = records[module]
        record.calls += 1
        record.x = _first_tensor(args, kwargs)

    def post(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        try:
            records[module].y = primary_output(output)
        except ConfigError:
            records[module].y = None

    for container in model.modules():
        if not isinstance(container, nn.ModuleList | nn.Sequential):
            continue
        for child in container.children():
            if child in records:
                continue
            records[child] = _Call()
            handles.append(child.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(child.register_forward_hook(post, with_kwargs=True))
    try:
        check_module_runs(model, example_inputs, what="example_inputs", error=ConfigError)
    finally:
        for handle in handles:
            handle.remove()
    return records


def _signature(children: Sequence[nn.Module]) -> tuple[Any, ...]:
    return tuple(
        (type(c).__name__, tuple((n, tuple(p.shape)) for n, p in c.named_parameters()))
        for c in children
    )


def _classes(children: Sequence[nn.Module]) -> tuple[str, ...]:
    return tuple(type(c).__name__ for c in children)


def find_block_stacks(model: nn.Module, example_inputs: ModuleInputs) -> list[BlockStack]:
    """The stacks of repeated, shape-preserving blocks of ``model`` (not modified).

    A block is ``period`` (1 to :data:`MAX_PERIOD`) consecutive children of an
    ``nn.ModuleList`` or ``nn.Sequential`` whose first child has parameters. A stack is
    a run of blocks with the same classes and parameter shapes, each called once on the
    example inputs, returning a tensor of the shape it was given that the next block
    reads as its input; a block just before the run, of the same classes but changing
    the shape, whose output the run reads, is the stack's entry (kept). Stacks inside
    the blocks of another stack are not reported.

    Raises:
        ConfigError: If the example inputs do not run the model.
    """
    work = copy.deepcopy(model).cpu().eval()
    names = {m: n for n, m in work.named_modules()}
    records = _record_calls(work, example_inputs)
    stacks: list[BlockStack] = []
    covered: list[str] = []
    for container in work.modules():
        if not isinstance(container, nn.ModuleList | nn.Sequential):
            continue
        prefix = names[container]
        if any(prefix == c or prefix.startswith(c + ".") for c in covered):
            continue
        found = _stacks_in(list(container.children()), records)
        for period, starts, entry in found:
            children = list(container.children())
            stack = BlockStack(
                container=prefix, period=period, starts=tuple(starts), entry=entry,
                block_class="+".join(_classes(children[starts[-1] : starts[-1] + period])),
            )  # fmt: skip
            stacks.append(stack)
            for start in starts:
                for index in range(start, start + period):
                    covered.append(f"{prefix}.{index}" if prefix else str(index))
    return stacks


def _stacks_in(
    children: list[nn.Module], records: Mapping[nn.Module, _Call]
) -> list[tuple[int, list[int], bool]]:
    """``(period, starts, entry)`` of every stack among one container's children."""

    def unit(start: int, period: int) -> list[nn.Module] | None:
        block = children[start : start + period]
        if len(block) < period or not any(True for _ in block[0].parameters()):
            return None
        if any(records.get(c, _Call()).calls != 1 for c in block):
            return None
        return block

    def preserving(block: list[nn.Module]) -> bool:
        x, y = records[block[0]].x, records[block[-1]].y
        return x is not None and y is not None and tuple(x.shape) == tuple(y.shape)

    def feeds(first: list[nn.Module], second: list[nn.Module]) -> bool:
        return records[first[-1]].y is not None and records[first[-1]].y is records[second[0]].x

    found: list[tuple[int, list[int], bool]] = []
    index = 0
    while index < len(children):
        best: tuple[int, list[int], bool] | None = None
        for period in range(1, MAX_PERIOD + 1):
            head = unit(index, period)
            if head is None or not preserving(head):
                continue
            starts, last = [index], head
            while True:
                nxt = unit(starts[-1] + period, period)
                if nxt is None or _signature(nxt) != _signature(head):
                    break
                if not preserving(nxt) or not feeds(last, nxt):
                    break
                starts.append(starts[-1] + period)
                last = nxt
            before = unit(index - period, period) if index >= period else None
            entry = (
                before is not None
                and _classes(before) == _classes(head)
                and feeds(before, head)
                and (found == [] or found[-1][1][-1] + found[-1][0] <= index - period)
            )
            blocks = len(starts) + int(entry)
            if blocks >= 2 and (best is None or blocks > len(best[1])):
                best = (period, ([index - period] if entry else []) + starts, entry)
        if best is None:
            index += 1
            continue
        found.append(best)
        index = best[1][-1] + best[0]
    return found


def kept_positions(size: int, depth: float) -> list[int]:
    """Positions of the ``ceil(depth * size)`` evenly spaced blocks that stay.

    The first and the last stay (every other one at 0.5); with one block left, the first.
    """
    keep = max(1, min(size, math.ceil(depth * size - 1e-9)))
    if keep == 1:
        return [0]
    return sorted({round(i * (size - 1) / (keep - 1)) for i in range(keep)})


def depth_multipliers(model: nn.Module, example_inputs: ModuleInputs) -> list[float]:
    """Depth multipliers that give distinct students of ``model``, ``1.0`` included.

    For the longest stack of ``n`` blocks: ``k / n`` for every ``k`` from 1 to ``n``, at
    most four of them (evenly picked) besides 1.0. Empty when the model has no stack.

    Raises:
        ConfigError: If the example inputs do not run the model.
    """
    stacks = find_block_stacks(model, example_inputs)
    if not stacks:
        return []
    size = max(s.size for s in stacks)
    values = [k / size for k in range(1, size)]
    if len(values) > 4:
        values = [values[round(i * (len(values) - 1) / 3)] for i in range(4)]
    return sorted({round(v, 4) for v in values} | {1.0})


def shrink_module(
    module: nn.Module,
    example_inputs: ModuleInputs,
    *,
    width: float = 1.0,
    depth: float = 1.0,
    keep: Sequence[str] = (),
    criterion: str = "l1",
    calibration: Sequence[Any] | None = None,
    loss_fn: Callable[[torch.Tensor, Any], torch.Tensor] | None = None,
    seed: int = 0,
) -> ShrinkResult:
    """A narrower and/or shallower student of ``module``, initialised from its weights.

    The input module is not modified; a CPU deep copy is shrunk: depth first (blocks of
    every stack dropped, counts updated), then width (``prune_module`` at ratio
    ``1 - width``, uniform allocation). Every parameter of the student is trainable,
    even when the teacher's are frozen.

    Args:
        module: Any module (torch-pruning must trace it when ``width < 1``).
        example_inputs: A tensor, a tuple of tensors or a ``name -> tensor`` mapping that
            runs the module.
        width: Fraction of the units of every prunable group that stays, in ``(0, 1]``.
        depth: Fraction of the blocks of every stack that stays, in ``(0, 1]``.
        keep: Modules whose outputs keep their width (besides the output layers), named
            as in the student after its blocks were dropped (kept blocks are numbered
            again from 0 in their container).
        criterion: The criterion that chooses the units to remove (l1, l2, random,
            taylor, hessian; the last two need ``calibration``).
        calibration: Batches ``(inputs, targets_or_None)`` for data-driven criteria.
        loss_fn: Loss of the data-driven criteria (see ``prune_module``).
        seed: Seeds random scores.

    Returns:
        The student, its replayable plan, parameter counts, the stacks found, the kept
        blocks and the student-to-teacher block map.

    Raises:
        ConfigError: Before anything is trained: a multiplier out of ``(0, 1]`` or both
            1; ``depth < 1`` on a model with no repeated shape-preserving blocks, or one
            that drops no block; ``width`` that leaves a group with no unit; a student
            that no longer runs; and every error of ``prune_module``.
    """
    for name, value in (("width", width), ("depth", depth)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
            raise ConfigError(f"{name} must be a multiplier in (0, 1], but got {value!r}")
    if width == 1 and depth == 1:
        raise ConfigError(
            "a student must be smaller than its teacher: width or depth must be below 1, but "
            "got width=1.0 and depth=1.0"
        )
    original = module
    work = copy.deepcopy(module).cpu().eval()
    for parameter in work.parameters():  # a frozen teacher gives a trainable student
        parameter.requires_grad_(True)
    reference = primary_output(
        check_module_runs(work, example_inputs, what="example_inputs", error=ConfigError)
    )
    params_before = _count(original)
    stacks: list[BlockStack] = []
    kept: list[list[int]] = []
    records: list[DroppedBlocks] = []
    attributes: dict[str, int] = {}
    layer_map: dict[str, str] = {}
    if depth < 1:
        stacks = find_block_stacks(work, example_inputs)
        if not stacks:
            raise ConfigError(
                f"shrink_module found no repeated shape-preserving blocks in "
                f"{type(module).__name__}; depth multipliers need an nn.ModuleList or "
                f"nn.Sequential of same-class blocks whose output has the shape of their "
                f"input (transformer layers, residual blocks, equal-width MLP layers), but "
                f"got depth={depth}"
            )
        kept = [kept_positions(s.size, depth) for s in stacks]
        if all(len(k) == s.size for k, s in zip(kept, stacks, strict=True)):
            sizes = [s.size for s in stacks]
            most = max(sizes)
            raise ConfigError(
                f"depth {depth} must drop at least one block, but it keeps every block of "
                f"the stacks of {type(module).__name__} (sizes {sizes}); a depth of at most "
                f"{(most - 1) / most:.3g} drops one"
            )
        records, attributes, layer_map = _drop(work, stacks, kept)
        _check_student(work, example_inputs, reference, "dropping blocks")
    if width < 1:
        _check_width(work, example_inputs, keep, width)
        pruned = prune_module(
            work, example_inputs, ratio=1.0 - width, criterion=criterion,
            allocation="uniform", keep=keep, calibration=calibration, loss_fn=loss_fn,
            seed=seed,
        )  # fmt: skip
        student, plan = pruned.model, pruned.plan
    else:
        student = work
        plan = ModulePlan(
            model_class=type(module).__name__, history=[], ratio=0.0, criterion="none",
            allocation="none", params_before=params_before, params_after=_count(work),
        )  # fmt: skip
    student.zero_grad(set_to_none=True)
    params_after = _count(student)
    plan = plan.model_copy(
        update={
            "blocks": records, "block_attributes": attributes, "width": float(width),
            "depth": float(depth), "params_before": params_before, "params_after": params_after,
        }
    )  # fmt: skip
    ModulePlan.model_validate(plan.model_dump())  # the plan stays a valid plan
    return ShrinkResult(
        model=student.eval(),
        plan=plan,
        params_before=params_before,
        params_after=params_after,
        stacks=stacks,
        kept=kept,
        layer_map=layer_map,
    )


def _drop(
    work: nn.Module, stacks: list[BlockStack], kept: list[list[int]]
) -> tuple[list[DroppedBlocks], dict[str, int], dict[str, str]]:
    """Drop the blocks not kept, in place; the records, count attributes and layer map."""
    modules = dict(work.named_modules())
    records: list[DroppedBlocks] = []
    renumber: dict[int, tuple[nn.Module, int]] = {}
    teacher_names: dict[int, str] = {}
    counts: list[tuple[BlockStack, nn.Module, int]] = []
    for stack, positions in zip(stacks, kept, strict=True):
        container = modules[stack.container]
        size = len(container._modules)
        removed = [
            stack.starts[p] + j
            for p in range(stack.size)
            if p not in positions
            for j in range(stack.period)
        ]
        if not removed:
            continue
        records.append(DroppedBlocks(container=stack.container, size=size, removed=removed))
        children = list(container.children())
        for p in positions:
            block_output = children[stack.starts[p] + stack.period - 1]
            teacher_names[id(block_output)] = stack.block_name(p)
            new_position = positions.index(p)
            for sub in children[stack.starts[p] : stack.starts[p] + stack.period]:
                renumber[id(sub)] = (sub, new_position)
        counts.append((stack, container, len(positions)))
    attributes = _count_attributes(work, modules, counts)
    drop_blocks(work, records)
    after = {m: n for n, m in work.named_modules()}
    layer_map = {
        after[m]: teacher_names[id(m)] for m in after if id(m) in teacher_names and after[m]
    }
    for sub, position in renumber.values():
        for name, inner in sub.named_modules():
            for attr in INDEX_ATTRIBUTES:
                value = getattr(inner, attr, None)
                if isinstance(value, int) and not isinstance(value, bool) and value != position:
                    base = after[sub] + (f".{name}" if name else "")
                    attributes[f"{base}.{attr}"] = position
                    setattr(inner, attr, position)
    return records, attributes, layer_map


def _count_attributes(
    work: nn.Module, modules: Mapping[str, nn.Module], counts: list[tuple[BlockStack, Any, int]]
) -> dict[str, int]:
    """Set the block counts of each stack's owners (and their ``config``); their paths.

    An owner is the container or a module above it; an attribute counts the stack's
    blocks when it is named like one of :data:`COUNT_ATTRIBUTES` and holds the number
    of blocks (or of the container's children) before the drop.
    """
    found: dict[str, int] = {}
    done: set[tuple[int, str]] = set()
    for stack, container, left in counts:
        parts = stack.container.split(".") if stack.container else []
        owners = [".".join(parts[:i]) for i in range(len(parts), -1, -1)]
        before = {stack.size, len(container._modules)}
        for owner_name in owners:
            owner = modules.get(owner_name)
            for obj, path in ((owner, owner_name), (getattr(owner, "config", None), None)):
                if obj is None:
                    continue
                base = owner_name if path is not None else (
                    f"{owner_name}.config" if owner_name else "config"
                )  # fmt: skip
                for attr in COUNT_ATTRIBUTES:
                    value = getattr(obj, attr, None)
                    if isinstance(value, bool) or not isinstance(value, int):
                        continue
                    if value not in before or (id(obj), attr) in done:
                        continue
                    new = left if value == stack.size else left + (value - stack.size)
                    setattr(obj, attr, new)
                    done.add((id(obj), attr))
                    found[f"{base}.{attr}" if base else attr] = new
    return found


def _check_width(
    work: nn.Module, example_inputs: ModuleInputs, keep: Sequence[str], width: float
) -> None:
    """Refuse a width that leaves a prunable group with no unit."""
    groups = module_groups(work, example_inputs, keep)
    if not groups:
        raise ConfigError(
            f"width {width} needs a prunable layer group, but {type(work).__name__} has none "
            f"(output layers and keep={list(keep)} stay)"
        )
    empty = [g for g in groups if round(width * g.size) < 1]
    if empty:
        smallest = min(empty, key=lambda g: g.size)
        units = "heads" if smallest.kind == "heads" else "units"
        raise ConfigError(
            f"width {width} must keep at least one unit of every group, but it leaves group "
            f"{smallest.name!r} ({smallest.size} {units}) empty; use a width of at least "
            f"{0.5 / smallest.size:.3g}"
        )


def _check_student(
    student: nn.Module, example_inputs: ModuleInputs, reference: torch.Tensor, step: str
) -> None:
    """The student must still run and give outputs of the teacher's shape."""
    try:
        with torch.no_grad():
            out = primary_output(call_module(student.eval(), example_inputs))
    except Exception as err:
        raise ConfigError(
            f"the student must still run after {step}, but calling it failed: "
            f"{type(err).__name__}: {err}"
        ) from None
    if out.shape != reference.shape:
        raise ConfigError(
            f"the student must give outputs of the teacher's shape {list(reference.shape)} "
            f"after {step}, but got {list(out.shape)}"
        )


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
