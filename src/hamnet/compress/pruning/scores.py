"""Per-channel layer scores turned into torch-pruning group scores.

Shared by the data-dependent criteria (:mod:`~hamnet.compress.pruning.hessian`,
:mod:`~hamnet.compress.pruning.movement`); torch and torch-pruning are imported when
scores are aggregated.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from hamnet.core.errors import ConfigError


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


@functools.cache
def linear_scores_importance_base() -> type:
    """The torch-pruning ``Importance`` base of the criteria scored per layer channel.

    Built on first use so that importing this module does not import torch-pruning. A
    subclass sets ``_names`` (module → qualified name) in ``__init__`` and implements
    ``_row_scores(name)`` and ``_column_scores(name)``; its class attribute ``what``
    names the scores in error messages. Calling an instance on a group returns
    :func:`aggregate_linear_scores` of it.
    """
    import torch
    import torch_pruning as tp

    class LinearScoresImportance(tp.importance.Importance):  # type: ignore[misc]
        """Group importance summed from per-channel scores of ``nn.Linear`` layers."""

        what = "scores"
        _names: dict[Any, str]

        def _row_scores(self, name: str) -> Any:
            raise NotImplementedError

        def _column_scores(self, name: str) -> Any:
            raise NotImplementedError

        def __call__(self, group: Any) -> Any:
            with torch.no_grad():
                return aggregate_linear_scores(
                    group, self._names, self._row_scores, self._column_scores, what=self.what
                )

    return LinearScoresImportance
