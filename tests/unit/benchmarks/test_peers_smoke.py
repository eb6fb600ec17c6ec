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


def _point(
    name: str, side: str, m: Metrics, recommended: bool = False, spread: float = 0.0
) -> object:
    from peer_recipes import BenchPoint, PeerModel

    def never_opened(profile: object) -> tuple[object, None]:
        raise AssertionError("compare() must not open models")

    model = PeerModel("onnxruntime", "int8", [], never_opened)  # type: ignore[arg-type]
    point = BenchPoint(name, side, side, model, 1.0, recommended=recommended)
    point.metrics = m
    lat = m.latency_p50_ms
    point.p50_rounds = [lat - spread / 2, lat, lat + spread / 2]
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


def _spread_points() -> list[object]:
    return [
        _point("fp32", "baseline", _metrics(0.97, 0.100, 0.30), spread=0.004),
        # 0.010 ms slower than hamnet:a, spreads 0.004 + 0.004: clearly slower.
        _point("far", "peer", _metrics(0.96, 0.030, 0.031), spread=0.004),
        # 0.004 ms slower than hamnet:a, spreads 0.004 + 0.004: within the noise, and
        # only 1.03x larger: dominated, but not clearly.
        _point("near", "peer", _metrics(0.96, 0.024, 0.031), spread=0.004),
        # As slow as hamnet:a within the noise but 2x larger: clearly dominated by size.
        _point("big", "peer", _metrics(0.96, 0.0241, 0.06), spread=0.004),
        _point("hamnet:a", "hamnet", _metrics(0.965, 0.020, 0.03), True, spread=0.004),
        _point("hamnet:b", "hamnet", _metrics(0.975, 0.090, 0.20), spread=0.004),
    ]


def test_clear_dominance_needs_more_than_the_spread_or_a_size_factor() -> None:
    from peer_recipes import compare
    from peers import CLEAR_COLUMN, CLEAR_TARGET, add_clear_dominance, clearly_dominating

    result = compare(_spread_points())  # type: ignore[arg-type]
    assert result.dominated["near"] == ["hamnet:a"]  # plain dominance ignores the noise
    clear = clearly_dominating(result.table)
    assert clear == {"fp32": ["hamnet:b"], "far": ["hamnet:a"], "near": [], "big": ["hamnet:a"]}
    add_clear_dominance(result)
    columns = list(result.table.columns)
    assert columns.index(CLEAR_COLUMN) == columns.index("dominated_by") + 1
    rows = result.table.set_index("name")[CLEAR_COLUMN]
    assert rows["near"] == "-" and rows["far"] == "hamnet:a" and rows["hamnet:b"] == "(hamnet)"
    targets = [t["target"] for t in result.targets]
    assert (
        targets.index(CLEAR_TARGET)
        == targets.index("hamnet's front dominates every peer point") + 1
    )
    line = next(t for t in result.targets if t["target"] == CLEAR_TARGET)
    assert line["met"] is False and line["measured"] == "not clearly dominated: near"
    add_clear_dominance(result)  # idempotent: one column, one line
    assert list(result.table.columns).count(CLEAR_COLUMN) == 1
    assert [t["target"] for t in result.targets].count(CLEAR_TARGET) == 1
    with pytest.raises(ConfigError, match=r"size_factor must be above 1, but got 1\.0"):
        clearly_dominating(result.table, size_factor=1.0)


def test_rescore_rebuilds_the_same_comparison_from_the_csv(tmp_path: Path) -> None:
    from peer_recipes import compare, write_outputs
    from peers import CLEAR_COLUMN, CLEAR_TARGET, rescore

    result = compare(_spread_points())  # type: ignore[arg-type]
    info = {"baseline": "toy", "threads": 1, "latency_batch_size": 1, "throughput_batch_size": 32}
    write_outputs(result, tmp_path, title="toy", info=info, rounds=3)
    files = rescore(tmp_path, rounds=3)
    again = pd.read_csv(files["csv"], keep_default_na=False)
    before = result.table.fillna("").astype(str)
    after = again.drop(columns=[CLEAR_COLUMN]).astype(str)
    for column in ("name", "side", "on_hamnet_front", "recommended", "dominated_by"):
        assert list(after[column]) == list(before[column]), column
    for column in ("accuracy", "latency_p50_ms", "latency_p50_spread_ms", "size_mb", "speedup"):
        assert np.allclose(again[column], result.table[column].astype(float)), column
    markdown = files["markdown"].read_text()
    assert CLEAR_TARGET in markdown and "not clearly dominated: near" in markdown


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
    from peers import CLEAR_COLUMN

    expected = list(COLUMNS)
    expected.insert(expected.index("dominated_by") + 1, CLEAR_COLUMN)
    assert list(table.columns) == expected
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
    assert "by more than the measurement spread" in markdown
