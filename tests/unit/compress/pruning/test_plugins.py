"""The pruning plugin contract: every criterion and every allocation in the registry.

A new criterion or allocation is one module under ``compress/pruning/criteria`` or
``compress/pruning/allocations``; these tests pick it up by name, and a slow one adds
its fastest options to ``FAST_CRITERION``/``FAST_ALLOCATION``.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import torch
from conftest import REPO, digits_subset, tiny_hamnet

from hamnet.compress.pruning import apply_plan, get_importance, needs_gradients, prune_hamnet
from hamnet.compress.pruning.allocation import get_allocation, get_allocator, is_layer_allocation
from hamnet.compress.pruning.allocations.base import Allocation
from hamnet.compress.pruning.criteria.base import Criterion
from hamnet.compress.pruning.hf import hf_allocations, hf_criteria
from hamnet.compress.pruning.importance import get_criterion
from hamnet.core import registry
from hamnet.core.config import PruneStageConfig, TrainStageConfig, config_from_dict
from hamnet.core.errors import ConfigError
from hamnet.models.hamnet import HAMNet
from hamnet.training.data import Dataset

torch.set_num_threads(1)

CRITERIA = registry.names("criterion")
ALLOCATIONS = registry.names("allocation")
FAST_CRITERION: dict[str, dict[str, Any]] = {
    "hessian": {"num_batches": 2},
    "movement": {"steps": 3},
}
FAST_ALLOCATION: dict[str, dict[str, Any]] = {
    "sensitivity": {"num_batches": 2},
    "rspar": {
        "episodes": 1,
        "target": "flops",
        "recovery": TrainStageConfig(epochs=1, warmup_epochs=0, batch_size=64),
    },
}


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return digits_subset(n_train=128, n_eval=64)


@pytest.fixture(scope="module")
def model() -> HAMNet:
    return tiny_hamnet(input_size=64, num_classes=10, hidden_size=16, num_heads=4, token_size=8)


def _x(dataset: Dataset) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(dataset.x_val[:16], dtype=np.float32))


def _check_pruned(model: HAMNet, result: Any, dataset: Dataset) -> None:
    """Output shape kept, parameters dropped, and the plan replays the pruned model."""
    x = _x(dataset)
    pruned = result.model.eval()
    with torch.no_grad():
        out = pruned(x)
        assert out.shape == model.eval()(x).shape == (16, 10)
        assert result.params_after < result.params_before
        replayed = apply_plan(model, result.plan).eval()
        assert replayed.config == pruned.config
        torch.testing.assert_close(replayed(x), out, atol=1e-5, rtol=0)


def test_the_builtin_plugins_are_found() -> None:
    assert set(CRITERIA) >= {"l1", "l2", "taylor", "random", "hessian", "movement"}
    assert set(ALLOCATIONS) >= {"uniform", "global", "sensitivity", "rspar"}


@pytest.mark.parametrize("name", CRITERIA)
def test_criterion_plugin_shape(name: str) -> None:
    cls = registry.load("criterion", name)
    assert issubclass(cls, Criterion) and cls.kind == "criterion" and cls.name == name
    assert needs_gradients(name) is cls.needs_gradients
    assert (name in hf_criteria()) is cls.supports_hf
    assert not (cls.supports_hf and cls.needs_data), "prune_bert has no hamnet Dataset"
    with pytest.raises(ConfigError, match=rf"options of criterion '{name}' are invalid"):
        get_criterion(name, {"no_such_option": 1})


@pytest.mark.parametrize("name", CRITERIA)
def test_criterion_prunes_a_hamnet(name: str, model: HAMNet, dataset: Dataset) -> None:
    result = prune_hamnet(
        model, dataset, ratio=0.5, criterion=name, criterion_options=FAST_CRITERION.get(name)
    )
    assert result.model.config.layer_heads == [2, 2]
    assert result.plan.criterion == name
    _check_pruned(model, result, dataset)


@pytest.mark.parametrize("name", ALLOCATIONS)
def test_allocation_plugin_shape(name: str) -> None:
    cls = registry.load("allocation", name)
    assert issubclass(cls, Allocation) and cls.kind == "allocation" and cls.name == name
    assert is_layer_allocation(name) is cls.per_layer
    assert (name in hf_allocations()) is cls.supports_hf
    assert not (cls.supports_hf and cls.per_layer), "prune_bert takes no per-layer ratios"
    assert get_allocation(name) == {"global_pruning": cls.global_ranking}
    with pytest.raises(ConfigError, match=rf"options of allocation '{name}' are invalid"):
        get_allocator(name, {"no_such_option": 1})


@pytest.mark.parametrize("name", ALLOCATIONS)
def test_allocation_prunes_a_hamnet(name: str, model: HAMNet, dataset: Dataset) -> None:
    result = prune_hamnet(
        model, dataset, ratio=0.5, allocation=name, allocation_options=FAST_ALLOCATION.get(name)
    )
    heads = result.model.config.layer_heads
    assert heads is not None and min(heads) >= 1 and 3 <= sum(heads) <= 5
    if registry.load("allocation", name).per_layer:
        assert result.layer_ratios is not None and len(result.layer_ratios) == 2
    else:
        assert result.layer_ratios is None
    _check_pruned(model, result, dataset)


def test_a_non_layer_allocation_gives_no_layer_ratios(model: HAMNet, dataset: Dataset) -> None:
    with pytest.raises(ConfigError, match="per-layer allocation"):
        get_allocator("uniform").layer_ratios(model, dataset, 0.5)


def test_unknown_names_get_a_hint() -> None:
    with pytest.raises(ConfigError, match=r"pruning criterion .* but got 'tayl0r' .*'taylor'"):
        get_importance("tayl0r")
    with pytest.raises(ConfigError, match=r"pruning allocation .* but got 'globl' .*'global'"):
        get_allocation("globl")
    assert not is_layer_allocation("globl")


def test_config_checks_names_through_the_registry() -> None:
    section = PruneStageConfig(criteria=list(CRITERIA), allocations=list(ALLOCATIONS))
    assert section.criteria == list(CRITERIA)
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"stages": {"prune": {"criteria": ["taylr"], "allocations": ["rspr"]}}})
    message = str(caught.value)
    assert "stages.prune.criteria.0: criterion must be one of" in message
    assert "(did you mean 'taylor'?), but got 'taylr'" in message
    assert "stages.prune.allocations.0: allocation must be one of" in message
    assert "(did you mean 'rspar'?), but got 'rspr'" in message


def test_config_accepts_a_registered_criterion() -> None:
    registry.register("criterion", "my_l1", "hamnet.compress.pruning.criteria.l1:L1")
    try:
        assert PruneStageConfig(criteria=["my_l1"]).criteria == ["my_l1"]
    finally:
        registry.unregister("criterion", "my_l1")
    with pytest.raises(ValueError, match="criterion must be one of"):
        PruneStageConfig(criteria=["my_l1"])


def test_listing_and_options_import_no_heavy_library() -> None:
    code = """
import sys
from hamnet.core import registry
from hamnet.core.config import PruneStageConfig

PruneStageConfig(criteria=list(registry.names("criterion")),
                 allocations=list(registry.names("allocation")))
for kind in ("criterion", "allocation"):
    for name in registry.names(kind):
        registry.load(kind, name).parse_options({})
heavy = sorted({"torch", "torch_pruning", "onnxruntime", "optuna", "mlflow"} & set(sys.modules))
assert not heavy, heavy
"""
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PYTHONPATH": f"{REPO / 'src'}", "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
