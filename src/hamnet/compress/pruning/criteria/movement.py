"""The ``movement`` criterion: weights moving away from zero in a short fine-tune.

The scoring lives in :mod:`hamnet.compress.pruning.movement`, imported when the
importance is built.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from hamnet.compress.pruning.criteria.base import Criterion


class MovementOptions(BaseModel):
    """Settings of the probe fine-tune that the scores are accumulated on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int = Field(50, ge=1, description="Optimizer steps of the probe fine-tune.")
    learning_rate: float = Field(1e-4, gt=0.0, description="AdamW learning rate.")
    batch_size: int = Field(64, ge=1, description="Samples per step.")


class Movement(Criterion):
    """Movement scores from a probe fine-tune; the model's weights are restored after.

    Scoring on a probe fine-tune, then pruning the original weights, lets a pruning
    plan replay on the original model like every other criterion's.
    """

    name = "movement"
    Options = MovementOptions
    needs_data = True
    supports_hf = False
    supports_modules = False

    def build(self, model: Any = None, dataset: Any = None, seed: int = 0) -> Any:
        """Fine-tune ``model`` briefly, score it, restore it; return a ``MovementImportance``."""
        self._require_data(model, dataset)
        from hamnet.compress.pruning.movement import make_movement_importance

        options = self.options
        assert isinstance(options, MovementOptions)
        original = {k: v.detach().clone() for k, v in model.state_dict().items()}
        importance = make_movement_importance(
            model,
            dataset,
            steps=options.steps,
            seed=seed,
            learning_rate=options.learning_rate,
            batch_size=options.batch_size,
        )
        model.load_state_dict(original)
        return importance


PLUGIN = Movement
