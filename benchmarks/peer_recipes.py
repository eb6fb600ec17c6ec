"""Side-by-side benchmark: hamnet's pipeline against the single-tool recipes users try.

A *peer recipe* is what a user would do with one tool and its documented defaults
(ONNX Runtime dynamic INT8, NNCF post-training quantization, PyTorch dynamic
quantization, ...). Each recipe is one small :class:`PeerRecipe` class in
:data:`PEER_RECIPES`; its :meth:`~PeerRecipe.run` turns the FP32 baseline into a
:class:`PeerModel` (model files + a way to open them in a runtime). hamnet's side is
the pipeline's own candidates (:func:`hamnet_points`). :func:`measure_points` times
every point in interleaved rounds with the same measurement code the pipeline uses
(:func:`hamnet.evaluate.measure.measure_session`), and :func:`compare` adds ratios to the FP32
baseline, hamnet's Pareto front, the peers each front point dominates and the
hypervolumes of both sets with one reference point.

Example:
    >>> baseline = Baseline("digits", model, input_size=64, work_dir=work)
    >>> points = [BenchPoint.from_peer(r, r.run(baseline, data, work / r.name))
    ...           for r in default_recipes()]
    >>> measured = measure_points(points, data, profile, settings, rounds=5)
    >>> comparison = compare(measured)
"""

from __future__ import annotations

import copy
import statistics
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from hamnet.backends.session import require
from hamnet.core.candidate import Metrics
from hamnet.core.errors import ConfigError, DataError

if TYPE_CHECKING:
    import pandas as pd
    from torch import nn

    from hamnet.backends.session import InferenceSession
    from hamnet.core.config import MeasureSection, OptimizeConfig
    from hamnet.core.hardware import HardwareProfile
    from hamnet.training.data import Dataset


BENCH_EXTRA = "bench"
"""The optional-dependency extra that installs Olive and Intel Neural Compressor."""

CALIBRATION_SAMPLES = 300
"""Calibration rows given to every recipe that needs them (NNCF's default subset size)."""

SIDES = ("baseline", "peer", "hamnet")
"""Who made a point: the FP32 baseline in a runtime, a single-tool recipe, or hamnet."""


# --- inputs ---------------------------------------------------------------------------


def calibration_rows(data: Dataset) -> np.ndarray:
    """Up to :data:`CALIBRATION_SAMPLES` training rows, ``float32 [N, features]``: the
    calibration set every quantizing recipe gets."""
    return np.ascontiguousarray(data.x_train[:CALIBRATION_SAMPLES], dtype=np.float32)


@dataclass
class Baseline:
    """The trained FP32 model every point starts from.

    Attributes:
        name: Short name (``digits``, ``large``, ``conv``).
        model: A torch module mapping float32 ``[batch, input_size]`` to logits.
        input_size: Features per sample.
        work_dir: Where the FP32 exports are written.
        checkpoint: The hamnet checkpoint of a HAMNet baseline (None for other modules).
    """

    name: str
    model: nn.Module
    input_size: int
    work_dir: Path
    checkpoint: Path | None = None
    _onnx: Path | None = field(default=None, repr=False)
    _openvino: Path | None = field(default=None, repr=False)

    def onnx(self) -> Path:
        """The FP32 ONNX export (TorchScript exporter, opset 17), made once."""
        if self._onnx is None:
            from hamnet.backends.export import export_onnx

            self._onnx = export_onnx(
                self.model, self.input_size, Path(self.work_dir) / "fp32" / "model.onnx"
            )
        return self._onnx

    def openvino(self) -> Path:
        """The FP32 OpenVINO IR converted from :meth:`onnx`, made once."""
        if self._openvino is None:
            from hamnet.backends.export import convert_openvino

            self._openvino = convert_openvino(
                self.onnx(), Path(self.work_dir) / "fp32-ov" / "model.xml", compress_to_fp16=False
            )
        return self._openvino

    @property
    def params(self) -> int:
        """Parameter count of the FP32 model."""
        return int(sum(p.numel() for p in self.model.parameters()))


# --- what a recipe makes ----------------------------------------------------------------


Opener = Callable[["HardwareProfile"], tuple["InferenceSession", "InferenceSession | None"]]


@dataclass
class PeerModel:
    """A model a recipe produced, ready to be opened and measured.

    Attributes:
        runtime: ``torch``, ``onnxruntime`` or ``openvino``.
        precision: ``fp32``, ``fp16``, ``int8`` or ``mixed``.
        files: Every file of the model (their total is the reported size).
        open: Opens it on a hardware profile: the latency session and an optional
            throughput-tuned one.
        notes: Caveats (what the tool decided, deprecations).
    """

    runtime: str
    precision: str
    files: list[Path]
    open: Opener
    notes: str = ""

    @property
    def size_mb(self) -> float:
        """Size of the model files in MB (10^6 bytes)."""
        return sum(Path(f).stat().st_size for f in self.files) / 1e6


def artifact_model(
    path: str | Path, fmt: str, runtime: str, precision: str, notes: str = ""
) -> PeerModel:
    """Wrap a model file so it opens through hamnet's runtime adapters.

    Args:
        path: The main file (``model.onnx`` or ``model.xml``).
        fmt: ``onnx``, ``openvino`` or ``torch`` (a hamnet checkpoint).
        runtime: The runtime to open it in.
        precision: Its precision.
        notes: Caveats.
    """
    from hamnet.core.artifacts import ArtifactRef, artifact_files, hash_files

    files = artifact_files(Path(path), fmt)
    ref = ArtifactRef(
        path=str(path),
        sha256=hash_files(files),
        format=fmt,  # type: ignore[arg-type]
        size_bytes=sum(f.stat().st_size for f in files),
    )

    def open_session(profile: HardwareProfile) -> tuple[InferenceSession, InferenceSession | None]:
        from hamnet.backends.session import get_runtime, runtime_spec

        spec = runtime_spec(profile, runtime)
        engine = get_runtime(runtime)
        engine.prepare(spec)
        # A module artifact hamnet wrote in its own work directory pickles the user's
        # module object it was given (the benchmark's own model): trusted here.
        session = engine.load(
            ref, spec, profile.threads, trust_checkpoint=ref.format == "torch-module"
        )
        return session, engine.throughput_session(ref, spec, profile.threads)

    return PeerModel(runtime, precision, files, open_session, notes)


