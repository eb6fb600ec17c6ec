"""R-SPAR: a PPO agent that chooses per-layer pruning ratios for a fixed budget.

Seed 003's R-SPAR, reduced to what a small HAMNet needs. Each episode is a one-step
bandit: the agent reads per-layer features (position, size, sensitivity), proposes a
removal fraction per layer, :func:`project_to_budget` shifts the proposal so that the
size-weighted mean equals the budget (the agent learns WHERE to prune, the projection
fixes HOW MUCH), the model is pruned by L1 magnitude and briefly recovered, and the
reward is validation accuracy minus a penalty when the cost (FLOPs or measured ONNX
Runtime latency) exceeds the uniform allocation's by more than a tolerance.

Measured latency is compared, not just read: sub-millisecond batch-1 timings drift by
several percent while a search runs, so each episode's model is timed in alternation
with the uniform allocation's (the reference) and its cost is the ratio of the two
medians times the reference's latency. A fixed penalty on raw timings would otherwise
reward whichever allocation happened to be timed during a quiet moment.
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.distributions import Beta

from hamnet.compress.pruning.plans import LayerPlan, PruningPlan, apply_plan
from hamnet.core.config import TrainStageConfig
from hamnet.core.errors import ConfigError
from hamnet.core.hardware import HardwareProfile
from hamnet.models.hamnet import HAMNet, HAMNetBlock, count_flops
from hamnet.training.data import Dataset
from hamnet.training.trainer import evaluate_accuracy, train_model

_EPS = 1e-6
_UPDATE_EVERY = 4
_LATENCY_WARMUP = 5
_LATENCY_REPEATS = 30
_LATENCY_ROUNDS = 3


def project_to_budget(
    ratios: np.ndarray | list[float],
    sizes: np.ndarray | list[float],
    budget: float,
    max_ratio: float,
) -> np.ndarray:
    """Shift per-layer ratios so their size-weighted mean is exactly ``budget``.

    Solves ``sum(s_i * clip(r_i + t, 0, max_ratio)) / sum(s_i) = budget`` for the shift
    ``t`` (the size-weighted Euclidean projection onto the budget within the box).

    Args:
        ratios: Proposed removal fraction per layer.
        sizes: Weight of each layer (e.g. its parameter count), all positive.
        budget: Target size-weighted mean ratio, in ``[0, max_ratio]``.
        max_ratio: Largest fraction one layer may lose, in ``(0, 1]``.

    Returns:
        The projected ratios, each in ``[0, max_ratio]``.

    Raises:
        ConfigError: If the shapes differ, a size is not positive, or the budget cannot
            be met within ``[0, max_ratio]``.
    """
    r = np.asarray(ratios, dtype=np.float64).reshape(-1)
    s = np.asarray(sizes, dtype=np.float64).reshape(-1)
    if r.shape != s.shape or r.size == 0:
        raise ConfigError(
            f"expected one size per ratio (non-empty), but got {r.size} ratios and {s.size} sizes"
        )
    if not np.all(np.isfinite(r)) or not np.all(s > 0):
        raise ConfigError(f"expected finite ratios and positive sizes, but got {r} and {s}")
    if not 0.0 < max_ratio <= 1.0:
        raise ConfigError(f"max_ratio must be in (0, 1], but got {max_ratio}")
    if not 0.0 <= budget <= max_ratio:
        raise ConfigError(f"budget must be in [0, max_ratio={max_ratio}], but got {budget}")
    w = s / s.sum()

    def spent(t: float) -> float:
        return float(np.dot(w, np.clip(r + t, 0.0, max_ratio)))

    lo, hi = -float(r.max()) - 1.0, max_ratio - float(r.min()) + 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if spent(mid) < budget:
            lo = mid
        else:
            hi = mid
    out = np.clip(r + 0.5 * (lo + hi), 0.0, max_ratio)
    # Remove the last rounding error on the layers strictly inside the box.
    free = (out > 0.0) & (out < max_ratio)
    if free.any():
        out[free] += (budget - float(np.dot(w, out))) / float(w[free].sum())
        out = np.clip(out, 0.0, max_ratio)
    return out


class _PolicyNet(nn.Module):
    """Shared per-layer actor (Beta parameters) and a pooled critic."""

    def __init__(self, feature_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(feature_dim, hidden_dim),
            nn.Tanh(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.Tanh(),
        )
        # Each layer also sees the mean embedding of all layers (its context).
        self.actor = nn.Linear(2 * hidden_dim, 2)
        self.critic = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.Tanh())
        self.value_out = nn.Linear(hidden_dim, 1)
        nn.init.zeros_(self.actor.weight)
        nn.init.zeros_(self.actor.bias)

    def forward(self, state: torch.Tensor) -> tuple[Beta, torch.Tensor]:
        """Map ``[batch, layers, features]`` to a Beta per layer and a value per batch."""
        h = self.encoder(state)
        context = h.mean(dim=1, keepdim=True).expand_as(h)
        params = nn.functional.softplus(self.actor(torch.cat([h, context], dim=-1))) + 1.0
        value = self.value_out(self.critic(h.mean(dim=1))).squeeze(-1)
        return Beta(params[..., 0], params[..., 1]), value


@dataclass
class _Transition:
    state: np.ndarray
    action: np.ndarray
    log_prob: float
    reward: float


class RSPARAgent:
    """PPO actor-critic proposing a removal fraction for every layer.

    The policy runs the same small network on each layer's features (plus the mean over
    layers as context) and outputs a Beta distribution per layer, scaled to
    ``[0, max_ratio]``. Episodes are one-step bandits, so the advantage is
    ``reward - value`` and ``gamma`` only documents that (it is kept for the seed's API).

    Args:
        num_layers: Layers to allocate ratios for.
        layer_feature_dim: Features per layer in the state.
        hidden_dim: Width of the hidden layers.
        lr: Adam learning rate.
        gamma: Discount factor (unused by one-step episodes).
        clip: PPO clipping range.
        seed: Seeds the network weights and the action sampling.
        max_ratio: Largest fraction an action may give one layer, in ``(0, 1]``.

    Raises:
        ConfigError: If a setting is out of range.
    """

    def __init__(
        self,
        num_layers: int,
        layer_feature_dim: int = 3,
        hidden_dim: int = 64,
        lr: float = 3e-4,
        gamma: float = 0.99,
        clip: float = 0.2,
        seed: int = 0,
        max_ratio: float = 1.0,
    ) -> None:
        for name, value in (
            ("num_layers", num_layers),
            ("layer_feature_dim", layer_feature_dim),
            ("hidden_dim", hidden_dim),
        ):
            if value < 1:
                raise ConfigError(f"{name} must be at least 1, but got {value}")
        if lr <= 0 or not 0 < clip < 1 or not 0 <= gamma <= 1:
            raise ConfigError(
                f"expected lr > 0, clip in (0, 1) and gamma in [0, 1], but got lr={lr}, "
                f"clip={clip}, gamma={gamma}"
            )
        if not 0.0 < max_ratio <= 1.0:
            raise ConfigError(f"max_ratio must be in (0, 1], but got {max_ratio}")
        self.num_layers = num_layers
        self.feature_dim = layer_feature_dim
        self.gamma = gamma
        self.clip = clip
        self.max_ratio = max_ratio
        self._seed = seed
        self._draws = 0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = _PolicyNet(layer_feature_dim, hidden_dim)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=lr)
        self.buffer: list[_Transition] = []

    def _state(self, state: np.ndarray | list[float]) -> torch.Tensor:
        arr = np.asarray(state, dtype=np.float32)
        if arr.size != self.num_layers * self.feature_dim:
            raise ConfigError(
                f"expected a state of {self.num_layers} layers x {self.feature_dim} features, "
                f"but got shape {arr.shape}"
            )
        return torch.from_numpy(arr.reshape(1, self.num_layers, self.feature_dim))

    def _unit(self, action: np.ndarray | list[float]) -> torch.Tensor:
        arr = np.asarray(action, dtype=np.float32).reshape(-1)
        if arr.size != self.num_layers:
            raise ConfigError(f"expected an action of {self.num_layers} ratios, but got {arr.size}")
        return torch.from_numpy(arr / self.max_ratio).clamp(_EPS, 1.0 - _EPS)

    def select_action(
        self, state: np.ndarray | list[float], deterministic: bool = False
    ) -> tuple[np.ndarray, float]:
        """Propose per-layer ratios.

        Args:
            state: ``num_layers * layer_feature_dim`` features (flat or per layer).
            deterministic: Return the policy's mean instead of a sample.

        Returns:
            The ratios (``float64 [num_layers]`` in ``[0, max_ratio]``) and their log
            probability under the current policy.
        """
        with torch.no_grad():
            dist, _ = self.net(self._state(state))
            if deterministic:
                unit = dist.mean[0]
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(self._seed * 1_000_003 + self._draws)
                    self._draws += 1
                    unit = dist.sample()[0]
            unit = unit.clamp(_EPS, 1.0 - _EPS)
            log_prob = float(dist.log_prob(unit.unsqueeze(0)).sum())
        return unit.double().numpy() * self.max_ratio, log_prob

    def log_prob(self, state: np.ndarray | list[float], action: np.ndarray | list[float]) -> float:
        """Log probability of ``action`` under the current policy."""
        with torch.no_grad():
            dist, _ = self.net(self._state(state))
            return float(dist.log_prob(self._unit(action).unsqueeze(0)).sum())

    def store(
        self,
        state: np.ndarray | list[float],
        action: np.ndarray | list[float],
        log_prob: float,
        reward: float,
    ) -> None:
        """Remember one episode for the next :meth:`update_policy`."""
        self._unit(action)
        self._state(state)
        self.buffer.append(
            _Transition(
                np.asarray(state, dtype=np.float32).reshape(-1),
                np.asarray(action, dtype=np.float32).reshape(-1),
                float(log_prob),
                float(reward),
            )
        )

    def _losses(
        self,
        states: torch.Tensor,
        units: torch.Tensor,
        old_log_probs: torch.Tensor,
        advantages: torch.Tensor,
        returns: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dist, values = self.net(states)
        ratio = torch.exp(dist.log_prob(units).sum(dim=-1) - old_log_probs)
        clipped = torch.clamp(ratio, 1.0 - self.clip, 1.0 + self.clip)
        policy_loss = -torch.min(ratio * advantages, clipped * advantages).mean()
        value_loss = nn.functional.mse_loss(values, returns)
        entropy = dist.entropy().sum(dim=-1).mean()
        return policy_loss, value_loss, entropy

    def update_policy(self, batch_size: int = 64, epochs: int = 10) -> dict[str, float]:
        """Run PPO on the stored episodes, then forget them.

        Args:
            batch_size: Minibatch size.
            epochs: Passes over the stored episodes.

        Returns:
            ``policy_loss``, ``value_loss`` and ``entropy`` (last minibatch),
            ``loss_before``/``loss_after`` (clipped surrogate + 0.5 value loss on all
            stored episodes, before and after the update) and ``samples``.

        Raises:
            ConfigError: If nothing is stored or a setting is not positive.
        """
        if batch_size < 1 or epochs < 1:
            raise ConfigError(
                f"batch_size and epochs must be at least 1, but got {batch_size} and {epochs}"
            )
        if not self.buffer:
            raise ConfigError("expected stored episodes to update on, but got none")
        n = len(self.buffer)
        states = torch.from_numpy(
            np.stack([t.state for t in self.buffer]).reshape(n, self.num_layers, -1)
        )
        units = torch.stack([self._unit(t.action) for t in self.buffer])
        old = torch.tensor([t.log_prob for t in self.buffer], dtype=torch.float32)
        returns = torch.tensor([t.reward for t in self.buffer], dtype=torch.float32)
        with torch.no_grad():
            _, values = self.net(states)
        advantages = returns - values
        if n > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)

        def total() -> float:
            with torch.no_grad():
                p, v, _ = self._losses(states, units, old, advantages, returns)
            return float(p + 0.5 * v)

        before = total()
        stats: dict[str, float] = {}
        order_rng = np.random.default_rng(self._seed + self._draws)
        for _ in range(epochs):
            order = torch.from_numpy(order_rng.permutation(n))
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                p, v, e = self._losses(
                    states[idx], units[idx], old[idx], advantages[idx], returns[idx]
                )
                loss = p + 0.5 * v - 0.01 * e
                self.optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(self.net.parameters(), 0.5)
                self.optimizer.step()
                stats = {"policy_loss": p.item(), "value_loss": v.item(), "entropy": e.item()}
        self.buffer.clear()
        return {**stats, "loss_before": before, "loss_after": total(), "samples": float(n)}


def rspar_layer_ratios(
    model: HAMNet,
    dataset: Dataset,
    ratio: float,
    *,
    target: Literal["flops", "latency"] = "flops",
    profile: HardwareProfile | None = None,
    episodes: int = 12,
    recovery: TrainStageConfig | None = None,
    sensitivity: list[float] | None = None,
    seed: int = 0,
    max_layer_ratio: float = 0.9,
    penalty: float = 1.0,
    tolerance: float | None = None,
) -> tuple[list[float], list[dict[str, Any]]]:
    """Choose per-layer removal fractions for a HAMNet with a PPO agent.

    Every allocation spends exactly ``ratio`` of the prunable parameters (size-weighted
    mean). Episode 0 is the uniform allocation, the baseline the agent must beat. An
    episode prunes a copy by L1 magnitude (heads and FFN channels of layer ``i`` lose
    the fraction ``r_i``), recovers it briefly, and scores
    ``val_accuracy - penalty * max(0, cost / uniform_cost - 1 - tolerance)``. Ties in
    reward go to the cheaper allocation.

    Args:
        model: The trained model; it is not modified.
        dataset: Training data for recovery, validation data for the reward.
        ratio: Budget: fraction of heads and FFN channels to remove, in ``(0, 1)``.
        target: ``"flops"`` (``count_flops``) or ``"latency"`` (ONNX Runtime p50 at
            batch 1 on ``profile``).
        profile: Hardware profile for latency; required when ``target="latency"``.
        episodes: Allocations tried, the uniform one included.
        recovery: Training after each pruning; default one epoch, no warmup.
        sensitivity: A non-negative score per layer (higher = more fragile); default
            the fraction of each layer's L1 mass the uniform allocation removes.
        seed: Seeds the agent and the recovery.
        max_layer_ratio: Largest fraction one layer may lose, in ``[ratio, 1)``.
        penalty: Reward lost per unit of relative cost overrun.
        tolerance: Relative overrun that costs nothing; default 0 for FLOPs (exact) and
            0.03 for latency (the run-to-run noise left after paired timing).

    Returns:
        The best allocation seen (highest reward) and one record per episode with
        ``episode``, ``ratios``, ``reward``, ``accuracy``, ``cost``, ``target_cost`` and
        ``flops`` or ``latency_ms``.

    Raises:
        ConfigError: If a setting is out of range, or latency is asked without a profile.
    """
    num_layers = model.config.num_layers
    tolerance = _check_settings(
        ratio, target, profile, episodes, max_layer_ratio, penalty, tolerance, sensitivity,
        num_layers,
    )  # fmt: skip
    dataset.check_input_size(model.config.input_size)
    recovery = recovery or TrainStageConfig(epochs=1, warmup_epochs=0)
    base = copy.deepcopy(model).cpu().eval()
    env = _Environment(base, dataset, recovery, target, profile, seed)
    sens = np.asarray(sensitivity if sensitivity is not None else env.l1_sensitivity(ratio))
    agent = RSPARAgent(num_layers, lr=1e-3, seed=seed, max_ratio=max_layer_ratio)
    search = _Search(
        agent, env, _observation(env.sizes, sens), ratio=ratio, max_layer_ratio=max_layer_ratio,
        penalty=penalty, tolerance=tolerance, seed=seed,
    )  # fmt: skip
    try:
        history = search.run(episodes)
    finally:
        env.close()
    return list(best_episode(history)["ratios"]), history


def episode_reward(
    accuracy: float, cost: float, target_cost: float, *, penalty: float, tolerance: float
) -> float:
    """R-SPAR's reward: accuracy minus ``penalty`` per unit of relative cost overrun.

    Args:
        accuracy: Validation accuracy of the pruned, recovered model.
        cost: Its cost (FLOPs or latency).
        target_cost: The uniform allocation's cost, the budget.
        penalty: Reward lost per unit of relative overrun beyond ``tolerance``.
        tolerance: Relative overrun that costs nothing.

    Returns:
        ``accuracy - penalty * max(0, cost / target_cost - 1 - tolerance)``.
    """
    return accuracy - penalty * max(0.0, cost / target_cost - 1.0 - tolerance)


def best_episode(history: list[dict[str, Any]]) -> dict[str, Any]:
    """Return the record with the highest reward; ties go to the cheaper allocation.

    Raises:
        ConfigError: If ``history`` is empty.
    """
    if not history:
        raise ConfigError("expected at least one R-SPAR episode, but got none")
    return max(history, key=lambda h: (h["reward"], -h["cost"]))


@dataclass
class _Search:
    """The episode loop: propose, project to the budget, prune and score, update the agent."""

    agent: RSPARAgent
    env: _Environment
    state: np.ndarray
    _: KW_ONLY
    ratio: float
    max_layer_ratio: float
    penalty: float
    tolerance: float
    seed: int
    target_cost: float = field(default=0.0, init=False)

    def run(self, episodes: int) -> list[dict[str, Any]]:
        """Run ``episodes`` episodes (the first one uniform); return one record each."""
        history: list[dict[str, Any]] = []
        for episode in range(episodes):
            history.append(self.episode(episode))
            if len(self.agent.buffer) >= _UPDATE_EVERY and episode < episodes - 1:
                self.agent.update_policy(batch_size=_UPDATE_EVERY, epochs=10)
        return history

    def episode(self, episode: int) -> dict[str, Any]:
        """Run one episode, store it for the agent and return its record."""
        if episode == 0:
            raw = np.full(self.agent.num_layers, self.ratio)
            log_prob = self.agent.log_prob(self.state, raw)
        else:
            raw, log_prob = self.agent.select_action(self.state)
        ratios = project_to_budget(raw, self.env.sizes, self.ratio, self.max_layer_ratio)
        accuracy, cost = self.env.evaluate(ratios, self.seed + episode)
        if episode == 0:
            self.target_cost = cost
        reward = episode_reward(
            accuracy, cost, self.target_cost, penalty=self.penalty, tolerance=self.tolerance
        )
        self.agent.store(self.state, raw, log_prob, reward)
        return {
            "episode": episode,
            "ratios": [float(r) for r in ratios],
            "reward": reward,
            "accuracy": accuracy,
            "cost": cost,
            "target_cost": self.target_cost,
            "flops" if self.env.target == "flops" else "latency_ms": cost,
        }


def _check_settings(
    ratio: float,
    target: str,
    profile: HardwareProfile | None,
    episodes: int,
    max_layer_ratio: float,
    penalty: float,
    tolerance: float | None,
    sensitivity: list[float] | None,
    num_layers: int,
) -> float:
    """Check R-SPAR's settings; return the tolerance (its default depends on the target)."""
    if not 0.0 < ratio < 1.0:
        raise ConfigError(f"R-SPAR ratio must be in (0, 1), but got {ratio}")
    if target not in ("flops", "latency"):
        raise ConfigError(f"R-SPAR target must be 'flops' or 'latency', but got {target!r}")
    if target == "latency" and profile is None:
        raise ConfigError("R-SPAR target 'latency' needs a hardware profile, but got none")
    if episodes < 1:
        raise ConfigError(f"R-SPAR episodes must be at least 1, but got {episodes}")
    if not ratio <= max_layer_ratio < 1.0:
        raise ConfigError(
            f"max_layer_ratio must be in [ratio={ratio}, 1), but got {max_layer_ratio}"
        )
    if penalty < 0:
        raise ConfigError(f"penalty must be non-negative, but got {penalty}")
    if tolerance is None:
        tolerance = 0.03 if target == "latency" else 0.0
    if not 0.0 <= tolerance < 1.0:
        raise ConfigError(f"tolerance must be in [0, 1), but got {tolerance}")
    if sensitivity is not None and (
        len(sensitivity) != num_layers or any(not np.isfinite(v) or v < 0 for v in sensitivity)
    ):
        raise ConfigError(
            f"sensitivity must hold {num_layers} non-negative numbers, but got {sensitivity}"
        )
    return tolerance


def _observation(sizes: np.ndarray, sens: np.ndarray) -> np.ndarray:
    """The agent's per-layer state: relative depth, relative size, relative sensitivity."""
    num_layers = len(sizes)
    return np.stack(
        [
            np.arange(num_layers) / max(1, num_layers - 1),
            sizes / sizes.max(),
            sens / sens.max() if sens.max() > 0 else np.zeros(num_layers),
        ],
        axis=1,
    ).astype(np.float32)


class _Environment:
    """Prunes a copy of the model to an allocation and measures accuracy and cost."""

    def __init__(
        self,
        model: HAMNet,
        dataset: Dataset,
        recovery: TrainStageConfig,
        target: str,
        profile: HardwareProfile | None,
        seed: int,
    ) -> None:
        self.model = model
        self.dataset = dataset
        self.recovery = recovery
        self.target = target
        self.profile = profile
        self.seed = seed
        self.head_scores, self.ffn_scores = _l1_scores(model)
        self.sizes = np.array(
            [sum(p.numel() for p in block.parameters()) for block in model.blocks],
            dtype=np.float64,
        )
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._reference: tuple[Any, float] | None = None  # (session, its first p50)

    def l1_sensitivity(self, ratio: float) -> list[float]:
        """Fraction of each layer's head and FFN L1 mass that ``ratio`` removes."""
        out = []
        for heads, ffn in zip(self.head_scores, self.ffn_scores, strict=True):
            lost = 0.0
            for scores in (heads, ffn):
                kept = _keep(scores, ratio)
                lost += 1.0 - float(scores[kept].sum()) / max(float(scores.sum()), 1e-12)
            out.append(lost / 2.0)
        return out

    def prune(self, ratios: np.ndarray) -> HAMNet:
        """The model with the top-L1 heads and FFN channels of each layer kept."""
        plan = PruningPlan(
            base_config=self.model.config.model_dump(mode="json"),
            layers=[
                LayerPlan(heads_kept=_keep(h, float(r)), ffn_kept=_keep(f, float(r)))
                for h, f, r in zip(self.head_scores, self.ffn_scores, ratios, strict=True)
            ],
            criterion="l1",
            allocation="rspar",
            ratio=float(np.dot(ratios, self.sizes) / self.sizes.sum()),
        )
        return apply_plan(self.model, plan)

    def evaluate(self, ratios: np.ndarray, seed: int) -> tuple[float, float]:
        """Prune, recover, and return validation accuracy and cost."""
        pruned = self.prune(ratios)
        train_model(pruned, self.dataset, self.recovery, seed=seed, progress=False)
        pruned.cpu().eval()
        accuracy = evaluate_accuracy(pruned, self.dataset.x_val, self.dataset.y_val)
        input_size = pruned.config.input_size
        if self.target == "flops":
            return accuracy, float(count_flops(pruned, input_size))
        return accuracy, self._latency(pruned)

    def _session(self, model: HAMNet) -> Any:
        from hamnet.backends.export import onnx_session
        from hamnet.core.artifacts import ArtifactStore

        assert self.profile is not None
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="rspar-")
        store = ArtifactStore(Path(self._tmp.name) / "store")
        session, _ = onnx_session(model, store, self.profile)
        return session

    def _p50(self, session: Any) -> float:
        from hamnet.evaluate.measure import latency_ms

        x_one = np.ascontiguousarray(self.dataset.x_val[:1], dtype=np.float32)
        p50, _ = latency_ms(session, x_one, warmup=_LATENCY_WARMUP, repeats=_LATENCY_REPEATS)
        return p50

    def _latency(self, model: HAMNet) -> float:
        """p50 latency, timed in alternation with the first model measured (the reference).

        The first call (episode 0, the uniform allocation) becomes the reference. Later
        calls return ``median(own) / median(reference) * reference p50`` over
        ``_LATENCY_ROUNDS`` alternating rounds, which cancels slow drift of the machine.
        """
        session = self._session(model)
        if self._reference is None:
            p50 = float(np.median([self._p50(session) for _ in range(_LATENCY_ROUNDS)]))
            self._reference = (session, p50)
            return p50
        reference, reference_p50 = self._reference
        own, ref = [], []
        for _ in range(_LATENCY_ROUNDS):
            ref.append(self._p50(reference))
            own.append(self._p50(session))
        del session
        return float(np.median(own) / np.median(ref) * reference_p50)

    def close(self) -> None:
        """Release the reference session and the temporary ONNX files."""
        self._reference = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def _l1_scores(model: HAMNet) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """L1 magnitude of every head (q/k/v rows, out_proj columns) and FFN channel."""
    head_dim = model.config.head_dim
    heads, ffn = [], []
    with torch.no_grad():
        for block in model.blocks:
            assert isinstance(block, HAMNetBlock)
            attn, mlp = block.attn, block.ffn
            rows = sum(
                p.weight.abs().sum(dim=1) + p.bias.abs()
                for p in (attn.q_proj, attn.k_proj, attn.v_proj)
            )
            rows = rows + attn.out_proj.weight.abs().sum(dim=0)
            heads.append(rows.view(-1, head_dim).sum(dim=1).double().numpy())
            channels = (
                mlp.fc1.weight.abs().sum(dim=1) + mlp.fc1.bias.abs() + mlp.fc2.weight.abs().sum(0)
            )
            ffn.append(channels.double().numpy())
    return heads, ffn


def _keep(scores: np.ndarray, ratio: float) -> list[int]:
    """Indices of the top-scoring units left after removing ``ratio`` (at least one)."""
    n = len(scores)
    keep = max(1, n - round(ratio * n))
    order = np.argsort(-scores, kind="stable")[:keep]
    return sorted(int(i) for i in order)
