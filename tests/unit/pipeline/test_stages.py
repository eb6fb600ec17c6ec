"""Stages are plugins: one module each, found through the registry, planned by order."""

from __future__ import annotations

import subprocess
import sys
import typing
from pathlib import Path

import pytest
from conftest import tiny_config

from hamnet.core import registry
from hamnet.core.config import StagesSection, config_from_dict
from hamnet.core.errors import ConfigError
from hamnet.pipeline.plan import PIPELINE_ORDER, build_plan, make_stage, stage_by_name
from hamnet.pipeline.stages.base import Stage

STAGES = ("distill", "export", "hpo", "load", "nas", "prune", "quantize", "train")


def test_every_stage_module_is_a_registered_stage() -> None:
    assert registry.names("stage") == STAGES


@pytest.mark.parametrize("name", STAGES)
def test_stage_plugin_shape(name: str) -> None:
    cls = registry.load("stage", name)
    assert issubclass(cls, Stage) and cls.kind == "stage" and cls.name == name
    assert make_stage(name).name == name
    if cls.section is not None:
        section = StagesSection.model_fields[cls.section].annotation
        assert cls.Options in typing.get_args(section)


def test_unknown_stage_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown stage 'prnue': expected one of \['distill'"):
        stage_by_name("prnue")


def test_listing_and_planning_import_no_heavy_library() -> None:
    code = (
        "import sys\n"
        "from conftest import tiny_config\n"
        "from hamnet.core.config import config_from_dict\n"
        "from hamnet.pipeline.plan import build_plan\n"
        "build_plan(config_from_dict(tiny_config()))\n"
        "heavy = {'torch', 'onnxruntime', 'openvino', 'nncf', 'optuna', 'ray', 'mlflow'}\n"
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="tests"
    )
    assert out.stdout.strip() == "[]"


def test_plan_runs_baseline_then_configured_stages_by_order() -> None:
    assert PIPELINE_ORDER[:2] == ("load", "train")
    assert PIPELINE_ORDER[2:] == ("nas", "hpo", "prune", "distill", "export", "quantize")
    cfg = config_from_dict(tiny_config(stages={"prune": {"ratios": [0.5]}}))
    assert [s.name for s in build_plan(cfg)] == ["train", "prune", "export", "quantize"]
    from_file = config_from_dict(
        tiny_config(model={"source": "file", "path": "model.onnx"}, stages={"quantize": None})
    )
    assert [s.name for s in build_plan(from_file)] == ["load", "export"]


def test_options_is_the_typed_section_and_names_a_missing_one() -> None:
    cfg = config_from_dict(tiny_config(stages={"prune": {"ratios": [0.25]}}))
    assert make_stage("prune").options(cfg).ratios == [0.25]
    with pytest.raises(ConfigError, match=r"stage 'distill' needs the config section"):
        make_stage("distill").options(cfg)


def test_an_outside_stage_joins_the_plan_by_its_order() -> None:
    registry.register("stage", "audit", "stage_plugins:AuditStage")
    try:
        cfg = config_from_dict(tiny_config())
        assert [s.name for s in build_plan(cfg)] == ["train", "export", "audit", "quantize"]
    finally:
        registry.unregister("stage", "audit")


def test_a_quantizer_failing_on_a_model_is_left_out_and_the_run_goes_on(tmp_path: Path) -> None:
    from hamnet.pipeline.run import run_pipeline

    registry.register("quantizer", "broken_int8", "stage_plugins:BrokenInt8")
    try:
        cfg = config_from_dict(
            tiny_config(
                stages={
                    "export": {"formats": ["onnx"]},
                    "quantize": {"methods": ["broken_int8", "ort_dynamic_int8"]},
                },
                constraints={"max_accuracy_drop": 1.0},
            )
        )
        result = run_pipeline(cfg, base_dir=tmp_path)
    finally:
        registry.unregister("quantizer", "broken_int8")
    methods = {c.method for c in result.candidates if c.stage == "quantize"}
    assert methods == {"ort_dynamic_int8"}
    notes = [n for s in result.stages for n in s.notes]
    assert any("broken_int8 failed for" in n and "divisible by num_heads" in n for n in notes)