def module_model(module: nn.Module, path: Path, precision: str, notes: str = "") -> PeerModel:
    """Wrap an in-memory torch module (eager PyTorch); its ``state_dict`` is saved for size."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(module.state_dict(), path)

    def open_session(profile: HardwareProfile) -> tuple[InferenceSession, InferenceSession | None]:
        from hamnet.backends.session import TorchSession
        from hamnet.core.hardware import resolved_threads

        torch.set_num_threads(resolved_threads(profile))
        return TorchSession(module), None

    return PeerModel("torch", precision, [path], open_session, notes)


# --- the recipes ----------------------------------------------------------------------


class PeerRecipe(ABC):
    """One single-tool recipe, run the way its documentation shows.

    Attributes:
        name: Row name in the table.
        tool: The tool a user would reach for.
        side: ``baseline`` for the FP32 reference points, ``peer`` for recipes.
        requires: Modules the recipe imports (checked by :meth:`unavailable`).
        extra: The optional-dependency extra that installs them, if not core.
    """

    name: ClassVar[str]
    tool: ClassVar[str]
    side: ClassVar[str] = "peer"
    requires: ClassVar[tuple[str, ...]] = ()
    extra: ClassVar[str | None] = None

    def unavailable(self) -> str | None:
        """Return why the recipe cannot run here (a missing tool), or None."""
        missing = [m for m in self.requires if not _installed(m)]
        if not missing:
            return None
        where = f"pip install 'hamnet[{self.extra}]'" if self.extra else "pip install hamnet"
        return f"{self.tool} is not installed (missing {missing}); install it with {where}"

    @abstractmethod
    def run(self, baseline: Baseline, data: Dataset, work_dir: Path) -> PeerModel:
        """Make the recipe's model from ``baseline``.

        Args:
            baseline: The FP32 model.
            data: Calibration/validation data (never the test split).
            work_dir: A fresh folder for the recipe's files.

        Returns:
            The model to measure.
        """


class TorchEagerFp32(PeerRecipe):
    """The FP32 baseline in eager PyTorch."""

    name = "fp32-torch"
    tool = "PyTorch eager"
    side = "baseline"
    requires = ("torch",)

    def run(self, baseline: Baseline, data: Dataset, work_dir: Path) -> PeerModel:
        return module_model(baseline.model, work_dir / "model.pt", "fp32")


class OnnxRuntimeFp32(PeerRecipe):
    """The FP32 baseline exported to ONNX, in ONNX Runtime."""

    name = "fp32-onnxruntime"
    tool = "ONNX Runtime"
    side = "baseline"
    requires = ("onnxruntime",)

    def run(self, baseline: Baseline, data: Dataset, work_dir: Path) -> PeerModel:
        return artifact_model(baseline.onnx(), "onnx", "onnxruntime", "fp32")


class OpenVINOFp32(PeerRecipe):
    """The FP32 baseline converted to OpenVINO IR (FP32 weights), in OpenVINO."""

    name = "fp32-openvino"
    tool = "OpenVINO"
    side = "baseline"
    requires = ("openvino",)

    def run(self, baseline: Baseline, data: Dataset, work_dir: Path) -> PeerModel:
        return artifact_model(baseline.openvino(), "openvino", "openvino", "fp32")


class OrtDynamicInt8Recipe(PeerRecipe):
    """``onnxruntime.quantization.quantize_dynamic`` with its defaults (after pre-processing)."""

    name = "ort-dynamic-int8"
    tool = "ONNX Runtime"
    requires = ("onnxruntime",)

    def run(self, baseline: Baseline, data: Dataset, work_dir: Path) -> PeerModel:
        quantization = require("onnxruntime.quantization", "onnxruntime")
        prepared = _ort_preprocess(baseline.onnx(), work_dir)
        target = work_dir / "model.onnx"
        quantization.quantize_dynamic(str(prepared), str(target))
        return artifact_model(target, "onnx", "onnxruntime", "int8", "defaults (QInt8 weights)")


class OrtStaticInt8Recipe(PeerRecipe):
    """``quantize_static`` (QDQ, MinMax) with ``per_channel=True, reduce_range=True``."""

    name = "ort-static-int8"
    tool = "ONNX Runtime"
    requires = ("onnxruntime",)

    def run(self, baseline: Baseline, data: Dataset, work_dir: Path) -> PeerModel:
        from hamnet.backends.export import INPUT_NAME
        from hamnet.compress.quantize.base import make_calibration_reader

        quantization = require("onnxruntime.quantization", "onnxruntime")
        prepared = _ort_preprocess(baseline.onnx(), work_dir)
        target = work_dir / "model.onnx"
        reader = make_calibration_reader(calibration_rows(data), INPUT_NAME)
        quantization.quantize_static(
            str(prepared), str(target), reader, per_channel=True, reduce_range=True
        )
        return artifact_model(
            target, "onnx", "onnxruntime", "int8", "QDQ, per-channel, reduce_range"
        )


class OpenVINOFp16Recipe(PeerRecipe):
    """``openvino.save_model`` with its default FP16 weight compression."""

    name = "openvino-fp16"
    tool = "OpenVINO"
    requires = ("openvino",)

    def run(self, baseline: Baseline, data: Dataset, work_dir: Path) -> PeerModel:
        ov = require("openvino")
        target = work_dir / "model.xml"
        ov.save_model(ov.convert_model(str(baseline.onnx())), str(target))
        return artifact_model(target, "openvino", "openvino", "fp16", "FP16 weights, FP32 compute")


class NncfPtqRecipe(PeerRecipe):
    """``nncf.quantize`` of the OpenVINO model with NNCF's defaults."""

    name = "nncf-ptq"
    tool = "NNCF"
    requires = ("nncf", "openvino")

    def run(self, baseline: Baseline, data: Dataset, work_dir: Path) -> PeerModel:
        ov = require("openvino")
        nncf = require("nncf")
        dataset = nncf.Dataset([row[None, :] for row in calibration_rows(data)])
        quantized = nncf.quantize(ov.convert_model(str(baseline.onnx())), dataset)
        target = work_dir / "model.xml"
        ov.save_model(quantized, str(target), compress_to_fp16=False)
        return artifact_model(
            target, "openvino", "openvino", "int8", "defaults (preset PERFORMANCE)"
        )


