"""Bad input through the CLI: one clear error line, exit code 2, nothing started."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import export_tiny_onnx
from typer.testing import CliRunner

from hamnet.core.errors import ConfigError
from hamnet.ops.cli import app, parse_overrides

runner = CliRunner()


def _write(tmp_path: Path, data: dict[str, object]) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _run(tmp_path: Path, data: dict[str, object], *extra: str) -> tuple[int, str]:
    path = _write(tmp_path, data)
    result = runner.invoke(app, ["run", str(path), "--base-dir", str(tmp_path), *extra])
    return result.exit_code, result.output


def _csv(tmp_path: Path, n_features: int, label: str = "label") -> Path:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        rng.normal(size=(120, n_features)), columns=[f"f{i}" for i in range(n_features)]
    )
    frame[label] = rng.integers(0, 3, size=120)
    path = tmp_path / "data.csv"
    frame.to_csv(path, index=False)
    return path


def test_overrides_parse_as_yaml_values() -> None:
    assert parse_overrides(["stages.train.epochs=5", "seed=1", "name=x"]) == {
        "stages": {"train": {"epochs": 5}},
        "seed": 1,
        "name": "x",
    }
    with pytest.raises(ConfigError, match=r"dotted\.key=value"):
        parse_overrides(["epochs"])


def test_unknown_key(tmp_path: Path) -> None:
    code, out = _run(tmp_path, {"stages": {"train": {"epoch": 3}}})
    assert code == 2
    assert "unknown key" in out and "stages.train.epoch" in out


def test_out_of_range_value_through_set(tmp_path: Path) -> None:
    code, out = _run(tmp_path, {}, "--set", "stages.train.epochs=0")
    assert code == 2
    assert "stages.train.epochs" in out and "but got 0" in out


def test_missing_config_file(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", str(tmp_path / "absent.yaml")])
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_unknown_profile(tmp_path: Path) -> None:
    code, out = _run(tmp_path, {"hardware_profile": "tpu-v9"})
    assert code == 2
    assert "unknown hardware profile 'tpu-v9'" in out


def test_profile_whose_hardware_is_absent(tmp_path: Path) -> None:
    code, out = _run(tmp_path, {"hardware_profile": "arm64-edge"})
    assert code == 2
    assert "does not match this machine" in out


def test_missing_data_file(tmp_path: Path) -> None:
    code, out = _run(tmp_path, {"data": {"source": "file", "path": "nope.csv"}})
    assert code == 2
    assert "nope.csv" in out


def test_missing_label_column(tmp_path: Path) -> None:
    _csv(tmp_path, 4, label="target")
    code, out = _run(
        tmp_path, {"data": {"source": "file", "path": "data.csv", "label_column": "label"}}
    )
    assert code == 2
    assert "label" in out and "target" in out


def test_missing_model_file(tmp_path: Path) -> None:
    code, out = _run(tmp_path, {"model": {"source": "file", "path": "model.pt"}})
    assert code == 2
    assert "model.pt" in out and "does not exist" in out


def test_unreadable_model_file(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(b"not a checkpoint")
    code, out = _run(tmp_path, {"model": {"source": "file", "path": "model.pt"}})
    assert code == 2
    assert "model.pt" in out


def test_feature_count_mismatch(tmp_path: Path) -> None:
    from hamnet.models import HAMNet, HAMNetConfig, save_checkpoint

    save_checkpoint(HAMNet(HAMNetConfig(input_size=64, num_classes=3)), tmp_path / "model.pt")
    _csv(tmp_path, 10)
    code, out = _run(
        tmp_path,
        {
            "model": {"source": "file", "path": "model.pt"},
            "data": {"source": "file", "path": "data.csv"},
        },
    )
    assert code == 2
    assert "64" in out and "10" in out


def test_profiles_command_lists_presence() -> None:
    result = runner.invoke(app, ["profiles"])
    assert result.exit_code == 0
    assert "x86-avx2" in result.output and "arm64-edge" in result.output


def test_validate_command(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[3]
    ok = runner.invoke(app, ["validate", str(repo / "configs" / "default.yaml")])
    assert ok.exit_code == 0
    bad = _write(tmp_path, {"nonsense": 1})
    result = runner.invoke(app, ["validate", str(bad)])
    assert result.exit_code == 2 and "nonsense" in result.output


def test_impossible_constraints_exit_3_with_the_nearest_candidate(tmp_path: Path) -> None:
    code, out = _run(
        tmp_path,
        {
            "model": {
                "hamnet": {"hidden_size": 8, "num_layers": 1, "num_heads": 2, "token_size": 8}
            },
            "constraints": {"max_latency_ms": 1e-6},
            "stages": {"train": {"epochs": 1}, "export": None, "quantize": None},
            "measure": {"warmup": 1, "repeats": 5},
            "tracking": {"enabled": False},
        },
        "--no-prefect",
    )
    assert code == 3
    assert "no candidate meets the constraints" in out and "nearest is baseline" in out


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny_onnx(tmp_path_factory.mktemp("cli-bench") / "tiny.onnx")


def test_benchmark_prints_a_table(tiny_onnx: Path) -> None:
    result = runner.invoke(app, ["benchmark", str(tiny_onnx), "--repeats", "5", "--warmup", "1"])
    assert result.exit_code == 0, result.output
    assert "onnxruntime" in result.output and "openvino" in result.output


def test_benchmark_json_with_data(tiny_onnx: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    np.savez(data, x=rng.normal(size=(20, 16)).astype(np.float32), y=rng.integers(0, 3, 20))
    result = runner.invoke(
        app,
        [
            "benchmark",
            str(tiny_onnx),
            "--runtime",
            "onnxruntime",
            "--data",
            str(data),
            "--repeats",
            "5",
            "--warmup",
            "1",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    (row,) = payload["results"]
    assert row["runtime"] == "onnxruntime" and 0.0 <= row["accuracy"] <= 1.0


def test_benchmark_bad_input_exits_2(tiny_onnx: Path, tmp_path: Path) -> None:
    missing = runner.invoke(app, ["benchmark", str(tmp_path / "absent.onnx")])
    assert missing.exit_code == 2
    assert "absent.onnx" in missing.output and len(missing.output.strip().splitlines()) == 1
    unknown = runner.invoke(app, ["benchmark", str(tiny_onnx), "--runtime", "tensorrt"])
    assert unknown.exit_code == 2 and "unknown runtime 'tensorrt'" in unknown.output
    bad = tmp_path / "bad.npz"
    np.savez(bad, features=np.zeros((2, 16)))
    nodata = runner.invoke(app, ["benchmark", str(tiny_onnx), "--data", str(bad)])
    assert nodata.exit_code == 2 and "'x'" in nodata.output


def test_optimize_writes_the_recommended_model_config_and_report(tmp_path: Path) -> None:
    import onnxruntime as ort

    model = export_tiny_onnx(tmp_path / "model.onnx", hidden=32)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    np.savez(tmp_path / "val.npz", x=x, y=rng.integers(0, 3, size=300))
    out = tmp_path / "out" / "optimized.onnx"
    result = runner.invoke(
        app,
        [
            "optimize", str(model), "--goal", "quantize", "--max-accuracy-drop", "1.0",
            "--data", str(tmp_path / "val.npz"), "--backend", "onnx", "--output", str(out),
            "--work-dir", str(tmp_path / "work"),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert ort.InferenceSession(str(out)).run(None, {"x": x[:2]})[0].shape == (2, 3)
    report = json.loads((tmp_path / "out" / "optimized.report.json").read_text())
    assert report["constraints_satisfied"] is True
    assert (tmp_path / "out" / "optimized.config.yaml").is_file()


def test_optimize_bad_input_exits_2(tmp_path: Path) -> None:
    missing = runner.invoke(app, ["optimize", str(tmp_path / "nope.onnx")])
    assert missing.exit_code == 2 and "error:" in missing.output
    (tmp_path / "m.pt").write_bytes(b"not a checkpoint")
    bad_goal = runner.invoke(app, ["optimize", str(tmp_path / "m.pt"), "--goal", "shrink"])
    assert bad_goal.exit_code == 2


def test_optimize_named_inputs_without_labels_and_prefect_option(tmp_path: Path) -> None:
    import torch
    from torch import nn

    from hamnet.backends.export import export_module

    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(8, 16), nn.Linear(2, 16)
            self.head = nn.Linear(16, 4)

        def forward(self, features: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
            return self.head(torch.relu(self.a(features) + self.b(side)))

    torch.manual_seed(0)
    model = export_module(
        Two().eval(), {"features": torch.randn(1, 8), "side": torch.randn(1, 2)},
        tmp_path / "two.onnx",
    )  # fmt: skip
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "val.npz", x__features=rng.normal(size=(80, 8)),
             x__side=rng.normal(size=(80, 2)))  # fmt: skip
    result = runner.invoke(
        app,
        [
            "optimize", str(model), "--goal", "quantize", "--max-accuracy-drop", "1.0",
            "--data", str(tmp_path / "val.npz"), "--backend", "onnx",
            "--work-dir", str(tmp_path / "work"), "--no-prefect",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "top1_agreement_with_original_model" in result.output
    helptext = runner.invoke(app, ["optimize", "--help"])
    assert "--prefect" in helptext.output


def test_optimize_a_hugging_face_directory_with_training_data(tmp_path: Path) -> None:
    """``hamnet optimize DIR --task embedding --train-data ...``: pruned, distilled and
    scored by cosine similarity; a whole-module file without --trust-checkpoint exits 2."""
    import torch

    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
        vocab_size=50, max_position_embeddings=16,
    )  # fmt: skip
    transformers.BertModel(cfg, add_pooling_layer=False).save_pretrained(tmp_path / "enc")
    rng = np.random.default_rng(0)

    def tokens(n: int) -> dict[str, np.ndarray]:
        ids = rng.integers(1, 50, size=(n, 8))
        return {"x__input_ids": ids, "x__attention_mask": np.ones_like(ids)}

    np.savez(tmp_path / "val.npz", **tokens(60))
    np.savez(tmp_path / "train.npz", **tokens(80))
    result = runner.invoke(
        app,
        [
            "optimize", str(tmp_path / "enc"), "--task", "embedding", "--goal", "distill",
            "--max-accuracy-drop", "1.0", "--data", str(tmp_path / "val.npz"),
            "--train-data", str(tmp_path / "train.npz"), "--backend", "onnx",
            "--work-dir", str(tmp_path / "work"),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "cosine" in result.output and "pruned-" in result.output
    torch.save(torch.nn.Linear(4, 2), tmp_path / "whole.pt")
    untrusted = runner.invoke(app, ["optimize", str(tmp_path / "whole.pt")])
    assert untrusted.exit_code == 2 and "trust" in untrusted.output
