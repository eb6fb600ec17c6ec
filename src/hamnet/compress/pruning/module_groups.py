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

This module is internal to :mod:`hamnet.compress.pruning.modules`; torch-pruning is
imported inside the functions.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hamnet.core.errors import ConfigError, DataError, StageError
from hamnet.core.registry import did_you_mean
from hamnet.models.replay import ModuleInputs, build_dependency_graph, call_module, primary_output

_ATTENTION_NAMINGS = (
    ("query", "key", "value"),
    ("q_proj", "k_proj", "v_proj"),
    ("q_lin", "k_lin", "v_lin"),
)
_HEAD_COUNT = ("num_attention_heads", "num_heads", "n_heads")
_HEAD_SIZE = ("attention_head_size", "head_dim", "head_size")
_ALL_HEAD = ("all_head_size",)

Batch = tuple[Any, Any]
"""A calibration batch ``(inputs, targets_or_None)``."""


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


class ModuleCalibration:
    """Calibration batches ``(inputs, targets_or_None)`` and the losses read on them.

    The default loss is cross-entropy for integer targets, MSE to float targets, and MSE
    to the unpruned model's outputs (computed once, on the fly) when targets are None.
    Gradient criteria need a loss whose gradient is not zero at the unpruned model:
    :meth:`fisher_losses` (read by the K-FAC fit) draws the targets from the model's own
    predictive distribution (a class from the softmax for integer targets, the output
    plus unit Gaussian noise otherwise), which makes ``E[g gᵀ]`` the true Fisher;
    :meth:`accumulate_gradients` (read by Taylor) uses the data's targets where there
    are some. A user ``loss_fn`` is used as given, with the unpruned outputs standing in
    for missing targets.

    Args:
        reference: The unpruned model (not modified).
        batches: The calibration batches.
        loss_fn: ``loss_fn(outputs, targets) -> scalar``; None for the default.

    Raises:
        DataError: If ``batches`` is empty or a batch is not a pair.
    """

    def __init__(
        self,
        reference: nn.Module,
        batches: Sequence[Batch],
        loss_fn: Callable[[torch.Tensor, Any], torch.Tensor] | None = None,
    ) -> None:
        batches = list(batches)
        if not batches:
            raise DataError(
                "calibration must hold at least one (inputs, targets) batch, but got none"
            )
        for i, batch in enumerate(batches):
            if not isinstance(batch, tuple | list) or len(batch) != 2:
                raise DataError(
                    f"calibration batch {i} must be a pair (inputs, targets_or_None), but got "
                    f"{type(batch).__name__}"
                )
        self.reference = reference
        self.batches = [(b[0], b[1]) for b in batches]
        self.loss_fn = loss_fn
        self._references: list[torch.Tensor] | None = None

    def references(self) -> list[torch.Tensor]:
        """The unpruned model's outputs on every batch (computed once)."""
        if self._references is None:
            was_training = self.reference.training
            self.reference.eval()
            with torch.no_grad():
                self._references = [
                    primary_output(call_module(self.reference, x)).detach() for x, _ in self.batches
                ]
            self.reference.train(was_training)
        return self._references

    def _loss(self, output: torch.Tensor, target: Any, reference: torch.Tensor) -> torch.Tensor:
        if self.loss_fn is not None:
            return self.loss_fn(output, reference if target is None else target)
        if target is None:
            return F.mse_loss(output, reference)
        target = torch.as_tensor(target)
        if not target.is_floating_point():
            return F.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1).long())
        return F.mse_loss(output, target.to(output.dtype))

    def loss(self, model: nn.Module) -> float:
        """Mean calibration loss of ``model`` (eval mode, no gradients)."""
        refs = self.references()
        was_training = model.training
        model.eval()
        total = 0.0
        with torch.no_grad():
            for (x, y), ref in zip(self.batches, refs, strict=True):
                total += float(self._loss(primary_output(call_module(model, x)), y, ref))
        model.train(was_training)
        return total / len(self.batches)

    def fisher_losses(self, seed: int = 0) -> list[Callable[[nn.Module], torch.Tensor]]:
        """Per batch, a callable giving the batch-mean loss with model-drawn targets."""
        refs = self.references()
        generator = torch.Generator().manual_seed(seed)

        def make(x: Any, y: Any, ref: torch.Tensor) -> Callable[[nn.Module], torch.Tensor]:
            def loss_of(model: nn.Module) -> torch.Tensor:
                output = primary_output(call_module(model, x))
                if self.loss_fn is not None:
                    return self._loss(output, y, ref)
                if y is not None and not torch.as_tensor(y).is_floating_point():
                    logits = output.reshape(-1, output.shape[-1])
                    probs = torch.softmax(logits.detach().double(), dim=-1)
                    labels = torch.multinomial(probs, 1, generator=generator).reshape(-1)
                    return F.cross_entropy(logits, labels)
                noise = torch.randn(output.shape, generator=generator, dtype=output.dtype)
                return 0.5 * (output - (output.detach() + noise)).square().sum() / output.shape[0]

            return loss_of

        return [make(x, y, ref) for (x, y), ref in zip(self.batches, refs, strict=True)]

    def accumulate_gradients(self, model: nn.Module, seed: int = 0) -> None:
        """Sum the calibration-loss gradients of all batches into ``param.grad``.

        Batches with targets (or with a user ``loss_fn``) use the loss as given (the
        empirical gradient that first-order Taylor reads); batches without targets use
        :meth:`fisher_losses`' model-drawn targets, since the gradient of the MSE to the
        unpruned outputs is zero at the unpruned model.
        """
        refs = self.references()
        sampled = self.fisher_losses(seed)
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            for (x, y), ref, fisher in zip(self.batches, refs, sampled, strict=True):
                if y is None and self.loss_fn is None:
                    loss = fisher(model)
                else:
                    loss = self._loss(primary_output(call_module(model, x)), y, ref)
                loss.backward()