class NncfAccuracyControlRecipe(PeerRecipe):
    """``nncf.quantize_with_accuracy_control`` (max 1 point drop on the validation split)."""

    name = "nncf-accuracy-control"
    tool = "NNCF"
    requires = ("nncf", "openvino")
    max_drop: ClassVar[float] = 0.01
    evaluations: int = 0
    """Calls of the validation function on the whole validation split in the last run
    (each a model NNCF scored: the FP32 and INT8 models, each tried subset)."""
    item_calls: int = 0
    """Calls on a single item (NNCF scores the FP32 and INT8 models item by item to
    rank the quantizer groups when the validation function returns one number)."""

    def run(self, baseline: Baseline, data: Dataset, work_dir: Path) -> PeerModel:
        ov = require("openvino")
        nncf = require("nncf")
        calibration = nncf.Dataset([row[None, :] for row in calibration_rows(data)])
        pairs = [(x[None, :], int(y)) for x, y in zip(data.x_val, data.y_val, strict=True)]
        validation = nncf.Dataset(pairs, lambda item: item[0])
        self.evaluations = self.item_calls = 0

        def validate(compiled: Any, items: Any) -> float:
            items = list(items)
            if len(items) == 1:
                self.item_calls += 1
            else:
                self.evaluations += 1
            output = compiled.outputs[0]
            hits = [int(np.argmax(compiled(x)[output])) == y for x, y in items]
            return float(np.mean(hits))

        quantized = nncf.quantize_with_accuracy_control(
            ov.convert_model(str(baseline.onnx())),
            calibration,
            validation,
            validate,
            max_drop=self.max_drop,
            drop_type=nncf.DropType.ABSOLUTE,
        )
        target = work_dir / "model.xml"
        ov.save_model(quantized, str(target), compress_to_fp16=False)
        return artifact_model(
            target, "openvino", "openvino", "int8", f"max_drop {self.max_drop} on validation"
        )


class TorchDynamicInt8Recipe(PeerRecipe):
    """``torch.ao.quantization.quantize_dynamic`` on ``nn.Linear`` layers, eager PyTorch.

    PyTorch 2.13 still ships it but deprecates eager-mode quantization in favour of
    torchao's ``quantize_``; torchao is not a dependency here, so the classic API is used
    and the deprecation is noted on the row.
    """

    name = "torch-dynamic-int8"
    tool = "PyTorch"
    requires = ("torch",)

    def run(self, baseline: Baseline, data: Dataset, work_dir: Path) -> PeerModel:
        import torch

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantized = torch.ao.quantization.quantize_dynamic(
                copy.deepcopy(baseline.model).eval(), {torch.nn.Linear}, dtype=torch.qint8
            )
        return module_model(
            quantized, work_dir / "model.pt", "int8", "torch.ao eager quantization (deprecated)"
        )


