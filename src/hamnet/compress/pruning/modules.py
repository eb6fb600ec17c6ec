"""Structured pruning of ANY torch module with torch-pruning's dependency graph.

:func:`prune_module` traces the user's module with torch-pruning's
``DependencyGraph``, finds its prunable groups (convolution filters, linear neurons,
whole attention heads of BERT-style attentions, ``nn.MultiheadAttention`` embedding
channels; see :mod:`hamnet.compress.pruning.module_groups`), scores their units with a
criterion plugin, spreads the budget with an allocation plugin, and removes the
lowest-scoring units physically. The output layers (groups whose channels reach a model
output) and the modules named in ``keep`` keep their outputs, so the pruned model has
its parent's inputs and outputs.

The result carries a :class:`~hamnet.models.replay.ModulePlan` (torch-pruning's pruning
history plus the integer attributes pruning changed) that rebuilds the pruned
architecture from the original with :func:`~hamnet.models.replay.apply_module_plan`.

Example:
    >>> result = prune_module(model, torch.randn(2, 3, 32, 32), ratio=0.5)
    >>> result.plan.save("out/plan.json")
    >>> again = apply_module_plan(model, ModulePlan.load("out/plan.json"), example)
    >>> again.load_state_dict(result.model.state_dict())
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hamnet.compress.pruning.allocation import get_allocator
from hamnet.compress.pruning.allocations.base import Allocation
from hamnet.compress.pruning.criteria.base import Criterion
from hamnet.compress.pruning.importance import get_criterion
from hamnet.compress.pruning.module_calibration import Batch, ModuleCalibration, ModuleProbe
from hamnet.compress.pruning.module_groups import (
    FoundGroup,
    ModuleGroup,
    check_prunable,
    find_groups,
    global_counts,
    prune_groups,
    removal_count,
    resolve_keep,
    score_groups,
)
from hamnet.core.errors import ConfigError, StageError
from hamnet.models.replay import (
    HistoryStep,
    ModuleInputs,
    ModulePlan,
    PlanGroup,
    build_dependency_graph,
    changed_int_attributes,
    check_module_runs,
    int_attributes,
    primary_output,
)

__all__ = ["ModuleGroup", "ModulePruneResult", "module_groups", "prune_module"]


@dataclass
class ModulePruneResult:
    """The outcome of :func:`prune_module`.

    Attributes:
        model: The pruned copy (eval mode, gradients cleared).
        plan: Replays the pruning on the original with ``apply_module_plan``.
        params_before: Parameters of the original module.
        params_after: Parameters of the pruned module.
        layer_ratios: Fraction of units each group lost, in the order of ``groups``.
        groups: The prunable groups of the original module.
    """

    model: nn.Module
    plan: ModulePlan
    params_before: int
    params_after: int
    layer_ratios: list[float]
    groups: list[ModuleGroup]


def module_groups(
    model: nn.Module, example_inputs: ModuleInputs, keep: Sequence[str] = ()
) -> list[ModuleGroup]:
    """The prunable groups of ``model`` (the model is not modified).

    Args:
        model: Any module torch-pruning can trace.
        example_inputs: A tensor, a tuple of tensors, or a ``name -> tensor`` mapping
            that runs the model.
        keep: Qualified names of modules whose outputs must not be pruned.

    Returns:
        One :class:`ModuleGroup` per prunable group (name, kind, size, ...).

    Raises:
        ConfigError: If the inputs do not run the model, tracing fails, or a ``keep``
            name is unknown.
    """
    work = copy.deepcopy(model).eval()
    resolve_keep(work, keep)
    _check_runs(work, example_inputs)
    graph = build_dependency_graph(work, example_inputs)
    return [g.info for g in find_groups(work, graph, keep)[0]]


def prune_module(
    model: nn.Module,
    example_inputs: ModuleInputs,
    *,
    ratio: float,
    criterion: str = "l1",
    allocation: str = "uniform",
    keep: Sequence[str] = (),
    calibration: Sequence[Batch] | None = None,
    loss_fn: Callable[[torch.Tensor, Any], torch.Tensor] | None = None,
    seed: int = 0,
    criterion_options: Mapping[str, Any] | None = None,
    allocation_options: Mapping[str, Any] | None = None,
) -> ModulePruneResult:
    """Remove a fraction of the channels, neurons and attention heads of ANY module.

    The input model is not modified; a CPU deep copy is pruned. In every group at least
    one unit stays; an ``embed`` group keeps ``embed_dim`` divisible by its head count.

    Args:
        model: Any ``nn.Module`` torch-pruning's ``DependencyGraph`` can trace.
        example_inputs: A tensor, a tuple of tensors, or a ``name -> tensor`` mapping
            (keyword arguments) that runs the model; used for tracing.
        ratio: Fraction of the units of each group to remove, in ``(0, 1)`` (for
            ``global``: of all units together; for per-layer allocations: the
            size-weighted mean).
        criterion: A criterion plugin that ``supports_modules``: l1, l2, random, taylor,
            hessian.
        allocation: An allocation plugin that ``supports_modules``: uniform, global,
            sensitivity, rspar.
        keep: Qualified module names whose outputs are kept (besides the output layers).
        calibration: Batches ``(inputs, targets_or_None)``; needed by taylor, hessian,
            sensitivity and rspar.
        loss_fn: ``loss_fn(outputs, targets) -> scalar``; default cross-entropy for
            integer targets, else MSE (to the targets, or to the unpruned model's outputs
            when targets are None).
        seed: Seeds random scores and target sampling.
        criterion_options: Options of the criterion (e.g. hessian's ``damping``).
        allocation_options: Options of the allocation (e.g. rspar's ``episodes``).

    Returns:
        The pruned model, its replayable plan, parameter counts and per-group ratios.

    Raises:
        ConfigError: Before any pruning, if the ratio is out of range, a plugin is
            unknown or HAMNet-only, calibration is missing, a ``keep`` name is unknown,
            the inputs do not run the model, tracing fails, no group is prunable, or
            the model is too small for the ratio.
        DataError: If a calibration batch is malformed.
        StageError: If torch-pruning removed other widths than planned.
    """
    if not 0.0 < ratio < 1.0:
        raise ConfigError(f"pruning ratio must be in (0, 1), but got {ratio}")
    scorer = _module_criterion(criterion, criterion_options)
    allocator = _module_allocation(allocation, allocation_options)
    needs_calibration = scorer.needs_gradients or scorer.needs_data or allocator.per_layer
    if needs_calibration and not calibration:
        raise ConfigError(
            f"criterion {criterion!r} with allocation {allocation!r} needs calibration "
            "batches [(inputs, targets_or_None), ...], but got none"
        )
    original = model
    work = copy.deepcopy(model).cpu().eval()
    resolve_keep(work, keep)
    _check_runs(work, example_inputs)
    graph = build_dependency_graph(work, example_inputs)
    groups, kept = find_groups(work, graph, keep)
    if not groups:
        raise ConfigError(
            f"the model must have a prunable layer group, but {type(model).__name__} has none "
            f"(kept: {kept or 'no layers found'}; output layers and keep={list(keep)} stay)"
        )
    infos = [g.info for g in groups]
    check_prunable(infos, ratio)
    reference = copy.deepcopy(model).cpu().eval()
    calib = ModuleCalibration(reference, calibration, loss_fn) if calibration else None
    scores = _score(work, graph, groups, scorer, calib, seed)
    counts = _counts(
        allocator, infos, scores, ratio, seed, original, example_inputs, groups, calib, keep
    )
    before = int_attributes(work)
    prune_groups(graph, groups, scores, counts)
    work.zero_grad(set_to_none=True)
    attributes = changed_int_attributes(before, int_attributes(work))
    params_before, params_after = _count(model), _count(work)
    if params_after >= params_before:
        raise StageError(
            f"pruning at ratio {ratio} must remove parameters, but {params_before} became "
            f"{params_after}"
        )
    layer_ratios = [c / g.size for c, g in zip(counts, infos, strict=True)]
    plan = ModulePlan(
        model_class=type(model).__name__,
        history=[
            HistoryStep(module=name, out_channels=bool(out), indices=[int(i) for i in idxs])
            for name, out, idxs in graph.pruning_history()
        ],
        attributes=attributes,
        ratio=ratio,
        criterion=criterion,
        allocation=allocation,
        kept=kept,
        layer_ratios=layer_ratios,
        params_before=params_before,
        params_after=params_after,
        groups=[
            PlanGroup(name=g.name, kind=g.kind, size=g.size, removed=c)
            for g, c in zip(infos, counts, strict=True)
        ],
    )
    return ModulePruneResult(
        model=work,
        plan=plan,
        params_before=params_before,
        params_after=params_after,
        layer_ratios=layer_ratios,
        groups=infos,
    )


def _module_criterion(name: str, options: Mapping[str, Any] | None) -> Criterion:
    scorer = get_criterion(name, options)
    if not scorer.supports_modules:
        from hamnet.compress.pruning.importance import criterion_class
        from hamnet.core import registry

        usable = [n for n in registry.names("criterion") if criterion_class(n).supports_modules]
        raise ConfigError(
            f"pruning criterion for torch modules must be one of {usable}, but got {name!r} "
            "(it is HAMNet-only)"
        )
    return scorer


def _module_allocation(name: str, options: Mapping[str, Any] | None) -> Allocation:
    allocator = get_allocator(name, options)
    if not allocator.supports_modules:
        raise ConfigError(
            f"pruning allocation for torch modules must support them, but got {name!r}"
        )
    return allocator


def _check_runs(model: nn.Module, example_inputs: ModuleInputs) -> None:
    """Run the model once on the example inputs.

    Raises:
        ConfigError: Naming the model's error, or an output that holds no tensor.
    """
    primary_output(
        check_module_runs(model, example_inputs, what="example_inputs", error=ConfigError)
    )


def _score(
    work: nn.Module,
    graph: Any,
    groups: list[FoundGroup],
    scorer: Criterion,
    calib: ModuleCalibration | None,
    seed: int,
) -> list[torch.Tensor]:
    """Unit scores of every group (gradients accumulated first when the criterion reads them)."""
    try:
        if scorer.needs_gradients and calib is not None:
            calib.accumulate_gradients(work, seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            importance = scorer.build_for_module(work, calib, seed)
            return score_groups(graph, groups, importance)
    finally:
        work.zero_grad(set_to_none=True)


def _counts(
    allocator: Allocation,
    infos: list[ModuleGroup],
    scores: list[torch.Tensor],
    ratio: float,
    seed: int,
    model: nn.Module,
    example_inputs: ModuleInputs,
    groups: list[FoundGroup],
    calib: ModuleCalibration | None,
    keep: Sequence[str],
) -> list[int]:
    """Units to remove per group, as the allocation decides."""
    if allocator.global_ranking:
        return global_counts(infos, scores, ratio)
    if not allocator.per_layer:
        return [removal_count(g, ratio) for g in infos]
    assert calib is not None
    source = copy.deepcopy(model).cpu().eval()
    probe = ModuleProbe(source, example_inputs, groups, scores, calib, keep)
    ratios = allocator.module_ratios(probe, ratio, seed=seed)
    if len(ratios) != len(infos):
        raise StageError(
            f"allocation {allocator.name!r} must give one ratio per group ({len(infos)}), but "
            f"gave {len(ratios)}"
        )
    return [removal_count(g, float(r)) for g, r in zip(infos, ratios, strict=True)]


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
