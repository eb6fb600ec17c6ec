"""Movement pruning scores (Sanh et al. 2020, "Movement Pruning").

During a short fine-tune the score of every ``nn.Linear`` weight accumulates

    S = Σ_t (−w_t ⊙ ∂L/∂w_t)

over the optimizer steps ``t`` (gradients of the batch-mean cross-entropy, read from
``.grad`` after each backward and before the update). A positive score means the weight
is moving away from zero (kept), a negative one that training pulls it towards zero
(pruned first), whatever its current magnitude.

The fine-tune is real: the model keeps the fine-tuned weights, as movement pruning does.
:class:`MovementImportance` turns the scores into torch-pruning group importances.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hamnet.compress.pruning.scores import linear_scores_importance_base
from hamnet.core.errors import ConfigError, DataError
from hamnet.training.data import Dataset


class MovementScores:
    """Accumulated movement scores of the ``nn.Linear`` weights of a model.

    Usage: :meth:`fit` runs the fine-tune and accumulates; or, in a custom loop, call
    :meth:`accumulate` after each backward pass (before ``optimizer.step()``).

    Args:
        model: The network; its ``nn.Linear`` weights are tracked.

    Raises:
        ConfigError: If the model has no ``nn.Linear`` layer.
    """

    def __init__(self, model: nn.Module) -> None:
        linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        if not linears:
            raise ConfigError(
                f"movement scores need a model with nn.Linear layers, but got "
                f"{type(model).__name__} with none"
            )
        self.model = model
        self.modules: dict[str, nn.Linear] = linears
        self.scores: dict[str, torch.Tensor] = {
            n: torch.zeros_like(m.weight, dtype=torch.float64) for n, m in linears.items()
        }
        self.steps = 0

    @property
    def module_names(self) -> dict[nn.Module, str]:
        """Tracked module → its qualified name."""
        return {m: n for n, m in self.modules.items()}

    @torch.no_grad()
    def accumulate(self) -> None:
        """Add ``−w ⊙ ∂L/∂w`` of the current weights and ``.grad`` fields.

        Layers whose weight has no gradient contribute nothing.
        """
        for name, module in self.modules.items():
            grad = module.weight.grad
            if grad is None:
                continue
            self.scores[name] -= (module.weight.detach() * grad.detach()).double()
        self.steps += 1

    def row_scores(self, name: str) -> torch.Tensor:
        """Score of each output channel (row) of a layer: the sum over its weights."""
        return self._scores_of(name).sum(dim=1)

    def column_scores(self, name: str) -> torch.Tensor:
        """Score of each input channel (column) of a layer: the sum over its weights."""
        return self._scores_of(name).sum(dim=0)

    def _scores_of(self, name: str) -> torch.Tensor:
        if name not in self.scores:
            raise ConfigError(
                f"layer must be one of the tracked layers {sorted(self.scores)[:5]}, but got "
                f"{name!r}"
            )
        return self.scores[name]

    def fit(
        self,
        dataset: Dataset,
        *,
        steps: int = 50,
        learning_rate: float = 1e-4,
        batch_size: int = 64,
        seed: int = 0,
    ) -> MovementScores:
        """Fine-tune the model for ``steps`` AdamW steps, accumulating the scores.

        Cross-entropy on shuffled training batches, in train mode; the model keeps the
        fine-tuned weights and is left in its previous mode. ``.grad`` fields are
        cleared at the end. The global RNG state is restored afterwards.

        Args:
            dataset: Its training split is used.
            steps: Optimizer steps, at least 1.
            learning_rate: AdamW learning rate.
            batch_size: Samples per step.
            seed: Seeds the batch order and dropout.

        Returns:
            ``self``.

        Raises:
            ConfigError: If ``steps`` or ``batch_size`` is below 1.
            DataError: If the training split is empty.
        """
        if steps < 1:
            raise ConfigError(f"movement steps must be at least 1, but got {steps}")
        if batch_size < 1:
            raise ConfigError(f"movement batch_size must be at least 1, but got {batch_size}")
        if len(dataset.x_train) == 0:
            raise DataError("movement scores need training samples, but the train split is empty")
        device = next(self.model.parameters()).device
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=learning_rate)
        was_training = self.model.training
        self.model.train()
        batches = _training_batches(dataset, batch_size, seed)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                for _ in range(steps):
                    x, y = next(batches)
                    optimizer.zero_grad(set_to_none=True)
                    loss = F.cross_entropy(self.model(x.to(device)), y.to(device))
                    loss.backward()
                    self.accumulate()
                    optimizer.step()
        finally:
            self.model.zero_grad(set_to_none=True)
            self.model.train(was_training)
        return self


def _training_batches(
    dataset: Dataset, batch_size: int, seed: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless shuffled training batches (a new permutation each pass)."""
    rng = np.random.default_rng(seed)
    n = len(dataset.x_train)
    while True:
        order = rng.permutation(n)
        for start in range(0, n, batch_size):
            index = order[start : start + batch_size]
            x = torch.from_numpy(np.ascontiguousarray(dataset.x_train[index], dtype=np.float32))
            y = torch.from_numpy(np.asarray(dataset.y_train[index], dtype=np.int64))
            yield x, y


