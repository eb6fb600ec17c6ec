"""Per-layer attribution and accuracy-aware INT8 with FP32 fallback, on a real model.

The model is an MLP trained here on scikit-learn's digits with one deliberately
broken layer: its weight matrix gets a huge value in the column of a hidden unit that
is always zero (a dead ReLU), so the FP32 function is unchanged but per-tensor INT8
rounds every other weight of that layer to zero.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("optuna")

from hamnet.compress.quantize.accuracy_aware import (  # noqa: E402
    AccuracyBudget,
    OrtMixedBuilder,
)
from hamnet.compress.quantize.attribution import (  # noqa: E402
    LAYERS_PARAM,
    ValidationScorer,
    attribute_layers,
)
from hamnet.compress.quantize.base import get_quantizer  # noqa: E402
from hamnet.compress.quantize.methods.int8_accuracy_aware import Int8AccuracyAware  # noqa: E402
from hamnet.core.config import QuantizeStageConfig, config_from_dict  # noqa: E402
from hamnet.core.errors import ConfigError, DataError  # noqa: E402
from hamnet.core.hardware import HardwareProfile, load_profile  # noqa: E402

BROKEN_WEIGHT = "2.weight"
"""The initializer of the broken (middle) layer."""


def _digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    x, y = x[order], y[order].astype(np.int64)
    return x[:1200], y[:1200], x[1200:1500], y[1200:1500]


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return _digits()


@pytest.fixture(scope="module")
def broken_mlp(tmp_path_factory: pytest.TempPathFactory, digits: tuple) -> Path:
    """An MLP 64-64-64-10 trained on digits whose middle layer breaks under INT8."""
    x_train, y_train, _, _ = digits
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
        torch.nn.Linear(64, 10),
    )  # fmt: skip
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    for _ in range(150):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        optimizer.step()
    with torch.no_grad():
        dead = 0
        model[0].weight[dead].zero_()
        model[0].bias[dead] = -1.0  # ReLU(-1) = 0 for every input: a dead unit
        model[2].weight[:, dead] = 1e4  # harmless in FP32, ruinous for per-tensor INT8
    path = tmp_path_factory.mktemp("broken") / "mlp.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model.eval(), (torch.zeros(1, 64),), str(path), dynamo=False, input_names=["x"],
            dynamic_axes={"x": {0: "batch"}},
        )  # fmt: skip
    return path


@pytest.fixture(scope="module")
def cpu() -> HardwareProfile:
    return load_profile("x86-avx2", require_present=False)


def per_tensor(**extra: object) -> QuantizeStageConfig:
    return QuantizeStageConfig(per_channel=False, reduce_range=True, **extra)  # type: ignore[arg-type]


class CountingBuilder(OrtMixedBuilder):
    """The real ONNX Runtime builder, counting the models it builds (for resume)."""

    builds = 0

    def build(self, out_dir: Path, **kwargs: object) -> Path:  # type: ignore[override]
        type(self).builds += 1
        return super().build(out_dir, **kwargs)  # type: ignore[arg-type]


class CountingMethod(Int8AccuracyAware):
    """``int8_accuracy_aware`` with a counting builder."""

    builder_class = CountingBuilder


def test_attribution_ranks_the_broken_layer_first(
    broken_mlp: Path, digits: tuple, cpu: HardwareProfile, tmp_path: Path
) -> None:
    x_train, _, x_val, y_val = digits
    builder = OrtMixedBuilder(broken_mlp, x_train[:200], per_tensor(), cpu, tmp_path / "b")
    layers = builder.layers()
    assert [layer.op_type for layer in layers] == ["Gemm", "Gemm", "Gemm"]
    scorer = ValidationScorer(broken_mlp, "onnxruntime", cpu, x_val, y_val)
    assert scorer.baseline > 0.85  # it learned digits
    ranked = attribute_layers(builder, scorer, tmp_path / "only")
    assert ranked[0].weight == BROKEN_WEIGHT
    assert ranked[0].error > 0.05 and all(r.error < ranked[0].error for r in ranked[1:])
    assert {r.precision for r in ranked} == {"int8"}
    assert set(ranked[0].as_record()) == {
        "name", "op_type", "weight", "precision", "error", "output_error",
    }  # fmt: skip


def test_fallback_meets_a_budget_plain_int8_misses_and_resumes(
    broken_mlp: Path, digits: tuple, cpu: HardwareProfile, tmp_path: Path
) -> None:
    x_train, _, x_val, y_val = digits
    method = CountingMethod()

    def tune(max_trials: int) -> object:
        CountingBuilder.builds = 0
        return method.tune(
            broken_mlp, tmp_path / f"out-{max_trials}", calibration=x_train[:200], x_val=x_val,
            y_val=y_val, cfg=per_tensor(max_trials=max_trials, fallback_top_k=3), profile=cpu,
            max_accuracy_drop=0.01, storage_dir=tmp_path / "study",
        )  # fmt: skip

    first = tune(2)
    assert first.ran == 2 and first.reused == 0  # type: ignore[attr-defined]
    assert CountingBuilder.builds == 3 + 2  # three one-layer models, then two trials
    plain = next(t for t in first.tried if not t.fallback)  # type: ignore[attr-defined]
    assert plain.drop > 0.01 and not plain.meets_budget  # plain INT8 breaks the budget
    best = first.best()  # type: ignore[attr-defined]
    assert best.meets_budget and best.origin == "greedy" and best.precision == "mixed"
    layers = first.layers_for(best)  # type: ignore[attr-defined]
    assert [r.weight for r in layers if r.precision == "fp32"] == [BROKEN_WEIGHT]

    # A longer run on the same storage resumes: no finished trial, no attribution redone.
    second = tune(4)
    assert second.reused == 2 and second.ran == 2  # type: ignore[attr-defined]
    assert CountingBuilder.builds == 2
    assert len(second.tried) == 4  # type: ignore[attr-defined]
    numbers = [t.trial for t in second.tried]  # type: ignore[attr-defined]
    assert numbers[:2] == [0, 1] and len(set(numbers)) == 4
    assert second.best().meets_budget  # type: ignore[attr-defined]
    assert "read back" in second.summary()  # type: ignore[attr-defined]


def test_quantize_alone_writes_the_best_assignment(
    broken_mlp: Path, digits: tuple, cpu: HardwareProfile, tmp_path: Path
) -> None:
    from hamnet.backends.session import load_session
    from hamnet.compress.quantize.attribution import trial_artifact

    x_train, _, x_val, _ = digits
    method = get_quantizer("int8_accuracy_aware")
    main = method.quantize(
        broken_mlp, tmp_path / "q", calibration=x_train[:200],
        cfg=per_tensor(max_trials=2, max_accuracy_drop=0.02), profile=cpu,
    )  # fmt: skip
    assert main.name == "model.onnx"
    assert any("layers kept FP32: " in n and "/2/" in n for n in method.extra_notes)
    fp32 = load_session(trial_artifact(broken_mlp, "onnx"), "onnxruntime", cpu).run(x_val)
    out = load_session(trial_artifact(main, "onnx"), "onnxruntime", cpu).run(x_val)
    assert np.mean(out.argmax(1) == fp32.argmax(1)) > 0.95


@pytest.mark.parametrize("drop", [-0.1, 1.5, float("nan")])
def test_bad_budgets_are_config_errors(
    drop: float, broken_mlp: Path, digits: tuple, cpu: HardwareProfile, tmp_path: Path
) -> None:
    x_train, _, x_val, y_val = digits
    with pytest.raises(ConfigError, match=r"must be a fraction between 0 and 1 .* but got"):
        AccuracyBudget(drop)
    with pytest.raises(ConfigError, match=r"max_accuracy_drop must be a fraction"):
        get_quantizer("int8_accuracy_aware").tune(  # type: ignore[attr-defined]
            broken_mlp, tmp_path, calibration=x_train[:50], x_val=x_val, y_val=y_val,
            cfg=per_tensor(), profile=cpu, max_accuracy_drop=drop,
        )  # fmt: skip
    if np.isfinite(drop):
        with pytest.raises(ConfigError, match=r"stages.quantize.max_accuracy_drop"):
            config_from_dict({"stages": {"quantize": {"max_accuracy_drop": drop}}})
    with pytest.raises(ConfigError, match=r"max_trials must be an integer >= 1, but got 0"):
        AccuracyBudget(0.01, max_trials=0)
    with pytest.raises(ConfigError, match=r"time_budget_s must be positive, but got -1"):
        AccuracyBudget(0.01, time_budget_s=-1)


def test_empty_calibration_and_validation_are_data_errors(
    broken_mlp: Path, digits: tuple, cpu: HardwareProfile, tmp_path: Path
) -> None:
    x_train, _, x_val, y_val = digits
    method = get_quantizer("int8_accuracy_aware")
    with pytest.raises(DataError, match=r"needs calibration inputs .* but got an empty array"):
        method.tune(  # type: ignore[attr-defined]
            broken_mlp, tmp_path, calibration=np.empty((0, 64), np.float32), x_val=x_val,
            y_val=y_val, cfg=per_tensor(), profile=cpu,
        )  # fmt: skip
    with pytest.raises(DataError, match=r"needs validation inputs, but got an empty array"):
        method.tune(  # type: ignore[attr-defined]
            broken_mlp, tmp_path, calibration=x_train[:50], x_val=x_val[:0], y_val=None,
            cfg=per_tensor(), profile=cpu,
        )  # fmt: skip
    with pytest.raises(DataError, match=r"one row per input \(300\), but got 10"):
        ValidationScorer(broken_mlp, "onnxruntime", cpu, x_val, y_val[:10])


def test_layers_figure_and_records_param() -> None:
    from hamnet.compress.quantize.attribution import layers_figure

    records = [
        {"name": "a", "op_type": "Gemm", "weight": "w", "precision": "fp32", "error": 0.2,
         "output_error": 0.1},
        {"name": "b", "op_type": "Gemm", "weight": "v", "precision": "int8", "error": 0.0,
         "output_error": 0.001},
    ]  # fmt: skip
    fig = layers_figure(records)
    assert len(fig.axes[0].patches) == 2
    assert LAYERS_PARAM == "quantization_layers"


def test_quantize_stage_returns_fallback_children_with_layer_records(
    broken_mlp: Path, cpu: HardwareProfile, tmp_path: Path
) -> None:
    from hamnet.core.artifacts import ArtifactStore
    from hamnet.core.candidate import Candidate
    from hamnet.pipeline.stages.base import StageContext
    from hamnet.pipeline.stages.quantize import QuantizeStage

    config = config_from_dict({
        "model": {"source": "file", "path": str(broken_mlp)},
        "data": {"source": "digits"},
        "constraints": {"max_accuracy_drop": 0.01},
        "stages": {"train": None, "export": None, "quantize": {
            "methods": ["ort_static_int8", "int8_accuracy_aware"], "per_channel": False,
            "calibration_samples": 200, "max_trials": 3, "fallback_top_k": 3,
        }},
    })  # fmt: skip
    store = ArtifactStore(tmp_path / "run" / "artifacts")
    ctx = StageContext(config=config, profile=cpu, store=store, base_dir=tmp_path)
    source = Candidate.create(
        name="baseline", stage="load", method="file", artifact=store.put(broken_mlp, "onnx"),
        runtime="onnxruntime",
    )  # fmt: skip
    out = QuantizeStage().run([source], ctx)
    assert out[0].method == "ort_static_int8"
    tuned = [c for c in out if c.method == "int8_accuracy_aware"]
    assert tuned, ctx.notes
    assert all(c.precision == "mixed" and c.params["fallback_layers"] for c in tuned)
    assert any("/2/Gemm" in c.params["fallback_layers"] for c in tuned)
    assert all(any("layers kept FP32" in n for n in c.notes) for c in tuned)
    records = tuned[0].params[LAYERS_PARAM]
    assert records[0]["weight"] == BROKEN_WEIGHT and records[0]["precision"] == "fp32"
    assert any("int8_accuracy_aware for baseline" in n for n in ctx.notes)
    db = tmp_path / "run" / "quantize" / "accuracy_aware.db"
    assert db.is_file()
    # Every measured assignment but all-INT8 (ort_static_int8 stands for it) is a child.
    measured = _measured_assignments(db)
    assert frozenset() in measured
    assert len(tuned) == len(measured) - 1
    assert {frozenset(c.params["fallback_layers"]) for c in tuned} == measured - {frozenset()}
    assert len({c.id for c in tuned}) == len(tuned)
    assert sum("the tuning's pick" in n for c in tuned for n in c.notes) == 1


def _measured_assignments(db: Path) -> set[frozenset[str]]:
    """The distinct fallback sets the study measured (repeated and settled samples not)."""
    import optuna

    (summary,) = optuna.get_all_study_summaries(f"sqlite:///{db}")
    study = optuna.load_study(study_name=summary.study_name, storage=f"sqlite:///{db}")
    return {
        frozenset(t.user_attrs["fallback"])
        for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
        if "fallback" in t.user_attrs
    }


def test_every_tried_assignment_is_a_child_without_a_plain_method(
    broken_mlp: Path, cpu: HardwareProfile, tmp_path: Path
) -> None:
    from hamnet.core.artifacts import ArtifactStore
    from hamnet.core.candidate import Candidate
    from hamnet.pipeline.stages.base import StageContext
    from hamnet.pipeline.stages.quantize import QuantizeStage

    config = config_from_dict({
        "model": {"source": "file", "path": str(broken_mlp)},
        "data": {"source": "digits"},
        "constraints": {"max_accuracy_drop": 0.01},
        "stages": {"train": None, "export": None, "quantize": {
            "methods": ["int8_accuracy_aware"], "per_channel": False,
            "calibration_samples": 200, "max_trials": 8, "fallback_top_k": 3,
        }},
    })  # fmt: skip
    store = ArtifactStore(tmp_path / "run" / "artifacts")
    ctx = StageContext(config=config, profile=cpu, store=store, base_dir=tmp_path)
    source = Candidate.create(
        name="baseline", stage="load", method="file", artifact=store.put(broken_mlp, "onnx"),
        runtime="onnxruntime",
    )  # fmt: skip
    out = QuantizeStage().run([source], ctx)
    measured = _measured_assignments(tmp_path / "run" / "quantize" / "accuracy_aware.db")
    # Plain INT8, each greedy level and each search trial: one child per distinct set.
    assert len(out) == len(measured) >= 3, ctx.notes
    assert {frozenset(c.params["fallback_layers"]) for c in out} == measured
    plain = next(c for c in out if not c.params["fallback_layers"])
    assert plain.precision == "int8" and plain.params["origin"] == "int8"
    assert {c.params["origin"] for c in out} >= {"int8", "greedy"}
    assert all(c.parent_id == source.id for c in out)
    assert all(any("layers kept FP32" in n and "tuning p50" in n for n in c.notes) for c in out)


def test_search_stops_when_every_assignment_is_settled(
    broken_mlp: Path, digits: tuple, cpu: HardwareProfile, tmp_path: Path
) -> None:
    from hamnet.compress.quantize.accuracy_aware import TriedAssignment, promising

    def tried(fallback: tuple[str, ...], meets: bool) -> TriedAssignment:
        return TriedAssignment(0, "search", fallback, 0.9, 0.0 if meets else 0.5, 1.0, meets)

    missed = [tried(("a", "b"), False)]
    assert not promising(frozenset({"a"}), missed)  # fewer float layers than a miss
    assert not promising(frozenset(), missed)
    assert promising(frozenset({"c"}), missed)
    assert promising(frozenset({"a", "b", "c"}), missed)
    assert promising(frozenset({"a"}), [tried(("a", "b"), True)])

    x_train, _, x_val, y_val = digits
    result = get_quantizer("int8_accuracy_aware").tune(  # type: ignore[attr-defined]
        broken_mlp, tmp_path / "out", calibration=x_train[:200], x_val=x_val, y_val=y_val,
        cfg=per_tensor(max_trials=50, fallback_top_k=3), profile=cpu, max_accuracy_drop=0.01,
    )  # fmt: skip
    # Two ranked layers (one always stays INT8): four assignments, then the search stops
    # instead of asking the sampler again and again.
    assert len(result.tried) <= 4
    assert "settled" in result.stopped
    assert {"open_study", "plain_int8", "attribution", "score", "latency", "total"} <= set(
        result.timings
    )
    assert result.timings["total"] >= result.timings["attribution"] > 0
    assert "total" in result.timing_summary()


def test_openvino_builder_reuses_calibration_statistics_exactly(
    broken_mlp: Path, digits: tuple, cpu: HardwareProfile, tmp_path: Path
) -> None:
    ov = pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from hamnet.compress.quantize.accuracy_aware import OpenVinoMixedBuilder

    x_train, _, x_val, _ = digits
    reused = OpenVinoMixedBuilder(broken_mlp, x_train[:64], per_tensor(), cpu, tmp_path / "a")
    full = OpenVinoMixedBuilder(broken_mlp, x_train[:64], per_tensor(), cpu, tmp_path / "b")
    full.reuse_statistics = False
    names = [layer.name for layer in reused.layers()]
    core = ov.Core()
    for index, kwargs in enumerate([{}, {"fallback": frozenset(names[1:2])}, {"only": names[0]}]):
        a = reused.build(tmp_path / f"a{index}", **kwargs)  # type: ignore[arg-type]
        b = full.build(tmp_path / f"b{index}", **kwargs)  # type: ignore[arg-type]
        out_a = core.compile_model(str(a), "CPU")(x_val)[0]
        out_b = core.compile_model(str(b), "CPU")(x_val)[0]
        np.testing.assert_array_equal(out_a, out_b)
    assert reused._statistics is not None and full._statistics is None


def test_layer_records_are_logged_to_mlflow(tmp_path: Path) -> None:
    mlflow = pytest.importorskip("mlflow")
    from hamnet.compress.quantize.attribution import log_quantization_layers
    from hamnet.core.artifacts import ArtifactStore
    from hamnet.core.candidate import Candidate

    f = tmp_path / "m.onnx"
    f.write_bytes(b"x")
    records = [
        {"name": "/2/Gemm", "op_type": "Gemm", "weight": "2.weight", "precision": "fp32",
         "error": 0.8, "output_error": 0.5},
        {"name": "/0/Gemm", "op_type": "Gemm", "weight": "0.weight", "precision": "int8",
         "error": 0.0, "output_error": 0.001},
    ]  # fmt: skip
    candidate = Candidate.create(
        name="c", stage="quantize", method="int8_accuracy_aware",
        artifact=ArtifactStore(tmp_path / "s").put(f, "onnx"), runtime="onnxruntime",
        params={LAYERS_PARAM: records},
    )  # fmt: skip
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("q", artifact_location=str(tmp_path / "artifacts"))
    run_id = client.create_run(experiment).info.run_id
    log_quantization_layers(client, run_id, candidate)
    listed = {a.path for a in client.list_artifacts(run_id, "quantization")}
    assert listed == {"quantization/layers.json", "quantization/layers.png"}


KILLED_TUNING = """
import sys, time
from pathlib import Path

