"""Accuracy-aware INT8: fall back the most harmful layers to float until a budget holds.

The recipe of accuracy-driven tuners (Intel Neural Compressor, NNCF accuracy
control), on hamnet's own parts:

1. Quantize every layer to INT8 and score it on the validation split
   (:class:`~hamnet.compress.quantize.attribution.ValidationScorer`). If the score
   drop is within ``max_accuracy_drop``, that is the answer.
2. Otherwise rank the layers by the error each adds alone
   (:func:`~hamnet.compress.quantize.attribution.attribute_layers`).
3. Greedy: keep the most harmful layer, then the next, ... in float until the drop
   is within the budget.
4. Search: an Optuna TPE study (with the budget as a constraint) over which of the
   ``top_k`` most harmful layers stay INT8, minimizing the latency measured by
   :func:`hamnet.evaluate.measure.latency_ms`, for the *fastest* assignment that
   meets the budget.

Every tried assignment is an Optuna trial in an RDB study (SQLite by default), named
after the model's hash and the settings that change the answer, so a killed tuning
resumes: a finished assignment is read back, never rebuilt. Trials stop at
``max_trials`` (finished trials in the study, resumed ones included) or after
``time_budget_s`` of this call.

Two builders make the mixed models: :class:`OrtMixedBuilder` (ONNX Runtime static
QDQ INT8, fallback layers in ``nodes_to_exclude``, calibration ranges computed once
and cached) and :class:`OpenVinoMixedBuilder` (NNCF post-training quantization,
fallback layers in its ``ignored_scope``).
"""

from __future__ import annotations

import logging
import math
import shutil
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from hamnet.backends.session import require
from hamnet.compress.quantize._calibration import make_calibration_reader, nncf_items
from hamnet.compress.quantize._graph import has_attention, input_names, preprocess
from hamnet.compress.quantize.attribution import (
    LAYER_OP_TYPES,
    LayerAttribution,
    MixedPrecisionBuilder,
    QuantLayer,
    ValidationScorer,
    attribute_layers,
)
from hamnet.compress.quantize.base import QuantizationMethod, QuantizeJob
from hamnet.core.errors import ConfigError, DataError

if TYPE_CHECKING:
    from collections.abc import Iterable

    from hamnet.core.config import QuantizeStageConfig
    from hamnet.core.hardware import HardwareProfile

logger = logging.getLogger("hamnet.quantize")

__all__ = [
    "AccuracyAwareQuantizer",
    "AccuracyBudget",
    "OpenVinoMixedBuilder",
    "OrtMixedBuilder",
    "TriedAssignment",
    "TuningResult",
    "promising",
    "study_name_for",
    "tune_fallback",
]

_PARAM_PREFIX = "fp32:"
"""Optuna param name prefix: ``fp32:<layer>`` is True when the layer stays float."""
_MAX_DUPLICATES = 25
"""Consecutive already-tried samples after which the search stops (space exhausted)."""
_CONSTRAINT = "accuracy_drop"
"""The Optuna constraint: score drop minus the budget (feasible when <= 0)."""


@dataclass(frozen=True)
class AccuracyBudget:
    """What an accuracy-aware tuning must meet and may spend.

    Attributes:
        max_accuracy_drop: Largest score drop from the FP32 model on the validation
            split, as a fraction (0.01 = one point), like ``constraints.max_accuracy_drop``.
        max_trials: Most assignments tried (finished trials in the study, resumed ones
            included); the per-layer attribution is not counted.
        time_budget_s: Wall-clock seconds this call may spend (attribution included).
        top_k: How many of the most harmful layers the greedy pass and the search may
            keep in float (at most all layers but one: some layer always stays INT8).

    Raises:
        ConfigError: A value is out of range (the message names what was expected and
            what was got).
    """

    max_accuracy_drop: float = 0.01
    max_trials: int = 12
    time_budget_s: float = 600.0
    top_k: int = 8

    def __post_init__(self) -> None:
        drop = self.max_accuracy_drop
        if not isinstance(drop, (int, float)) or not math.isfinite(drop) or not 0 <= drop <= 1:
            raise ConfigError(
                "max_accuracy_drop must be a fraction between 0 and 1 (0.01 = one point), "
                f"but got {drop!r}"
            )
        if not isinstance(self.max_trials, int) or self.max_trials < 1:
            raise ConfigError(f"max_trials must be an integer >= 1, but got {self.max_trials!r}")
        if not self.time_budget_s > 0:
            raise ConfigError(f"time_budget_s must be positive, but got {self.time_budget_s!r}")
        if not isinstance(self.top_k, int) or self.top_k < 1:
            raise ConfigError(f"top_k must be an integer >= 1, but got {self.top_k!r}")

    @classmethod
    def from_config(
        cls, cfg: QuantizeStageConfig, default_drop: float | None = None
    ) -> AccuracyBudget:
        """The budget of ``stages.quantize``; its ``max_accuracy_drop`` unset means
        ``default_drop`` (the run's constraint), else 0.01."""
        drop = cfg.max_accuracy_drop
        if drop is None:
            drop = 0.01 if default_drop is None else default_drop
        return cls(drop, cfg.max_trials, cfg.time_budget_s, cfg.fallback_top_k)


