"""Importance criteria for structured pruning, as torch-pruning importance objects.

Each criterion is a factory in :data:`IMPORTANCES`; torch-pruning is imported only when
a factory is called, so ``import hamnet`` stays light.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from hamnet.core.errors import ConfigError


def _magnitude(p: int, **_: Any) -> Any:
    import torch_pruning as tp

    return tp.importance.MagnitudeImportance(p=p)


def _taylor(**_: Any) -> Any:
    import torch_pruning as tp

    return tp.importance.TaylorImportance()


def _random(**_: Any) -> Any:
    import torch_pruning as tp

    return tp.importance.RandomImportance()


def aggregate_linear_scores(
    group: Any,
    names: dict[Any, str],
    row_scores: Callable[[str], Any],
    column_scores: Callable[[str], Any],
    *,
    what: str,
) -> Any:
    """One score per root index of a torch-pruning group, from per-channel layer scores.

    For every member of ``group`` that prunes an ``nn.Linear`` known in ``names``, the
    scores of its pruned rows (output pruning, ``row_scores(name)``) or columns (input
    pruning, ``column_scores(name)``) are added at the group's root indices, the way
    ``MagnitudeImportance`` aggregates. Members without scores contribute zero.

    Args:
        group: A torch-pruning dependency group.
        names: Module → qualified name of the layers that have scores.
        row_scores: Name → one score per output channel (or None when absent).
        column_scores: Name → one score per input channel (or None when absent).
        what: What the scores are, for the error message (e.g. ``"saliencies"``).

    Returns:
        A float tensor with one score per root index, or None when no member had scores.

    Raises:
        ConfigError: If a layer's width no longer matches its scores (fit again after
            pruning).
    """
    import torch
    import torch_pruning as tp

    function = tp.pruner.function
    total = torch.zeros(len(group[0].idxs), dtype=torch.float32)
    found = False
    for i, (dep, idxs) in enumerate(group):
        root_idxs = group[i].root_idxs
        layer = dep.layer
        name = names.get(layer)
        if name is None or any(r is None for r in root_idxs):
            continue
        if dep.pruning_fn == function.prune_linear_out_channels:
            scores, width = row_scores(name), layer.out_features
        elif dep.pruning_fn == function.prune_linear_in_channels:
            scores, width = column_scores(name), layer.in_features
        else:
            continue
        if scores is None:
            continue
        if len(scores) != width:
            raise ConfigError(
                f"{what} of {name!r} cover {len(scores)} channels, but the layer now has "
                f"{width}; fit them again after pruning"
            )
        local = scores[torch.as_tensor(list(idxs), dtype=torch.long)].float().cpu()
        total.scatter_add_(0, torch.as_tensor(list(root_idxs), dtype=torch.long), local)
        found = True
    return total if found else None


def _require_data(name: str, model: Any, dataset: Any) -> None:
    if model is None or dataset is None:
        raise ConfigError(
            f"the {name} criterion needs the model and calibration data, but got "
            f"model={type(model).__name__} and dataset={type(dataset).__name__}"
        )


def _hessian(*, model: Any = None, dataset: Any = None, seed: int = 0, **_: Any) -> Any:
    _require_data("hessian", model, dataset)
    from hamnet.compress.pruning.hessian import make_hessian_importance

    return make_hessian_importance(model, dataset, seed=seed)


def _movement(*, model: Any = None, dataset: Any = None, seed: int = 0, **_: Any) -> Any:
    _require_data("movement", model, dataset)
    from hamnet.compress.pruning.movement import make_movement_importance

    # Score on a short probe fine-tune, then prune the original weights, so a pruning
    # plan replays on the original model like every other criterion's.
    original = {k: v.detach().clone() for k, v in model.state_dict().items()}
    importance = make_movement_importance(model, dataset, seed=seed)
    model.load_state_dict(original)
    return importance


IMPORTANCES: dict[str, Callable[..., Any]] = {
    "l1": partial(_magnitude, 1),
    "l2": partial(_magnitude, 2),
    "taylor": _taylor,
    "random": _random,
    "hessian": _hessian,
    "movement": _movement,
}
"""Criterion name → factory of a torch-pruning importance object.

Factories take keyword arguments ``model``, ``dataset`` and ``seed``; data-free
criteria ignore them, ``hessian`` fits K-FAC factors on the data (seed 003's H-OBS),
``movement`` fine-tunes briefly and scores weights moving away from zero.
"""

_NEEDS_GRADIENTS = frozenset({"taylor"})


def get_importance(name: str, *, model: Any = None, dataset: Any = None, seed: int = 0) -> Any:
    """Build the importance object of a criterion.

    Args:
        name: A key of :data:`IMPORTANCES`.
        model: The model about to be pruned (read by data-dependent criteria).
        dataset: Calibration data (read by data-dependent criteria).
        seed: Seeds any sampling the criterion does.

    Returns:
        A fresh torch-pruning importance object.

    Raises:
        ConfigError: If ``name`` is not a known criterion.
    """
    _check_name(name)
    return IMPORTANCES[name](model=model, dataset=dataset, seed=seed)


def needs_gradients(name: str) -> bool:
    """Whether a criterion reads ``param.grad`` (so gradients must be accumulated first).

    Args:
        name: A key of :data:`IMPORTANCES`.

    Raises:
        ConfigError: If ``name`` is not a known criterion.
    """
    _check_name(name)
    return name in _NEEDS_GRADIENTS


def _check_name(name: str) -> None:
    if name not in IMPORTANCES:
        raise ConfigError(
            f"pruning criterion must be one of {sorted(IMPORTANCES)}, but got {name!r}"
        )
