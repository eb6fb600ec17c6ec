"""Per-layer attribution: how much each layer's INT8 quantization costs.

A quantized model's error is spread over its layers (MatMul / Gemm / Conv with
constant weights). :func:`attribute_layers` measures each layer's share the direct
way: a model where *only that layer* is INT8 (everything else FP32) is built by a
:class:`MixedPrecisionBuilder` and scored on validation inputs by a
:class:`ValidationScorer`, the same score the selection reads: top-1 accuracy on
labels, else fidelity to the original model (agreement for class scores, cosine for
embeddings, see :mod:`hamnet.evaluate.fidelity`). The layer's ``error`` is the score
it loses; ``output_error`` (1 - cosine similarity of its outputs to the FP32 model's)
ranks layers whose loss the score is too coarse to see.

The records end up in ``CompressionReport.quantization_layers`` and, through
:func:`log_quantization_layers`, in MLflow as a table and a bar plot.

Example:
    >>> builder = OrtMixedBuilder(src, x_cal, cfg, profile, work)
    >>> scorer = ValidationScorer(src, "onnxruntime", profile, x_val, y_val)
    >>> ranked = attribute_layers(builder, scorer, work / "only")
    >>> ranked[0].name  # the most harmful layer
    '/fc2/Gemm'
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from hamnet.core.errors import DataError

if TYPE_CHECKING:
    from hamnet.backends.runtimes.base import InferenceSession
    from hamnet.core.artifacts import ArtifactRef
    from hamnet.core.candidate import Candidate
    from hamnet.core.hardware import HardwareProfile

logger = logging.getLogger("hamnet.quantize")

__all__ = [
    "LAYERS_PARAM",
    "LayerAttribution",
    "MixedPrecisionBuilder",
    "QuantLayer",
    "ValidationScorer",
    "attribute_layers",
    "layers_figure",
    "log_quantization_layers",
    "trial_artifact",
]

LAYERS_PARAM = "quantization_layers"
"""The candidate param that holds a tuned candidate's per-layer records."""

LAYER_OP_TYPES: tuple[str, ...] = ("MatMul", "Gemm", "Conv")
"""ONNX operators counted as layers (with a constant weight input)."""


@dataclass(frozen=True)
class QuantLayer:
    """One quantizable layer of a graph.

    Attributes:
        name: The node's name (ONNX node, or OpenVINO operation).
        op_type: Its operator type (``MatMul``, ``Gemm``, ``Conv``, ``Convolution``).
        weight: The name of its constant weight tensor.
    """

    name: str
    op_type: str
    weight: str


@dataclass(frozen=True)
class LayerAttribution:
    """What quantizing one layer alone costs, and the precision a tuning chose for it.

    Attributes:
        name: The layer's node name.
        op_type: Its operator type.
        weight: Its weight tensor's name.
        precision: ``"int8"``, or ``"fp32"`` when the chosen assignment keeps it float.
        error: Score lost with only this layer INT8 (baseline score minus that model's
            score; a fraction, 0.01 = one point).
        output_error: 1 - mean cosine similarity of that model's outputs to the FP32
            model's (ranks layers the score cannot tell apart).
    """

    name: str
    op_type: str
    weight: str
    precision: str
    error: float
    output_error: float

    def as_record(self) -> dict[str, Any]:
        """A JSON-able dict of the fields."""
        return asdict(self)


class MixedPrecisionBuilder(Protocol):
    """Builds a model of one graph where chosen layers stay float and the rest are INT8.

    Attributes:
        runtime: The runtime that runs what it builds.
        output_format: The artifact format it writes (``"onnx"``, ``"openvino"``).
    """

    runtime: str
    output_format: str

    def layers(self) -> list[QuantLayer]:
        """The graph's quantizable layers, in graph order."""
        ...

    def build(
        self, out_dir: Path, *, fallback: frozenset[str] = frozenset(), only: str | None = None
    ) -> Path:
        """Write a model to ``out_dir``: every layer INT8 but ``fallback``; with
        ``only``, that one layer INT8 and every other float. Returns the main file."""
        ...


def trial_artifact(path: Path, fmt: str) -> ArtifactRef:
    """An :class:`~hamnet.core.artifacts.ArtifactRef` to a model file outside the store
    (a tuning trial's scratch model), so a runtime can load it."""
    from hamnet.core.artifacts import ArtifactRef, artifact_files, hash_files

    files = artifact_files(Path(path), fmt)
    return ArtifactRef(
        path=str(path),
        sha256=hash_files(files),
        format=fmt,  # type: ignore[arg-type]
        size_bytes=sum(f.stat().st_size for f in files),
    )


