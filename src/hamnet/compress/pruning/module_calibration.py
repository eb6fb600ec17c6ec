"""Calibration losses and the allocation probe of ``prune_module`` (any torch module).

:class:`ModuleCalibration` computes the losses the data-dependent criteria and
allocations read; :class:`ModuleProbe` prunes copies of a module to per-group ratios
and measures them, which is what the ``sensitivity`` and ``rspar`` allocations need
(:func:`rspar_module_ratios` runs R-SPAR's agent over the groups).
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hamnet.compress.pruning.module_groups import (
    FoundGroup,
    find_groups,
    prune_groups,
    removal_count,
)
from hamnet.core.errors import ConfigError, DataError
from hamnet.models.replay import ModuleInputs, build_dependency_graph, call_module, primary_output

Batch = tuple[Any, Any]
"""A calibration batch ``(inputs, targets_or_None)``."""


class ModuleCalibration:
    """Calibration batches ``(inputs, targets_or_None)`` and the losses read on them.

    The default loss is cross-entropy for integer targets, MSE to float targets, and MSE
    to the unpruned model's outputs (computed once, on the fly) when targets are None.
    Gradient criteria need a loss whose gradient is not zero at the unpruned model:
    :meth:`fisher_losses` (read by the K-FAC fit) draws the targets from the model's own
    predictive distribution (a class from the softmax for integer targets, the output
    plus unit Gaussian noise otherwise), which makes ``E[g gᵀ]`` the true Fisher;
    :meth:`accumulate_gradients` (read by Taylor) uses the data's targets where there
    are some. A user ``loss_fn`` is used as given, with the unpruned outputs standing in
    for missing targets.

    Args:
        reference: The unpruned model (not modified).
        batches: The calibration batches.
        loss_fn: ``loss_fn(outputs, targets) -> scalar``; None for the default.

    Raises:
        DataError: If ``batches`` is empty or a batch is not a pair.
    """

    def __init__(
        self,
        reference: nn.Module,
        batches: Sequence[Batch],
        loss_fn: Callable[[torch.Tensor, Any], torch.Tensor] | None = None,
    ) -> None:
        batches = list(batches)
        if not batches:
            raise DataError(
                "calibration must hold at least one (inputs, targets) batch, but got none"
            )
        for i, batch in enumerate(batches):
            if not isinstance(batch, tuple | list) or len(batch) != 2:
                raise DataError(
                    f"calibration batch {i} must be a pair (inputs, targets_or_None), but got "
                    f"{type(batch).__name__}"
                )
        self.reference = reference
        self.batches = [(b[0], b[1]) for b in batches]
        self.loss_fn = loss_fn
        self._references: list[torch.Tensor] | None = None

    def references(self) -> list[torch.Tensor]:
        """The unpruned model's outputs on every batch (computed once)."""
        if self._references is None:
            was_training = self.reference.training
            self.reference.eval()
            with torch.no_grad():
                self._references = [
                    primary_output(call_module(self.reference, x)).detach() for x, _ in self.batches
                ]
            self.reference.train(was_training)
        return self._references

    def _loss(self, output: torch.Tensor, target: Any, reference: torch.Tensor) -> torch.Tensor:
        if self.loss_fn is not None:
            return self.loss_fn(output, reference if target is None else target)
        if target is None:
            return F.mse_loss(output, reference)
        target = torch.as_tensor(target)
        if not target.is_floating_point():
            return F.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1).long())
        return F.mse_loss(output, target.to(output.dtype))

    def loss(self, model: nn.Module) -> float:
        """Mean calibration loss of ``model`` (eval mode, no gradients)."""
        refs = self.references()
        was_training = model.training
        model.eval()
        total = 0.0
        with torch.no_grad():
            for (x, y), ref in zip(self.batches, refs, strict=True):
                total += float(self._loss(primary_output(call_module(model, x)), y, ref))
        model.train(was_training)
        return total / len(self.batches)

    def fisher_losses(self, seed: int = 0) -> list[Callable[[nn.Module], torch.Tensor]]:
        """Per batch, a callable giving the batch-mean loss with model-drawn targets."""
        refs = self.references()
        generator = torch.Generator().manual_seed(seed)

        def make(x: Any, y: Any, ref: torch.Tensor) -> Callable[[nn.Module], torch.Tensor]:
            def loss_of(model: nn.Module) -> torch.Tensor:
                output = primary_output(call_module(model, x))
                if self.loss_fn is not None:
                    return self._loss(output, y, ref)
                if y is not None and not torch.as_tensor(y).is_floating_point():
                    logits = output.reshape(-1, output.shape[-1])
                    probs = torch.softmax(logits.detach().double(), dim=-1)
                    labels = torch.multinomial(probs, 1, generator=generator).reshape(-1)
                    return F.cross_entropy(logits, labels)
                noise = torch.randn(output.shape, generator=generator, dtype=output.dtype)
                return 0.5 * (output - (output.detach() + noise)).square().sum() / output.shape[0]

            return loss_of

        return [make(x, y, ref) for (x, y), ref in zip(self.batches, refs, strict=True)]

    def accumulate_gradients(self, model: nn.Module, seed: int = 0) -> None:
        """Sum the calibration-loss gradients of all batches into ``param.grad``.

        Batches with targets (or with a user ``loss_fn``) use the loss as given (the
        empirical gradient that first-order Taylor reads); batches without targets use
        :meth:`fisher_losses`' model-drawn targets, since the gradient of the MSE to the
        unpruned outputs is zero at the unpruned model.
        """
        refs = self.references()
        sampled = self.fisher_losses(seed)
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            for (x, y), ref, fisher in zip(self.batches, refs, sampled, strict=True):
                if y is None and self.loss_fn is None:
                    loss = fisher(model)
                else:
                    loss = self._loss(primary_output(call_module(model, x)), y, ref)
                loss.backward()