@dataclass(frozen=True)
class TriedAssignment:
    """One assignment of layers to precisions and what it measured.

    Attributes:
        trial: The Optuna trial number.
        origin: ``"int8"`` (every layer INT8), ``"greedy"`` or ``"search"``.
        fallback: The layers kept in float, most harmful first.
        score: Its validation score.
        drop: Baseline score minus ``score``.
        latency_ms: Its p50 latency at the profile's latency batch size.
        meets_budget: Whether ``drop`` is within the budget.
        path: Its model file (None when read back from an earlier run).
    """

    trial: int
    origin: str
    fallback: tuple[str, ...]
    score: float
    drop: float
    latency_ms: float
    meets_budget: bool
    path: Path | None = None

    @property
    def precision(self) -> str:
        """``"int8"`` when no layer fell back, else ``"mixed"``."""
        return "mixed" if self.fallback else "int8"


@dataclass
class TuningResult:
    """What :func:`tune_fallback` found.

    Attributes:
        baseline_score: The FP32 model's validation score.
        budget: The budget it tuned for.
        attribution: Per-layer error records, most harmful first.
        tried: Every assignment of the study (earlier runs' included), by trial number.
        ran: How many assignments this call built and measured.
        reused: How many finished assignments it read back from the study.
        study_name: The Optuna study.
        stopped: Why the tuning stopped.
        timings: Seconds this call spent per phase: ``open_study``, ``plain_int8``
            (the all-INT8 build; with ONNX Runtime it includes the one calibration),
            ``attribution`` (one build and scoring per layer), ``build``, ``score``
            and ``latency`` (of the trials after the first), ``search`` (the sampler
            and the study's storage) and ``total``.
        skipped: Assignments the search proposed but did not measure because a tried
            one settles them (see :func:`promising`).
    """

    baseline_score: float
    budget: AccuracyBudget
    attribution: list[LayerAttribution]
    tried: list[TriedAssignment] = field(default_factory=list)
    ran: int = 0
    reused: int = 0
    study_name: str = ""
    stopped: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    skipped: int = 0

    def add_time(self, phase: str, seconds: float) -> None:
        """Add ``seconds`` to ``timings[phase]``."""
        self.timings[phase] = self.timings.get(phase, 0.0) + seconds

    def timing_summary(self) -> str:
        """The phase timings on one line (``phase 1.23 s, ...``), largest first."""
        ordered = sorted(self.timings.items(), key=lambda kv: -kv[1])
        return ", ".join(f"{name} {seconds:.2f} s" for name, seconds in ordered)

    def best(self) -> TriedAssignment | None:
        """The fastest assignment that meets the budget, else the one with the smallest drop."""
        if not self.tried:
            return None
        meets = [t for t in self.tried if t.meets_budget]
        if meets:
            return min(meets, key=lambda t: (t.latency_ms, len(t.fallback)))
        return min(self.tried, key=lambda t: (t.drop, t.latency_ms))

    def front(self) -> list[TriedAssignment]:
        """The tried assignments no other beats on both score and latency, by trial."""
        return [
            t
            for t in self.tried
            if not any(
                o is not t
                and o.score >= t.score
                and o.latency_ms <= t.latency_ms
                and (o.score > t.score or o.latency_ms < t.latency_ms)
                for o in self.tried
            )
        ]

    def layers_for(self, assignment: TriedAssignment | None) -> list[LayerAttribution]:
        """The attribution records with ``precision`` as ``assignment`` chose it."""
        fallback = set(assignment.fallback) if assignment else set()
        return [replace(r, precision="fp32") if r.name in fallback else r for r in self.attribution]

    def summary(self) -> str:
        """One line: trials, how many ran and were reused, the best assignment."""
        best = self.best()
        what = "none"
        if best is not None:
            kept = ", ".join(best.fallback) or "no layer"
            verdict = "meets" if best.meets_budget else "misses"
            what = (
                f"trial {best.trial} ({best.origin}) keeps {kept} in FP32: drop "
                f"{100 * best.drop:.2f} points, {verdict} the budget of "
                f"{100 * self.budget.max_accuracy_drop:.2f}, p50 {best.latency_ms:.3f} ms"
            )
        return (
            f"{len(self.tried)} assignments in study {self.study_name!r} ({self.ran} run now, "
            f"{self.reused} read back); stopped: {self.stopped}; best: {what}"
        )


_KEEP_FLOAT_INPUTS: dict[str, Any] = {
    "OpTypesToExcludeOutputQuantization": list(LAYER_OP_TYPES),
    "DedicatedQDQPair": True,
}
"""Quantizer options that keep a fallback layer really float. ONNX Runtime's session
optimizer quantizes the constant weights of any Gemm/MatMul fed by a DequantizeLinear
(even at the basic level), so a layer left out by ``nodes_to_exclude`` whose input is a
quantized neighbour's quantized output ran in INT8 anyway (measured: agreement 0.11
instead of 1.00 on the broken-layer test model). Layer outputs are therefore not
quantized, and each quantized consumer of a tensor gets its own Q/DQ pair, so a float
layer reads the float tensor."""