class ValidationScorer:
    """Scores models on validation inputs against the FP32 model, as the selection does.

    Labels (integers) are scored by top-1 accuracy; float targets (the original
    model's outputs) and missing targets by fidelity, chosen by ``fidelity`` (see
    :func:`hamnet.evaluate.measure.score_outputs`). Missing targets are the FP32
    model's own outputs.

    Args:
        source: The FP32 model (ONNX).
        runtime: The runtime that runs the models scored (and ``source``).
        profile: Hardware profile of the sessions.
        x: Validation inputs ``[N, ...]``.
        y: Labels ``[N]``, the original model's outputs, or None.
        fidelity: ``data.fidelity`` (``"auto"``, ``"agreement"``, ``"cosine"``).
        source_format: The artifact format of ``source``.
        batch_size: Rows per inference call.

    Raises:
        DataError: ``x`` is empty, or ``y`` does not have one row per input.
    """

    def __init__(
        self,
        source: Path,
        runtime: str,
        profile: HardwareProfile,
        x: np.ndarray,
        y: np.ndarray | None = None,
        *,
        fidelity: str = "auto",
        source_format: str = "onnx",
        batch_size: int = 64,
    ) -> None:
        from hamnet.backends.session import pack_inputs

        self.x = pack_inputs(x)
        if len(self.x) == 0:
            raise DataError("accuracy-aware tuning needs validation inputs, but got an empty array")
        if y is not None and len(y) != len(self.x):
            raise DataError(
                f"validation targets must have one row per input ({len(self.x)}), but got {len(y)}"
            )
        self.y = None if y is None else np.asarray(y)
        self.runtime = runtime
        self.profile = profile
        self.fidelity = fidelity
        self.batch_size = batch_size
        self.reference = self.outputs(Path(source), source_format)
        self.baseline = self.score(self.reference)

    def session(self, path: Path, fmt: str) -> InferenceSession:
        """Load the model file ``path`` (format ``fmt``) in the scorer's runtime."""
        from hamnet.backends.session import load_session

        return load_session(trial_artifact(path, fmt), self.runtime, self.profile)

    def outputs(self, path: Path, fmt: str) -> np.ndarray:
        """The model's outputs on the validation inputs."""
        return self.predict(self.session(path, fmt))

    def predict(self, session: InferenceSession) -> np.ndarray:
        """The outputs of an open ``session`` on the validation inputs (a tuning times
        the same session afterwards instead of loading the model twice)."""
        from hamnet.evaluate.measure import predict

        return predict(session, self.x, self.batch_size)

    def score(self, outputs: np.ndarray) -> float:
        """The score of ``outputs``: accuracy on labels, else fidelity to the target."""
        from hamnet.evaluate.measure import score_outputs

        value, _ = score_outputs(outputs, self.y, self.reference, fidelity_setting=self.fidelity)
        assert value is not None
        return float(value)

    def output_error(self, outputs: np.ndarray) -> float:
        """1 - mean cosine similarity of ``outputs`` to the FP32 model's outputs."""
        from hamnet.evaluate.fidelity import cosine_similarity

        return float(1.0 - cosine_similarity(outputs, self.reference))


def attribute_layers(
    builder: MixedPrecisionBuilder,
    scorer: ValidationScorer,
    work: Path,
    *,
    layers: list[QuantLayer] | None = None,
    deadline: float | None = None,
) -> list[LayerAttribution]:
    """Measure each layer's INT8 error alone; return the layers, most harmful first.

    Args:
        builder: Builds the one-layer-INT8 models.
        scorer: Scores them against the FP32 model.
        work: Scratch folder (one sub-folder per layer, removed after scoring).
        layers: The layers to attribute (default: all of ``builder``'s).
        deadline: ``time.monotonic()`` after which no further layer is measured; the
            layers left get ``error`` and ``output_error`` NaN and rank last.

    Returns:
        One record per layer, sorted by ``error`` then ``output_error``, descending;
        every ``precision`` is ``"int8"`` (a tuning sets the chosen ones to fp32).
    """
    import shutil

    records = []
    for index, layer in enumerate(layers if layers is not None else builder.layers()):
        if deadline is not None and time.monotonic() > deadline:
            error = output_error = float("nan")
        else:
            folder = Path(work) / f"only-{index}"
            main = builder.build(folder, only=layer.name)
            outputs = scorer.outputs(main, builder.output_format)
            error = scorer.baseline - scorer.score(outputs)
            output_error = scorer.output_error(outputs)
            shutil.rmtree(folder, ignore_errors=True)
        records.append(
            LayerAttribution(layer.name, layer.op_type, layer.weight, "int8", error, output_error)
        )
    return sorted(records, key=_harm, reverse=True)


def _harm(record: LayerAttribution) -> tuple[float, float]:
    """Sort key: error, then output error; unmeasured (NaN) layers last."""
    if np.isnan(record.error):
        return (-np.inf, -np.inf)
    return (round(record.error, 9), record.output_error)


def layers_figure(records: list[dict[str, Any]]) -> Any:
    """A horizontal bar plot of each layer's error contribution (matplotlib, Agg).

    FP32 layers (fallen back) are drawn in another colour than INT8 ones.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [str(r["name"]) for r in records]
    errors = [100.0 * float(r["error"]) if np.isfinite(r["error"]) else 0.0 for r in records]
    colours = ["tab:orange" if r["precision"] == "fp32" else "tab:blue" for r in records]
    fig, ax = plt.subplots(figsize=(7.0, 0.3 * len(records) + 1.5))
    ax.barh(range(len(records)), errors, color=colours)
    ax.set_yticks(range(len(records)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("score lost with only this layer INT8 (points)")
    ax.set_title("per-layer INT8 error (orange: kept FP32)")
    fig.tight_layout()
    return fig


def log_quantization_layers(client: Any, run_id: str, candidate: Candidate) -> None:
    """Log a tuned candidate's per-layer records to its MLflow run: the table
    ``quantization/layers.json`` and the bar plot ``quantization/layers.png``.

    Does nothing for a candidate without records (``params["quantization_layers"]``).

    Args:
        client: An ``mlflow.MlflowClient``.
        run_id: The candidate's run.
        candidate: The candidate.
    """
    records = candidate.params.get(LAYERS_PARAM)
    if not records:
        return
    import matplotlib.pyplot as plt

    columns = {key: [r.get(key) for r in records] for key in records[0]}
    client.log_table(run_id, data=columns, artifact_file="quantization/layers.json")
    fig = layers_figure(records)
    try:
        client.log_figure(run_id, fig, "quantization/layers.png")
    finally:
        plt.close(fig)