class ModuleProbe:
    """Prunes copies of a module to per-group ratios and measures them (for allocations).

    Attributes:
        names: Group names, in order.
        sizes: Parameters per group (positive floats).
        base_loss: Calibration loss of the unpruned model.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: ModuleInputs,
        groups: Sequence[FoundGroup],
        scores: Sequence[torch.Tensor],
        calibration: ModuleCalibration,
        keep: Sequence[str],
    ) -> None:
        self.model = model
        self.example_inputs = example_inputs
        self.groups = [g.info for g in groups]
        self.names = [g.name for g in self.groups]
        self.sizes = np.array([max(g.params, 1) for g in self.groups], dtype=np.float64)
        self.scores = list(scores)
        self.calibration = calibration
        self.keep = list(keep)
        self.base_loss = calibration.loss(model)
        self._last: tuple[tuple[float, ...], nn.Module] | None = None

    def pruned(self, ratios: Sequence[float]) -> nn.Module:
        """A copy of the model with group ``i`` losing ``ratios[i]`` of its units."""
        work = copy.deepcopy(self.model).eval()
        graph = build_dependency_graph(work, self.example_inputs)
        found = {g.info.name: g for g in find_groups(work, graph, self.keep)[0]}
        groups = [found[name] for name in self.names]
        counts = [removal_count(g, float(r)) for g, r in zip(self.groups, ratios, strict=True)]
        prune_groups(graph, groups, self.scores, counts)
        return work

    def _cached(self, ratios: Sequence[float]) -> nn.Module:
        """:meth:`pruned`, reusing the last copy when asked for the same ratios again."""
        key = tuple(float(r) for r in ratios)
        if self._last is None or self._last[0] != key:
            self._last = (key, self.pruned(ratios))
        return self._last[1]

    def loss(self, ratios: Sequence[float]) -> float:
        """Calibration loss of the model pruned to ``ratios``."""
        return self.calibration.loss(self._cached(ratios))

    def flops(self, ratios: Sequence[float]) -> float:
        """Multiply-accumulates of the model pruned to ``ratios`` (torch-pruning's counter)."""
        import torch_pruning as tp

        pruned = self._cached(ratios)
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):  # it prints warnings
            ops, _ = tp.utils.count_ops_and_params(pruned, self.example_inputs)
        return float(ops)