sys.path.insert(0, {test_dir!r})
import test_accuracy_aware as t

model, storage = Path(sys.argv[1]), Path(sys.argv[2])
x_train, _, x_val, y_val = t._digits()


class SlowBuilder(t.OrtMixedBuilder):
    builds = 0

    def build(self, out_dir, **kwargs):
        type(self).builds += 1
        if type(self).builds > 5:  # after the attribution and two trials: long builds
            time.sleep(3.0)
        return super().build(out_dir, **kwargs)


class SlowMethod(t.Int8AccuracyAware):
    builder_class = SlowBuilder


SlowMethod().tune(
    model, storage.parent / "out-killed", calibration=x_train[:200], x_val=x_val, y_val=y_val,
    cfg=t.per_tensor(max_trials=6, fallback_top_k=3), profile=t.load_profile("x86-avx2",
    require_present=False), max_accuracy_drop=0.01, storage_dir=storage,
)
"""


def _finished(storage: Path) -> int:
    """Assignments measured so far, read while another process writes the study.

    Read-only SQL on Optuna's tables: opening the file as an Optuna storage would create
    its schema, racing the writer's own creation of it (a UNIQUE constraint failure on
    ``alembic_version`` in the writer).
    """
    import sqlite3

    db = next(storage.glob("*.db"), None)
    if db is None:
        return 0
    query = (
        "SELECT COUNT(DISTINCT a.value_json) FROM trial_user_attributes a "
        "JOIN trials t ON t.trial_id = a.trial_id WHERE a.key = 'fallback' "
        "AND t.state = 'COMPLETE'"
    )
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            return int(conn.execute(query).fetchone()[0])
    except sqlite3.Error:  # the file is there before its tables, or the writer holds the lock
        return 0


def test_a_killed_tuning_resumes_without_repeating_a_finished_trial(
    broken_mlp: Path, digits: tuple, cpu: HardwareProfile, tmp_path: Path
) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    storage = tmp_path / "study"
    script = tmp_path / "killed.py"
    script.write_text(KILLED_TUNING.format(test_dir=str(Path(__file__).parent)))
    proc = subprocess.Popen(
        [sys.executable, str(script), str(broken_mlp), str(storage)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 150
        while _finished(storage) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
        os.killpg(proc.pid, signal.SIGKILL)  # mid-build of the next trial
    finally:
        proc.kill()
        proc.wait()
    before = _finished(storage)
    assert before >= 2

    x_train, _, x_val, y_val = digits
    CountingBuilder.builds = 0
    resumed = CountingMethod().tune(
        broken_mlp, tmp_path / "out-resumed", calibration=x_train[:200], x_val=x_val,
        y_val=y_val, cfg=per_tensor(max_trials=6, fallback_top_k=3), profile=cpu,
        max_accuracy_drop=0.01, storage_dir=storage,
    )  # fmt: skip
    assert resumed.reused == before  # every trial finished before the kill is read back
    fallbacks = [frozenset(t.fallback) for t in resumed.tried]
    assert len(fallbacks) == len(set(fallbacks))  # and none is measured again
    assert CountingBuilder.builds == resumed.ran  # no attribution redone either
    assert resumed.best().meets_budget
