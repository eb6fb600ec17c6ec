"""The contract of every ``kd_loss`` plugin (hamnet.compress.distill.losses)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import tiny_config, tiny_hamnet

from hamnet.compress.distill import build_distill_loss, model_outputs
from hamnet.compress.distill.losses.base import DistillLoss, parse_term
from hamnet.core import registry
from hamnet.core.config import config_from_dict
from hamnet.core.errors import ConfigError

torch.set_num_threads(1)

NAMES = registry.names("kd_loss")
REPO = Path(__file__).resolve().parents[4]


def _plugin(name: str) -> type[DistillLoss[Any]]:
    plugin = registry.load("kd_loss", name)
    assert isinstance(plugin, type) and issubclass(plugin, DistillLoss)
    return plugin


def _typo(option: str) -> str:
    """``option`` with its last two letters swapped (``temperature`` -> ``temperatuer``)."""
    return option[:-2] + option[-1] + option[-2]


def _distill_config(methods: list[dict[str, Any]]) -> dict[str, object]:
    return tiny_config(stages={"distill": {"methods": methods}})


@pytest.mark.parametrize("name", NAMES)
def test_options_validate_their_defaults(name: str) -> None:
    plugin = _plugin(name)
    assert plugin.kind == "kd_loss" and plugin.name == name
    assert plugin.parse_options({}) == plugin.Options()
    defaults = plugin.Options().model_dump()
    assert plugin.parse_options(defaults) == plugin.Options()
    term = parse_term({"method": name, **defaults})
    assert term.loss is plugin and term.weight == 1.0


@pytest.mark.parametrize("name", NAMES)
def test_typo_in_an_option_is_refused_at_config_load(name: str) -> None:
    accepted = list(_plugin(name).Options.model_fields)
    bad = _typo(accepted[0]) if accepted else "bogus"
    with pytest.raises(ConfigError) as info:
        config_from_dict(_distill_config([{"method": name, "weight": 1.0, bad: 2}]))
    message = str(info.value)
    assert "stages.distill: methods[0]: " in message
    assert f"has no option {bad!r}" in message
    assert all(repr(option) in message for option in accepted)


@pytest.mark.parametrize("name", NAMES)
def test_built_loss_is_finite_and_trains_down(name: str) -> None:
    student = tiny_hamnet(0)
    teachers = [tiny_hamnet(1, hidden_size=12, num_heads=3, num_layers=3), tiny_hamnet(2)]
    plugin = _plugin(name)
    plan = build_distill_loss(
        {"method": name},
        student=student,
        teachers=teachers if plugin.needs_teacher else [],
        ce_weight=0.0,
    )
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(32, 16, generator=generator)
    y = torch.randint(0, 3, (32,), generator=generator)
    with torch.no_grad():
        targets = [model_outputs(t, x, plan.teacher_spec(i)) for i, t in enumerate(teachers)]
    targets = targets if plugin.needs_teacher else []
    optimizer = torch.optim.Adam([*student.parameters(), *plan.loss.parameters()], lr=1e-2)
    history = []
    for _ in range(8):
        optimizer.zero_grad()
        loss = plan.loss(model_outputs(student, x, plan.student), targets, y)
        assert loss.dim() == 0 and math.isfinite(loss.item())
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert history[-1] < history[0]


def test_layer_reading_methods_come_from_the_capability() -> None:
    assert {n for n in NAMES if _plugin(n).reads_teacher_layers} == {"feature", "attention"}


def test_an_outside_plugin_is_one_registration() -> None:
    registry.register("kd_loss", "soft_copy", "hamnet.compress.distill.losses.soft:SoftKD")
    try:
        config = config_from_dict(_distill_config([{"method": "soft_copy", "temperature": 2}]))
        assert config.stages.distill is not None
        with pytest.raises(ConfigError, match="has no option 'temprature'"):
            parse_term({"method": "soft_copy", "temprature": 2})
    finally:
        registry.unregister("kd_loss", "soft_copy")


def test_config_validation_imports_no_torch() -> None:
    code = (
        "import sys\n"
        "from hamnet.core import registry\n"
        "from hamnet.core.config import load_config\n"
        "cfg = load_config('configs/distill.yaml')\n"
        "assert [t['method'] for t in cfg.stages.distill.methods] == ['soft', 'attention']\n"
        "for name in registry.names('kd_loss'):\n"
        "    registry.load('kd_loss', name).parse_options({})\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.stdout.strip() == "False", result.stdout + result.stderr