def rspar_module_ratios(
    probe: ModuleProbe,
    ratio: float,
    *,
    target: str = "flops",
    recovery: Any = None,
    episodes: int = 12,
    sensitivity: Sequence[float] | None = None,
    seed: int = 0,
    max_layer_ratio: float = 0.9,
    penalty: float = 1.0,
    tolerance: float | None = None,
) -> tuple[list[float], list[dict[str, Any]]]:
    """R-SPAR's PPO agent over the prunable groups of ANY module.

    Episode 0 is the uniform allocation. Each episode projects the agent's proposal onto
    the budget (size-weighted mean ``ratio``), prunes a copy, and scores
    ``-loss / uniform_loss - penalty * max(0, flops / uniform_flops - 1 - tolerance)``
    (calibration loss, no recovery training).

    Returns:
        The best allocation and one record per episode.

    Raises:
        ConfigError: If a setting is out of range or not available for modules.
    """
    from hamnet.compress.pruning.rspar import (
        RSPARAgent,
        best_episode,
        episode_reward,
        project_to_budget,
    )

    count = len(probe.sizes)
    if target != "flops":
        raise ConfigError(
            f"R-SPAR on torch modules must target 'flops', but got {target!r} (latency is "
            "HAMNet-only)"
        )
    if recovery is not None:
        raise ConfigError(
            "R-SPAR on torch modules must run without recovery training, but got a recovery "
            "config (modules are scored by calibration loss)"
        )
    if not 0.0 < ratio <= max_layer_ratio < 1.0 or episodes < 1 or penalty < 0:
        raise ConfigError(
            f"R-SPAR needs 0 < ratio <= max_layer_ratio < 1, episodes >= 1 and penalty >= 0, "
            f"but got ratio={ratio}, max_layer_ratio={max_layer_ratio}, episodes={episodes}, "
            f"penalty={penalty}"
        )
    if sensitivity is not None and len(sensitivity) != count:
        raise ConfigError(
            f"sensitivity must hold one number per prunable group ({count}), but got "
            f"{len(sensitivity)}"
        )
    tolerance = 0.0 if tolerance is None else tolerance
    if sensitivity is None:  # share of each group's score mass the uniform ratio removes
        sens = []
        for group, scores in zip(probe.groups, probe.scores, strict=True):
            gone = torch.sort(scores.abs()).values[: removal_count(group, ratio)].sum()
            sens.append(float(gone) / max(float(scores.abs().sum()), 1e-12))
    else:
        sens = [float(s) for s in sensitivity]
    sens_arr = np.asarray(sens, dtype=np.float64)
    state = np.stack(
        [
            np.arange(count) / max(1, count - 1),
            probe.sizes / probe.sizes.max(),
            sens_arr / sens_arr.max() if sens_arr.max() > 0 else np.zeros(count),
        ],
        axis=1,
    ).astype(np.float32)
    agent = RSPARAgent(count, lr=1e-3, seed=seed, max_ratio=max_layer_ratio)
    history: list[dict[str, Any]] = []
    reference = (1.0, 1.0)
    for episode in range(episodes):
        if episode == 0:
            raw = np.full(count, ratio)
            log_prob = agent.log_prob(state, raw)
        else:
            raw, log_prob = agent.select_action(state)
        ratios = project_to_budget(raw, probe.sizes, ratio, max_layer_ratio)
        loss, cost = probe.loss(list(ratios)), probe.flops(list(ratios))
        if episode == 0:
            reference = (max(loss, 1e-12), cost)
        reward = episode_reward(
            -loss / reference[0], cost, reference[1], penalty=penalty, tolerance=tolerance
        )
        agent.store(state, raw, log_prob, reward)
        history.append(
            {"episode": episode, "ratios": [float(r) for r in ratios], "reward": reward,
             "loss": loss, "cost": cost, "target_cost": reference[1], "flops": cost}
        )  # fmt: skip
        if len(agent.buffer) >= 4 and episode < episodes - 1:
            agent.update_policy(batch_size=4, epochs=10)
    return list(best_episode(history)["ratios"]), history
