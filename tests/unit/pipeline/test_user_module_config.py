"""A ``hamnet-optimize`` config whose ``model.path`` is a user's model source: a Hugging
Face directory (sequence classifier) and a whole-module file, each pruned, recovered by
distillation on the configured data plus an unlabelled transfer set, exported and
quantized by the same pipeline as a HAMNet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from hamnet.core.config import config_from_dict
from hamnet.core.errors import ConfigError, ModelLoadError
from hamnet.pipeline.run import run_pipeline

SEQ = 12
FAST: dict[str, Any] = {
    "measure": {
        "warmup": 1, "repeats": 5, "max_eval_samples": 64, "paired_rounds": 0,
        "slower_margin": 0.99,
    },
}  # fmt: skip


def _config(
    model: dict[str, Any], data: Path, export: dict[str, Any] | None = None, **stages: Any
) -> Any:
    return config_from_dict(
        {
            "name": "user-module",
            "model": {"source": "file", **model},
            "data": {"source": "file", "path": str(data), "standardize": False},
            "constraints": {"max_accuracy_drop": 1.0},
            "stages": {
                "train": None,
                "prune": {"ratios": [0.5], "finetune": None},
                "distill": {"train": {"epochs": 1, "batch_size": 32}, **stages},
                "export": {"formats": ["onnx"], **(export or {})},
                "quantize": {"methods": ["ort_dynamic_int8"], "calibration_samples": 16},
            },
            **FAST,
        }
    )


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        vocab_size=60, max_position_embeddings=32, num_labels=3,
    )  # fmt: skip
    model = transformers.BertForSequenceClassification(cfg)
    out = tmp_path_factory.mktemp("hf") / "classifier"
    model.save_pretrained(out)
    return out


def _tokens(path: Path, n: int, *, labels: bool = True) -> Path:
    rng = np.random.default_rng(n)
    ids = rng.integers(1, 60, size=(n, SEQ), dtype=np.int64)
    arrays = {"x__input_ids": ids, "x__attention_mask": np.ones_like(ids)}
    if labels:
        arrays["y"] = np.arange(n) % 3
    np.savez(path, **arrays)
    return path


def test_a_hugging_face_directory_is_pruned_distilled_and_quantized(
    hf_dir: Path, tmp_path: Path
) -> None:
    data = _tokens(tmp_path / "data.npz", 150)
    transfer = _tokens(tmp_path / "transfer.npz", 40, labels=False)
    config = _config({"path": str(hf_dir)}, data, unlabelled_data=str(transfer))
    result = run_pipeline(config, base_dir=tmp_path)
    by_stage = {c.stage: c for c in result.candidates}
    assert by_stage["load"].artifact.format == "torch-module"
    pruned, kd = by_stage["prune"], by_stage["distill"]
    assert pruned.params["params_after"] < pruned.params["params_before"]
    assert "heads" in pruned.params["groups"] or any(
        "attention" in g for g in pruned.params["groups"]
    )
    assert kd.parent_id == pruned.id and kd.params["unlabelled_samples"] == 40
    quantized = [c for c in result.candidates if c.stage == "quantize"]
    assert quantized and all(c.precision == "int8" for c in quantized)


def test_a_padding_mask_the_data_lacks_fails_before_any_training(
    hf_dir: Path, tmp_path: Path
) -> None:
    data = _tokens(tmp_path / "data.npz", 40)
    config = _config({"path": str(hf_dir)}, data, export={"trim_padding": "mask"})
    expected = (
        r"stages.export.trim_padding: the padding mask must be one of the inputs "
        r"\['input_ids', 'attention_mask'\], but got 'mask'"
    )
    with pytest.raises(ConfigError, match=expected):
        run_pipeline(config, base_dir=tmp_path)
    assert not list(tmp_path.rglob("*.safetensors"))  # nothing was pruned or trained


class Wide(nn.Module):
    """A module of a class the test defines: saved whole with ``torch.save``."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_a_whole_module_file_needs_trust_and_then_runs(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    data = tmp_path / "digits.npz"
    np.savez(data, x=(x / 16.0).astype(np.float32)[:300], y=y[:300])
    torch.manual_seed(0)
    torch.save(Wide(), tmp_path / "wide.pt")
    untrusted = _config({"path": "wide.pt"}, data)
    with pytest.raises(ModelLoadError, match="needs trust_checkpoint=True"):
        run_pipeline(untrusted, base_dir=tmp_path)
    trusted = _config({"path": "wide.pt", "trust_checkpoint": True}, data)
    result = run_pipeline(trusted, base_dir=tmp_path)
    stages = [c.stage for c in result.candidates]
    assert stages.count("prune") == 1 and stages.count("distill") == 1
    assert "quantize" in stages
