"""What :meth:`~hamnet.api.Optimizer.optimize` returns: the result and its report."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hamnet.core.errors import HamnetError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from hamnet.core.artifacts import ArtifactRef
    from hamnet.core.candidate import Candidate
    from hamnet.core.config import OptimizeConfig
    from hamnet.pipeline.run import PipelineResult

ValidationFn = Callable[[Callable[[Any], "np.ndarray"]], float]
"""``fn(predict) -> float``, called once on the recommended model."""


@dataclass
class CompressionReport:
    """What the optimization achieved for the recommended model.

    Attributes:
        size_reduction_ratio: Baseline size / recommended size.
        latency_improvement_ratio: Best FP32 baseline latency (over runtimes) /
            recommended latency.
        accuracy_drop: Baseline accuracy minus the recommended one (fraction), on the
            validation split the selection used.
        accuracy_kind: What "accuracy" means: top-1 accuracy, or for unlabelled data
            top-1 agreement with the original model's class (class scores) or the mean
            cosine similarity to its outputs (embeddings, hidden states); it names the
            metric the candidates were actually measured by.
        constraints_satisfied: Whether the recommended model meets every constraint.
        constraint_violations: One sentence per violated constraint.
        execution_time: Seconds the optimization took.
        backend_used: Runtime and precision of the recommended model.
        candidates_table: One dict per candidate (the pipeline's table).
        custom_metric: The value of the user's ``validation_fn``, if given.
        plan_reasons: Why these techniques were chosen.
        recommended: Name of the recommended candidate.
        gates: Deployment checks of the recommended model.
        validation_accuracy: The recommended model's score on the validation split
            (what the selection read).
        test_accuracy: Its score on the test split, measured once after selection.
        baseline_validation_accuracy: The baseline's score on the validation split.
        baseline_test_accuracy: The baseline's score on the test split.
        test_accuracy_drop: Baseline minus recommended on the test split.
        quantization_layers: Per-layer INT8 records of an accuracy-aware candidate (the
            recommended one, else the run's first): ``name``, ``op_type``, ``weight``,
            the chosen ``precision`` and the ``error`` (score lost with only that layer
            INT8) and ``output_error`` it contributes.
        quantization_note: When quantization was the goal but the selection recommends
            an unquantized model: says so, and why the quantized ones lost.
        nearest_quantized: Then the quantized candidate to take instead: the fastest
            one that meets the constraints, else the nearest one.
    """

    size_reduction_ratio: float | None
    latency_improvement_ratio: float | None
    accuracy_drop: float | None
    accuracy_kind: str
    constraints_satisfied: bool
    constraint_violations: list[str]
    execution_time: float
    backend_used: str | None
    candidates_table: list[dict[str, Any]]
    custom_metric: float | None = None
    plan_reasons: list[str] = field(default_factory=list)
    recommended: str | None = None
    gates: dict[str, Any] = field(default_factory=dict)
    validation_accuracy: float | None = None
    test_accuracy: float | None = None
    baseline_validation_accuracy: float | None = None
    baseline_test_accuracy: float | None = None
    test_accuracy_drop: float | None = None
    quantization_layers: list[dict[str, Any]] = field(default_factory=list)
    quantization_note: str | None = None
    nearest_quantized: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of every field."""
        return json.loads(json.dumps(asdict(self), default=_json_default))

    def to_markdown(self) -> str:
        """A short Markdown report."""
        lines = [
            "# hamnet compression report",
            "",
            f"- recommended: {self.recommended or 'none'} ({self.backend_used or 'n/a'})",
            f"- constraints satisfied: {self.constraints_satisfied}",
            f"- size reduction: {_times(self.size_reduction_ratio)}",
            f"- latency improvement: {_times(self.latency_improvement_ratio)}",
            f"- accuracy: {self.accuracy_kind}",
            f"- recommended: validation {_score(self.validation_accuracy)}, test "
            f"{_score(self.test_accuracy)} (test split scored once, after selection)",
            f"- baseline: validation {_score(self.baseline_validation_accuracy)}, test "
            f"{_score(self.baseline_test_accuracy)}",
            f"- accuracy drop: validation {_pct(self.accuracy_drop)}, test "
            f"{_pct(self.test_accuracy_drop)}",
            f"- custom metric: {self.custom_metric}",
            f"- execution time: {self.execution_time:.1f} s",
            f"- gates: {json.dumps(self.gates, default=_json_default)}",
            "",
            "## Constraint violations",
            "",
            *([f"- {v}" for v in self.constraint_violations] or ["- none"]),
            *([f"- {self.quantization_note}"] if self.quantization_note else []),
            "",
            "## Plan",
            "",
            *([f"- {r}" for r in self.plan_reasons] or ["- none"]),
            "",
            "## Candidates",
            "",
        ]
        columns = ["name", "runtime", "precision", "accuracy", "latency_p50_ms", "size_mb"]
        columns += ["meets_constraints", "recommended"]
        lines.append("| " + " | ".join(columns) + " |")
        lines.append("|" + "---|" * len(columns))
        for row in self.candidates_table:
            lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
        if self.quantization_layers:
            layer_columns = ["name", "op_type", "precision", "error", "output_error"]
            lines += ["", "## Quantization layers", "", "| " + " | ".join(layer_columns) + " |"]
            lines.append("|" + "---|" * len(layer_columns))
            for record in self.quantization_layers:
                lines.append("| " + " | ".join(_cell(record.get(c)) for c in layer_columns) + " |")
        return "\n".join(lines) + "\n"


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "/")


def _times(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.2f} points"


def _score(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


@dataclass
class OptimizationResult:
    """The outcome of :meth:`~hamnet.api.Optimizer.optimize`.

    Attributes:
        candidates: Every candidate of the final round's pipeline run.
        recommended: The recommended candidate (the nearest one when none meets the
            constraints); None only when nothing was measured.
        constraints_satisfied: Whether ``recommended`` meets every constraint.
        report: The compression report.
        config: The configuration of the final round (reusable with ``hamnet-optimize``).
        rounds: One line per pipeline round.
        pipeline: The final round's pipeline result.
    """

    candidates: list[Candidate]
    recommended: Candidate | None
    constraints_satisfied: bool
    report: CompressionReport
    config: OptimizeConfig
    rounds: list[str]
    pipeline: PipelineResult

    @classmethod
    def of_round(
        cls, pipeline: PipelineResult, config: OptimizeConfig, rounds: list[str],
        report: CompressionReport,
    ) -> OptimizationResult:  # fmt: skip
        """The result of the kept round's pipeline run."""
        selection = pipeline.selection
        return cls(
            candidates=list(pipeline.candidates),
            recommended=selection.recommended,
            constraints_satisfied=selection.constraints_satisfied,
            report=report,
            config=config,
            rounds=rounds,
            pipeline=pipeline,
        )

    def save_model(self, path: str | Path) -> Path:
        """Write the recommended model to ``path``, converting it when the suffix asks.

        A path with the model's own suffix (or none) gets a copy of its files; a suffix
        of another format the model converts to (ONNX -> OpenVINO IR ``.xml``) gets the
        converted model. OpenVINO IR always writes the ``.xml`` and the ``.bin`` beside it.

        Args:
            path: A file path (``.onnx``, ``.xml`` with its ``.bin`` beside it, ``.pt``)
                or an existing directory (files keep their names).

        Returns:
            The path of the main model file.

        Raises:
            HamnetError: If there is no recommended model, or the suffix is not one the
                model's format can be saved as (nothing is written then).
        """
        if self.recommended is None:
            raise HamnetError("there is no recommended model to save")
        return save_artifact(self.recommended.artifact, path)

    def save_config(self, path: str | Path) -> Path:
        """Write the configuration used as YAML (loadable by ``hamnet.core.config.load_config``)."""
        import yaml

        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(yaml.safe_dump(self.config.model_dump(mode="json"), sort_keys=False))
        return out

    def save_report(self, path: str | Path) -> tuple[Path, Path]:
        """Write the report as JSON and Markdown.

        Args:
            path: An existing directory (gets ``report.json`` and ``report.md``), or a
                path whose ``.json``/``.md`` variants are written.

        Returns:
            The JSON and Markdown paths.
        """
        base = Path(path)
        if base.is_dir():
            base = base / "report"
        elif base.suffix in (".json", ".md"):
            base = base.with_suffix("")
        base.parent.mkdir(parents=True, exist_ok=True)
        json_path = base.parent / f"{base.name}.json"
        md_path = base.parent / f"{base.name}.md"
        json_path.write_text(json.dumps(self.report.to_dict(), indent=2))
        md_path.write_text(self.report.to_markdown())
        return json_path, md_path


def _onnx_to_openvino(source: Path, out: Path) -> None:
    from hamnet.backends.export import convert_openvino

    convert_openvino(source, out)


_CONVERSIONS: dict[tuple[str, str], Callable[[Path, Path], None]] = {
    ("onnx", "openvino"): _onnx_to_openvino,
}
"""The format conversions :func:`save_artifact` makes: (from, to) -> ``fn(source, out)``."""


def save_artifact(artifact: ArtifactRef, path: str | Path) -> Path:
    """Write a stored model to ``path`` in the format its suffix names.

    Args:
        artifact: The stored model.
        path: A file path whose suffix is the main suffix of the model's format (a
            copy), of a format it converts to (a conversion), or none (the model's own
            suffix); or an existing directory (the files keep their names).

    Returns:
        The path of the main model file.

    Raises:
        HamnetError: If the suffix is not one the model's format can be saved as;
            nothing is written then.
    """
    from hamnet.backends.session import format_of, format_suffixes

    files = artifact.files
    own = format_suffixes().get(artifact.format, (files[0].suffix,))
    dest = Path(path)
    if dest.is_dir():
        out = dest / files[0].name
    else:
        out = dest if dest.suffix else dest.with_suffix(own[0])
    target = artifact.format if out.suffix.lower() == own[0] else format_of(out)
    if target == artifact.format:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(files[0], out)
        for sibling in files[1:]:
            shutil.copyfile(sibling, out.with_suffix(sibling.suffix))
        return out
    convert = _CONVERSIONS.get((artifact.format, target)) if target else None
    if convert is None:
        raise HamnetError(_unsaveable(artifact.format, own, out, target))
    out.parent.mkdir(parents=True, exist_ok=True)
    convert(files[0], out)
    return out


def _unsaveable(fmt: str, own: tuple[str, ...], out: Path, target: str | None) -> str:
    from hamnet.backends.session import format_suffixes

    allowed = [own[0]] + [format_suffixes()[t][0] for (f, t) in _CONVERSIONS if f == fmt]
    why = (
        f"{fmt!r} models cannot be converted to {target!r}"
        if target
        else "no format has that suffix"
    )
    return (
        f"save_model path must end with one of {allowed} (the recommended model is in "
        f"the {fmt!r} format, files {list(own)}), but got {str(out)!r}: {why}"
    )


def build_report(
    result: PipelineResult,
    *,
    accuracy_kind: str,
    seconds: float,
    reasons: list[str],
    config: OptimizeConfig,
    validation_fn: ValidationFn | None = None,
    trust_checkpoint: bool = False,
) -> CompressionReport:
    """Build the compression report of a pipeline result's recommended candidate.

    Args:
        result: The kept round's pipeline result.
        accuracy_kind: What accuracy means for the validation data.
        seconds: How long the optimization took.
        reasons: The plan's reasons.
        config: The kept round's configuration.
        validation_fn: The user's metric, called once on the recommended model.
        trust_checkpoint: Load checkpoints with pickled code.

    Raises:
        HamnetError: ``validation_fn`` is given but the recommended model does not load.
    """
    table = result.table
    selection = result.selection
    rec = selection.recommended
    note = nearest = None
    if rec is not None and rec.precision == "fp32" and quantization_is_the_goal(config):
        pick, note = nearest_quantized(result.candidates, selection)
        nearest = pick.name if pick is not None and pick.precision != "fp32" else None
    report = CompressionReport(
        size_reduction_ratio=None,
        latency_improvement_ratio=None,
        accuracy_drop=None,
        accuracy_kind=accuracy_kind,
        constraints_satisfied=selection.constraints_satisfied,
        constraint_violations=[],
        execution_time=seconds,
        backend_used=None,
        candidates_table=json.loads(table.to_json(orient="records")),
        plan_reasons=list(reasons),
        recommended=rec.name if rec else None,
        quantization_layers=_quantization_layers(rec, result.candidates),
        quantization_note=note,
        nearest_quantized=nearest,
    )
    if rec is None or rec.metrics is None:
        return report
    row = table[table["id"] == rec.id].iloc[0]
    report.size_reduction_ratio = _finite(row["size_ratio"])
    report.accuracy_drop = _finite(row["accuracy_drop"])
    report.accuracy_kind = measured_kind(accuracy_kind, rec.metrics.accuracy_kind)
    _add_split_scores(report, rec, _baseline_of(result))
    best = _best_baseline_latency(table)
    report.latency_improvement_ratio = _finite(best / rec.metrics.latency_p50_ms)
    assessment = selection.assessments.get(rec.id)
    report.constraint_violations = list(assessment.violations) if assessment else []
    report.backend_used = f"{rec.runtime} {rec.precision}"
    session = _load_recommended(rec, config, trust_checkpoint)
    report.gates = {
        "loads_in_runtime": session is not None,
        "parity_max_abs_diff": rec.parity_max_abs_diff,
        # The pipeline rejects a candidate slower than its parent (timed side by side).
        "faster_than_parent": rec.rejected is None,
    }
    if validation_fn is not None:
        if session is None:
            raise HamnetError(f"recommended model {rec.name} does not load in {rec.runtime}")
        loaded = session

        def predict(x: Any) -> np.ndarray:
            return loaded.run(x)

        report.custom_metric = float(validation_fn(predict))
    return report


def quantization_is_the_goal(config: OptimizeConfig) -> bool:
    """Whether the run only quantizes (``goal=QUANTIZE``: no training, search, pruning
    or distillation), so an unquantized recommendation would return the baseline."""
    stages = config.stages
    return stages.quantize is not None and all(
        getattr(stages, name, None) is None for name in ("train", "nas", "hpo", "prune", "distill")
    )


def nearest_quantized(candidates: list[Candidate], selection: Any) -> tuple[Candidate | None, str]:
    """The quantized candidate to point to when the selection chose an unquantized one.

    The fastest quantized candidate that meets the constraints (and is not slower than
    its parent), else the nearest one (rejected ones last, then the smallest violation
    score); with the sentence the report shows.

    Args:
        candidates: The run's candidates.
        selection: The run's :class:`~hamnet.evaluate.pareto.Selection`.

    Returns:
        The candidate (None when no quantized model was measured) and the note.
    """
    chosen = selection.recommended
    quantized = [
        c for c in candidates
        if c.precision != "fp32" and c.metrics is not None and c.id in selection.assessments
    ]  # fmt: skip
    if not quantized:
        return chosen, (
            f"quantization was the goal, but no quantized model was measured: the "
            f"unquantized {chosen.name if chosen else 'model'} is returned"
        )
    assessments = selection.assessments
    feasible = [
        c for c in quantized if assessments[c.id].meets_constraints and c.rejected is None
    ]  # fmt: skip
    if feasible:
        pick = min(feasible, key=_latency)
        return pick, (
            f"quantization was the goal, but the selection recommends the unquantized "
            f"{chosen.name if chosen else 'model'} (faster); {pick.name} is the fastest "
            f"quantized model that meets the constraints"
        )
    pick = min(
        quantized,
        key=lambda c: (c.rejected is not None, assessments[c.id].violation_score, _latency(c)),
    )  # fmt: skip
    why = "; ".join(assessments[pick.id].violations) or str(pick.rejected or "")
    return pick, (
        f"no quantized model meets the constraints, so the selection recommends the "
        f"unquantized {chosen.name if chosen else 'model'}; the nearest quantized one is "
        f"{pick.name} ({why})"
    )


def _latency(candidate: Candidate) -> float:
    return candidate.metrics.latency_p50_ms if candidate.metrics else math.inf


def _quantization_layers(
    rec: Candidate | None, candidates: list[Candidate]
) -> list[dict[str, Any]]:
    """Per-layer INT8 records: the recommended candidate's, else the first candidate's."""
    from hamnet.compress.quantize.attribution import LAYERS_PARAM

    for c in [rec, *candidates] if rec is not None else candidates:
        records = c.params.get(LAYERS_PARAM) if c is not None else None
        if records:
            return [dict(r) for r in records]
    return []


def measured_kind(prepared: str, measured: str) -> str:
    """The report's ``accuracy_kind``: the data's description when it names the metric
    the candidates were measured by, else that metric in words.

    Args:
        prepared: What the validation data said accuracy would mean (e.g.
            ``"top1_agreement_with_original_model (labels are the original
            predictions)"``).
        measured: The recommended candidate's ``Metrics.accuracy_kind``.

    Returns:
        ``prepared`` when it starts with the measured metric's report name, else the
        measured metric's report name and meaning.
    """
    from hamnet.evaluate.fidelity import REPORT_NAMES, describe_accuracy_kind

    name = REPORT_NAMES.get(measured, measured)
    if prepared.startswith(name) or (measured == "top1_accuracy" and prepared.startswith("top1_")):
        return prepared
    return f"{name} ({describe_accuracy_kind(measured)})"


def _baseline_of(result: PipelineResult) -> Candidate | None:
    baseline_id = result.selection.baseline_id
    return next((c for c in result.candidates if c.id == baseline_id), None)


def _add_split_scores(
    report: CompressionReport, rec: Candidate, baseline: Candidate | None
) -> None:
    """Validation and test scores of the recommended model and the baseline."""
    if rec.metrics is not None:
        report.validation_accuracy = _finite(rec.metrics.accuracy)
        report.test_accuracy = _finite(rec.metrics.test_accuracy)
    if baseline is not None and baseline.metrics is not None:
        report.baseline_validation_accuracy = _finite(baseline.metrics.accuracy)
        report.baseline_test_accuracy = _finite(baseline.metrics.test_accuracy)
    if report.test_accuracy is not None and report.baseline_test_accuracy is not None:
        report.test_accuracy_drop = report.baseline_test_accuracy - report.test_accuracy


def _best_baseline_latency(table: pd.DataFrame) -> float:
    """The fastest FP32 baseline latency over runtimes (the baseline or its exports)."""
    base = table[
        (table["precision"] == "fp32")
        & (table["is_baseline"] | ((table["stage"] == "export") & (table["parent"] == "baseline")))
    ]
    return float(base["latency_p50_ms"].min()) if len(base) else math.nan


def _load_recommended(rec: Candidate, config: OptimizeConfig, trust_checkpoint: bool) -> Any:
    """The recommended model's session in its runtime (None when it does not load)."""
    from hamnet.backends.session import load_session
    from hamnet.core.hardware import load_profile

    profile = load_profile(config.hardware_profile)
    try:
        return load_session(rec.artifact, rec.runtime, profile, trust_checkpoint=trust_checkpoint)
    except HamnetError:
        return None


def _finite(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None
