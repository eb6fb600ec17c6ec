"""Pruning plans: the kept indices of a pruned HAMNet, saved as JSON and replayed.

A :class:`PruningPlan` rebuilds the pruned model from its parent by slicing weights
(:func:`apply_plan`), so no pickled modules are needed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Self

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from hamnet.core.artifacts import atomic_write_text
from hamnet.core.errors import ConfigError, ModelLoadError
from hamnet.models.hamnet import HAMNet, HAMNetConfig

PLAN_FORMAT = "hamnet-pruning-plan/1"


class LayerPlan(BaseModel):
    """What one block keeps, as indices into the ORIGINAL model's heads and channels.

    Attributes:
        heads_kept: Kept attention heads, ascending.
        ffn_kept: Kept FFN channels (``fc1`` rows), ascending.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    heads_kept: list[int]
    ffn_kept: list[int]


class JsonPlan(BaseModel):
    """A plan saved as a small JSON file tagged with its format (``FORMAT``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    FORMAT: ClassVar[str]
    """The value of the file's ``format`` key."""

    def save(self, path: str | Path) -> Path:
        """Write the plan as JSON.

        Args:
            path: Destination file; missing parent folders are created.

        Returns:
            The path written.
        """
        payload = {"format": self.FORMAT, **self.model_dump(mode="json")}
        return atomic_write_text(path, json.dumps(payload, indent=2))

    @classmethod
    def load(cls, path: str | Path) -> Self:
        """Read a plan written by :meth:`save`.

        Raises:
            ModelLoadError: If the file is missing or unreadable.
            ConfigError: If the file is not JSON, or not a plan of this format.
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise ModelLoadError(
                f"expected a pruning plan JSON file at {path}, but could not read it: {err}"
            ) from None
        try:
            payload = json.loads(text)
        except ValueError as err:
            raise ConfigError(f"expected JSON in pruning plan {path}, but got: {err}") from None
        found = payload.pop("format", None) if isinstance(payload, dict) else None
        if found != cls.FORMAT:
            raise ConfigError(
                f"expected a {cls.FORMAT!r} JSON object in {path}, but got format {found!r}"
            )
        try:
            return cls.model_validate(payload)
        except ValidationError as err:
            raise ConfigError(f"{path} is not a valid {cls.__name__}: {err}") from None


class PruningPlan(JsonPlan):
    """A replayable description of a structurally pruned HAMNet.

    Attributes:
        base_config: ``HAMNetConfig.model_dump()`` of the model that was pruned.
        layers: What each block keeps.
        criterion: The importance criterion used.
        allocation: How the budget was spread over the layers.
        ratio: The fraction of heads and FFN channels that was to be removed.
    """

    FORMAT = PLAN_FORMAT

    base_config: dict[str, Any]
    layers: list[LayerPlan]
    criterion: str
    allocation: str
    ratio: float


def count_parameters(model: nn.Module) -> int:
    """Number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


def apply_plan(model: HAMNet, plan: PruningPlan) -> HAMNet:
    """Rebuild a pruned model from its original by slicing weights.

    Args:
        model: The model the plan was made from (same config).
        plan: The plan.

    Returns:
        A new :class:`HAMNet` whose config has ``layer_heads``/``layer_ffn`` set; the
        original is left unchanged.

    Raises:
        ConfigError: If the plan was made for another architecture or its indices do
            not fit the model.
    """
    base = model.config
    if base.model_dump() != plan.base_config:
        raise ConfigError(
            f"the pruning plan was made for a model with config {plan.base_config}, but got "
            f"a model with config {base.model_dump()}"
        )
    if len(plan.layers) != base.num_layers:
        raise ConfigError(
            f"the pruning plan must have one entry per layer ({base.num_layers}), but got "
            f"{len(plan.layers)}"
        )
    for i, layer in enumerate(plan.layers):
        _check_indices(f"layer {i} heads_kept", layer.heads_kept, base.heads_of(i))
        _check_indices(f"layer {i} ffn_kept", layer.ffn_kept, base.ffn_of(i))
    config = pruned_config(
        base, [layer.heads_kept for layer in plan.layers], [layer.ffn_kept for layer in plan.layers]
    )
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    head_dim = base.head_dim
    for i, layer in enumerate(plan.layers):
        rows = torch.tensor(
            [h * head_dim + j for h in layer.heads_kept for j in range(head_dim)], dtype=torch.long
        )
        channels = torch.tensor(layer.ffn_kept, dtype=torch.long)
        prefix = f"blocks.{i}."
        for name in ("q_proj", "k_proj", "v_proj"):
            for kind in ("weight", "bias"):
                key = f"{prefix}attn.{name}.{kind}"
                state[key] = state[key][rows].clone()
        key = f"{prefix}attn.out_proj.weight"
        state[key] = state[key][:, rows].clone()
        for kind in ("weight", "bias"):
            key = f"{prefix}ffn.fc1.{kind}"
            state[key] = state[key][channels].clone()
        key = f"{prefix}ffn.fc2.weight"
        state[key] = state[key][:, channels].clone()
    pruned = HAMNet(config)
    pruned.load_state_dict(state)
    device = next(model.parameters()).device
    pruned.to(device)
    pruned.train(model.training)
    return pruned


def pruned_config(
    base: HAMNetConfig, kept_heads: list[list[int]], kept_ffn: list[list[int]]
) -> HAMNetConfig:
    """``base`` with ``layer_heads``/``layer_ffn`` set to the sizes of the kept lists."""
    values = base.model_dump()
    values["layer_heads"] = [len(h) for h in kept_heads]
    values["layer_ffn"] = [len(c) for c in kept_ffn]
    return HAMNetConfig.model_validate(values)


def _check_indices(name: str, indices: list[int], size: int) -> None:
    if not indices or indices != sorted(set(indices)) or indices[0] < 0 or indices[-1] >= size:
        raise ConfigError(
            f"{name} must be ascending, unique, non-empty indices in [0, {size}), but got {indices}"
        )
