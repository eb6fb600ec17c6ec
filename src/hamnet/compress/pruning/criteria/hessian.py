"""The ``hessian`` criterion: K-FAC/OBS saliency (seed 003's H-OBS).

The K-FAC machinery lives in :mod:`hamnet.compress.pruning.hessian`, imported when the
importance is built.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from hamnet.compress.pruning.criteria.base import Criterion


class HessianOptions(BaseModel):
    """Settings of the K-FAC fit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_batches: int = Field(8, ge=1, description="Calibration batches of the K-FAC fit.")
    damping: float = Field(1e-3, gt=0.0, description="λ of the π-damping.")


class Hessian(Criterion):
    """OBS saliency from K-FAC factors fitted on calibration data."""

    name = "hessian"
    Options = HessianOptions
    needs_data = True
    supports_hf = False

    def build(self, model: Any = None, dataset: Any = None, seed: int = 0) -> Any:
        """Fit K-FAC on ``model`` and ``dataset``; return a ``HessianImportance``."""
        self._require_data(model, dataset)
        from hamnet.compress.pruning.hessian import make_hessian_importance

        options = self.options
        assert isinstance(options, HessianOptions)
        return make_hessian_importance(
            model, dataset, num_batches=options.num_batches, damping=options.damping, seed=seed
        )

    def build_for_module(self, model: Any, calibration: Any = None, seed: int = 0) -> Any:
        """Fit K-FAC on ANY module's linears and convolutions; return their OBS importance.

        Raises:
            ConfigError: Without calibration data.
        """
        self._require_data(model, calibration)
        from hamnet.compress.pruning.hessian import make_module_hessian_importance

        options = self.options
        assert isinstance(options, HessianOptions)
        losses = calibration.fisher_losses(seed)[: options.num_batches]
        return make_module_hessian_importance(model, losses, damping=options.damping)


PLUGIN = Hessian
