"""Smoke version of benchmarks/peers.py: tiny HAMNet, two peers, a quantize-only pipeline.

Checks the outputs exist and every column of every measured row is filled; never
timings (those belong to the benchmark itself).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hamnet.core.candidate import Metrics
from hamnet.core.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[3]
# The benchmark library (benchmarks/peer_recipes.py) lives outside the package.
sys.path.insert(0, str(ROOT / "benchmarks"))


def _metrics(accuracy: float, latency: float, size: float) -> Metrics:
    return Metrics(
        accuracy=accuracy, latency_p50_ms=latency, latency_p90_ms=latency,
        latency_batch_size=1, throughput_sps=1000.0 / latency, throughput_batch_size=32,
        size_mb=size, params=10, flops=0, peak_memory_mb=1.0, runtime="onnxruntime",
        threads=1, eval_samples=10,
    )  # fmt: skip


def _point(name: str, side: str, m: Metrics, recommended: bool = False) -> object:
    from peer_recipes import BenchPoint, PeerModel

    def never_opened(profile: object) -> tuple[object, None]:
        raise AssertionError("compare() must not open models")

    model = PeerModel("onnxruntime", "int8", [], never_opened)  # type: ignore[arg-type]
    point = BenchPoint(name, side, side, model, 1.0, recommended=recommended)
    point.metrics = m
    point.p50_rounds = [m.latency_p50_ms]
    return point


def test_compare_dominance_and_hypervolume() -> None:
    from peer_recipes import compare

    points = [
        _point("fp32", "baseline", _metrics(0.97, 0.10, 0.30)),
        _point("peer-int8", "peer", _metrics(0.96, 0.08, 0.08)),
        _point("hamnet:a", "hamnet", _metrics(0.965, 0.02, 0.03), recommended=True),
        _point("hamnet:b", "hamnet", _metrics(0.975, 0.09, 0.20)),
    ]
    result = compare(points)  # type: ignore[arg-type]
    assert result.baseline_name == "fp32"
    assert sorted(result.front) == ["hamnet:a", "hamnet:b"]
    assert result.dominated == {"fp32": ["hamnet:b"], "peer-int8": ["hamnet:a"]}
    assert result.hypervolume_hamnet > result.hypervolume_peers > 0
    met = {t["target"].split(" (")[0]: t["met"] for t in result.targets}
    assert met["recommended >= 8x smaller than FP32"] is True
    assert met["hamnet's front dominates every peer point"] is True
    row = result.table.set_index("name").loc["hamnet:a"]
    assert row["size_ratio"] == pytest.approx(10.0)
    assert row["speedup"] == pytest.approx(5.0)


def test_bad_inputs_raise_project_errors() -> None:
    from peer_recipes import BenchPoint, compare, get_recipes

    with pytest.raises(ConfigError, match="peer recipes must be among"):
        get_recipes(["no-such-tool"])
    with pytest.raises(ConfigError, match="side must be one of"):
        BenchPoint("x", "nobody", "t", None, 0.0)
    with pytest.raises(DataError, match="needs a measured FP32 baseline"):
        compare([_point("p", "peer", _metrics(0.9, 1.0, 1.0))])  # type: ignore[list-item]


@pytest.mark.parametrize(
    "module",
    ["hamnet_no_such_module", "hamnet_no_such_package.torch"],
    ids=["top-level", "submodule-of-missing-package"],
)
def test_missing_tool_becomes_a_skipped_row(tmp_path: Path, module: str) -> None:
    from peer_recipes import PeerRecipe, run_recipe

    from hamnet.training.data import Dataset

    class Absent(PeerRecipe):
        """A tool that is not installed."""

        name = "absent"
        tool = "Absent"
        requires = (module,)
        extra = "bench"

        def run(self, baseline: object, data: object, work_dir: Path) -> object:
            raise AssertionError("must not run")

    empty = np.zeros((1, 4), dtype=np.float32)
    labels = np.zeros(1, dtype=np.int64)
    data = Dataset(
        x_train=empty, y_train=labels, x_val=empty, y_val=labels, x_test=empty, y_test=labels,
        num_features=4, num_classes=1, class_names=["0"], source="empty",
    )  # fmt: skip
    point = run_recipe(Absent(), None, data, tmp_path)  # type: ignore[arg-type]
    assert point.model is None
    assert point.skipped is not None and "hamnet[bench]" in point.skipped


@pytest.mark.slow
def test_smoke_benchmark_writes_filled_table_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {
        **os.environ, "OMP_NUM_THREADS": "1", "DO_NOT_TRACK": "1",
        "MLFLOW_ENABLE_TELEMETRY": "false",
    }  # fmt: skip
    done = subprocess.run(
        [
            sys.executable, str(ROOT / "benchmarks" / "peers.py"), "--smoke", "--no-mlflow",
            "--repeats", "2", "--out", str(out), "--work", str(tmp_path / "work"),
            "--config", str(ROOT / "configs" / "peers.yaml"),
        ],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for name in ("peers.csv", "peers.md", "peers.png", "machine.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    table = pd.read_csv(out / "peers.csv", keep_default_na=False)
    from peer_recipes import COLUMNS

    assert list(table.columns) == COLUMNS
    measured = table[table["status"] == "measured"]
    assert set(measured["side"]) == {"baseline", "peer", "hamnet"}
    assert {"ort-dynamic-int8", "torch-dynamic-int8"} <= set(measured["name"])
    empty = [(r["name"], c) for _, r in measured.iterrows() for c in COLUMNS if r[c] == ""]
    assert not empty, f"empty cells: {empty}"
    assert (measured["recommended"] == "yes").sum() == 1
    info = json.loads((out / "machine.json").read_text())
    assert info["threads"] >= 1 and "onnxruntime" in info["versions"]
    markdown = (out / "peers.md").read_text()
    assert "## Targets" in markdown and "Hypervolume" in markdown