class ModuleProbe:
    """Prunes copies of a module to per-group ratios and measures them (for allocations).

    Attributes:
        names: Group names, in order.
        sizes: Parameters per group (positive floats).
        base_loss: Calibration loss of the unpruned model.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: ModuleInputs,
        groups: Sequence[FoundGroup],
        scores: Sequence[torch.Tensor],
        calibration: ModuleCalibration,
        keep: Sequence[str],
    ) -> None:
        self.model = model
        self.example_inputs = example_inputs
        self.groups = [g.info for g in groups]
        self.names = [g.name for g in self.groups]
        self.sizes = np.array([max(g.params, 1) for g in self.groups], dtype=np.float64)
        self.scores = list(scores)
        self.calibration = calibration
        self.keep = list(keep)
        self.base_loss = calibration.loss(model)
        self._last: tuple[tuple[float, ...], nn.Module] | None = None

    def pruned(self, ratios: Sequence[float]) -> nn.Module:
        """A copy of the model with group ``i`` losing ``ratios[i]`` of its units."""
        work = copy.deepcopy(self.model).eval()
        graph = build_dependency_graph(work, self.example_inputs)
        found = {g.info.name: g for g in find_groups(work, graph, self.keep)[0]}
        groups = [found[name] for name in self.names]
        counts = [removal_count(g, float(r)) for g, r in zip(self.groups, ratios, strict=True)]
        prune_groups(graph, groups, self.scores, counts)
        return work

    def _cached(self, ratios: Sequence[float]) -> nn.Module:
        """:meth:`pruned`, reusing the last copy when asked for the same ratios again."""
        key = tuple(float(r) for r in ratios)
        if self._last is None or self._last[0] != key:
            self._last = (key, self.pruned(ratios))
        return self._last[1]

    def loss(self, ratios: Sequence[float]) -> float:
        """Calibration loss of the model pruned to ``ratios``."""
        return self.calibration.loss(self._cached(ratios))

    def flops(self, ratios: Sequence[float]) -> float:
        """Multiply-accumulates of the model pruned to ``ratios`` (torch-pruning's counter)."""
        import torch_pruning as tp

        pruned = self._cached(ratios)
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):  # it prints warnings
            ops, _ = tp.utils.count_ops_and_params(pruned, self.example_inputs)
        return float(ops)


