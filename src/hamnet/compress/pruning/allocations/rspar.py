"""The ``rspar`` allocation: a PPO agent chooses per-layer ratios (seed 003's R-SPAR).

Rewarded by accuracy after a short recovery and penalized when FLOPs or measured
latency exceed the uniform allocation's. The agent lives in
:mod:`hamnet.compress.pruning.rspar`, imported when ratios are computed.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from hamnet.compress.pruning.allocations.base import Allocation
from hamnet.core.config import TrainStageConfig
from hamnet.core.hardware import HardwareProfile


class RsparOptions(BaseModel):
    """Settings of the R-SPAR search (see ``rspar_layer_ratios``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: Literal["flops", "latency"] = Field(
        "flops", description="Cost the agent must not exceed."
    )
    profile: HardwareProfile | None = Field(
        None, description="Hardware profile for latency; required when target is 'latency'."
    )
    episodes: int = Field(12, ge=1, description="Allocations tried, the uniform one included.")
    recovery: TrainStageConfig | None = Field(
        None, description="Training after each pruning; default one epoch, no warmup."
    )
    sensitivity: list[float] | None = Field(
        None, description="A non-negative fragility score per layer."
    )
    max_layer_ratio: float = Field(0.9, description="Largest fraction one layer may lose.")
    penalty: float = Field(1.0, ge=0.0, description="Reward lost per unit of cost overrun.")
    tolerance: float | None = Field(None, description="Relative overrun that costs nothing.")


class Rspar(Allocation):
    """Per-layer ratios chosen by a PPO agent for the same budget."""

    name = "rspar"
    Options = RsparOptions
    per_layer = True

    def layer_ratios(self, model: Any, dataset: Any, ratio: float, *, seed: int = 0) -> list[float]:
        """Run the agent's episodes on ``model``; return the best allocation seen."""
        from hamnet.compress.pruning.rspar import rspar_layer_ratios

        settings = {key: getattr(self.options, key) for key in RsparOptions.model_fields}
        ratios, _history = rspar_layer_ratios(model, dataset, ratio, seed=seed, **settings)
        return ratios

    def module_ratios(self, probe: Any, ratio: float, *, seed: int = 0) -> list[float]:
        """Run the agent over the prunable groups of ANY module; return the best allocation.

        The reward is the calibration loss of the pruned copy relative to the uniform
        allocation's (no recovery training), penalised when its FLOPs exceed the
        uniform allocation's.

        Raises:
            ConfigError: For ``target='latency'``, ``recovery`` or a ``sensitivity`` of
                the wrong length (not available for modules).
        """
        from hamnet.compress.pruning.module_calibration import rspar_module_ratios

        options = self.options
        assert isinstance(options, RsparOptions)
        ratios, _history = rspar_module_ratios(
            probe,
            ratio,
            target=options.target,
            recovery=options.recovery,
            episodes=options.episodes,
            sensitivity=options.sensitivity,
            seed=seed,
            max_layer_ratio=options.max_layer_ratio,
            penalty=options.penalty,
            tolerance=options.tolerance,
        )
        return ratios


PLUGIN = Rspar
