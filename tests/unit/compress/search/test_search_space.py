"""Search spaces: YAML validation, suggestions, and the mapping to HAMNet settings."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from hamnet.compress.search.space import (
    InfeasibleParams,
    SearchSpace,
    grid_values,
    load_search_space,
    search_space_from_dict,
    suggest,
    to_architecture,
    to_hamnet_section,
    to_train_config,
)
from hamnet.core.config import HAMNetSection, TrainStageConfig
from hamnet.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[4]
optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE: dict[str, Any] = {
    "architecture": {
        "num_layers": {"type": "int", "low": 1, "high": 3},
        "hidden_size": {"type": "categorical", "choices": [16, 32, 64]},
        "num_heads": {"type": "categorical", "choices": [2, 4], "per_layer": True},
        "ffn_ratio": {"type": "float", "low": 1.0, "high": 3.0, "step": 0.5},
    },
    "training": {
        "learning_rate": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True},
        "epochs": {"type": "int", "low": 2, "high": 10, "step": 2},
        "augment": {"type": "categorical", "choices": ["none", "mixup", "cutmix"]},
        "mixup_alpha": {
            "type": "float",
            "low": 0.1,
            "high": 0.5,
            "when": {"augment": ["mixup", "cutmix"]},
        },
    },
}


def _with(group: str, name: str, param: Any) -> dict[str, Any]:
    data = {g: dict(SPACE[g]) for g in ("architecture", "training")}
    data[group][name] = param
    return data


@pytest.mark.parametrize(
    "path", sorted((REPO / "search_spaces").glob("*.yaml")), ids=lambda p: p.name
)
def test_every_search_space_in_the_repo_loads(path: Path) -> None:
    space = load_search_space(path)
    assert space.architecture and space.training and space.evolution is not None
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    assert suggest(trial, space)


BAD_CASES: dict[str, tuple[dict[str, Any], str, str]] = {
    "unknown parameter": (
        _with("architecture", "hiden_size", {"type": "int", "low": 4, "high": 8}),
        "architecture.hiden_size",
        "unknown parameter; expected one of",
    ),
    "unknown key": (
        _with("training", "epochs", {"type": "int", "low": 1, "high": 9, "hgih": 3}),
        "training.epochs.hgih",
        "unknown key",
    ),
    "unknown top-level key": ({"architecure": {}}, "architecure", "unknown key"),
    "empty range": (
        _with("training", "epochs", {"type": "int", "low": 9, "high": 9}),
        "training.epochs",
        "empty range",
    ),
    "log with low <= 0": (
        _with("training", "weight_decay", {"type": "float", "low": 0.0, "high": 1, "log": True}),
        "training.weight_decay",
        "log scale needs low > 0",
    ),
    "log with step": (
        _with(
            "training",
            "weight_decay",
            {"type": "float", "low": 0.1, "high": 1, "step": 0.1, "log": True},
        ),
        "training.weight_decay",
        "cannot be combined with step",
    ),
    "step not dividing the range": (
        _with("training", "epochs", {"type": "int", "low": 1, "high": 10, "step": 4}),
        "training.epochs",
        "multiple of step",
    ),
    "float for an integer field": (
        _with("training", "epochs", {"type": "float", "low": 1, "high": 5}),
        "training.epochs.type",
        "whole numbers",
    ),
    "unknown parameter type": (
        _with("training", "epochs", {"type": "integer", "low": 1, "high": 5}),
        "training.epochs.type",
        "must be one of ['int', 'float', 'categorical']",
    ),
    "bound of the wrong type": (
        _with("training", "epochs", {"type": "int", "low": "one", "high": 5}),
        "training.epochs.low",
        "valid integer",
    ),
    "bound the model rejects": (
        _with("architecture", "dropout_rate", {"type": "float", "low": 0.0, "high": 1.0}),
        "architecture.dropout_rate.high",
        "less than 1",
    ),
    "choice the model rejects": (
        _with("architecture", "activation", {"type": "categorical", "choices": ["gelu", "tanh"]}),
        "architecture.activation.choices.1",
        "'tanh'",
    ),
    "choice of the wrong type": (
        _with("architecture", "hidden_size", {"type": "categorical", "choices": ["16", 32]}),
        "architecture.hidden_size.choices.0",
        "valid integer",
    ),
    "empty choices": (
        _with("architecture", "activation", {"type": "categorical", "choices": []}),
        "architecture.activation.choices",
        "at least 1 item",
    ),
    "when on an unknown parameter": (
        _with(
            "training",
            "label_smoothing",
            {"type": "float", "low": 0, "high": 0.2, "when": {"amp": "on"}},
        ),
        "training.label_smoothing.when.amp",
        "searched before 'label_smoothing'",
    ),
    "when on a later parameter": (
        {
            "training": {
                "mixup_alpha": {
                    "type": "float",
                    "low": 0.1,
                    "high": 1,
                    "when": {"augment": "mixup"},
                },
                "augment": {"type": "categorical", "choices": ["none", "mixup"]},
            }
        },
        "training.mixup_alpha.when.augment",
        "searched before 'mixup_alpha'",
    ),
    "when on a value never taken": (
        _with(
            "training",
            "mixup_alpha",
            {"type": "float", "low": 0.1, "high": 1, "when": {"augment": "mix"}},
        ),
        "training.mixup_alpha.when.augment",
        "can never take ['mix']",
    ),
    "per_layer without num_layers": (
        {"architecture": {"num_heads": {"type": "categorical", "choices": [2], "per_layer": True}}},
        "architecture.num_heads.per_layer",
        "needs architecture.num_layers",
    ),
    "per_layer on a gene HAMNet cannot vary": (
        _with(
            "architecture",
            "dropout_rate",
            {"type": "float", "low": 0, "high": 0.2, "per_layer": True},
        ),
        "architecture.dropout_rate.per_layer",
        "can vary per layer",
    ),
    "evolution out of range": (
        {**SPACE, "evolution": {"population_size": 1}},
        "evolution.population_size",
        "greater than or equal to 2",
    ),
    "no parameter at all": ({"evolution": {}}, "(top level)", "at least one parameter"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_search_space_names_file_and_key(case: str, tmp_path: Path) -> None:
    data, key, reason = BAD_CASES[case]
    path = tmp_path / "bad_space.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ConfigError) as info:
        load_search_space(path)
    message = str(info.value)
    assert str(path) in message
    assert f"  - {key}: " in message or f"  - {key}." in message, message
    assert reason in message


def test_yaml_problems_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_search_space(tmp_path / "missing.yaml")
    repeated = tmp_path / "repeated.yaml"
    repeated.write_text(
        "training:\n  epochs: {type: int, low: 1, high: 5}\n"
        "  epochs: {type: int, low: 1, high: 9}\n"
    )
    with pytest.raises(ConfigError, match=r"\['epochs'\] appear more than once"):
        load_search_space(repeated)
    with pytest.raises(ConfigError, match="must hold a mapping"):
        search_space_from_dict([1, 2], "list.yaml")


def test_yaml_exponent_without_dot_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "lr.yaml"
    path.write_text("training:\n  learning_rate: {type: float, low: 1e-4, high: 1e-2, log: true}\n")
    param = load_search_space(path).training["learning_rate"]
    assert (param.low, param.high) == (1e-4, 1e-2)  # type: ignore[union-attr]


def _sample(space: SearchSpace, n: int) -> list[tuple[dict[str, Any], optuna.trial.Trial]]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append((suggest(trial, space), trial))
        study.tell(trial, 0.0)
    return out


def test_suggest_honours_conditions_per_layer_log_and_step() -> None:
    space = search_space_from_dict(SPACE)
    samples = _sample(space, 40)
    for params, trial in samples:
        layers = params["num_layers"]
        heads = sorted(k for k in params if k.startswith("num_heads_"))
        assert heads == [f"num_heads_{i}" for i in range(layers)]
        assert "num_heads" not in params
        assert all(params[k] in (2, 4) for k in heads)
        assert ("mixup_alpha" in params) == (params["augment"] in ("mixup", "cutmix"))
        assert 1e-4 <= params["learning_rate"] <= 1e-2
        assert trial.distributions["learning_rate"].log  # type: ignore[attr-defined]
        assert params["ffn_ratio"] in (1.0, 1.5, 2.0, 2.5, 3.0)
        assert isinstance(params["epochs"], int) and params["epochs"] in (2, 4, 6, 8, 10)
    assert {p["num_layers"] for p, _ in samples} == {1, 2, 3}
    assert {"mixup_alpha" in p for p, _ in samples} == {True, False}


def test_grid_values_enumerate_each_parameter() -> None:
    grid = grid_values(search_space_from_dict(SPACE | {"training": {}}))
    assert grid == {
        "num_layers": [1, 2, 3],
        "hidden_size": [16, 32, 64],
        "num_heads_0": [2, 4],
        "num_heads_1": [2, 4],
        "num_heads_2": [2, 4],
        "ffn_ratio": [1.0, 1.5, 2.0, 2.5, 3.0],
    }
    with pytest.raises(ConfigError, match="grid search needs a step for float parameter"):
        grid_values(search_space_from_dict(SPACE))


def test_grid_sampler_visits_exactly_the_cartesian_product() -> None:
    space = search_space_from_dict(
        {
            "architecture": {
                "num_layers": {"type": "int", "low": 1, "high": 2},
                "hidden_size": {"type": "categorical", "choices": [16, 32]},
                "dropout_rate": {"type": "float", "low": 0.0, "high": 0.2, "step": 0.1},
            }
        }
    )
    grid = grid_values(space)
    study = optuna.create_study(sampler=optuna.samplers.GridSampler(grid, seed=0))
    study.optimize(lambda t: float(len(suggest(t, space))), n_trials=50)
    seen = {tuple(t.params[k] for k in grid) for t in study.trials}
    assert len(study.trials) == 12
    assert seen == set(itertools.product(*grid.values()))


def test_infeasible_heads_raise_infeasible_params() -> None:
    with pytest.raises(InfeasibleParams, match="hidden_size must be divisible by num_heads"):
        to_hamnet_section({"hidden_size": 20, "num_heads": 8})
    assert issubclass(InfeasibleParams, ConfigError)
    per_layer = {"num_layers": 2, "hidden_size": 64, "num_heads_0": 12, "num_heads_1": 2}
    with pytest.raises(InfeasibleParams, match="num_heads=12"):
        to_architecture(per_layer)


def test_sampled_genes_become_hamnet_settings() -> None:
    section = to_hamnet_section(
        {"hidden_size": 32, "num_heads": 4, "activation": "silu", "learning_rate": 0.1},
        base=HAMNetSection(token_size=2),
    )
    assert (section.hidden_size, section.num_heads, section.activation) == (32, 4, "silu")
    assert section.token_size == 2
    genes = {
        "num_layers": 3,
        "hidden_size": 64,
        "num_heads_0": 4,
        "num_heads_1": 2,
        "num_heads_2": 4,
        "ffn_ratio_0": 1.0,
        "ffn_ratio_1": 2.5,
        "ffn_ratio_2": 0.5,
    }
    choice = to_architecture(genes)
    assert choice.section.num_heads == 4 and choice.section.ffn_ratio == 2.5
    assert choice.layer_heads == (4, 2, 4)
    assert choice.layer_ffn == (64, 160, 32)
    with pytest.raises(ConfigError, match="per-layer genes"):
        to_hamnet_section(genes)
    config = choice.to_model_config(input_size=8, num_classes=3)
    assert config.head_dim == 16
    assert [config.heads_of(i) for i in range(3)] == [4, 2, 4]
    assert [config.ffn_of(i) for i in range(3)] == [64, 160, 32]


def test_sampled_hyperparameters_become_a_train_config() -> None:
    base = TrainStageConfig(epochs=60, patience=7)
    params = {"learning_rate": 3e-3, "epochs": 12, "augment": "mixup", "hidden_size": 64}
    config = to_train_config(params, base)
    assert (config.learning_rate, config.epochs, config.augment) == (3e-3, 12, "mixup")
    assert config.patience == 7 and base.epochs == 60
    with pytest.raises(InfeasibleParams, match="learning_rate"):
        to_train_config({"learning_rate": 50.0}, base)