def rspar_module_ratios(
    probe: ModuleProbe,
    ratio: float,
    *,
    target: str = "flops",
    recovery: Any = None,
    episodes: int = 12,
    sensitivity: Sequence[float] | None = None,
    seed: int = 0,
    max_layer_ratio: float = 0.9,
    penalty: float = 1.0,
    tolerance: float | None = None,
) -> tuple[list[float], list[dict[str, Any]]]:
    """R-SPAR's PPO agent over the prunable groups of ANY module.

    Episode 0 is the uniform allocation. Each episode projects the agent's proposal onto
    the budget (size-weighted mean ``ratio``), prunes a copy, and scores
    ``-loss / uniform_loss - penalty * max(0, flops / uniform_flops - 1 - tolerance)``
    (calibration loss, no recovery training).

    Returns:
        The best allocation and one record per episode.

    Raises:
        ConfigError: If a setting is out of range or not available for modules.
    """
    from hamnet.compress.pruning.rspar import (
        RSPARAgent,
        best_episode,
        episode_reward,
        project_to_budget,
    )

    count = len(probe.sizes)
    if target != "flops":
        raise ConfigError(
            f"R-SPAR on torch modules must target 'flops', but got {target!r} (latency is "
            "HAMNet-only)"
        )
    if recovery is not None:
        raise ConfigError(
            "R-SPAR on torch modules must run without recovery training, but got a recovery "
            "config (modules are scored by calibration loss)"
        )
    if not 0.0 < ratio <= max_layer_ratio < 1.0 or episodes < 1 or penalty < 0:
        raise ConfigError(
            f"R-SPAR needs 0 < ratio <= max_layer_ratio < 1, episodes >= 1 and penalty >= 0, "
            f"but got ratio={ratio}, max_layer_ratio={max_layer_ratio}, episodes={episodes}, "
            f"penalty={penalty}"
        )
    if sensitivity is not None and len(sensitivity) != count:
        raise ConfigError(
            f"sensitivity must hold one number per prunable group ({count}), but got "
            f"{len(sensitivity)}"
        )
    tolerance = 0.0 if tolerance is None else tolerance
    if sensitivity is None:  # share of each group's score mass the uniform ratio removes
        sens = []
        for group, scores in zip(probe.groups, probe.scores, strict=True):
            gone = torch.sort(scores.abs()).values[: removal_count(group, ratio)].sum()
            sens.append(float(gone) / max(float(scores.abs().sum()), 1e-12))
    else:
        sens = [float(s) for s in sensitivity]
    sens_arr = np.asarray(sens, dtype=np.float64)
    state = np.stack(
        [
            np.arange(count) / max(1, count - 1),
            probe.sizes / probe.sizes.max(),
            sens_arr / sens_arr.max() if sens_arr.max() > 0 else np.zeros(count),
        ],
        axis=1,
    ).astype(np.float32)
    agent = RSPARAgent(count, lr=1e-3, seed=seed, max_ratio=max_layer_ratio)
    history: list[dict[str, Any]] = []
    reference = (1.0, 1.0)
    for episode in range(episodes):
        if episode == 0:
            raw = np.full(count, ratio)
            log_prob = agent.log_prob(state, raw)
        else:
            raw, log_prob = agent.select_action(state)
        ratios = project_to_budget(raw, probe.sizes, ratio, max_layer_ratio)
        loss, cost = probe.loss(list(ratios)), probe.flops(list(ratios))
        if episode == 0:
            reference = (max(loss, 1e-12), cost)
        reward = episode_reward(
            -loss / reference[0], cost, reference[1], penalty=penalty, tolerance=tolerance
        )
        agent.store(state, raw, log_prob, reward)
        history.append(
            {"episode": episode, "ratios": [float(r) for r in ratios], "reward": reward,
             "loss": loss, "cost": cost, "target_cost": reference[1], "flops": cost}
        )  # fmt: skip
        if len(agent.buffer) >= 4 and episode < episodes - 1:
            agent.update_policy(batch_size=4, epochs=10)
    return list(best_episode(history)["ratios"]), history
