"""Search strategies: samplers and pruners by name, objective directions, hypervolume."""

from __future__ import annotations

import itertools
import subprocess
import sys
from typing import Any

import numpy as np
import optuna
import pytest

from hamnet.compress.search.samplers.base import Sampler
from hamnet.compress.search.space import SearchSpace, search_space_from_dict, suggest
from hamnet.compress.search.strategies import (
    directions,
    hypervolume,
    make_pruner,
    make_sampler,
)
from hamnet.core import registry
from hamnet.core.errors import ConfigError

optuna.logging.set_verbosity(optuna.logging.WARNING)

TOY: dict[str, Any] = {
    "architecture": {
        "num_layers": {"type": "int", "low": 1, "high": 3},
        "hidden_size": {"type": "categorical", "choices": [16, 32]},
        "num_heads": {"type": "categorical", "choices": [2, 4], "per_layer": True},
        "dropout_rate": {"type": "float", "low": 0.0, "high": 0.3, "step": 0.1},
    },
    "training": {
        "learning_rate": {"type": "float", "low": 0.001, "high": 0.009, "step": 0.002},
        "epochs": {"type": "int", "low": 1, "high": 9},
    },
    "evolution": {"population_size": 3, "mutation_rate": 0.2, "crossover_rate": 0.9},
}
# Fewer random start-up trials, so that six trials reach the model-based samplers.
FAST_START = {"tpe": {"n_startup_trials": 3}, "gp": {"n_startup_trials": 4}}


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return search_space_from_dict(TOY, "toy.yaml")


def _toy_objective(space: SearchSpace, n_objectives: int) -> Any:
    def objective(trial: optuna.trial.Trial) -> float | tuple[float, float]:
        params = suggest(trial, space)
        error = abs(params["learning_rate"] - 0.005) + params["dropout_rate"]
        size = params["hidden_size"] * params["num_layers"]
        return (error, float(size)) if n_objectives == 2 else error

    return objective


@pytest.mark.parametrize("multi_objective", [False, True], ids=["single", "multi"])
@pytest.mark.parametrize("name", registry.names("sampler"))
def test_every_sampler_runs_a_toy_study(
    name: str, multi_objective: bool, space: SearchSpace
) -> None:
    sampler = make_sampler(
        name, space, seed=0, multi_objective=multi_objective, **FAST_START.get(name, {})
    )
    n_objectives = 2 if multi_objective else 1
    study = optuna.create_study(directions=["minimize"] * n_objectives, sampler=sampler)
    study.optimize(_toy_objective(space, n_objectives), n_trials=6)
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE] * 6


def test_every_built_in_sampler_supports_several_objectives() -> None:
    assert registry.names("sampler") == ("gp", "grid", "nsga2", "random", "tpe")
    assert all(registry.load("sampler", name).multi_objective for name in registry.names("sampler"))


class SingleObjectiveSampler(Sampler):
    """A sampler added from outside hamnet that handles one objective only."""

    name = "cmaes"
    multi_objective = False

    def build(self, space: SearchSpace, *, seed: int | None, **options: Any) -> Any:
        return optuna.samplers.RandomSampler(seed=seed)


def test_single_objective_sampler_is_refused_for_several_objectives(space: SearchSpace) -> None:
    registry.register("sampler", "cmaes", f"{__name__}:SingleObjectiveSampler")
    try:
        assert make_sampler("cmaes", space, seed=0) is not None
        with pytest.raises(ConfigError, match="'cmaes' supports single-objective studies only"):
            make_sampler("cmaes", space, seed=0, multi_objective=True)
    finally:
        registry.unregister("sampler", "cmaes")


def test_unknown_names_and_options_are_config_errors(space: SearchSpace) -> None:
    with pytest.raises(ConfigError, match=r"sampler must be one of \['gp', 'grid', 'nsga2'"):
        make_sampler("bayes", space)
    with pytest.raises(ConfigError, match=r"pruner must be one of \['hyperband', 'median'"):
        make_pruner("asha", space)
    with pytest.raises(ConfigError, match="sampler 'random' rejects options"):
        make_sampler("random", space, n_startup_trials=3)


