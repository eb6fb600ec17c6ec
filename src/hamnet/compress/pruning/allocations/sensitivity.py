"""The ``sensitivity`` allocation: layers with higher K-FAC/OBS saliency lose less.

Seed 003's H-OBS; the K-FAC fit lives in :mod:`hamnet.compress.pruning.hessian`,
imported when ratios are computed.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from hamnet.compress.pruning.allocations.base import Allocation


class SensitivityOptions(BaseModel):
    """Settings of the K-FAC fit and of the per-layer cap."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_batches: int = Field(8, ge=1, description="Calibration batches of the K-FAC fit.")
    damping: float = Field(1e-3, gt=0.0, description="λ of the π-damping.")
    max_layer_ratio: float = Field(
        0.9, gt=0.0, lt=1.0, description="Largest fraction one layer may lose."
    )


class Sensitivity(Allocation):
    """Per-layer ratios inversely related to each block's sensitivity.

    HAMNet: the blocks' K-FAC/OBS saliency. Any module: the calibration-loss increase
    when each group alone is pruned.
    """

    name = "sensitivity"
    Options = SensitivityOptions
    per_layer = True

    def layer_ratios(self, model: Any, dataset: Any, ratio: float, *, seed: int = 0) -> list[float]:
        """Fit K-FAC on ``model`` and spread ``ratio`` sparing sensitive blocks."""
        from hamnet.compress.pruning.hessian import sensitivity_layer_ratios

        options = self.options
        assert isinstance(options, SensitivityOptions)
        return sensitivity_layer_ratios(
            model,
            dataset,
            ratio,
            num_batches=options.num_batches,
            damping=options.damping,
            seed=seed,
            max_layer_ratio=options.max_layer_ratio,
        )

    def module_ratios(self, probe: Any, ratio: float, *, seed: int = 0) -> list[float]:
        """Prune each group of ANY module alone; groups whose loss grows least lose more.

        Group ``i``'s sensitivity is the calibration-loss increase when it alone loses
        ``ratio`` of its units; its ratio is proportional to ``1 / sensitivity``, with
        the size-weighted mean equal to ``ratio`` and each ratio at most
        ``max_layer_ratio`` (water-filling, as for HAMNet).
        """
        import numpy as np

        from hamnet.compress.pruning.hessian import allocate_by_preference

        options = self.options
        assert isinstance(options, SensitivityOptions)
        count = len(probe.sizes)
        increases = np.array(
            [
                max(
                    probe.loss([ratio if j == i else 0.0 for j in range(count)]) - probe.base_loss,
                    0,
                )
                for i in range(count)
            ],
            dtype=np.float64,
        )
        floor = max(float(increases.mean()), 1e-12) * 1e-3
        preference = 1.0 / np.maximum(increases, floor)
        weights = np.asarray(probe.sizes, dtype=np.float64)
        return allocate_by_preference(preference, weights, ratio, options.max_layer_ratio)


PLUGIN = Sensitivity
