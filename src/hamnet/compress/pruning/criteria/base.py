"""The shape of a pruning criterion: a plugin that builds a torch-pruning importance."""

from __future__ import annotations

from typing import Any, ClassVar

from hamnet.core.errors import ConfigError
from hamnet.core.registry import Plugin


class Criterion(Plugin):
    """How the heads and FFN channels to remove are ranked.

    Callers read the capability attributes instead of testing names.

    Attributes:
        needs_gradients: The importance reads ``param.grad``, so the caller accumulates
            calibration gradients before scoring.
        needs_data: :meth:`build` needs the model and a hamnet ``Dataset``.
        supports_hf: Usable on Hugging Face BERT-style encoders (``prune_bert``),
            which have no hamnet ``Dataset``.
        supports_modules: Usable on any torch module (``prune_module``), through
            :meth:`build_for_module`.
    """

    kind: ClassVar[str] = "criterion"
    needs_gradients: ClassVar[bool] = False
    needs_data: ClassVar[bool] = False
    supports_hf: ClassVar[bool] = True
    supports_modules: ClassVar[bool] = True

    def __init__(self, **options: Any) -> None:
        self.options = self.parse_options(options)

    def build(self, model: Any = None, dataset: Any = None, seed: int = 0) -> Any:
        """Return a fresh torch-pruning importance object.

        Args:
            model: The model about to be pruned (read when :attr:`needs_data`).
            dataset: Calibration data (read when :attr:`needs_data`).
            seed: Seeds any sampling the criterion does.

        Raises:
            ConfigError: A data criterion got no model or no data.
        """
        raise NotImplementedError

    def build_for_module(self, model: Any, calibration: Any = None, seed: int = 0) -> Any:
        """Return a fresh torch-pruning importance for ANY module (``prune_module``).

        Args:
            model: The module about to be pruned.
            calibration: ``prune_module``'s calibration data (read when
                :attr:`needs_data`): an object whose ``fisher_losses(seed)`` gives one
                callable per batch returning the batch-mean loss of the model it is
                given, with targets drawn from the model itself.
            seed: Seeds any sampling the criterion does.

        Raises:
            ConfigError: The criterion does not support modules.
        """
        if not self.supports_modules:
            raise ConfigError(
                f"the pruning criterion for torch modules must support them, but {self.name!r} "
                "is HAMNet-only"
            )
        return self.build(model, None, seed)

    def _require_data(self, model: Any, dataset: Any) -> None:
        if model is None or dataset is None:
            raise ConfigError(
                f"the {self.name} criterion needs the model and calibration data, but got "
                f"model={type(model).__name__} and dataset={type(dataset).__name__}"
            )


class MagnitudeCriterion(Criterion):
    """Weight magnitude (the ``p``-norm of each group's weights)."""

    p: ClassVar[int] = 1

    def build(self, model: Any = None, dataset: Any = None, seed: int = 0) -> Any:
        """Return a ``torch_pruning`` ``MagnitudeImportance`` with this ``p``."""
        import torch_pruning as tp

        return tp.importance.MagnitudeImportance(p=self.p)
