"""The transformer family: detected through a user's wrapper; AUTO's pruning ratios and KD
settings for it (low ratios, 2 epochs at 1e-4), other families unchanged."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from torch import nn

from hamnet.api.compiler import (
    PRUNE_RATIOS,
    ModelFacts,
    compile_config,
    family_prune_ratios,
    plan_for,
)
from hamnet.api.constraints import Constraints, Goal
from hamnet.core.hardware import HardwareProfile, load_profile
from hamnet.families.base import ModelSource, detect_family, get_family


class Encoder(nn.Module):
    """Stands in for a Hugging Face encoder: a ``config`` with a head count."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(num_attention_heads=2, hidden_size=8)
        self.dense = nn.Linear(8, 8)


class Pooled(nn.Module):
    """A user's wrapper (as a mean-pooling sentence encoder): no config of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.model = Encoder()


@pytest.fixture(scope="module")
def cpu() -> HardwareProfile:
    return load_profile("x86-avx2", require_present=False)


def test_a_wrapped_encoder_is_a_transformer() -> None:
    assert detect_family(ModelSource(module=Pooled())).name == "transformer"
    assert detect_family(ModelSource(module=Encoder())).name == "transformer"
    assert detect_family(ModelSource(module=nn.Sequential(nn.Linear(4, 4)))).name != "transformer"


def test_auto_prunes_transformers_at_low_ratios_and_recovers_briefly(cpu: HardwareProfile) -> None:
    transformer = get_family("transformer")
    assert family_prune_ratios(transformer) == [0.1, 0.2]
    assert family_prune_ratios(get_family("conv")) == PRUNE_RATIOS
    plan = plan_for(Constraints(), "module", cpu, family="transformer", has_train_data=True)
    assert plan.prune_ratios == [0.1, 0.2]
    facts = ModelFacts(Path("/m/module.json"), transformer, 90.0, source_kind="module",
                       train_path=Path("/m/train.npz"))  # fmt: skip
    config = compile_config(Goal.AUTO, Constraints(), facts, cpu, plan=plan)
    assert config.stages.prune is not None and config.stages.prune.ratios == [0.1, 0.2]
    assert config.stages.prune.criteria == ["taylor"]
    assert config.stages.distill is not None
    train = config.stages.distill.train
    assert (train.epochs, train.learning_rate, train.batch_size) == (2, 1e-4, 32)
    pruned = compile_config(Goal.PRUNE, Constraints(), facts, cpu)
    assert pruned.stages.prune is not None and pruned.stages.prune.ratios == [0.1, 0.2]
