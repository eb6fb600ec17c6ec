"""The prunable groups of ANY torch module, their scores, calibration and allocation probe.

A *group* is one torch-pruning dependency group (``DependencyGraph.get_all_groups``)
rooted at a convolution, linear or ``nn.MultiheadAttention``: every layer whose channels
must go together. Its *kind* says what a unit is:

* ``conv`` / ``linear``: one output channel (filter / neuron) of the root.
* ``heads``: one attention head of an attention module that holds ``query``/``key``/
  ``value`` (or ``q_proj``/``k_proj``/``v_proj``, ``q_lin``/``k_lin``/``v_lin``) linears
  and a head count (``num_attention_heads``, ``num_heads`` or ``n_heads``): whole heads
  go and the head count attributes follow (Hugging Face BERT-family naming).
* ``embed``: an embedding channel of a group holding ``nn.MultiheadAttention``; it
  loses a multiple of its head count so that ``embed_dim`` stays divisible.

Groups whose channels reach a model output (the output layers), groups that prune
the output side of a module named in ``keep``, and the hidden width feeding a
``heads`` attention's query/key/value (as for Hugging Face encoders, whose hidden size
stays) are not prunable.

This module is internal to :mod:`hamnet.compress.pruning.modules` (calibration and the
allocation probe live in :mod:`~hamnet.compress.pruning.module_calibration`);
torch-pruning is imported inside the functions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hamnet.core.errors import ConfigError, StageError
from hamnet.core.registry import did_you_mean

_ATTENTION_NAMINGS = (
    ("query", "key", "value"),
    ("q_proj", "k_proj", "v_proj"),
    ("q_lin", "k_lin", "v_lin"),
)
_HEAD_COUNT = ("num_attention_heads", "num_heads", "n_heads")
_HEAD_SIZE = ("attention_head_size", "head_dim", "head_size")
_ALL_HEAD = ("all_head_size",)


@dataclass(frozen=True)
class ModuleGroup:
    """A prunable group of a module (descriptive).

    Attributes:
        name: Qualified name of the group's root module.
        kind: ``conv``, ``linear``, ``heads`` or ``embed`` (see the module docstring).
        size: Units in the group (channels, or heads for ``heads``).
        unit: Channels per unit (the head size for ``heads``, else 1).
        step: Units are removed in multiples of this (an ``embed`` group's head count).
        params: Parameters of the layers the group touches (its weight in allocations).
    """

    name: str
    kind: str
    size: int
    unit: int = 1
    step: int = 1
    params: int = 0


@dataclass(frozen=True)
class _Attention:
    """An attention module whose head count follows head pruning."""

    module: nn.Module
    linears: tuple[nn.Linear, nn.Linear, nn.Linear]
    count_attr: str
    head_size: int


@dataclass
class FoundGroup:
    """A prunable group and the torch-pruning handles that prune it."""

    info: ModuleGroup
    root: nn.Module
    pruning_fn: Any
    attentions: list[_Attention] = field(default_factory=list)

    @property
    def channels(self) -> int:
        """Root channels of the group."""
        return self.info.size * self.info.unit


def resolve_keep(model: nn.Module, keep: Sequence[str]) -> set[nn.Module]:
    """Every module inside the modules named in ``keep``.

    Raises:
        ConfigError: If a name is not a submodule of ``model`` (with a did-you-mean hint).
    """
    if isinstance(keep, str):
        raise ConfigError(f"keep must be a list of module names, but got the string {keep!r}")
    modules = dict(model.named_modules())
    kept: set[nn.Module] = set()
    for name in keep:
        if name not in modules or not name:
            hint = did_you_mean(name, [n for n in modules if n])
            raise ConfigError(
                f"keep must name submodules of {type(model).__name__}, but got {name!r}{hint}"
            )
        kept.update(modules[name].modules())
    return kept


def _attentions(model: nn.Module) -> dict[nn.Module, _Attention]:
    """Each q/k/v linear of a recognised attention module → that attention."""
    found: dict[nn.Module, _Attention] = {}
    for module in model.modules():
        count_attr = next(
            (a for a in _HEAD_COUNT if isinstance(getattr(module, a, None), int)), None
        )
        if count_attr is None or isinstance(module, nn.MultiheadAttention):
            continue
        for naming in _ATTENTION_NAMINGS:
            q, k, v = (getattr(module, n, None) for n in naming)
            if not (
                isinstance(q, nn.Linear) and isinstance(k, nn.Linear) and isinstance(v, nn.Linear)
            ):
                continue
            heads = int(getattr(module, count_attr))
            size = next((getattr(module, a) for a in _HEAD_SIZE if hasattr(module, a)), None)
            head_size = int(size) if isinstance(size, int) else q.out_features // max(heads, 1)
            if heads > 0 and all(lin.out_features == heads * head_size for lin in (q, k, v)):
                attention = _Attention(module, (q, k, v), count_attr, head_size)
                found.update({q: attention, k: attention, v: attention})
            break
    return found


def find_groups(
    model: nn.Module, graph: Any, keep: Sequence[str] = ()
) -> tuple[list[FoundGroup], list[str]]:
    """The prunable groups of a traced module, and the names of the modules kept.

    Args:
        model: The module ``graph`` traced.
        graph: Its torch-pruning ``DependencyGraph``.
        keep: Modules whose output side must not be pruned.

    Returns:
        The groups (in the graph's order) and the sorted names of the root modules left
        unpruned (output layers, ``keep``, groups too small to prune).
    """
    import torch_pruning as tp

    kept_modules = resolve_keep(model, keep)
    names = {m: n for n, m in model.named_modules()}
    attentions = _attentions(model)
    roots = (tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR, tp.ops.TORCH_MHA)
    output_fns = list(getattr(graph, "hamnet_output_grad_fns", []))
    groups: list[FoundGroup] = []
    kept: set[str] = set()
    for group in graph.get_all_groups(root_module_types=roots):
        root, fn = group[0].dep.target.module, group[0].dep.handler
        name = names.get(root, type(root).__name__)
        outs = [
            item.dep.target.module
            for item in group
            if graph.is_out_channel_pruning_fn(item.dep.handler)
            and isinstance(item.dep.target.module, nn.Module)
        ]
        reaches_output = any(
            _is_output(item.dep.target, output_fns)
            for item in group
            if graph.is_out_channel_pruning_fn(item.dep.handler)
        )
        feeds_attention = any(
            item.dep.target.module in attentions
            for item in group
            if graph.is_in_channel_pruning_fn(item.dep.handler)
        )  # the hidden width of a transformer encoder stays
        if reaches_output or feeds_attention or any(m in kept_modules for m in outs):
            kept.add(name)
            continue
        found = _classify(graph, group, root, fn, name, outs, attentions)
        if found is None:
            kept.add(name)
        else:
            groups.append(found)
    return groups, sorted(kept)


def _is_output(node: Any, output_fns: list[Any]) -> bool:
    """Whether a graph node produces a model output (its channels are the output's)."""
    import torch_pruning as tp

    if node.type == tp.ops.OPTYPE.OUTPUT or not node.outputs:
        return True
    return any(node.grad_fn is fn for fn in output_fns)


def _classify(
    graph: Any,
    group: Any,
    root: nn.Module,
    fn: Any,
    name: str,
    outs: list[nn.Module],
    attentions: dict[nn.Module, _Attention],
) -> FoundGroup | None:
    """The group's kind and units, or None when it cannot be pruned safely."""
    channels = int(graph.get_out_channels(root))
    members = {id(m): m for m in (item.dep.target.module for item in group)}
    params = sum(
        p.numel() for m in members.values() if isinstance(m, nn.Module) for p in m.parameters()
    )
    owners = list(
        {id(attentions[m].module): attentions[m] for m in outs if m in attentions}.values()
    )
    mhas = [m for m in outs if isinstance(m, nn.MultiheadAttention)]
    if owners:
        head_sizes = {a.head_size for a in owners}
        out_set = set(outs)
        if len(head_sizes) != 1 or any(lin not in out_set for a in owners for lin in a.linears):
            return None
        unit = head_sizes.pop()
        if channels % unit:
            return None
        info = ModuleGroup(name, "heads", channels // unit, unit=unit, params=params)
    elif mhas:
        step = math.lcm(*(int(m.num_heads) for m in mhas))
        info = ModuleGroup(name, "embed", channels, step=step, params=params)
    else:
        kind = "conv" if isinstance(root, nn.modules.conv._ConvNd) else "linear"
        info = ModuleGroup(name, kind, channels, params=params)
    if info.size < 2 * info.step:
        return None
    return FoundGroup(info, root, fn, owners)


def max_removal(group: ModuleGroup) -> int:
    """Units that may go at most (one unit, or one ``step``, always stays)."""
    return group.size - group.step


def removal_count(group: ModuleGroup, ratio: float) -> int:
    """Units removed from ``group`` at ``ratio`` (a multiple of ``step``, one unit kept)."""
    count = group.step * round(ratio * group.size / group.step)
    return max(0, min(count, max_removal(group)))


def check_prunable(groups: Sequence[ModuleGroup], ratio: float) -> None:
    """Refuse a ratio that removes nothing, or everything, from every group.

    Raises:
        ConfigError: Naming the group sizes and the ratio.
    """
    raw = [group.step * round(ratio * group.size / group.step) for group in groups]
    if all(n == 0 or n >= g.size for n, g in zip(raw, groups, strict=True)):
        sizes = {g.name: g.size for g in groups}
        raise ConfigError(
            f"pruning ratio {ratio} must remove some but not all units of at least one group, "
            f"but every group would lose none or all of them (group sizes {sizes}): the model "
            "is too small to prune at this ratio"
        )


def score_groups(graph: Any, groups: Sequence[FoundGroup], importance: Any) -> list[torch.Tensor]:
    """One importance per unit of every group (higher = keep), scored before any pruning.

    Raises:
        StageError: If the importance gives no score for a group.
    """
    scores: list[torch.Tensor] = []
    for found in groups:
        full = graph.get_pruning_group(found.root, found.pruning_fn, list(range(found.channels)))
        with torch.no_grad():
            values = importance(full)
        if values is None:
            raise StageError(
                f"the importance criterion must score group {found.info.name!r}, but gave none"
            )
        values = values.detach().double().cpu().reshape(-1)
        if values.numel() != found.channels:
            raise StageError(
                f"the importance of group {found.info.name!r} must have {found.channels} "
                f"scores, but got {values.numel()}"
            )
        scores.append(values.view(found.info.size, found.info.unit).mean(dim=1))
    return scores


def global_counts(
    groups: Sequence[ModuleGroup], scores: Sequence[torch.Tensor], ratio: float
) -> list[int]:
    """Units removed per group when every unit is ranked across all groups."""
    drop = round(ratio * sum(g.size for g in groups))
    ranked = sorted((float(s[j]), i, j) for i, s in enumerate(scores) for j in range(len(s)))
    counts = [0] * len(groups)
    for _, i, _ in ranked:
        if drop == 0:
            break
        if counts[i] < max_removal(groups[i]):
            counts[i] += 1
            drop -= 1
    return [g.step * (c // g.step) for g, c in zip(groups, counts, strict=True)]


def prune_groups(
    graph: Any, groups: Sequence[FoundGroup], scores: Sequence[torch.Tensor], counts: Sequence[int]
) -> None:
    """Remove the ``counts[i]`` lowest-scoring units of each group, in place.

    Raises:
        StageError: If torch-pruning left a width other than expected.
    """
    for found, values, count in zip(groups, scores, counts, strict=True):
        if count <= 0:
            continue
        unit = found.info.unit
        order = torch.argsort(values, stable=True)[:count].tolist()
        idxs = sorted(u * unit + j for u in order for j in range(unit))
        graph.get_pruning_group(found.root, found.pruning_fn, idxs).prune()
        left = int(graph.get_out_channels(found.root))
        if left != found.channels - len(idxs):
            raise StageError(
                f"group {found.info.name!r} should keep {found.channels - len(idxs)} channels, "
                f"but torch-pruning left {left}"
            )
        for attention in found.attentions:
            heads = attention.linears[0].out_features // attention.head_size
            setattr(attention.module, attention.count_attr, heads)
            for attr in _ALL_HEAD:
                if isinstance(getattr(attention.module, attr, None), int):
                    setattr(attention.module, attr, heads * attention.head_size)
