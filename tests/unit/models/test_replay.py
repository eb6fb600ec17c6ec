"""``hamnet.models.replay``: ModulePlan JSON, replay on the original, input/output helpers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from hamnet.core.errors import ConfigError, ModelLoadError
from hamnet.models.replay import (
    MODULE_PLAN_FORMAT,
    HistoryStep,
    ModulePlan,
    apply_module_plan,
    build_dependency_graph,
    call_module,
    changed_int_attributes,
    int_attributes,
    primary_output,
    set_int_attributes,
)


class Heads(nn.Module):
    """A toy attention whose head count is an int attribute read in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.num_heads = 4
        self.proj = nn.Linear(8, 16)
        self.out = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x).view(x.shape[0], self.num_heads, -1).relu().flatten(1)
        return self.out(h)


def _pruned(model: Heads, x: torch.Tensor) -> tuple[Heads, ModulePlan]:
    """Prune two heads (8 rows) with torch-pruning directly; record the plan."""
    import copy

    import torch_pruning as tp

    work = copy.deepcopy(model)
    before = int_attributes(work)
    graph = build_dependency_graph(work, x)
    graph.get_pruning_group(work.proj, tp.prune_linear_out_channels, list(range(4, 12))).prune()
    work.num_heads = 2
    plan = ModulePlan(
        model_class="Heads",
        history=[
            HistoryStep(module=n, out_channels=o, indices=i) for n, o, i in graph.pruning_history()
        ],
        attributes=changed_int_attributes(before, int_attributes(work)),
        ratio=0.5,
        criterion="manual",
        allocation="uniform",
        params_before=sum(p.numel() for p in model.parameters()),
        params_after=sum(p.numel() for p in work.parameters()),
    )
    return work, plan


def test_plan_records_history_and_changed_attributes() -> None:
    torch.manual_seed(0)
    model, x = Heads(), torch.randn(3, 8)
    _, plan = _pruned(model, x)
    assert plan.history == [
        HistoryStep(module="proj", out_channels=True, indices=list(range(4, 12)))
    ]
    assert plan.attributes == {"num_heads": 2, "proj.out_features": 8, "out.in_features": 8}
    assert plan.format == MODULE_PLAN_FORMAT


def test_replay_after_json_round_trip_is_exact(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, x = Heads(), torch.randn(3, 8)
    pruned, plan = _pruned(model, x)
    with torch.no_grad():  # make the weights differ from the original's slices
        for p in pruned.parameters():
            p.add_(0.1)
    loaded = ModulePlan.load(plan.save(tmp_path / "sub" / "plan.json"))
    assert loaded == plan == ModulePlan.from_json(plan.to_json())
    replayed: Any = apply_module_plan(model, loaded, x)
    assert replayed.num_heads == 2 and model.num_heads == 4
    replayed.load_state_dict(pruned.state_dict(), strict=True)
    assert torch.equal(replayed(x), pruned(x))
    assert model.proj.out_features == 16  # the original is untouched


def test_plan_for_another_class_or_modules_is_refused() -> None:
    model, x = Heads(), torch.randn(3, 8)
    _, plan = _pruned(model, x)
    with pytest.raises(ConfigError, match=r"made for a Heads, but got a Sequential"):
        apply_module_plan(nn.Sequential(nn.Linear(8, 3)), plan, x)
    renamed = plan.model_copy(
        update={"history": [HistoryStep(module="nope", out_channels=True, indices=[0])]}
    )
    with pytest.raises(ConfigError, match=r"prunes modules \['nope'\]"):
        apply_module_plan(model, renamed, x)
    too_far = plan.model_copy(
        update={"history": [HistoryStep(module="proj", out_channels=True, indices=[99])]}
    )
    with pytest.raises(ConfigError, match=r"history must fit the model's channels"):
        apply_module_plan(model, too_far, x)


def test_plan_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="expected a module pruning plan JSON file"):
        ModulePlan.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match="expected JSON"):
        ModulePlan.load(bad)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "hamnet-pruning-plan/1"}), encoding="utf-8")
    with pytest.raises(
        ConfigError, match=r"'hamnet-module-plan/1'.*but got format 'hamnet-pruning-plan/1'"
    ):
        ModulePlan.load(other)
    incomplete = tmp_path / "incomplete.json"
    incomplete.write_text(json.dumps({"format": MODULE_PLAN_FORMAT}), encoding="utf-8")
    with pytest.raises(ConfigError, match="not a valid ModulePlan"):
        ModulePlan.load(incomplete)


def test_set_int_attributes_names_what_is_missing() -> None:
    model = Heads()
    set_int_attributes(model, {"num_heads": 2, "proj.out_features": 8})
    assert model.num_heads == 2 and model.proj.out_features == 8
    with pytest.raises(ConfigError, match=r"submodule 'proj' with attribute 'heads'"):
        set_int_attributes(model, {"proj.heads": 1})


def test_int_attributes_skip_bools_and_private_names() -> None:
    found = int_attributes(nn.Sequential(nn.Linear(2, 3)))
    assert found == {"0.in_features": 2, "0.out_features": 3}


class Named(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(2, 2)

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"last_hidden_state": self.a(left) + right, "other": left}


def test_call_module_and_primary_output_follow_the_conventions() -> None:
    x = torch.ones(1, 2)
    model = Named()
    by_name = primary_output(call_module(model, {"left": x, "right": x}))
    assert torch.equal(by_name, primary_output(call_module(model, (x, x))))
    assert torch.equal(primary_output(call_module(nn.Identity(), x)), x)
    assert torch.equal(primary_output((x + 1, x)), x + 1)
    assert torch.equal(primary_output({"logits": x, "last_hidden_state": x + 1}), x)
    assert torch.equal(primary_output({"pooled": x + 2}), x + 2)
    with pytest.raises(ConfigError, match=r"must be a tensor.*but got str"):
        primary_output("text")


def test_untraceable_model_is_a_config_error() -> None:
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if torch.is_grad_enabled():
                raise RuntimeError("needs no_grad")
            return self.a(x)

    with pytest.raises(
        ConfigError, match=r"tracing Broken failed with RuntimeError: needs no_grad"
    ):
        build_dependency_graph(Broken(), torch.ones(1, 2))