def test_nsga2_takes_the_evolution_settings(
    space: SearchSpace, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    def spy(**kwargs: Any) -> optuna.samplers.BaseSampler:
        seen.update(kwargs)
        return optuna.samplers.RandomSampler()

    monkeypatch.setattr(optuna.samplers, "NSGAIISampler", spy)
    make_sampler("nsga2", space, seed=3)
    assert seen["population_size"] == 3
    assert (seen["mutation_prob"], seen["crossover_prob"]) == (0.2, 0.9)
    assert isinstance(seen["crossover"], optuna.samplers.nsgaii.UniformCrossover)
    assert seen["seed"] == 3
    seen.clear()
    make_sampler("nsga2", search_space_from_dict({"training": TOY["training"]}))
    assert (seen["population_size"], seen["mutation_prob"], seen["crossover_prob"]) == (
        30,
        0.1,
        0.8,
    )


def test_hyperband_resource_is_the_epochs_of_the_space(
    space: SearchSpace, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    def spy(**kwargs: Any) -> optuna.pruners.BasePruner:
        seen.update(kwargs)
        return optuna.pruners.NopPruner()

    monkeypatch.setattr(optuna.pruners, "HyperbandPruner", spy)
    make_pruner("hyperband", space)
    assert seen == {"min_resource": 1, "max_resource": 9, "reduction_factor": 3}
    make_pruner("hyperband", search_space_from_dict({"architecture": TOY["architecture"]}))
    assert seen["max_resource"] == "auto"


@pytest.mark.parametrize("name", registry.names("pruner"))
def test_every_pruner_builds(name: str, space: SearchSpace) -> None:
    assert isinstance(make_pruner(name, space), optuna.pruners.BasePruner)


def test_hyperband_prunes_a_toy_objective(space: SearchSpace) -> None:
    study = optuna.create_study(
        sampler=make_sampler("random", space, seed=0), pruner=make_pruner("hyperband", space)
    )

    def objective(trial: optuna.trial.Trial) -> float:
        params = suggest(trial, space)
        loss = 1.0
        for epoch in range(1, 10):
            loss = params["dropout_rate"] + params["learning_rate"] + 1.0 / epoch
            trial.report(loss, step=epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return loss

    study.optimize(objective, n_trials=30)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.PRUNED) >= 3
    assert states.count(optuna.trial.TrialState.COMPLETE) >= 3


def test_pruners_are_refused_for_several_objectives(space: SearchSpace) -> None:
    for name in ("median", "successive_halving", "hyperband"):
        with pytest.raises(ConfigError, match="Optuna prunes single-objective studies only"):
            make_pruner(name, space, multi_objective=True)
    assert isinstance(make_pruner("none", space, multi_objective=True), optuna.pruners.NopPruner)
    # The reason: Optuna refuses intermediate values in multi-objective studies.
    trial = optuna.create_study(directions=["minimize", "minimize"]).ask()
    with pytest.raises(NotImplementedError):
        trial.report(1.0, step=1)


def test_directions_map_objective_names() -> None:
    assert directions(["accuracy", "latency_ms", "size_mb", "flops", "params"]) == [
        "maximize",
        "minimize",
        "minimize",
        "minimize",
        "minimize",
    ]
    with pytest.raises(ConfigError, match=r"objectives must be among .* but got \['acc'\]"):
        directions(["acc", "latency_ms"])
    with pytest.raises(ConfigError, match="at least one"):
        directions([])
    with pytest.raises(ConfigError, match="distinct"):
        directions(["accuracy", "accuracy"])


def test_hypervolume_hand_cases() -> None:
    minimize2 = ["minimize", "minimize"]
    staircase = [[1, 3], [2, 2], [3, 1]]
    assert hypervolume(staircase, minimize2, [4, 4]) == pytest.approx(6.0)
    # A dominated point and one beyond the reference point add nothing.
    assert hypervolume([*staircase, [3, 3], [5, 0]], minimize2, [4, 4]) == pytest.approx(6.0)
    # Accuracy is maximized: (0.9, 2 ms) and (0.8, 1 ms) against (0.0, 3 ms).
    accuracy_latency = [[0.9, 2.0], [0.8, 1.0]]
    assert hypervolume(accuracy_latency, ["maximize", "minimize"], [0.0, 3.0]) == pytest.approx(
        0.9 * 1.0 + 0.8 * 1.0
    )
    minimize3 = ["minimize"] * 3
    assert hypervolume([[1, 1, 1]], minimize3, [2, 2, 2]) == pytest.approx(1.0)
    # Boxes of 4 and 2 overlapping in a unit cube.
    assert hypervolume([[0, 0, 1], [1, 1, 0]], minimize3, [2, 2, 2]) == pytest.approx(5.0)
    assert hypervolume(np.empty((0, 2)), minimize2, [1, 1]) == 0.0
    assert hypervolume([[2, 2]], minimize2, [1, 1]) == 0.0
    directions_enum = [optuna.study.StudyDirection.MINIMIZE] * 2
    assert hypervolume(staircase, directions_enum, [4, 4]) == pytest.approx(6.0)


def _inclusion_exclusion(points: np.ndarray, ref: np.ndarray) -> float:
    total = 0.0
    for k in range(1, len(points) + 1):
        for subset in itertools.combinations(points, k):
            corner = np.max(subset, axis=0)
            total += (-1) ** (k + 1) * float(np.prod(np.clip(ref - corner, 0, None)))
    return total


@pytest.mark.parametrize("n_objectives", [2, 3, 4])
def test_hypervolume_matches_inclusion_exclusion(n_objectives: int) -> None:
    rng = np.random.default_rng(n_objectives)
    for _ in range(5):
        points = rng.uniform(0, 1, size=(7, n_objectives))
        ref = np.full(n_objectives, 1.1)
        expected = _inclusion_exclusion(points, ref)
        assert hypervolume(points, ["minimize"] * n_objectives, ref) == pytest.approx(expected)


def test_hypervolume_rejects_bad_input() -> None:
    with pytest.raises(ConfigError, match="shape"):
        hypervolume([[1, 2, 3]], ["minimize", "minimize"], [4, 4])
    with pytest.raises(ConfigError, match="'maximize' or 'minimize'"):
        hypervolume([[1, 2]], ["min", "minimize"], [4, 4])
    with pytest.raises(ConfigError, match="finite"):
        hypervolume([[1, float("nan")]], ["minimize", "minimize"], [4, 4])


def test_importing_the_search_package_stays_light() -> None:
    code = (
        "import sys, hamnet.compress.search;"
        "print(sorted({'optuna', 'torch', 'numpy', 'ray'} & set(sys.modules)))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr
