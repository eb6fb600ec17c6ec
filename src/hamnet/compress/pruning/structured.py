"""Structured pruning of HAMNet: whole attention heads and FFN channels.

torch-pruning's :class:`~torch_pruning.pruner.BasePruner` removes the heads (rows of
``q_proj``/``k_proj``/``v_proj`` and the matching columns of ``out_proj``) and the FFN
channels (rows of ``fc1`` and columns of ``fc2``); the hidden width is never touched, so
the pruned model has the same interface as its parent. Every removal is tracked back to
indices of the ORIGINAL model and stored in a :class:`PruningPlan`, which rebuilds the
pruned model from its parent by slicing weights (:func:`apply_plan`) — no pickled
modules needed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hamnet.compress.pruning.allocation import get_allocator
from hamnet.compress.pruning.allocations.base import Allocation
from hamnet.compress.pruning.criteria.base import Criterion
from hamnet.compress.pruning.importance import get_criterion
from hamnet.compress.pruning.plans import (
    PLAN_FORMAT,
    JsonPlan,
    LayerPlan,
    PruningPlan,
    apply_plan,
    count_parameters,
    pruned_config,
)
from hamnet.core.config import TrainStageConfig
from hamnet.core.errors import ConfigError, StageError
from hamnet.models.hamnet import HAMNet, HAMNetBlock, HAMNetConfig, MultiHeadSelfAttention
from hamnet.training.data import Dataset
from hamnet.training.trainer import evaluate_accuracy, train_model

__all__ = [
    "PLAN_FORMAT",
    "SCHEDULES",
    "JsonPlan",
    "LayerPlan",
    "PruneResult",
    "PruningPlan",
    "apply_plan",
    "count_parameters",
    "prune_hamnet",
]

_CALIBRATION_BATCH_SIZE = 64


def _one_shot(ratio: float, steps: int) -> list[float]:
    return [ratio]


def _linear(ratio: float, steps: int) -> list[float]:
    return [ratio * t / steps for t in range(1, steps + 1)]


def _cubic(ratio: float, steps: int) -> list[float]:
    return [ratio * (1.0 - (1.0 - t / steps) ** 3) for t in range(1, steps + 1)]


SCHEDULES: dict[str, Callable[[float, int], list[float]]] = {
    "one-shot": _one_shot,
    "linear": _linear,
    "cubic": _cubic,
}
"""Schedule name → ``f(ratio, steps)`` giving the cumulative sparsity after each step."""


@dataclass
class PruneResult:
    """The outcome of :func:`prune_hamnet`.

    Attributes:
        model: The pruned (and fine-tuned, if asked) model; its config states the
            heads and FFN width left in each layer.
        plan: Indices kept, replayable on the original model with :func:`apply_plan`.
        layer_ratios: Per-layer removal fractions a layer allocation chose (None for
            ``uniform``/``global``).
        params_before: Parameters of the original model.
        params_after: Parameters of the pruned model.
        steps: One record per pruning step: ``step``, ``ratio`` (cumulative sparsity
            targeted), ``params``, ``layer_heads``, ``layer_ffn`` and
            ``val_accuracy`` (after fine-tuning, when fine-tuning is on).
    """

    model: HAMNet
    plan: PruningPlan
    layer_ratios: list[float] | None
    params_before: int
    params_after: int
    steps: list[dict[str, Any]] = field(default_factory=list)


def prune_hamnet(
    model: HAMNet,
    dataset: Dataset,
    *,
    ratio: float,
    criterion: str = "l1",
    allocation: str = "uniform",
    schedule: str = "one-shot",
    steps: int = 1,
    finetune: TrainStageConfig | None = None,
    seed: int = 0,
    calibration_batches: int = 4,
    allocation_options: Mapping[str, Any] | None = None,
    criterion_options: Mapping[str, Any] | None = None,
) -> PruneResult:
    """Remove a fraction of the attention heads and FFN channels of a HAMNet.

    The input model is not modified; pruning runs on a CPU copy. The hidden width,
    embedding, norms and classifier are never pruned.

    Args:
        model: The trained model.
        dataset: Supplies calibration batches (for gradient criteria), fine-tuning
            data and the validation split scored after each step.
        ratio: Fraction of heads and of FFN channels to remove, in ``[0, 1)``. At
            least one head and one FFN channel stay in every layer.
        criterion: A name of ``registry.names("criterion")``.
        allocation: A name of ``registry.names("allocation")``.
        schedule: A key of :data:`SCHEDULES`; ``"one-shot"`` prunes once.
        steps: Pruning steps of an iterative schedule.
        finetune: Training settings for fine-tuning after each step; ``None`` skips it.
        seed: Seeds calibration sampling, random importance and fine-tuning.
        calibration_batches: Batches whose gradients a gradient criterion reads.
        allocation_options: Options of the allocation (e.g. R-SPAR's ``target``,
            ``profile``, ``episodes``).
        criterion_options: Options of the criterion (e.g. movement's ``steps``).

    Returns:
        The pruned model, its plan, parameter counts and per-step records.

    Raises:
        ConfigError: If a setting is out of range or unknown.
        DataError: If the data does not fit the model.
        StageError: If torch-pruning removed something other than whole heads.
    """
    _check_settings(ratio, steps, calibration_batches, schedule)
    scorer = get_criterion(criterion, criterion_options)
    allocator = get_allocator(allocation, allocation_options)
    dataset.check_input_size(model.config.input_size)
    layer_ratios = _layer_ratios(allocator, model, dataset, ratio, seed)
    work = _Work.of(model)
    records: list[dict[str, Any]] = []
    for step, sparsity in enumerate(SCHEDULES[schedule](ratio, steps), start=1):
        torch.manual_seed(seed + step)
        work.prune(
            dataset, sparsity=sparsity, criterion=scorer, pruner_kwargs=allocator.pruner_kwargs(),
            seed=seed + step, calibration_batches=calibration_batches,
            layer_sparsity=step_layer_sparsity(layer_ratios, sparsity, ratio),
        )  # fmt: skip
        if finetune is not None:
            train_model(work.model, dataset, finetune, seed=seed + step, progress=False)
            work.model.cpu().eval()
        records.append(work.record(step, sparsity, dataset))
    work.model.one_token_fast_path = True
    return PruneResult(
        model=work.model,
        plan=work.plan(criterion, allocation, ratio),
        layer_ratios=layer_ratios,
        params_before=count_parameters(model),
        params_after=count_parameters(work.model),
        steps=records,
    )


@dataclass
class _Work:
    """The copy being pruned, and what it keeps as indices of the original's units."""

    model: HAMNet
    base: HAMNetConfig
    kept_heads: list[list[int]]
    kept_ffn: list[list[int]]

    @classmethod
    def of(cls, model: HAMNet) -> _Work:
        base = model.config
        layers = range(base.num_layers)
        return cls(
            model=_traceable_copy(model),
            base=base,
            kept_heads=[list(range(base.heads_of(i))) for i in layers],
            kept_ffn=[list(range(base.ffn_of(i))) for i in layers],
        )

    def prune(
        self,
        dataset: Dataset,
        *,
        sparsity: float,
        criterion: Criterion,
        pruner_kwargs: dict[str, Any],
        seed: int,
        calibration_batches: int,
        layer_sparsity: list[float] | None,
    ) -> None:
        """Prune the copy one step (see :func:`_prune_step`) and update the kept indices."""
        _prune_step(
            self.model, dataset, self.base, self.kept_heads, self.kept_ffn, sparsity=sparsity,
            criterion=criterion, pruner_kwargs=pruner_kwargs, seed=seed,
            calibration_batches=calibration_batches, layer_sparsity=layer_sparsity,
        )  # fmt: skip

    def record(self, step: int, sparsity: float, dataset: Dataset) -> dict[str, Any]:
        return {
            "step": step,
            "ratio": sparsity,
            "params": count_parameters(self.model),
            "layer_heads": [len(h) for h in self.kept_heads],
            "layer_ffn": [len(c) for c in self.kept_ffn],
            "val_accuracy": evaluate_accuracy(self.model, dataset.x_val, dataset.y_val),
        }

    def plan(self, criterion: str, allocation: str, ratio: float) -> PruningPlan:
        return PruningPlan(
            base_config=self.base.model_dump(mode="json"),
            layers=[
                LayerPlan(heads_kept=list(h), ffn_kept=list(c))
                for h, c in zip(self.kept_heads, self.kept_ffn, strict=True)
            ],
            criterion=criterion,
            allocation=allocation,
            ratio=ratio,
        )


def step_layer_sparsity(
    layer_ratios: list[float] | None, sparsity: float, ratio: float
) -> list[float] | None:
    """Scale a per-layer allocation of the final ``ratio`` to one step's ``sparsity``.

    Args:
        layer_ratios: Per-layer removal fractions reaching ``ratio`` (None: no per-layer
            allocation).
        sparsity: The cumulative sparsity this step of the schedule targets.
        ratio: The final sparsity; positive when ``layer_ratios`` is given.

    Returns:
        Each layer's fraction times ``sparsity / ratio``, or None without an allocation.
    """
    if layer_ratios is None:
        return None
    return [r * sparsity / ratio for r in layer_ratios]


def _check_settings(ratio: float, steps: int, calibration_batches: int, schedule: str) -> None:
    _check_ratio(ratio)
    if steps < 1:
        raise ConfigError(f"pruning steps must be at least 1, but got {steps}")
    if calibration_batches < 1:
        raise ConfigError(f"calibration_batches must be at least 1, but got {calibration_batches}")
    if schedule not in SCHEDULES:
        raise ConfigError(
            f"pruning schedule must be one of {sorted(SCHEDULES)}, but got {schedule!r}"
        )


def _layer_ratios(
    allocator: Allocation, model: HAMNet, dataset: Dataset, ratio: float, seed: int
) -> list[float] | None:
    """The per-layer removal fractions a per-layer allocation chooses (else None)."""
    if not allocator.per_layer or ratio <= 0:
        return None
    ratios = allocator.layer_ratios(_traceable_copy(model), dataset, ratio, seed=seed)
    if len(ratios) != model.config.num_layers:
        raise StageError(
            f"allocation {allocator.name!r} must give one ratio per layer "
            f"({model.config.num_layers}), but gave {len(ratios)}"
        )
    return ratios


def _prune_step(
    model: HAMNet,
    dataset: Dataset,
    base: HAMNetConfig,
    kept_heads: list[list[int]],
    kept_ffn: list[list[int]],
    *,
    sparsity: float,
    criterion: Criterion,
    pruner_kwargs: dict[str, Any],
    seed: int,
    calibration_batches: int,
    layer_sparsity: list[float] | None = None,
) -> None:
    """Prune ``model`` in place to ``sparsity`` and update the kept-index lists.

    ``layer_sparsity`` (one fraction per layer) overrides ``sparsity`` layer by layer.
    """
    import torch_pruning as tp

    blocks = [(block.attn, block.ffn) for block in _blocks(model)]
    if pruner_kwargs.get("global_pruning"):
        ratios = _global_ratios(model, base, kept_heads, kept_ffn, sparsity)
    else:
        per_layer = layer_sparsity or [sparsity] * base.num_layers
        ratios = _uniform_ratios(model, base, kept_heads, kept_ffn, per_layer)
    if ratios is None:
        return
    if criterion.needs_gradients:
        _accumulate_gradients(model, dataset, calibration_batches, seed)
    ignored: list[nn.Module | nn.Parameter] = [model.embed, model.norm, model.head, model.pos]
    for block in _blocks(model):
        ignored += [block.norm1, block.norm2, block.attn.out_proj, block.ffn.fc2]
    num_heads = {
        proj: attn.num_heads
        for attn, _ in blocks
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj)
    }
    example = torch.from_numpy(np.ascontiguousarray(dataset.x_train[:2], dtype=np.float32))
    pruner = tp.pruner.BasePruner(
        model,
        example,
        criterion.build(model, dataset, seed),
        ignored_layers=ignored,
        unwrapped_parameters=[(model.pos, 2)],
        num_heads=num_heads,
        prune_num_heads=True,
        prune_head_dims=False,
        **ratios,
        **pruner_kwargs,
    )
    owners: dict[nn.Module, tuple[int, str]] = {}
    for i, (attn, ffn) in enumerate(blocks):
        owners.update({attn.q_proj: (i, "heads"), ffn.fc1: (i, "ffn")})
    for group in pruner.step(interactive=True):
        _prune_group(pruner, group, owners, base.head_dim, kept_heads, kept_ffn)
    model.zero_grad(set_to_none=True)
    for i, (attn, ffn) in enumerate(blocks):
        heads, rest = divmod(attn.q_proj.out_features, base.head_dim)
        if rest or heads != len(kept_heads[i]) or ffn.fc1.out_features != len(kept_ffn[i]):
            raise StageError(
                f"layer {i} should keep {len(kept_heads[i])} heads of width {base.head_dim} and "
                f"{len(kept_ffn[i])} FFN channels, but torch-pruning left q_proj with "
                f"{attn.q_proj.out_features} rows and fc1 with {ffn.fc1.out_features}"
            )
        attn.num_heads = heads
    model.config = pruned_config(base, kept_heads, kept_ffn)


