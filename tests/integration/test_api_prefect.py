"""Optimizer.optimize(use_prefect=True): the same plan as a hamnet-optimize flow run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_harness")]


def test_optimize_as_prefect_flow_run(tmp_path: Path) -> None:
    from hamnet.api.optimizer import Constraints, Goal, OptimizationResult, Optimizer

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 8 * 8, 3))  # fmt: skip
    opt = Optimizer.from_pytorch(model.eval(), [1, 1, 8, 8], work_dir=tmp_path)
    x = np.random.default_rng(0).normal(size=(60, 1, 8, 8)).astype(np.float32)
    result = opt.optimize(
        Goal.QUANTIZE,
        Constraints(max_accuracy_drop=1.0),
        validation_data=(x, None),
        preferred_backends=["onnx"],
        use_prefect=True,
        _overrides={
            "measure": {"warmup": 1, "repeats": 5, "max_eval_samples": 32},
            "stages": {"quantize": {"methods": ["ort_dynamic_int8"]}},
        },
    )
    assert isinstance(result, OptimizationResult)
    # The module stays a torch module: the flow exports it, then quantizes the export.
    assert [s.name for s in result.pipeline.stages] == ["load", "export", "quantize"]
    assert not any(s.cached for s in result.pipeline.stages)
    assert {c.stage for c in result.candidates} == {"load", "export", "quantize"}
    assert result.recommended is not None
    assert result.report.accuracy_kind.startswith("top1_agreement_with_original_model")
    assert result.report.candidates_table and result.report.gates["loads_in_runtime"]
    assert (tmp_path / "round-1" / "config.yaml").is_file()
    assert result.pipeline.report_files["csv"].is_file()