class OrtMixedBuilder:
    """ONNX Runtime static QDQ INT8 (MinMax; weights QInt8, activations QUInt8) where
    the fallback layers are left out of quantization (``nodes_to_exclude``).

    The graph is pre-processed once (:func:`~hamnet.compress.quantize._graph.preprocess`)
    and calibrated once: the ranges are cached in ``work/calibration.json`` and reused
    by every later build. Layer outputs are not quantized and every quantized consumer
    gets its own Q/DQ pair (see :data:`_KEEP_FLOAT_INPUTS`), so the all-INT8 model
    differs slightly from ``ort_static_int8``'s.

    Args:
        source: The FP32 ONNX model.
        calibration: Calibration inputs ``[N, ...]`` (checked, non-empty).
        cfg: The quantize stage settings (per-channel, reduce-range).
        profile: The target hardware.
        work: A scratch folder kept while the builder is used.
    """

    runtime = "onnxruntime"
    output_format = "onnx"

    def __init__(
        self,
        source: Path,
        calibration: np.ndarray,
        cfg: QuantizeStageConfig,
        profile: HardwareProfile,
        work: Path,
    ) -> None:
        from hamnet.compress.quantize.base import resolve_reduce_range

        self.work = Path(work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.source = Path(source)
        self.model = _named_nodes(preprocess(self.source, self.work), self.work / "named.onnx")
        self.calibration = calibration
        self.input_name = input_names(self.source)[0]
        self.per_channel = cfg.per_channel
        self.reduce_range = resolve_reduce_range(cfg, profile)
        self.cache = self.work / "calibration.json"

    def layers(self) -> list[QuantLayer]:
        """MatMul / Gemm / Conv nodes with an initializer input, in graph order."""
        onnx = require("onnx")
        graph = onnx.load(str(self.model), load_external_data=False).graph
        weights = {init.name for init in graph.initializer}
        out = []
        for node in graph.node:
            if node.op_type not in LAYER_OP_TYPES:
                continue
            const = [name for name in node.input if name in weights]
            if const and node.name:
                out.append(QuantLayer(node.name, node.op_type, const[0]))
        return out

    def build(
        self, out_dir: Path, *, fallback: frozenset[str] = frozenset(), only: str | None = None
    ) -> Path:
        """Write ``out_dir/model.onnx``: all layers INT8 but ``fallback``, or only ``only``."""
        quantization = require("onnxruntime.quantization", "onnxruntime")
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / "model.onnx"
        reader = None
        if not self.cache.is_file():
            reader = make_calibration_reader(self.calibration, self.input_name)
        quantization.quantize_static(
            str(self.model),
            str(target),
            reader,
            quant_format=quantization.QuantFormat.QDQ,
            per_channel=self.per_channel,
            reduce_range=self.reduce_range,
            activation_type=quantization.QuantType.QUInt8,
            weight_type=quantization.QuantType.QInt8,
            calibrate_method=quantization.CalibrationMethod.MinMax,
            nodes_to_quantize=[only] if only is not None else None,
            nodes_to_exclude=sorted(fallback) or None,
            calibration_cache_path=str(self.cache),
            extra_options=dict(_KEEP_FLOAT_INPUTS),
        )
        return target


def _named_nodes(model: Path, target: Path) -> Path:
    """``model``, or a copy at ``target`` where every unnamed node got a unique name
    (``nodes_to_exclude`` and the layer records address nodes by name)."""
    onnx = require("onnx")
    proto = onnx.load(str(model))
    taken = {node.name for node in proto.graph.node if node.name}
    unnamed = [node for node in proto.graph.node if not node.name]
    if not unnamed:
        return model
    for index, node in enumerate(proto.graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
    onnx.save(proto, str(target))
    return target


class OpenVinoMixedBuilder:
    """NNCF post-training INT8 of the OpenVINO model where the fallback layers are in
    NNCF's ``ignored_scope`` (they stay FP32).

    Graphs with attention are quantized with ``model_type=TRANSFORMER`` and the
    ``MIXED`` preset, as :mod:`~hamnet.compress.quantize.methods.nncf_int8` does.

    Args:
        source: The FP32 ONNX model.
        calibration: Calibration inputs ``[N, ...]`` (checked, non-empty).
        cfg: The quantize stage settings (unused by NNCF; kept for the same signature).
        profile: The target hardware.
        work: A scratch folder kept while the builder is used.
    """

    runtime = "openvino"
    output_format = "openvino"
    _TYPES = ("MatMul", "Convolution", "GroupConvolution")

    def __init__(
        self,
        source: Path,
        calibration: np.ndarray,
        cfg: QuantizeStageConfig,
        profile: HardwareProfile,
        work: Path,
    ) -> None:
        ov = require("openvino")
        nncf = require("nncf")
        self.source = Path(source)
        self.model = ov.convert_model(str(self.source))
        self.dataset = nncf.Dataset(nncf_items(calibration, input_names(self.source)))
        self.subset_size = len(calibration)
        self.options: dict[str, Any] = {}
        if has_attention(self.source):
            self.options["model_type"] = nncf.ModelType.TRANSFORMER
            self.options["preset"] = nncf.QuantizationPreset.MIXED
        self._statistics: Any = None
        self.reuse_statistics = True
        """Calibrate once: the statistics NNCF collects for the all-INT8 model serve
        every later build (an ignored layer only drops quantizers). False, or a build
        the statistics do not cover, runs ``nncf.quantize`` in full."""

    def layers(self) -> list[QuantLayer]:
        """MatMul / Convolution operations with a constant weight, in graph order."""
        out = []
        for op in self.model.get_ordered_ops():
            if op.get_type_name() not in self._TYPES:
                continue
            for port in op.inputs():
                node = port.get_source_output().get_node()
                while node.get_type_name() == "Convert":
                    node = node.input(0).get_source_output().get_node()
                if node.get_type_name() == "Constant":
                    out.append(QuantLayer(op.get_friendly_name(), op.get_type_name(),
                                          node.get_friendly_name()))  # fmt: skip
                    break
        return out

    def build(
        self, out_dir: Path, *, fallback: frozenset[str] = frozenset(), only: str | None = None
    ) -> Path:
        """Write ``out_dir/model.xml``: all layers INT8 but ``fallback``, or only ``only``."""
        ov = require("openvino")
        nncf = require("nncf")
        ignored = set(fallback)
        if only is not None:
            ignored = {layer.name for layer in self.layers()} - {only}
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / "model.xml"
        scope = nncf.IgnoredScope(names=sorted(ignored), validate=False)
        quantized = self._with_statistics(scope) if self.reuse_statistics else None
        if quantized is None:
            quantized = nncf.quantize(
                self.model.clone(), self.dataset, subset_size=self.subset_size,
                ignored_scope=scope, **self.options,
            )  # fmt: skip
        ov.save_model(quantized, str(target), compress_to_fp16=False)
        return target

    def _with_statistics(self, scope: Any) -> Any:
        """NNCF's post-training quantization (the steps of ``nncf.quantize`` for an
        OpenVINO model without If operations) run on the statistics collected once for
        the all-INT8 model; None when they do not cover this build (then it runs in
        full)."""
        from nncf.openvino.graph.model_utils import remove_friendly_name_duplicates
        from nncf.openvino.graph.nncf_graph_builder import GraphConverter
        from nncf.openvino.graph.node_utils import get_number_if_op
        from nncf.openvino.quantization.quantize_model import (
            compress_quantize_weights_transformation,
        )
        from nncf.quantization.algorithms.pipeline import collect_statistics
        from nncf.quantization.algorithms.post_training.algorithm import (
            PostTrainingQuantization,
        )

        def algorithm(ignored: Any = None) -> Any:
            return PostTrainingQuantization(
                subset_size=self.subset_size, ignored_scope=ignored, **self.options
            )

        try:
            if get_number_if_op(self.model) > 0:  # nncf.quantize quantizes If bodies apart
                return None
            model = remove_friendly_name_duplicates(self.model.clone())
            graph = GraphConverter.create_nncf_graph(model)
            if self._statistics is None:
                reference = algorithm()
                points = reference.get_statistic_points(model, graph)
                collected = collect_statistics(points, model, graph, self.dataset)
                self._statistics = (_algorithm_keys(reference), collected)
            keys, collected = self._statistics
            ptq = algorithm(scope)
            wanted = ptq.get_statistic_points(model, graph)  # sets up its quantizers
            renamed = _renamed_statistics(collected, dict(zip(keys, _algorithm_keys(ptq),
                                                              strict=True)))  # fmt: skip
            if not _covers(renamed, wanted):  # NNCF would quantize with missing ranges
                return None
            quantized = ptq.apply(model, graph, statistic_points=renamed, dataset=self.dataset)
            compress_quantize_weights_transformation(quantized)
        except (KeyError, RuntimeError, ValueError, AttributeError, ImportError) as err:
            logger.info("NNCF statistics not reused for this build (%s): quantizing in full", err)
            return None
        return quantized


def _algorithm_keys(ptq: Any) -> list[str]:
    """The statistics keys of a post-training quantization's first step's algorithms
    (NNCF keys the statistics it collects by algorithm instance)."""
    return [algo._algorithm_key for algo in ptq._pipeline.pipeline_steps[0]]


def _renamed_statistics(collected: Any, keys: dict[str, str]) -> Any:
    """A copy of a ``StatisticPointsContainer`` whose collectors are filed under
    ``keys[old]`` (another instance of the same algorithms); the collectors are shared."""
    from nncf.common.tensor_statistics.statistic_point import (
        StatisticPoint,
        StatisticPointsContainer,
    )

    out = StatisticPointsContainer()
    for points in collected.values():
        for point in points:
            for old, collectors in point.algorithm_to_tensor_collectors.items():
                for collector in collectors:
                    out.add_statistic_point(
                        StatisticPoint(point.target_point, collector, keys.get(old, old))
                    )
    return out


def _covers(collected: Any, wanted: Any) -> bool:
    """Whether ``collected`` has a collector for every (target point, algorithm) of
    ``wanted`` (both ``StatisticPointsContainer``)."""
    for name, points in wanted.items():
        have = collected.get(name, [])
        for point in points:
            for key in point.algorithm_to_tensor_collectors:
                if not any(
                    h.target_point == point.target_point and key in h.algorithm_to_tensor_collectors
                    for h in have
                ):
                    return False
    return True


def study_name_for(source: Path, builder: MixedPrecisionBuilder, settings: dict[str, Any]) -> str:
    """The study's name: the model file's hash and the settings that change the answer."""
    from hamnet.core.artifacts import hash_files
    from hamnet.core.hashing import hash_json

    model = hash_files([Path(source)])[:12]
    return f"int8-accuracy-aware-{builder.runtime}-{model}-{hash_json(settings, length=10)}"


def _data_digest(*arrays: np.ndarray | None) -> str:
    import hashlib

    digest = hashlib.sha256()
    for a in arrays:
        if a is not None:
            digest.update(np.ascontiguousarray(a).tobytes())
    return digest.hexdigest()[:12]


def tune_fallback(
    builder: MixedPrecisionBuilder,
    scorer: ValidationScorer,
    budget: AccuracyBudget,
    *,
    work: Path,
    storage_url: str,
    study_name: str,
    x_latency: np.ndarray,
    seed: int = 0,
    latency_repeats: int = 20,
    confirm_repeats: int = 100,
) -> TuningResult:
    """Find float fallback layers for which INT8 meets ``budget``; resumable.

    Args:
        builder: Makes the mixed-precision models.
        scorer: Scores them on the validation split against the FP32 model.
        budget: Accuracy budget and limits (trials, seconds, top-k layers).
        work: Folder for the models of the trials (each in ``trial-<n>``).
        storage_url: The Optuna RDB storage (``sqlite:///.../accuracy_aware.db``).
        study_name: The study (see :func:`study_name_for`): a study of the same name
            is resumed.
        x_latency: The latency batch.
        seed: Seed of the TPE sampler.
        latency_repeats: Timed calls per latency measurement during the search (a
            quick figure; the contenders are confirmed at the end).
        confirm_repeats: Timed calls per round when the contenders (the assignments
            that meet the budget within 15% of the fastest, at most three, built by
            this call) are timed again side by side, three interleaved rounds; their
            ``latency_ms`` becomes the median of the rounds. 0 skips the confirmation.

    Returns:
        The tuning result (every assignment of the study; those built by this call have
        a ``path``).

    Raises:
        ConfigError: The storage cannot be opened.
        DataError: The graph has no quantizable layer.
    """
    import optuna

    from hamnet.compress.search.storage import open_study

    started = time.monotonic()
    deadline = started + budget.time_budget_s
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    # The budget is an Optuna constraint (``accuracy_drop`` <= 0 is feasible), which
    # the TPE sampler reads to prefer assignments that meet it.
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=4)
    study = open_study(storage_url, study_name, ["minimize"], sampler, None)
    opened = time.monotonic() - started
    layers = builder.layers()
    if not layers:
        raise DataError(
            "accuracy-aware INT8 needs a graph with MatMul/Gemm/Conv layers that have "
            "constant weights, but got none"
        )
    result = TuningResult(scorer.baseline, budget, [], study_name=study.study_name)
    result.add_time("open_study", opened)
    done = _finished(study, result)
    run = _Runner(builder, scorer, budget, Path(work), x_latency, latency_repeats, study, [],
                  result)  # fmt: skip

    def evaluate(fallback: tuple[str, ...], origin: str) -> TriedAssignment:
        key = frozenset(fallback)
        if key in done:
            result.reused += 1
            return done[key]
        names = [layer.name for layer in layers] if origin == "int8" else run.ranked
        tried = run.fixed(fallback, origin, names)
        result.ran += 1
        done[key] = tried
        return tried

    def out_of_budget() -> str | None:
        if _completed(study) >= budget.max_trials:
            return f"max_trials ({budget.max_trials}) reached"
        if time.monotonic() > deadline:
            return f"time budget ({budget.time_budget_s:g} s) spent"
        return None

    # Plain INT8 first: the attribution (one build per layer) only when it misses.
    plain = None
    if frozenset() in done or not out_of_budget():
        plain = evaluate((), "int8")
    if plain is not None and plain.meets_budget:
        result.stopped = "every layer INT8 meets the budget"
    else:
        begun = time.monotonic()
        result.attribution = _attribution(study, builder, scorer, layers,
                                          Path(work) / "attribution", deadline)  # fmt: skip
        result.add_time("attribution", time.monotonic() - begun)
        # At least one layer stays INT8: every layer float is the FP32 model, no candidate.
        run.ranked = [r.name for r in result.attribution][: min(budget.top_k, len(layers) - 1)]
        result.stopped = out_of_budget() or _greedy(run.ranked, evaluate, out_of_budget) or ""
        if not result.stopped:
            result.stopped = _search(run, done, result, out_of_budget)
    result.tried = sorted(done.values(), key=lambda t: t.trial)
    if confirm_repeats > 0:
        begun = time.monotonic()
        result.tried = _confirm(run, result.tried, confirm_repeats)
        result.add_time("confirm", time.monotonic() - begun)
    result.add_time("total", time.monotonic() - started)
    accounted = sum(v for k, v in result.timings.items() if k != "total")
    result.add_time("sampler_and_storage", max(0.0, result.timings["total"] - accounted))
    logger.info("accuracy-aware INT8: %s; time: %s", result.summary(), result.timing_summary())
    return result


def _greedy(ranked: list[str], evaluate: Any, out_of_budget: Any) -> str | None:
    """Fall back the ranked layers one more at a time; the reason to stop, or None
    when every top-k layer fell back and the search may go on."""
    for count in range(1, len(ranked) + 1):
        reason = out_of_budget()
        if reason:
            return str(reason)
        if evaluate(tuple(ranked[:count]), "greedy").meets_budget:
            return None
    return None


_ENUMERATE_UP_TO = 12
"""Most ranked layers for which :func:`_settled` enumerates the whole search space."""


def promising(fallback: frozenset[str], tried: Iterable[TriedAssignment]) -> bool:
    """Whether an untried assignment may still meet the budget: it is not settled by a
    tried one that misses it and keeps every layer of ``fallback`` (and maybe more) in
    float. Keeping fewer layers float than an assignment that already misses the budget
    adds INT8 error, so such an assignment is not measured (the accuracy-driven tuners'
    assumption: error grows with the layers quantized)."""
    return not any(not t.meets_budget and fallback <= frozenset(t.fallback) for t in tried)


def _settled(ranked: list[str], done: dict[frozenset[str], TriedAssignment]) -> bool:
    """Whether every assignment over ``ranked`` is tried or not :func:`promising`
    (checked only for up to :data:`_ENUMERATE_UP_TO` layers; more are never settled)."""
    import itertools

    if len(ranked) > _ENUMERATE_UP_TO:
        return False
    tried = list(done.values())
    for size in range(len(ranked) + 1):
        for combo in itertools.combinations(ranked, size):
            key = frozenset(combo)
            if key not in done and promising(key, tried):
                return False
    return True


def _confirm(run: _Runner, tried: list[TriedAssignment], repeats: int) -> list[TriedAssignment]:
    """Time the contenders again side by side (see :func:`tune_fallback`), so the pick
    does not rest on the search's quick latency figures."""
    from hamnet.evaluate.measure import latency_ms

    meets = [t for t in tried if t.meets_budget and t.path is not None and Path(t.path).is_file()]
    if len(meets) < 2:
        return tried
    fastest = min(t.latency_ms for t in meets)
    contenders = sorted((t for t in meets if t.latency_ms <= 1.15 * fastest),
                        key=lambda t: t.latency_ms)[:3]  # fmt: skip
    if len(contenders) < 2:
        return tried
    fmt = run.builder.output_format
    sessions = {t.trial: run.scorer.session(Path(str(t.path)), fmt) for t in contenders}
    rounds: dict[int, list[float]] = {t.trial: [] for t in contenders}
    for _ in range(3):
        for t in contenders:
            p50, _ = latency_ms(sessions[t.trial], run.x_latency, warmup=10, repeats=repeats)
            rounds[t.trial].append(p50)
    return [
        replace(t, latency_ms=float(np.median(rounds[t.trial]))) if t.trial in rounds else t
        for t in tried
    ]


def _search(
    run: _Runner, done: dict[frozenset[str], TriedAssignment], result: TuningResult,
    out_of_budget: Any,
) -> str:  # fmt: skip
    """TPE over which ranked layers stay INT8; the reason it stopped."""
    if not run.ranked:
        return "no layer to search over"
    duplicates = 0
    while True:
        reason = out_of_budget()
        if reason:
            return str(reason)
        if _settled(run.ranked, done):
            return "every assignment of the ranked layers is tried or settled by a tried one"
        with warnings.catch_warnings():
            # hamnet's studies record heartbeats (for Ray workers); ask/tell needs none.
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            trial = run.study.ask()
        fallback = tuple(
            name
            for name in run.ranked
            if trial.suggest_categorical(_PARAM_PREFIX + name, [False, True])
        )
        key = frozenset(fallback)
        if key in done:
            # Already measured: told with the same figures, never rebuilt.
            old = done[key]
            trial.set_user_attr("drop", old.drop)
            trial.set_user_attr("duplicate_of", old.trial)
            trial.set_constraint(_CONSTRAINT, old.drop - run.budget.max_accuracy_drop)
            run.study.tell(trial, old.latency_ms)
            duplicates += 1
            if duplicates >= _MAX_DUPLICATES:
                return "the search keeps proposing assignments already tried"
            continue
        if not promising(key, done.values()):
            # Fewer float layers than one that misses the budget: told as missing it too
            # (by that trial's drop), never built.
            worst = max((t for t in done.values() if not t.meets_budget
                         and key <= frozenset(t.fallback)), key=lambda t: t.drop)  # fmt: skip
            trial.set_user_attr("drop", worst.drop)
            trial.set_user_attr("settled_by", worst.trial)
            trial.set_constraint(_CONSTRAINT, worst.drop - run.budget.max_accuracy_drop)
            run.study.tell(trial, worst.latency_ms)
            result.skipped += 1
            duplicates += 1
            if duplicates >= _MAX_DUPLICATES:
                return "the search keeps proposing assignments already tried or settled"
            continue
        duplicates = 0
        tried = run.measure(trial.number, fallback, "search")
        for name, value in tried_attrs(tried).items():
            trial.set_user_attr(name, value)
        trial.set_constraint(_CONSTRAINT, tried.drop - run.budget.max_accuracy_drop)
        run.study.tell(trial, tried.latency_ms)
        result.ran += 1
        done[key] = tried


def tried_attrs(tried: TriedAssignment) -> dict[str, Any]:
    """The user attributes a trial stores (what :func:`_finished` reads back)."""
    return {
        "origin": tried.origin,
        "fallback": list(tried.fallback),
        "score": tried.score,
        "drop": tried.drop,
        "meets_budget": tried.meets_budget,
    }


@dataclass
class _Runner:
    """Builds, scores and times assignments, and records them in the study."""

    builder: MixedPrecisionBuilder
    scorer: ValidationScorer
    budget: AccuracyBudget
    work: Path
    x_latency: np.ndarray
    repeats: int
    study: Any
    ranked: list[str]
    result: TuningResult | None = None

    def measure(self, number: int, fallback: tuple[str, ...], origin: str) -> TriedAssignment:
        from hamnet.evaluate.measure import latency_ms

        folder = self.work / f"trial-{number}"
        shutil.rmtree(folder, ignore_errors=True)
        marks = [time.monotonic()]
        main = self.builder.build(folder, fallback=frozenset(fallback))
        marks.append(time.monotonic())
        fmt = self.builder.output_format
        session = self.scorer.session(main, fmt)
        score = self.scorer.score(self.scorer.predict(session))
        marks.append(time.monotonic())
        p50, _ = latency_ms(session, self.x_latency, warmup=10, repeats=self.repeats)
        marks.append(time.monotonic())
        if self.result is not None:
            phases = ("plain_int8" if origin == "int8" else "build", "score", "latency")
            for phase, begin, end in zip(phases, marks, marks[1:], strict=False):
                self.result.add_time(phase, end - begin)
        drop = self.scorer.baseline - score
        return TriedAssignment(
            trial=number, origin=origin, fallback=fallback, score=score, drop=drop,
            latency_ms=p50, meets_budget=drop <= self.budget.max_accuracy_drop + 1e-12,
            path=main,
        )  # fmt: skip

    def fixed(self, fallback: tuple[str, ...], origin: str, names: list[str]) -> TriedAssignment:
        """Measure an assignment chosen outside the sampler and add it as a finished trial.

        The trial is added only once measured, so a kill leaves nothing half-done; its
        params say for each of ``names`` whether it stays float.
        """
        import optuna

        number = len(self.study.get_trials(deepcopy=False))
        tried = self.measure(number, fallback, origin)
        params = {_PARAM_PREFIX + n: n in fallback for n in names}
        distributions: dict[str, Any] = {
            k: optuna.distributions.CategoricalDistribution([False, True]) for k in params
        }
        frozen = optuna.trial.create_trial(
            params=params,
            distributions=distributions,
            value=tried.latency_ms,
            user_attrs=tried_attrs(tried),
            constraints={_CONSTRAINT: tried.drop - self.budget.max_accuracy_drop},
        )
        self.study.add_trial(frozen)
        added = self.study.get_trials(deepcopy=False)[-1].number
        if added != number:
            moved = self.work / f"trial-{added}"
            shutil.rmtree(moved, ignore_errors=True)
            (self.work / f"trial-{number}").rename(moved)
            path = moved / Path(str(tried.path)).name
            tried = replace(tried, trial=added, path=path)
        return tried


def _completed(study: Any) -> int:
    """Finished trials that measured an assignment (repeated samples not counted)."""
    import optuna

    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return sum(1 for t in trials if "fallback" in t.user_attrs)


def _finished(study: Any, result: TuningResult) -> dict[frozenset[str], TriedAssignment]:
    """The assignments the study finished before (read back, not rebuilt)."""
    import optuna

    done: dict[frozenset[str], TriedAssignment] = {}
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        attrs = t.user_attrs
        if "duplicate_of" in attrs or "fallback" not in attrs:
            continue
        fallback = tuple(attrs["fallback"])
        done[frozenset(fallback)] = TriedAssignment(
            trial=t.number, origin=str(attrs.get("origin", "search")), fallback=fallback,
            score=float(attrs["score"]), drop=float(attrs["drop"]), latency_ms=float(t.value),
            meets_budget=bool(attrs["meets_budget"]),
        )  # fmt: skip
    return done


def _attribution(
    study: Any, builder: MixedPrecisionBuilder, scorer: ValidationScorer,
    layers: list[QuantLayer], work: Path, deadline: float,
) -> list[LayerAttribution]:  # fmt: skip
    """The per-layer records, measured once per study (kept in its user attributes)."""
    stored = study.user_attrs.get("attribution")
    if stored:
        return [LayerAttribution(**r) for r in stored]
    records = attribute_layers(builder, scorer, work, layers=layers, deadline=deadline)
    if all(not math.isnan(r.error) for r in records):
        study.set_user_attr("attribution", [r.as_record() for r in records])
    return records


def tuning_settings(
    builder: MixedPrecisionBuilder, budget: AccuracyBudget, cfg: QuantizeStageConfig,
    profile: HardwareProfile, calibration: np.ndarray, x_val: np.ndarray,
    y_val: np.ndarray | None, fidelity: str,
) -> dict[str, Any]:  # fmt: skip
    """What changes a tuning's answer (the study key): not ``max_trials`` nor the time
    budget, so a longer run resumes a shorter one."""
    from hamnet.compress.quantize.base import resolve_reduce_range

    return {
        "runtime": builder.runtime,
        "max_accuracy_drop": budget.max_accuracy_drop,
        "top_k": budget.top_k,
        "per_channel": cfg.per_channel,
        "reduce_range": resolve_reduce_range(cfg, profile),
        "profile": profile.name,
        "calibration": _data_digest(calibration),
        "validation": _data_digest(x_val, y_val),
        "fidelity": fidelity,
    }


class AccuracyAwareQuantizer(QuantizationMethod):
    """Static INT8 with the most harmful layers kept in float until a budget holds.

    The shared body of the accuracy-aware ``quantizer`` plugins; each names its
    :attr:`builder_class`. The quantize stage calls :meth:`tune` with the validation
    split and the run's accuracy budget and turns the tried assignments into
    candidates; :meth:`quantize` alone (no validation data) tunes against the FP32
    model's own outputs on the calibration inputs and writes the best assignment.
    """

    needs_calibration = True
    tunes_accuracy = True
    settings = (
        "per_channel",
        "reduce_range",
        "max_accuracy_drop",
        "max_trials",
        "time_budget_s",
        "fallback_top_k",
    )
    builder_class: ClassVar[type[OrtMixedBuilder] | type[OpenVinoMixedBuilder]]

    def tune(
        self,
        source: Path,
        out_dir: Path,
        *,
        calibration: np.ndarray | None,
        x_val: np.ndarray,
        y_val: np.ndarray | None,
        cfg: QuantizeStageConfig,
        profile: HardwareProfile,
        fidelity: str = "auto",
        max_accuracy_drop: float | None = None,
        storage_dir: Path | None = None,
        seed: int = 0,
    ) -> TuningResult:
        """Tune which layers stay float so INT8 meets the accuracy budget.

        Args:
            source: The FP32 ONNX model.
            out_dir: Folder for the models of the trials (``trial-<n>/``).
            calibration: Calibration inputs ``[N, ...]`` (non-empty).
            x_val: Validation inputs the budget is checked on.
            y_val: Their labels, the original model's outputs, or None (then the FP32
                model's outputs are the reference).
            cfg: The quantize stage settings (budget, trials, seconds, top-k).
            profile: The target hardware.
            fidelity: ``data.fidelity`` for label-free data.
            max_accuracy_drop: The budget when ``cfg.max_accuracy_drop`` is None (the
                run's constraint); 0.01 when both are None.
            storage_dir: Folder of the study's SQLite file ``accuracy_aware.db``
                (default: ``out_dir``); the same folder resumes a killed tuning.
            seed: Seed of the TPE sampler.

        Returns:
            The tuning result.

        Raises:
            ConfigError: A budget is out of range.
            DataError: The calibration or validation inputs are empty or malformed.
            ExportError: The quantizer fails.
        """
        from hamnet.backends.session import pack_inputs

        if max_accuracy_drop is not None:
            AccuracyBudget(max_accuracy_drop)  # checks it, naming what was got
        budget = AccuracyBudget.from_config(cfg, max_accuracy_drop)
        data = self._calibration(calibration)
        source, out_dir = Path(source), Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        builder = self.builder_class(source, data, cfg, profile, out_dir / "builder")
        scorer = ValidationScorer(source, self.runtime, profile, x_val, y_val, fidelity=fidelity)
        settings = tuning_settings(builder, budget, cfg, profile, data, x_val, y_val, fidelity)
        storage = Path(storage_dir) if storage_dir is not None else out_dir
        storage.mkdir(parents=True, exist_ok=True)
        x_latency = pack_inputs(x_val)[: max(1, profile.latency_batch_size)]
        return tune_fallback(
            builder, scorer, budget, work=out_dir,
            storage_url=f"sqlite:///{(storage / 'accuracy_aware.db').resolve()}",
            study_name=study_name_for(source, builder, settings), x_latency=x_latency,
            seed=seed,
        )  # fmt: skip

    def materialize(
        self, result: TuningResult, tried: TriedAssignment, source: Path, out_dir: Path,
        calibration: np.ndarray, cfg: QuantizeStageConfig, profile: HardwareProfile,
    ) -> Path:  # fmt: skip
        """The model file of ``tried``: its trial's file, or rebuilt when the trial was
        read back from an earlier run (building is no trial: nothing is measured)."""
        if tried.path is not None and Path(tried.path).is_file():
            return Path(tried.path)
        folder = Path(out_dir) / f"trial-{tried.trial}"
        builder = self.builder_class(source, calibration, cfg, profile, folder / "builder")
        return builder.build(folder, fallback=frozenset(tried.fallback))

    def _convert(self, job: QuantizeJob) -> None:
        from hamnet.core.artifacts import artifact_files

        result = self.tune(
            job.source, job.work / "tune", calibration=job.calibration, x_val=job.calibration,
            y_val=None, cfg=job.cfg, profile=job.profile,
        )  # fmt: skip
        best = result.best()
        assert best is not None  # at least the all-INT8 assignment ran
        main = self.materialize(result, best, job.source, job.work / "tune", job.calibration,
                                job.cfg, job.profile)  # fmt: skip
        for f in artifact_files(main, self.output_format):
            shutil.copy2(f, job.target.parent / f.name.replace(main.stem, job.target.stem, 1))
        kept = ", ".join(best.fallback) or "none"
        self.extra_notes.append(
            f"accuracy-aware INT8 (no validation data given: tuned against the FP32 "
            f"outputs on the calibration inputs): layers kept FP32: {kept}; {result.summary()}"
        )
