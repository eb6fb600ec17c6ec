"""Stages ask the model family and the plugins' capabilities instead of testing names."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import export_tiny_onnx, tiny_config, tiny_hamnet

from hamnet.core import registry
from hamnet.core.artifacts import ArtifactStore
from hamnet.core.candidate import Candidate
from hamnet.core.config import QuantizeStageConfig, config_from_dict
from hamnet.core.errors import ExportError
from hamnet.core.hardware import load_profile
from hamnet.families.base import get_family
from hamnet.models import save_checkpoint
from hamnet.pipeline.run import make_context
from hamnet.pipeline.stages.base import candidate_family
from hamnet.pipeline.stages.distill import _kd_loss
from hamnet.pipeline.stages.prune import PruneStage
from hamnet.pipeline.stages.quantize import _quantize_params

ORT_INT8 = {"ort_dynamic_int8", "ort_static_int8", "ort_fused_dynamic_int8"}


@pytest.mark.parametrize("name", registry.names("quantizer"))
def test_quantize_params_follow_the_settings_capability(name: str) -> None:
    from hamnet.compress.quantize.base import get_quantizer

    cfg = QuantizeStageConfig(calibration_samples=8, per_channel=False, reduce_range=True)
    profile = load_profile("x86-avx2", require_present=False)
    method = get_quantizer(name)
    params = _quantize_params(method, cfg, profile)
    expected: dict[str, object] = {"calibration_samples": 8}
    if "reduce_range" in method.settings:  # the ORT INT8 methods, and tuning built on them
        expected |= {"per_channel": False, "reduce_range": True}
    for key in ("weight_only_block_size", "nncf_weight_mode"):
        if key in method.settings:
            expected[key] = getattr(cfg, key)
    assert params == expected
    if name in ORT_INT8:
        assert "reduce_range" in params


@pytest.mark.parametrize("name", registry.names("allocation"))
def test_prune_passes_each_allocation_only_the_options_it_takes(name: str, tmp_path: Path) -> None:
    config = config_from_dict(tiny_config(stages={"prune": {"allocations": [name]}}))
    ctx = make_context(config, base_dir=tmp_path)
    options = PruneStage()._allocation_options(name, ctx)
    plugin = registry.load("allocation", name)
    plugin.parse_options(options)
    if name == "rspar":
        assert set(options) == {"target", "profile", "episodes", "recovery", "tolerance"}
    else:
        assert options == {}


@pytest.mark.parametrize("name", registry.names("kd_loss"))
def test_session_teachers_refuse_the_losses_that_read_teacher_layers(name: str) -> None:
    assert _kd_loss(name).reads_teacher_layers == (name in {"feature", "attention"})


def _candidate(store: ArtifactStore, path: Path, fmt: str) -> Candidate:
    runtime = {"torch": "torch", "onnx": "onnxruntime", "openvino": "openvino"}[fmt]
    return Candidate.create(
        name="baseline", stage="load", method=fmt, artifact=store.put(path, fmt), runtime=runtime
    )


def test_a_candidate_s_family_follows_its_artifact(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    checkpoint = save_checkpoint(tiny_hamnet(), tmp_path / "model.pt")
    onnx = export_tiny_onnx(tmp_path / "mlp.onnx")
    assert candidate_family(_candidate(store, checkpoint, "torch")).name == "hamnet"
    assert candidate_family(_candidate(store, onnx, "onnx")).name == "generic"
    # The family can prune a torch module; the ONNX candidate itself is not pruned.
    assert candidate_family(_candidate(store, onnx, "onnx")).can_prune


def test_only_a_family_with_attention_exports_it_fused(tmp_path: Path) -> None:
    import torch

    hamnet = get_family("hamnet")
    assert hamnet.fusable_attention(tiny_hamnet())
    assert not hamnet.fusable_attention(tiny_hamnet(token_size=16))
    generic = get_family("generic")
    mlp = torch.nn.Linear(16, 3)
    assert not generic.fusable_attention(mlp)
    with pytest.raises(ExportError, match="ort_fused_attention must be False"):
        generic.export_onnx(mlp, torch.zeros(1, 16), tmp_path / "m.onnx", ort_fused_attention=True)
