"""The shape of a pruning allocation: torch-pruning settings, or ratios per layer."""

from __future__ import annotations

from typing import Any, ClassVar

from hamnet.core.errors import ConfigError
from hamnet.core.registry import Plugin


class Allocation(Plugin):
    """How a pruning budget is spread over the layers.

    Callers read the capability attributes instead of testing names.

    Attributes:
        per_layer: :meth:`layer_ratios` chooses one removal fraction per layer, which
            is then applied like ``uniform``, layer by layer.
        global_ranking: Heads (and FFN channels) are ranked across all layers together,
            so less important layers lose more.
        supports_hf: Usable on Hugging Face BERT-style encoders (``prune_bert``).
        supports_modules: Usable on any torch module (``prune_module``); a
            :attr:`per_layer` one then implements :meth:`module_ratios`.
    """

    kind: ClassVar[str] = "allocation"
    per_layer: ClassVar[bool] = False
    global_ranking: ClassVar[bool] = False
    supports_hf: ClassVar[bool] = False
    supports_modules: ClassVar[bool] = True

    def __init__(self, **options: Any) -> None:
        self.options = self.parse_options(options)

    def pruner_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``torch_pruning.pruner.BasePruner`` (a fresh dict)."""
        return {"global_pruning": self.global_ranking}

    def layer_ratios(self, model: Any, dataset: Any, ratio: float, *, seed: int = 0) -> list[float]:
        """One removal fraction per layer that spends ``ratio``'s budget.

        Args:
            model: A CPU copy of the model to prune (may be modified).
            dataset: Training and validation data.
            ratio: The budget: fraction of heads and FFN channels to remove.
            seed: Seeds any sampling or training.

        Raises:
            ConfigError: The allocation is not :attr:`per_layer`.
        """
        raise ConfigError(
            f"allocation {self.name!r} must be a per-layer allocation to give layer ratios, "
            f"but it ranks with torch-pruning settings"
        )

    def module_ratios(self, probe: Any, ratio: float, *, seed: int = 0) -> list[float]:
        """One removal fraction per prunable group of ANY module (``prune_module``).

        Args:
            probe: ``prune_module``'s probe: ``sizes`` (parameters per group),
                ``base_loss`` (calibration loss of the unpruned model) and
                ``loss(ratios)`` (calibration loss after pruning a copy group by group
                to ``ratios``), ``flops(ratios)``, ``names``.
            ratio: The budget: size-weighted mean fraction of units to remove.
            seed: Seeds any sampling.

        Raises:
            ConfigError: The allocation is not :attr:`per_layer`.
        """
        raise ConfigError(
            f"allocation {self.name!r} must be a per-layer allocation to give group ratios, "
            f"but it ranks with torch-pruning settings"
        )