def _prune_group(
    pruner: Any,
    group: Any,
    owners: dict[nn.Module, tuple[int, str]],
    head_dim: int,
    kept_heads: list[list[int]],
    kept_ffn: list[list[int]],
) -> None:
    """Prune one torch-pruning group, keeping one head/channel per layer at least."""
    owner: tuple[int, str] | None = None
    removed: list[int] = []
    for item in group:
        module = item.dep.target.module
        if module in owners and pruner.DG.is_out_channel_pruning_fn(item.dep.handler):
            owner, removed = owners[module], sorted(int(i) for i in item.idxs)
            break
    if owner is None:
        raise StageError(
            f"expected torch-pruning to prune only attention heads and FFN channels, but got "
            f"a group rooted at {group[0].dep.target.module}"
        )
    layer, kind = owner
    kept = kept_heads[layer] if kind == "heads" else kept_ffn[layer]
    unit = head_dim if kind == "heads" else 1
    units = sorted({r // unit for r in removed})
    if len(removed) != len(units) * unit:
        raise StageError(
            f"expected whole heads of {head_dim} rows to be removed from layer {layer}, but "
            f"torch-pruning removed rows {removed}"
        )
    if len(units) >= len(kept):
        importance = pruner.estimate_importance(group)
        spared = int(importance.view(len(kept), -1).mean(dim=1).argmax())
        units = [u for u in units if u != spared]
        root_idxs = [int(i) for i in group[0].idxs if int(i) // unit != spared]
        if units:
            group.prune(idxs=root_idxs)
    else:
        group.prune()
    gone = set(units)
    kept[:] = [k for j, k in enumerate(kept) if j not in gone]


def _accumulate_gradients(model: HAMNet, dataset: Dataset, batches: int, seed: int) -> None:
    """Sum cross-entropy gradients over a few training batches into ``param.grad``."""
    order = np.random.default_rng(seed).permutation(len(dataset.x_train))
    model.zero_grad(set_to_none=True)
    model.eval()
    for b in range(batches):
        idx = order[b * _CALIBRATION_BATCH_SIZE : (b + 1) * _CALIBRATION_BATCH_SIZE]
        if len(idx) == 0:
            break
        x = torch.from_numpy(np.ascontiguousarray(dataset.x_train[idx], dtype=np.float32))
        y = torch.from_numpy(np.asarray(dataset.y_train[idx])).long()
        F.cross_entropy(model(x), y).backward()


def _traceable_copy(model: HAMNet) -> HAMNet:
    """A CPU eval-mode copy that runs every projection (no one-token shortcut), so
    torch-pruning's trace and gradient criteria see the query and key rows of each head."""
    work = copy.deepcopy(model).cpu().eval()
    work.one_token_fast_path = False
    return work


def _blocks(model: HAMNet) -> list[HAMNetBlock]:
    return [cast(HAMNetBlock, block) for block in model.blocks]


def _qkv(attn: MultiHeadSelfAttention) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
    return attn.q_proj, attn.k_proj, attn.v_proj


def _uniform_ratios(
    model: HAMNet,
    base: HAMNetConfig,
    kept_heads: list[list[int]],
    kept_ffn: list[list[int]],
    sparsity: list[float],
) -> dict[str, Any] | None:
    """Per-layer torch-pruning ratios that leave layer i at ``1 - sparsity[i]``.

    Each projection gets its own scope; attention groups need a positive channel ratio
    for torch-pruning to consider them, but with ``prune_head_dims=False`` only whole
    heads go.
    """
    channel: dict[nn.Module, float] = {}
    heads: dict[nn.Module, float] = {}
    for i, block in enumerate(_blocks(model)):
        r_heads = _exact_ratio(len(kept_heads[i]), _target(base.heads_of(i), sparsity[i]))
        r_ffn = _exact_ratio(len(kept_ffn[i]), _target(base.ffn_of(i), sparsity[i]))
        for proj in _qkv(block.attn):
            channel[proj] = heads[proj] = r_heads
        channel[block.ffn.fc1] = r_ffn
    if not any(channel.values()):
        return None
    return {
        "pruning_ratio": 0.0,
        "head_pruning_ratio": 0.0,
        "pruning_ratio_dict": channel,
        "head_pruning_ratio_dict": heads,
    }


def _global_ratios(
    model: HAMNet,
    base: HAMNetConfig,
    kept_heads: list[list[int]],
    kept_ffn: list[list[int]],
    sparsity: float,
) -> dict[str, Any] | None:
    """torch-pruning ratios that rank heads, and FFN channels, across all layers.

    Heads and FFN channels are two separate global scopes, so each loses
    ``sparsity`` of its initial total.
    """
    layers = range(base.num_layers)
    r_heads = _exact_ratio(
        sum(len(h) for h in kept_heads),
        max(base.num_layers, _target(sum(base.heads_of(i) for i in layers), sparsity)),
    )
    r_ffn = _exact_ratio(
        sum(len(c) for c in kept_ffn),
        max(base.num_layers, _target(sum(base.ffn_of(i) for i in layers), sparsity)),
    )
    if r_heads == 0.0 and r_ffn == 0.0:
        return None
    qkv = tuple(proj for block in _blocks(model) for proj in _qkv(block.attn))
    fc1 = tuple(block.ffn.fc1 for block in _blocks(model))
    return {
        "pruning_ratio": 0.0,
        "head_pruning_ratio": r_heads,
        "pruning_ratio_dict": {qkv: r_heads, fc1: r_ffn},
    }


def _target(initial: int, sparsity: float) -> int:
    """Units left of ``initial`` at ``sparsity`` (at least one)."""
    return max(1, initial - round(sparsity * initial))


def _exact_ratio(current: int, target: int) -> float:
    """Ratio making torch-pruning remove exactly ``current - target`` units.

    torch-pruning removes ``ceil(r * current)`` heads and ``current - int(current * (1
    - r))`` channels; ``(n - 0.5) / current`` gives exactly ``n`` for both.
    """
    n = current - target
    return (n - 0.5) / current if n > 0 else 0.0


def _check_ratio(ratio: float) -> None:
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"pruning ratio must be in [0, 1), but got {ratio}")
