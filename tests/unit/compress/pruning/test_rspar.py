"""Tests of the R-SPAR per-layer budget allocation (PPO agent and budget projection)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import small_hamnet

from hamnet.compress.pruning.rspar import RSPARAgent, project_to_budget, rspar_layer_ratios
from hamnet.core.config import DataSection
from hamnet.core.errors import ConfigError
from hamnet.core.hardware import load_profile
from hamnet.models.hamnet import HAMNet
from hamnet.training.data import Dataset, load_dataset

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return load_dataset(DataSection())


@pytest.fixture(scope="module")
def trained(dataset: Dataset) -> HAMNet:
    return small_hamnet(dataset).eval()


def _state(num_layers: int) -> np.ndarray:
    return np.stack(
        [np.linspace(0, 1, num_layers), np.ones(num_layers), np.linspace(1, 0, num_layers)],
        axis=1,
    )


def test_agent_action_shape_and_bounds() -> None:
    agent = RSPARAgent(4, seed=1, max_ratio=0.8)
    state = _state(4)
    for deterministic in (False, True):
        action, log_prob = agent.select_action(state, deterministic=deterministic)
        assert action.shape == (4,)
        assert np.all(action >= 0) and np.all(action <= 0.8)
        assert np.isfinite(log_prob)
    again, _ = RSPARAgent(4, seed=1, max_ratio=0.8).select_action(state)
    first, _ = RSPARAgent(4, seed=1, max_ratio=0.8).select_action(state)
    np.testing.assert_allclose(first, again)
    with pytest.raises(ConfigError):
        agent.select_action(np.zeros(5))


def test_ppo_learns_to_spare_penalized_layer() -> None:
    agent = RSPARAgent(3, lr=3e-3, seed=0)
    state = _state(3)
    results = []
    for _ in range(30):
        for _ in range(16):
            action, log_prob = agent.select_action(state)
            agent.store(state, action, log_prob, float(action[1:].mean() - 2.0 * action[0]))
        results.append(agent.update_policy(batch_size=16, epochs=4))
    assert all(np.isfinite(r["loss_after"]) for r in results)
    assert np.mean([r["loss_after"] < r["loss_before"] for r in results]) > 0.8
    mean, _ = agent.select_action(state, deterministic=True)
    assert mean[0] < 0.5 * min(mean[1:])
    with pytest.raises(ConfigError):
        agent.update_policy()


@pytest.mark.parametrize(
    ("ratios", "sizes", "budget", "max_ratio"),
    [
        ([0.1, 0.5, 0.9], [1, 1, 1], 0.5, 0.9),
        ([0.0, 0.0, 0.0], [10, 1, 5], 0.3, 0.9),
        ([0.9, 0.9, 0.0], [1, 2, 3], 0.2, 0.9),
        ([5.0, -3.0, 0.2, 0.4], [4, 1, 1, 2], 0.6, 0.7),
        ([0.3, 0.3], [1, 3], 0.7, 0.7),
    ],
)
def test_project_to_budget(
    ratios: list[float], sizes: list[float], budget: float, max_ratio: float
) -> None:
    out = project_to_budget(ratios, sizes, budget, max_ratio)
    w = np.asarray(sizes, dtype=float)
    assert out.shape == (len(ratios),)
    assert np.all(out >= 0) and np.all(out <= max_ratio)
    assert float(np.dot(out, w) / w.sum()) == pytest.approx(budget, abs=1e-9)


def test_project_to_budget_bad_inputs() -> None:
    with pytest.raises(ConfigError):
        project_to_budget([0.1], [1, 2], 0.5, 0.9)
    with pytest.raises(ConfigError):
        project_to_budget([0.1, 0.2], [1, 2], 0.95, 0.9)
    with pytest.raises(ConfigError):
        project_to_budget([0.1, 0.2], [0, 2], 0.5, 0.9)


@pytest.mark.parametrize("target", ["flops", "latency"])
def test_rspar_layer_ratios(target: str, trained: HAMNet, dataset: Dataset) -> None:
    profile = load_profile("x86-avx2") if target == "latency" else None
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    ratios, history = rspar_layer_ratios(
        trained,
        dataset,
        0.5,
        target=target,  # type: ignore[arg-type]
        profile=profile,
        episodes=3,
        seed=0,
    )
    assert len(ratios) == 2 and all(0.0 <= r <= 0.9 for r in ratios)
    sizes = np.array([sum(p.numel() for p in b.parameters()) for b in trained.blocks], float)
    assert float(np.dot(ratios, sizes) / sizes.sum()) == pytest.approx(0.5, abs=1e-9)
    assert len(history) == 3
    assert history[0]["ratios"] == pytest.approx([0.5, 0.5])
    key = "flops" if target == "flops" else "latency_ms"
    for h in history:
        assert h[key] > 0 and 0.0 <= h["accuracy"] <= 1.0 and np.isfinite(h["reward"])
    assert max(h["reward"] for h in history) == pytest.approx(
        next(h["reward"] for h in history if h["ratios"] == ratios)
    )
    for k, v in trained.state_dict().items():
        assert torch.equal(v, before[k])


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5])
def test_rspar_bad_ratio(ratio: float, trained: HAMNet, dataset: Dataset) -> None:
    with pytest.raises(ConfigError):
        rspar_layer_ratios(trained, dataset, ratio, episodes=1)


def test_rspar_latency_needs_profile(trained: HAMNet, dataset: Dataset) -> None:
    with pytest.raises(ConfigError, match="profile"):
        rspar_layer_ratios(trained, dataset, 0.5, target="latency", episodes=1)


def test_rspar_bad_sensitivity(trained: HAMNet, dataset: Dataset) -> None:
    with pytest.raises(ConfigError):
        rspar_layer_ratios(trained, dataset, 0.5, sensitivity=[1.0], episodes=1)


def test_episode_reward_penalizes_only_the_overrun_beyond_tolerance() -> None:
    from hamnet.compress.pruning.rspar import episode_reward

    assert episode_reward(0.9, 100.0, 100.0, penalty=1.0, tolerance=0.0) == 0.9
    assert episode_reward(0.9, 90.0, 100.0, penalty=1.0, tolerance=0.0) == 0.9
    assert episode_reward(0.9, 102.0, 100.0, penalty=1.0, tolerance=0.03) == 0.9
    assert episode_reward(0.9, 120.0, 100.0, penalty=2.0, tolerance=0.0) == pytest.approx(0.5)


def test_best_episode_prefers_reward_then_the_cheaper_cost() -> None:
    from hamnet.compress.pruning.rspar import best_episode

    history = [
        {"episode": 0, "reward": 0.8, "cost": 10.0},
        {"episode": 1, "reward": 0.9, "cost": 12.0},
        {"episode": 2, "reward": 0.9, "cost": 11.0},
    ]
    assert best_episode(history)["episode"] == 2
    with pytest.raises(ConfigError, match="at least one"):
        best_episode([])