@functools.cache
def movement_importance_class() -> type:
    """The ``MovementImportance`` class (a ``torch_pruning.importance.Importance``).

    Built on first use so that importing this module does not import torch-pruning;
    ``from hamnet.compress.pruning.movement import MovementImportance`` also works.
    """

    class MovementImportance(linear_scores_importance_base()):  # type: ignore[misc]
        """torch-pruning importance from accumulated movement scores.

        For each member of a group it adds the summed scores of the pruned rows (output
        pruning of an ``nn.Linear``) or columns (input pruning) of that layer, like
        ``MagnitudeImportance`` aggregates; untracked members contribute zero. Higher
        is more important. Scores are not normalised (comparable across groups).

        Args:
            scores: Fitted :class:`MovementScores` of the model being pruned.
        """

        what = "movement scores"

        def __init__(self, scores: MovementScores) -> None:
            if scores.steps == 0:
                raise ConfigError(
                    "movement importance needs accumulated scores, but got 0 steps; expected "
                    "MovementScores.fit() or accumulate() first"
                )
            self.movement = scores
            self._names = scores.module_names

        def _row_scores(self, name: str) -> torch.Tensor | None:
            return self.movement.row_scores(name)

        def _column_scores(self, name: str) -> torch.Tensor | None:
            return self.movement.column_scores(name)

    return MovementImportance


def __getattr__(name: str) -> Any:
    if name == "MovementImportance":
        return movement_importance_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_movement_importance(
    model: nn.Module,
    dataset: Dataset,
    *,
    steps: int = 50,
    seed: int = 0,
    learning_rate: float = 1e-4,
    batch_size: int = 64,
) -> Any:
    """The ``"movement"`` pruning criterion: fine-tune ``model`` briefly and score it.

    ``model`` is fine-tuned IN PLACE (AdamW, cross-entropy on the training split) and
    keeps the fine-tuned weights; the importance is tied to its modules.

    Args:
        model: The model about to be pruned.
        dataset: Supplies the training batches.
        steps: Optimizer steps of the fine-tune.
        seed: Seeds the batch order and dropout.
        learning_rate: AdamW learning rate.
        batch_size: Samples per step.

    Returns:
        A ``MovementImportance`` instance.

    Raises:
        ConfigError: If ``dataset`` is not a Dataset or a setting is out of range.
    """
    if not isinstance(dataset, Dataset):
        raise ConfigError(
            f"the movement criterion needs a hamnet Dataset, but got {type(dataset).__name__}"
        )
    scores = MovementScores(model).fit(
        dataset, steps=steps, learning_rate=learning_rate, batch_size=batch_size, seed=seed
    )
    return movement_importance_class()(scores)