class OliveAutoRecipe(PeerRecipe):
    """Microsoft Olive: ``OnnxQuantization`` auto-tuned by Olive's search engine.

    Olive's documented workflow shape: the ONNX model, the ``OnnxQuantization`` pass with
    its own search space (dynamic/static, formats, calibration methods, per-channel,
    reduce-range), an evaluator on accuracy (goal: at most 1 point below the input
    model) and average latency, and the TPE sampler. Data is the validation split
    written as Olive's ``raw_dataset``. The search is bounded by ``max_time``.
    """

    name = "olive-auto"
    tool = "Olive"
    requires = ("olive",)
    extra = BENCH_EXTRA
    max_time_s: ClassVar[int] = 120
    max_samples: ClassVar[int] = 20
    eval_samples: ClassVar[int] = 200

    def run(self, baseline: Baseline, data: Dataset, work_dir: Path) -> PeerModel:
        olive = require("olive", "olive-ai")
        config = self.workflow(baseline.onnx(), data, work_dir)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            output = olive.run(config)
        best = output.get_best_candidate() if output is not None else None
        if best is None or not getattr(best, "model_path", None):
            raise RuntimeError("Olive's search returned no output model")
        return artifact_model(
            Path(best.model_path), "onnx", "onnxruntime", "int8",
            f"Olive TPE search, max_time {self.max_time_s} s",
        )  # fmt: skip

    def workflow(self, source: Path, data: Dataset, work_dir: Path) -> dict[str, Any]:
        """The Olive workflow configuration (a dict ``olive.run`` accepts)."""
        from hamnet.backends.export import INPUT_NAME

        raw = work_dir / "data"
        (raw / INPUT_NAME).mkdir(parents=True, exist_ok=True)
        x, y = data.x_val[: self.eval_samples], data.y_val[: self.eval_samples]
        for i, row in enumerate(x):
            np.ascontiguousarray(row, dtype=np.float32).tofile(raw / INPUT_NAME / f"{i:05d}.bin")
        np.save(raw / "labels.npy", np.asarray(y, dtype=np.int64))
        num_classes = int(max(data.y_train.max(), data.y_val.max(), data.y_test.max())) + 1
        dataset = {
            "name": "bench",
            "load_dataset_config": {
                "type": "raw_dataset", "data_dir": {"type": "folder", "path": str(raw)},
                "input_names": [INPUT_NAME], "input_shapes": [[int(x.shape[1])]],
                "annotations_file": "labels.npy",
            },
            "post_process_data_config": {"type": "text_classification_post_process"},
            "dataloader_config": {"batch_size": 1},
        }  # fmt: skip
        accuracy = {
            "name": "accuracy", "type": "accuracy", "data_config": "bench",
            "sub_types": [{
                "name": "accuracy_score", "priority": 1,
                "metric_config": {"task": "multiclass", "num_classes": num_classes},
                "goal": {"type": "max-degradation", "value": 0.01},
            }],
        }  # fmt: skip
        latency = {
            "name": "latency", "type": "latency", "data_config": "bench",
            "sub_types": [{"name": "avg", "priority": 2}],
        }  # fmt: skip
        return {
            "input_model": {"type": "ONNXModel", "model_path": str(source)},
            "systems": {
                "local_system": {
                    "type": "LocalSystem",
                    "accelerators": [
                        {"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}
                    ],
                }
            },
            "data_configs": [dataset],
            # Olive 0.13 needs the evaluator type spelled out: its default (None) makes
            # the engine's resource scan fail with AttributeError.
            "evaluators": {"bench": {"type": "OnnxEvaluator", "metrics": [accuracy, latency]}},
            "passes": {"quantization": {"type": "OnnxQuantization", "data_config": "bench"}},
            "search_strategy": {
                "execution_order": "joint",
                "sampler": "tpe",
                "sampler_config": {"max_samples": self.max_samples, "seed": 0},
                "max_time": self.max_time_s,
            },
            "evaluator": "bench",
            "host": "local_system",
            "target": "local_system",
            "cache_dir": str(work_dir / "cache"),
            "output_dir": str(work_dir / "out"),
            "log_severity_level": 3,
        }


class IncAutoRecipe(PeerRecipe):
    """Intel Neural Compressor 3.x ``autotune`` with its default INT8 static configuration.

    INC 3.x dropped ONNX Runtime from the main package (``onnx-neural-compressor`` took
    it); the PyTorch flow documented for 3.x is: ``neural_compressor.torch.export.export``
    (PT2E), then ``autotune`` with ``get_default_static_config()`` and an accuracy
    function (validation split, default tolerable loss 1%). The result is a PT2E graph
    run in eager PyTorch; INC documents ``torch.compile`` on top for speed, which is not
    applied here (inductor needs a C++ toolchain and minutes of compilation).
    """

    name = "inc-autotune"
    tool = "Intel Neural Compressor"
    requires = ("neural_compressor.torch",)
    extra = BENCH_EXTRA
    evaluations: int = 0
    """Calls of ``eval_fn`` in the last run (the FP32 model and each tuning trial)."""

    def run(self, baseline: Baseline, data: Dataset, work_dir: Path) -> PeerModel:
        import torch

        tq = require("neural_compressor.torch.quantization", "neural-compressor-pt")
        inc_export = require("neural_compressor.torch.export", "neural-compressor-pt")
        x_val = torch.from_numpy(data.x_val)
        y_val = torch.from_numpy(data.y_val)
        x_cal = torch.from_numpy(calibration_rows(data))
        example = (x_cal[:2],)  # batch 2: a batch of 1 would be specialized by torch.export

        self.evaluations = 0

        def eval_fn(model: Any) -> float:
            self.evaluations += 1
            with torch.inference_mode():
                return float((model(x_val).argmax(dim=1) == y_val).float().mean())

        def run_fn(model: Any) -> None:
            with torch.inference_mode():
                model(x_cal)

        batch = torch.export.Dim("batch", min=1, max=4096)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exported = inc_export.export(
                copy.deepcopy(baseline.model).eval(), example_inputs=example,
                dynamic_shapes=({0: batch},),
            )  # fmt: skip
            tuned = tq.autotune(
                exported, tq.TuningConfig(config_set=[tq.get_default_static_config()]),
                eval_fn=eval_fn, run_fn=run_fn, example_inputs=example,
            )  # fmt: skip
        # An exported graph refuses .eval(); torchao's documented opt-in makes it a no-op,
        # and a plain wrapper module keeps ``.to(...).eval()`` chaining working.
        pt2e = require("torchao.quantization.pt2e", "torchao")
        pt2e.allow_exported_model_train_eval(tuned)
        return module_model(
            _wrap_graph(tuned), work_dir / "model.pt", "int8",
            "PT2E static INT8 in eager (no torch.compile)",
        )  # fmt: skip


def _graph_wrapper_class() -> type:
    from torch import nn

    class GraphWrapper(nn.Module):
        """Holds an exported graph module so ``eval()``/``to()`` behave like a module's."""

        def __init__(self, graph: nn.Module) -> None:
            super().__init__()
            self.graph = graph

        def forward(self, x: Any) -> Any:
            return self.graph(x)

    return GraphWrapper


def _wrap_graph(graph: Any) -> Any:
    return _graph_wrapper_class()(graph)


PEER_RECIPES: dict[str, type[PeerRecipe]] = {
    cls.name: cls
    for cls in (
        TorchEagerFp32, OnnxRuntimeFp32, OpenVINOFp32, OrtDynamicInt8Recipe, OrtStaticInt8Recipe,
        OpenVINOFp16Recipe, NncfPtqRecipe, NncfAccuracyControlRecipe, TorchDynamicInt8Recipe,
        OliveAutoRecipe, IncAutoRecipe,
    )
}  # fmt: skip
"""Every recipe by its row name."""


def get_recipes(names: Sequence[str] | None = None) -> list[PeerRecipe]:
    """Instantiate recipes by name (all of :data:`PEER_RECIPES` when None).

    Raises:
        ConfigError: If a name is unknown.
    """
    chosen = list(PEER_RECIPES) if names is None else list(names)
    unknown = [n for n in chosen if n not in PEER_RECIPES]
    if unknown:
        raise ConfigError(f"peer recipes must be among {sorted(PEER_RECIPES)}, but got {unknown}")
    return [PEER_RECIPES[n]() for n in chosen]


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported, dotted names included (a missing parent is False)."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _ort_preprocess(source: Path, work_dir: Path) -> Path:
    """ONNX Runtime's documented pre-processing step before quantization."""
    shape_inference = require("onnxruntime.quantization.shape_inference", "onnxruntime")
    work_dir.mkdir(parents=True, exist_ok=True)
    target = work_dir / "preprocessed.onnx"
    shape_inference.quant_pre_process(str(source), str(target))
    return target


# --- points ---------------------------------------------------------------------------


@dataclass
class BenchPoint:
    """One row of the benchmark: a model made by someone, measured or skipped.

    Attributes:
        name: Row name.
        side: One of :data:`SIDES`.
        tool: The tool (or ``hamnet``).
        model: The model, or None when skipped.
        wall_s: Seconds spent making it (training the baseline excluded).
        params: Parameter count of the torch model it descends from.
        skipped: Why there is no model (not installed, unsupported, failed).
        recommended: hamnet's recommended model.
        recipe: What was done (method, plan).
        metrics: Filled by :func:`measure_points`.
        p50_rounds: Per-round p50 latencies (ms).
    """

    name: str
    side: str
    tool: str
    model: PeerModel | None
    wall_s: float
    params: int = 0
    skipped: str | None = None
    recommended: bool = False
    recipe: str = ""
    metrics: Metrics | None = None
    p50_rounds: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.side not in SIDES:
            raise ConfigError(f"side must be one of {list(SIDES)}, but got {self.side!r}")


def run_recipe(recipe: PeerRecipe, baseline: Baseline, data: Dataset, work_dir: Path) -> BenchPoint:
    """Run one recipe; a missing tool or a tool failure becomes a skipped row with the reason."""
    reason = recipe.unavailable()
    doc = (recipe.__doc__ or "").strip().splitlines()[0].replace("``", "`")
    if reason is not None:
        return BenchPoint(recipe.name, recipe.side, recipe.tool, None, 0.0, skipped=reason)
    folder = Path(work_dir) / recipe.name
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        model = recipe.run(baseline, data, folder)
    except Exception as err:  # a tool that fails is a finding, not a crash of the benchmark
        return BenchPoint(
            recipe.name, recipe.side, recipe.tool, None, time.perf_counter() - started,
            skipped=f"{recipe.tool} failed: {type(err).__name__}: {str(err)[:300]}", recipe=doc,
        )  # fmt: skip
    return BenchPoint(
        recipe.name, recipe.side, recipe.tool, model, time.perf_counter() - started,
        params=baseline.params, recipe=doc,
    )  # fmt: skip


def hamnet_points(
    candidates: Sequence[Any],
    recommended_id: str | None,
    *,
    wall_s: float,
    front_ids: Sequence[str] | None = None,
    plan: str = "",
) -> list[BenchPoint]:
    """Turn pipeline candidates into points (re-measured later in the shared loop).

    Rejected candidates are left out. With ``front_ids`` only the pipeline's own front
    and the recommended candidate are kept (fewer points to time).

    Args:
        candidates: :class:`hamnet.core.candidate.Candidate` objects with stored artifacts.
        recommended_id: Id of the recommended candidate.
        wall_s: Wall time of the whole pipeline run (reported on every hamnet row).
        front_ids: Ids of the pipeline's Pareto front, or None for every candidate.
        plan: The plan, for the ``recipe`` column.
    """
    keep = None if front_ids is None else {*front_ids, recommended_id}
    points = []
    for c in candidates:
        if c.rejected or c.metrics is None or (keep is not None and c.id not in keep):
            continue
        model = artifact_model(c.artifact.path, c.artifact.format, c.runtime, c.precision)
        points.append(
            BenchPoint(
                f"hamnet:{c.name}", "hamnet", "hamnet", model, wall_s, params=c.metrics.params,
                recommended=c.id == recommended_id, recipe=plan,
            )
        )  # fmt: skip
    return points


def run_hamnet_pipeline(
    config: OptimizeConfig, *, base_dir: str | Path = ".", run_name: str = "peers-hamnet"
) -> list[BenchPoint]:
    """hamnet's side for a HAMNet baseline: the in-process ``hamnet-optimize`` pipeline.

    :func:`hamnet.pipeline.run.run_pipeline` walks the same plan and calls the same stages
    as the Prefect flow ``flows/hamnet_optimize.py`` (without its caching and retries).

    Returns:
        One point per non-rejected candidate; the pipeline's recommendation is marked.
    """
    from rich.console import Console

    from hamnet.pipeline.run import run_pipeline

    started = time.perf_counter()
    result = run_pipeline(config, base_dir=base_dir, run_name=run_name, console=Console(quiet=True))
    recommended = result.selection.recommended
    plan = " -> ".join(s.name for s in result.stages)
    return hamnet_points(
        result.candidates,
        recommended.id if recommended else None,
        wall_s=time.perf_counter() - started,
        plan=f"hamnet-optimize: {plan}",
    )


def select_profile(name: str = "auto") -> HardwareProfile:
    """Load a hardware profile; ``auto`` takes the first CPU profile this machine has.

    ``x86-vnni-server`` is preferred over ``x86-avx2`` (VNNI INT8 without reduce-range).

    Raises:
        HardwareProfileError: If no CPU profile fits (or the named one does not).
    """
    from hamnet.core.errors import HardwareProfileError
    from hamnet.core.hardware import load_profile

    if name != "auto":
        return load_profile(name)
    for candidate in ("x86-vnni-server", "x86-avx2", "arm64-edge"):
        profile = load_profile(candidate, require_present=False)
        if not profile.missing_hardware():
            return profile
    raise HardwareProfileError(
        "profile 'auto' must find a CPU profile this machine supports, but none of "
        "x86-vnni-server, x86-avx2, arm64-edge fits"
    )


def run_benchmark(
    baseline: Baseline,
    data: Dataset,
    recipes: Sequence[PeerRecipe],
    hamnet: Callable[[], list[BenchPoint]] | None,
    profile: HardwareProfile,
    settings: MeasureSection,
    *,
    rounds: int = 5,
    log: Callable[[str], None] = print,
) -> tuple[list[BenchPoint], Comparison]:
    """Run every recipe and hamnet's side, measure all points together, compare them.

    Args:
        baseline: The FP32 model.
        data: The split (calibration from train, tuning on validation, scores on test).
        recipes: Peer recipes (the FP32 ``baseline`` recipes included).
        hamnet: Makes hamnet's points (None: peers only).
        profile: Threads and batch sizes.
        settings: Warm-up and repeats per round.
        rounds: Interleaved measurement rounds.
        log: Progress output.

    Returns:
        The points and the comparison.
    """
    work = Path(baseline.work_dir)
    points: list[BenchPoint] = []
    for recipe in recipes:
        log(f"recipe {recipe.name} ({recipe.tool})")
        points.append(run_recipe(recipe, baseline, data, work / "peers"))
        if points[-1].skipped:
            log(f"  skipped: {points[-1].skipped}")
    if hamnet is not None:
        log("hamnet side")
        points.extend(hamnet())
    log(f"measuring {sum(1 for p in points if p.model is not None)} points, {rounds} rounds")
    measure_points(points, data, profile, settings, rounds=rounds, log=log)
    return points, compare(points)


# --- measurement ----------------------------------------------------------------------


def measure_points(
    points: Sequence[BenchPoint],
    data: Dataset,
    profile: HardwareProfile,
    settings: MeasureSection,
    *,
    rounds: int = 5,
    log: Callable[[str], None] | None = None,
) -> list[BenchPoint]:
    """Measure every point in ``rounds`` interleaved rounds with :func:`measure_session`.

    Every model is opened once; then each round measures all of them in turn, so the
    machine's drift hits every point alike. Accuracy is computed once (on the test
    split); latency p50/p90 and throughput are the medians over rounds and the per-round
    p50s are kept for the spread.

    Args:
        points: Points to measure (skipped ones are passed through untouched).
        data: Test inputs and labels.
        profile: Threads, batch sizes and runtime settings.
        settings: Warm-up and repeats per round.
        rounds: Interleaved rounds.
        log: Progress callback.

    Returns:
        The same points with :attr:`BenchPoint.metrics` set.

    Raises:
        DataError: If ``rounds`` is not positive.
    """
    from hamnet.core.hardware import resolved_threads
    from hamnet.evaluate.measure import measure_session, peak_memory_mb, predict

    if rounds < 1:
        raise DataError(f"rounds must be positive, but got {rounds}")
    live = [p for p in points if p.model is not None and p.skipped is None]
    opened: dict[int, tuple[Any, Any, np.ndarray, float]] = {}
    for p in live:
        assert p.model is not None
        model = p.model

        def load_and_run(model: PeerModel = model) -> tuple[Any, Any, np.ndarray]:
            session, throughput = model.open(profile)
            return session, throughput, predict(session, data.x_test, profile.throughput_batch_size)

        try:
            (session, throughput, logits), memory = peak_memory_mb(load_and_run)
        except Exception as err:  # a model its own runtime cannot run is a finding
            p.skipped = f"could not be run: {type(err).__name__}: {str(err).strip()[:300]}"
            continue
        opened[id(p)] = (session, throughput, logits, memory)
    live = [p for p in live if id(p) in opened]
    found: dict[int, list[Any]] = {id(p): [] for p in live}
    for r in range(rounds):
        for p in live:
            session, throughput, logits, _ = opened[id(p)]
            found[id(p)].append(
                measure_session(
                    session, data.x_test, data.y_test, settings,
                    latency_batch_size=profile.latency_batch_size,
                    throughput_batch_size=profile.throughput_batch_size,
                    throughput_session=throughput, eval_logits=logits,
                )
            )  # fmt: skip
        if log is not None:
            log(f"round {r + 1}/{rounds} measured {len(live)} points")
    for p in live:
        runs = found[id(p)]
        assert p.model is not None
        p.p50_rounds = [m.latency_p50_ms for m in runs]
        p.metrics = Metrics(
            accuracy=runs[0].accuracy,
            accuracy_kind=runs[0].accuracy_kind,
            latency_p50_ms=statistics.median(p.p50_rounds),
            latency_p90_ms=statistics.median(m.latency_p90_ms for m in runs),
            latency_batch_size=profile.latency_batch_size,
            throughput_sps=statistics.median(m.throughput_sps for m in runs),
            throughput_batch_size=profile.throughput_batch_size,
            size_mb=p.model.size_mb,
            params=p.params,
            flops=0,
            peak_memory_mb=opened[id(p)][3],
            runtime=p.model.runtime,  # type: ignore[arg-type]
            threads=resolved_threads(profile),
            eval_samples=runs[0].eval_samples,
        )
    return list(points)


# --- comparison -----------------------------------------------------------------------


OBJECTIVES = ("accuracy", "latency_p50_ms", "size_mb")
"""Objectives of the front and the hypervolume: accuracy up, latency p50 down, size down."""

DIRECTIONS = ("maximize", "minimize", "minimize")


@dataclass
class Comparison:
    """What :func:`compare` found.

    Attributes:
        table: One row per point (see :data:`COLUMNS`).
        baseline_name: The FP32 point in its fastest runtime (the ratios' reference).
        front: Names of hamnet's Pareto front.
        dominated: For every peer/baseline point, the hamnet front points dominating it.
        reference_point: Hypervolume reference (accuracy, latency ms, size MB).
        hypervolume_hamnet: Hypervolume of hamnet's front.
        hypervolume_peers: Hypervolume of the peers' points (baseline + recipes).
        targets: The issue's targets, each with its measured value and verdict.
    """

    table: pd.DataFrame
    baseline_name: str
    front: list[str]
    dominated: dict[str, list[str]]
    reference_point: tuple[float, float, float]
    hypervolume_hamnet: float
    hypervolume_peers: float
    targets: list[dict[str, Any]]


COLUMNS = [
    "name", "side", "tool", "runtime", "precision", "accuracy", "accuracy_drop_pt",
    "latency_p50_ms", "latency_p90_ms", "latency_p50_spread_ms", "throughput_sps", "size_mb",
    "size_ratio", "speedup", "throughput_ratio", "peak_memory_mb", "wall_s", "on_hamnet_front",
    "recommended", "dominated_by", "recipe", "status",
]  # fmt: skip
"""Columns of the benchmark table."""


def _vector(m: Metrics) -> list[float]:
    return [m.accuracy, m.latency_p50_ms, m.size_mb]


def reference_point(metrics: Sequence[Metrics]) -> tuple[float, float, float]:
    """One reference for both sets: 1 point below the worst accuracy, 10% above the
    slowest latency and the largest size among all measured points."""
    if not metrics:
        raise DataError("a hypervolume reference needs measured points, but got none")
    return (
        min(m.accuracy for m in metrics) - 0.01,
        1.1 * max(m.latency_p50_ms for m in metrics),
        1.1 * max(m.size_mb for m in metrics),
    )


def compare(points: Sequence[BenchPoint]) -> Comparison:
    """Ratios to the fastest FP32 point, hamnet's front, dominance and hypervolumes.

    Raises:
        DataError: If no FP32 baseline point was measured.
    """
    import pandas as pd

    from hamnet.compress.search.strategies import hypervolume
    from hamnet.evaluate.pareto import dominates

    measured = [p for p in points if p.metrics is not None]
    fp32 = [p for p in measured if p.side == "baseline"]
    if not fp32:
        raise DataError("the comparison needs a measured FP32 baseline point, but got none")
    base = min(fp32, key=lambda p: _m(p).latency_p50_ms)
    bm = _m(base)
    hamnet = [p for p in measured if p.side == "hamnet"]
    peers = [p for p in measured if p.side != "hamnet"]
    front = [p for p in hamnet if not any(dominates(_m(o), _m(p)) for o in hamnet if o is not p)]
    dominated = {
        p.name: [f.name for f in front if dominates(_m(f), _m(p))] for p in peers
    }  # fmt: skip
    ref = reference_point([_m(p) for p in measured])
    hv_hamnet = hypervolume([_vector(_m(p)) for p in front], DIRECTIONS, ref)
    hv_peers = hypervolume([_vector(_m(p)) for p in peers], DIRECTIONS, ref)
    rows = []
    for p in points:
        row: dict[str, Any] = dict(
            name=p.name, side=p.side, tool=p.tool, recipe=p.recipe or "-",
            wall_s=round(p.wall_s, 2), recommended=p.recommended,
            on_hamnet_front=p in front, status="measured" if p.metrics else f"skipped: {p.skipped}",
        )  # fmt: skip
        if p.metrics is not None and p.model is not None:
            m = p.metrics
            rounds = p.p50_rounds or [m.latency_p50_ms]
            row.update(
                runtime=p.model.runtime, precision=p.model.precision, accuracy=m.accuracy,
                accuracy_drop_pt=100 * (bm.accuracy - m.accuracy),
                latency_p50_ms=m.latency_p50_ms, latency_p90_ms=m.latency_p90_ms,
                latency_p50_spread_ms=max(rounds) - min(rounds),
                throughput_sps=m.throughput_sps, size_mb=m.size_mb,
                size_ratio=bm.size_mb / m.size_mb, speedup=bm.latency_p50_ms / m.latency_p50_ms,
                throughput_ratio=m.throughput_sps / bm.throughput_sps,
                peak_memory_mb=m.peak_memory_mb,
                dominated_by=", ".join(dominated.get(p.name, [])) or "-",
            )  # fmt: skip
            if p.side == "hamnet":
                row["dominated_by"] = "(hamnet)"
        rows.append(row)
    table = pd.DataFrame(rows).reindex(columns=COLUMNS)
    for flag in ("on_hamnet_front", "recommended"):
        table[flag] = table[flag].map({True: "yes", False: "no"})
    targets = _targets(base, hamnet, peers, front, hv_hamnet, hv_peers)
    return Comparison(
        table, base.name, [p.name for p in front], dominated, ref, hv_hamnet, hv_peers, targets
    )


def _m(p: BenchPoint) -> Metrics:
    if p.metrics is None:
        raise DataError(f"point {p.name!r} must be measured, but it has no metrics")
    return p.metrics


def _targets(
    base: BenchPoint,
    hamnet: list[BenchPoint],
    peers: list[BenchPoint],
    front: list[BenchPoint],
    hv_hamnet: float,
    hv_peers: float,
) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured value and whether it is met."""
    bm = _m(base)
    rec = next((p for p in hamnet if p.recommended), None)
    out: list[dict[str, Any]] = []

    def add(target: str, value: str, met: bool | None) -> None:
        out.append({"target": target, "measured": value, "met": met})

    if rec is None:
        add("hamnet recommends a model", "no hamnet point measured", False)
    else:
        rm = _m(rec)
        size_x, speed_x = bm.size_mb / rm.size_mb, bm.latency_p50_ms / rm.latency_p50_ms
        drop = 100 * (bm.accuracy - rm.accuracy)
        add("recommended >= 8x smaller than FP32", f"{size_x:.2f}x ({rec.name})", size_x >= 8)
        add(f"recommended >= 3.5x faster than FP32 in its best runtime ({base.name})",
            f"{speed_x:.2f}x", speed_x >= 3.5)  # fmt: skip
        add("recommended accuracy drop <= 1.0 point", f"{drop:.2f} pt", drop <= 1.0)
        recipes = [
            p for p in peers if p.side == "peer" and 100 * (bm.accuracy - _m(p).accuracy) <= 1.0
        ]
        if recipes:
            best = min(recipes, key=lambda p: _m(p).latency_p50_ms)
            ratio = rm.latency_p50_ms / _m(best).latency_p50_ms
            add(
                f"recommended at >= accuracy takes <= 0.5x the latency of the best single-tool "
                f"recipe within 1 pt ({best.name})",
                f"{ratio:.2f}x latency, accuracy {100 * (rm.accuracy - _m(best).accuracy):+.2f} pt",
                ratio <= 0.5 and rm.accuracy >= _m(best).accuracy,
            )
        else:
            add("best single-tool recipe within 1 pt", "no recipe within 1 pt", None)
    not_dominated = [p.name for p in peers if not _dominated(p, front)]
    add(
        "hamnet's front dominates every peer point",
        "all dominated" if not not_dominated else f"not dominated: {', '.join(not_dominated)}",
        not not_dominated,
    )
    ratio = hv_hamnet / hv_peers if hv_peers > 0 else float("inf")
    add("hypervolume(hamnet front) >= 1.5x hypervolume(peers)", f"{ratio:.2f}x", ratio >= 1.5)
    return out


def _dominated(p: BenchPoint, front: list[BenchPoint]) -> bool:
    from hamnet.evaluate.pareto import dominates

    return any(dominates(_m(f), _m(p)) for f in front)


# --- outputs --------------------------------------------------------------------------


def write_outputs(
    comparison: Comparison,
    out_dir: str | Path,
    *,
    title: str,
    info: dict[str, Any],
    rounds: int,
) -> dict[str, Path]:
    """Write ``peers.csv``, ``peers.md``, ``peers.png`` and ``machine.json``.

    Returns:
        The written files by kind (``csv``, ``markdown``, ``plot``, ``machine``).
    """
    import json

    from hamnet.evaluate.report import to_markdown

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "csv": out / "peers.csv",
        "markdown": out / "peers.md",
        "plot": out / "peers.png",
        "machine": out / "machine.json",
    }
    table = comparison.table
    table.to_csv(files["csv"], index=False)
    files["machine"].write_text(json.dumps(info, indent=2, default=str))
    pareto_plot(comparison, files["plot"], title=title)
    ref = comparison.reference_point
    ratio = (
        comparison.hypervolume_hamnet / comparison.hypervolume_peers
        if comparison.hypervolume_peers > 0
        else float("inf")
    )
    lines = [
        f"# {title}",
        "",
        f"Machine: {info.get('cpu')} ({info.get('cores')} cores, flags "
        f"{', '.join(info.get('flags', []))}), profile `{info.get('profile')}`, "
        f"{info.get('threads')} threads; latency p50/p90 at batch "
        f"{info.get('latency_batch_size')}, throughput at batch "
        f"{info.get('throughput_batch_size')}; medians of {rounds} interleaved rounds "
        f"(spread = max - min of the per-round p50s). Ratios are FP32 baseline / point "
        f"(higher is better) against **{comparison.baseline_name}**, the FP32 baseline in "
        f"its fastest runtime. Versions: "
        + ", ".join(f"{k} {v}" for k, v in info.get("versions", {}).items() if v),
        "",
        "## Targets",
        "",
        "| target | measured | met |",
        "|---|---|---|",
        *(
            f"| {t['target']} | {t['measured']} | "
            f"{'n/a' if t['met'] is None else ('yes' if t['met'] else 'NO')} |"
            for t in comparison.targets
        ),
        "",
        f"Hypervolume (accuracy up, latency p50 down, size down; reference point accuracy "
        f"{ref[0]:.4f}, {ref[1]:.4f} ms, {ref[2]:.4f} MB): hamnet front "
        f"{comparison.hypervolume_hamnet:.6g}, peers {comparison.hypervolume_peers:.6g} "
        f"(ratio {ratio:.2f}). hamnet front: {', '.join(comparison.front) or 'none'}.",
        "",
        "## All points",
        "",
        to_markdown(table),
        "",
    ]
    files["markdown"].write_text("\n".join(lines))
    return files


def pareto_plot(comparison: Comparison, path: str | Path, *, title: str) -> Path:
    """Accuracy vs latency and accuracy vs size, peers and hamnet in different markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = comparison.table[comparison.table["status"] == "measured"]
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5))
    on_front = table["on_hamnet_front"] == "yes"
    styles = {
        "FP32 baseline": (table["side"] == "baseline", {"marker": "s", "color": "tab:gray"}),
        "single-tool recipe": (table["side"] == "peer", {"marker": "^", "color": "tab:blue"}),
        "hamnet front": (on_front, {"marker": "o", "color": "tab:red"}),
        "hamnet, not on front": (
            (table["side"] == "hamnet") & ~on_front,
            {"marker": "o", "facecolors": "none", "edgecolors": "tab:red"},
        ),
    }
    for ax, x, xlabel in (
        (axes[0], "latency_p50_ms", "latency p50 at batch 1 (ms)"),
        (axes[1], "size_mb", "size (MB)"),
    ):
        for label, (mask, style) in styles.items():
            part = table[mask]
            ax.scatter(part[x], 100 * part["accuracy"], s=45, label=label, **style)
        # Peers and hamnet's front are named; other hamnet candidates only drawn.
        for _, row in table[(table["side"] != "hamnet") | on_front].iterrows():
            name = str(row["name"]).removeprefix("hamnet:").replace("+onnxruntime-fp32", "")
            ax.annotate(name, (row[x], 100 * row["accuracy"]), fontsize=6.5, xytext=(3, 3),
                        textcoords="offset points", rotation=12)  # fmt: skip
        rec = table[table["recommended"] == "yes"]
        ax.scatter(rec[x], 100 * rec["accuracy"], s=180, facecolors="none", edgecolors="k",
                   label="hamnet recommended")  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def log_to_mlflow(
    comparison: Comparison,
    files: dict[str, Path],
    *,
    tracking_uri: str,
    run_name: str,
    info: dict[str, Any],
    experiment: str = "hamnet-benchmarks",
) -> str | None:
    """Log the files, the hypervolumes, the targets and the machine to one MLflow run.

    Returns:
        The run id, or None when MLflow could not be reached (the reason is printed).
    """
    try:
        import mlflow

        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_experiment(experiment)
        with mlflow.start_run(run_name=run_name) as run:
            mlflow.log_metrics(
                {
                    "hypervolume_hamnet": comparison.hypervolume_hamnet,
                    "hypervolume_peers": comparison.hypervolume_peers,
                    "targets_met": sum(1 for t in comparison.targets if t["met"]),
                }
            )
            mlflow.set_tags(
                {
                    "hamnet.benchmark": "peers",
                    "hamnet.baseline_point": comparison.baseline_name,
                    "hamnet.cpu": str(info.get("cpu")),
                    "hamnet.flags": ",".join(info.get("flags", [])),
                    "hamnet.threads": str(info.get("threads")),
                }
            )
            mlflow.log_dict(info, "machine.json")
            mlflow.log_table(comparison.table.fillna(""), "peers_table.json")
            for path in files.values():
                mlflow.log_artifact(str(path))
            return str(run.info.run_id)
    except Exception as err:  # the files are on disk either way
        print(f"MLflow logging skipped: {err}")
        return None
