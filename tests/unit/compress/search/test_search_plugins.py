"""Contract of every sampler and pruner plugin: found by the registry, built, used by Optuna."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import optuna
import pytest
from pydantic import ValidationError

from hamnet.compress.search.pruners.base import Pruner
from hamnet.compress.search.samplers.base import Sampler
from hamnet.compress.search.space import SearchSpace, search_space_from_dict, suggest
from hamnet.compress.search.strategies import make_pruner, make_sampler
from hamnet.core import registry
from hamnet.core.config import SearchStageConfig
from hamnet.core.errors import ConfigError

optuna.logging.set_verbosity(optuna.logging.WARNING)

TOY: dict[str, Any] = {
    "training": {
        "learning_rate": {"type": "float", "low": 0.001, "high": 0.009, "step": 0.002},
        "epochs": {"type": "int", "low": 1, "high": 4},
    },
}


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return search_space_from_dict(TOY, "toy.yaml")


def _objectives(space: SearchSpace, n_objectives: int) -> Any:
    def objective(trial: optuna.Trial) -> float | tuple[float, float]:
        params = suggest(trial, space)
        loss = 0.0
        for epoch in range(1, params["epochs"] + 1):
            loss = abs(params["learning_rate"] - 0.005) + 1.0 / epoch
            if n_objectives == 1:
                trial.report(loss, step=epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned()
        return (loss, float(params["epochs"])) if n_objectives == 2 else loss

    return objective


@pytest.mark.parametrize("name", registry.names("sampler"))
def test_sampler_plugin_contract(name: str, space: SearchSpace) -> None:
    plugin = registry.load("sampler", name)
    assert issubclass(plugin, Sampler)
    assert (plugin.kind, plugin.name) == ("sampler", name)
    assert plugin.parse_options({}) is not None
    with pytest.raises(ConfigError, match=f"options of sampler '{name}' are invalid"):
        plugin.parse_options({"no_such_option": 1})
    n_objectives = [1, 2] if plugin.multi_objective else [1]
    for n in n_objectives:
        sampler = make_sampler(name, space, seed=0, multi_objective=n > 1)
        assert isinstance(sampler, optuna.samplers.BaseSampler)
        study = optuna.create_study(directions=["minimize"] * n, sampler=sampler)
        study.optimize(_objectives(space, n), n_trials=3)
        assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3


@pytest.mark.parametrize("name", registry.names("pruner"))
def test_pruner_plugin_contract(name: str, space: SearchSpace) -> None:
    plugin = registry.load("pruner", name)
    assert issubclass(plugin, Pruner)
    assert (plugin.kind, plugin.name) == ("pruner", name)
    with pytest.raises(ConfigError, match=f"options of pruner '{name}' are invalid"):
        plugin.parse_options({"no_such_option": 1})
    pruner = make_pruner(name, space)
    assert isinstance(pruner, optuna.pruners.BasePruner)
    study = optuna.create_study(sampler=make_sampler("random", space, seed=0), pruner=pruner)
    study.optimize(_objectives(space, 1), n_trials=3)
    assert {t.state.name for t in study.trials} <= {"COMPLETE", "PRUNED"}
    assert len(study.trials) == 3
    if plugin.multi_objective:
        assert make_pruner(name, space, multi_objective=True) is not None
    else:
        with pytest.raises(ConfigError, match="cannot be used with several objectives"):
            make_pruner(name, space, multi_objective=True)


def test_listing_and_loading_plugins_imports_no_optuna() -> None:
    code = (
        "import sys; from hamnet.core import registry\n"
        "for kind in ('sampler', 'pruner'):\n"
        "    for name in registry.names(kind):\n"
        "        registry.load(kind, name).parse_options({})\n"
        "print(sorted({'optuna', 'torch', 'numpy', 'ray'} & set(sys.modules)))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("key", "value", "hint"),
    [("strategy", "tpee", "did you mean 'tpe'?"), ("pruner", "hyperbnd", "'hyperband'?")],
)
def test_config_names_are_checked_through_the_registry(key: str, value: str, hint: str) -> None:
    with pytest.raises(ValidationError, match=key) as info:
        SearchStageConfig.model_validate({key: value})
    assert hint in str(info.value)
    assert SearchStageConfig.model_validate({"strategy": "nsga2", "pruner": "median"})


def test_a_registered_sampler_is_accepted_by_the_config() -> None:
    registry.register("sampler", "my_sampler", "optuna.samplers:RandomSampler")
    try:
        assert SearchStageConfig(strategy="my_sampler").strategy == "my_sampler"
    finally:
        registry.unregister("sampler", "my_sampler")
