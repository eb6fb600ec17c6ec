"""A Hamerspace-style Python API over the one hamnet pipeline.

The API builds an :class:`~hamnet.core.config.OptimizeConfig` from a goal and constraints
and walks :func:`hamnet.pipeline.run_pipeline` in this process: there is no second
pipeline. Every candidate is measured, checked and selected exactly as by
``hamnet-optimize``.

Example:
    >>> from hamnet.api.optimizer import Constraints, Goal, Optimizer
    >>> opt = Optimizer.from_pytorch("model.pt")  # doctest: +SKIP
    >>> result = opt.optimize(Goal.AUTO, Constraints(target_size_mb=0.1))  # doctest: +SKIP
    >>> result.save_model("deploy/model.onnx")  # doctest: +SKIP

Work directory: unless ``work_dir`` is given, each optimizer works in a new folder
``.hamnet-api/<timestamp>-<id>`` under the current directory. It holds the source
model (a saved checkpoint or an ONNX export), the validation data (``data.npz``) and
one pipeline run per round (``round-1``, ``round-2``: artifacts and reports).

Models: a HAMNet (checkpoint or instance) supports every goal. Any other
``torch.nn.Module`` that traces (MLPs, convolutional nets, modules with several named
inputs, Hugging Face BERT-style encoders whose forward returns a ``ModelOutput``) is
exported to ONNX (opset 17, dynamic batch axis, dynamic sequence axis for integer
token inputs, parity-checked in ONNX Runtime) and optimized as an ONNX model, as is a
model given with :meth:`Optimizer.from_onnx` (any number of inputs of any rank):
quantization only.

Validation data: ``validation_data=(x, y)`` is taken as-is (not standardized) and
split by the pipeline into train/validation/test. ``x`` is one array of any rank
(``[N, features]``, ``[N, 1, 8, 8]``...) or a dict ``{input name: [N, ...]}`` for
models with several inputs (token ids stay int64). Without labels (``y=None``) the
metric is fidelity to the original model: for a HAMNet the labels are its own
predictions (top-1 agreement); for other models the original model's outputs are
stored with the data and every candidate scores top-1 agreement with them when they
are classifier logits (2-D), or the mean cosine similarity to them for any other
output (e.g. ``[batch, seq, hidden]`` hidden states). The report's
``accuracy_kind`` says which, and ``max_accuracy_drop`` applies to that metric.
Without validation data a HAMNet with 64 inputs and 10 classes is evaluated on the
built-in digits data.

Prefect: ``optimize(..., use_prefect=True)`` runs the same configuration through the
``hamnet-optimize`` flow (an ephemeral Prefect server unless ``PREFECT_API_URL`` is
set) instead of in this process; the result is the same :class:`OptimizationResult`.

Not supported yet: structured pruning or distillation of anything but HAMNet
checkpoints (in particular of arbitrary convolutional nets and of transformers
through the API).
"""

from __future__ import annotations

import json
import math
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from hamnet.core.candidate import is_number
from hamnet.core.errors import (
    ConfigError,
    DataError,
    HamnetError,
    MissingDependencyError,
    ModelLoadError,
)

if TYPE_CHECKING:
    import numpy as np

    from hamnet.core.candidate import Candidate
    from hamnet.core.config import OptimizeConfig
    from hamnet.core.hardware import HardwareProfile
    from hamnet.pipeline.run import PipelineResult

ModelKind = Literal["hamnet", "onnx"]
ModelFamily = Literal["hamnet", "transformer", "conv", "generic"]
"""What AUTO plans for: a HAMNet, a transformer (attention in the graph), a
convolutional net (a 4-D input) or any other model."""

DEFAULT_WORK_ROOT = ".hamnet-api"
"""Folder (under the current directory) holding the default work directories."""

BACKEND_METHODS: dict[str, dict[str, list[str]]] = {
    "onnx": {"int8": ["ort_dynamic_int8", "ort_static_int8"], "fp16": ["onnx_fp16"]},
    "openvino": {"int8": ["nncf_int8"], "fp16": ["openvino_fp16"]},
}
"""Quantization methods of each backend, by the precision they produce."""

_BACKEND_RUNTIME = {"onnx": "onnxruntime", "openvino": "openvino"}
FUSED_METHOD = "ort_fused_dynamic_int8"
"""ONNX Runtime transformer fusion + dynamic INT8 per channel (hamnet.compress.quantize)."""
PRUNE_RATIOS: list[float] = [0.3, 0.5, 0.7]
DISTILL_PRUNE_RATIOS: list[float] = [0.5, 0.7]
ESCALATION_PRUNE_RATIOS: list[float] = [0.7, 0.8]


class UnsupportedCombinationError(HamnetError, NotImplementedError):
    """The requested goal, model kind or input shape is not supported (yet)."""


class Goal(StrEnum):
    """What :meth:`Optimizer.optimize` should do."""

    QUANTIZE = "quantize"
    PRUNE = "prune"
    DISTILL = "distill"
    AUTO = "auto"


@dataclass(frozen=True)
class Constraints:
    """What the recommended model must satisfy.

    Attributes:
        target_size_mb: Largest model file size (None: unconstrained).
        max_latency_ms: Largest p50 latency on the target (None: unconstrained).
        max_accuracy_drop: Largest absolute accuracy drop (0.01 = one point).
        target_hardware: A hardware profile name (see ``hamnet profiles``).
        batch_size: Intended inference batch size (validated; not used yet: the
            latency batch size comes from the hardware profile).
        calibration_samples: Samples used to calibrate static quantization.
    """

    target_size_mb: float | None = None
    max_latency_ms: float | None = None
    max_accuracy_drop: float = 0.01
    target_hardware: str = "x86-avx2"
    batch_size: int = 1
    calibration_samples: int = 300

    def __post_init__(self) -> None:
        for name in ("target_size_mb", "max_latency_ms"):
            value = getattr(self, name)
            if value is not None and not (is_number(value) and value > 0):
                raise ConfigError(f"{name} must be a positive number or None, but got {value!r}")
        drop = self.max_accuracy_drop
        if not (is_number(drop) and 0.0 <= drop <= 1.0):
            raise ConfigError(f"max_accuracy_drop must be in [0, 1], but got {drop!r}")
        if not isinstance(self.target_hardware, str) or not self.target_hardware:
            raise ConfigError(
                f"target_hardware must be a hardware profile name, but got {self.target_hardware!r}"
            )
        for name in ("batch_size", "calibration_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, but got {value!r}")

    def has_size_constraint(self) -> bool:
        """Whether a size limit is set."""
        return self.target_size_mb is not None

    def has_latency_constraint(self) -> bool:
        """Whether a latency limit is set."""
        return self.max_latency_ms is not None


@dataclass(frozen=True)
class AutoPlan:
    """What :attr:`Goal.AUTO` runs, and why.

    Attributes:
        goal_sequence: The techniques, in pipeline order.
        reasons: One sentence per decision.
        prune_ratios: Structured pruning ratios (empty: no pruning).
        precisions: Quantization precisions ("int8", "fp16").
        distill: Whether pruned candidates are recovered by distillation.
        methods: Quantization methods chosen for the model family (empty: every
            method of the chosen backends and precisions).
        family: The model family the plan was made for.
    """

    goal_sequence: list[Goal]
    reasons: list[str]
    prune_ratios: list[float] = field(default_factory=list)
    precisions: list[str] = field(default_factory=list)
    distill: bool = False
    methods: list[str] = field(default_factory=list)
    family: str = "generic"


def _quantize_precisions(profile: HardwareProfile) -> list[str]:
    if profile.device == "cuda" or "int8" not in profile.precisions:
        return ["fp16"] if "fp16" in profile.precisions else []
    return ["int8"]


def plan_for(
    constraints: Constraints,
    model_kind: ModelKind,
    profile: HardwareProfile,
    *,
    model_size_mb: float | None = None,
    family: ModelFamily | None = None,
) -> AutoPlan:
    """Choose the techniques for :attr:`Goal.AUTO` by a few documented rules.

    Rules, each recorded as one reason in the plan:
        * size-bound (``target_size_mb`` below half the model's size): quantization
          first, plus structured pruning when the needed ratio exceeds 4x (about what
          INT8 gives) and the model is a HAMNet;
        * latency-bound (``max_latency_ms`` set): pruning (HAMNet only) plus
          quantization, INT8 on profiles with INT8, FP16 on GPU profiles;
        * no bound: quantization only;
        * transformers (attention in the graph, e.g. BERT-style encoders): ONNX
          Runtime transformer fusion + dynamic INT8 per channel
          (``ort_fused_dynamic_int8``), with plain dynamic INT8 beside it; static
          INT8 and NNCF lost accuracy on such models, OpenVINO INT8 gave no speedup;
        * convolutional nets (a 4-D input): OpenVINO INT8 via NNCF when the profile
          lists OpenVINO (ONNX Runtime's dynamic INT8 is slower on convolutions),
          else ONNX Runtime static INT8; structured pruning of arbitrary conv nets is
          not supported (yet), so they are only quantized;
        * non-HAMNet models (ONNX files, exported modules) are never pruned
          (structured pruning needs a HAMNet checkpoint).

    Args:
        constraints: The user's constraints.
        model_kind: "hamnet" (a checkpoint) or "onnx".
        profile: The target's hardware profile.
        model_size_mb: Size of the model file (needed for the size rule).
        family: The model family (default: "hamnet" for a HAMNet, else "generic").

    Returns:
        The plan with one reason per decision.
    """
    family = family or ("hamnet" if model_kind == "hamnet" else "generic")
    reasons: list[str] = []
    precisions = _quantize_precisions(profile)
    prec_text = "/".join(precisions) or "none"
    prune = False
    target = constraints.target_size_mb
    can_prune = model_kind == "hamnet"
    why_not = (
        "convolutional nets cannot be pruned yet (structured pruning of arbitrary conv "
        "nets is not supported; only HAMNet checkpoints are)"
        if family == "conv"
        else "only HAMNet checkpoints can be pruned (ONNX models and exported modules cannot)"
    )
    if target is not None and model_size_mb is not None and target < model_size_mb / 2:
        needed = model_size_mb / target
        reasons.append(
            f"size-bound: {model_size_mb:.3f} MB must shrink {needed:.1f}x to {target} MB, "
            f"so quantization ({prec_text}) comes first"
        )
        if needed > 4.0:
            if can_prune:
                prune = True
                reasons.append(
                    f"a {needed:.1f}x reduction is more than quantization gives (~4x), so "
                    f"structured pruning is added"
                )
            else:
                reasons.append(
                    f"a {needed:.1f}x reduction is more than quantization gives (~4x), but "
                    f"{why_not}"
                )
    elif target is not None:
        reasons.append(f"size limit {target} MB is within reach of quantization ({prec_text})")
    if constraints.max_latency_ms is not None:
        reasons.append(
            f"latency-bound ({constraints.max_latency_ms} ms): quantization ({prec_text}) "
            f"on profile {profile.name!r}"
        )
        if can_prune:
            prune = True
            reasons.append("latency-bound HAMNet: structured pruning removes heads and channels")
        else:
            reasons.append(f"no pruning: {why_not}")
    if not reasons:
        reasons.append(f"no size or latency bound: quantization ({prec_text}) only")
    methods = _family_methods(family, precisions, profile, reasons)
    sequence = [Goal.PRUNE] if prune else []
    if precisions:
        sequence.append(Goal.QUANTIZE)
    else:
        reasons.append(f"profile {profile.name!r} supports no INT8/FP16 precision: no quantization")
    return AutoPlan(
        goal_sequence=sequence,
        reasons=reasons,
        prune_ratios=list(PRUNE_RATIOS) if prune else [],
        precisions=precisions,
        methods=methods,
        family=family,
    )


def _family_methods(
    family: str, precisions: list[str], profile: HardwareProfile, reasons: list[str]
) -> list[str]:
    """The quantization methods a model family gets (empty: the backends' defaults)."""
    if "int8" not in precisions:
        return []
    runtimes = profile.runtime_names
    if family == "transformer" and "onnxruntime" in runtimes:
        reasons.append(
            "transformer (attention in the graph): ONNX Runtime transformer fusion + dynamic "
            "INT8 per channel (ort_fused_dynamic_int8), plain dynamic INT8 beside it; static "
            "INT8 and NNCF lose accuracy on encoders and OpenVINO INT8 gave no speedup there"
        )
        return [FUSED_METHOD, "ort_dynamic_int8"]
    if family == "conv":
        if "openvino" in runtimes:
            reasons.append(
                "convolutional net (4-D input): OpenVINO INT8 via NNCF, the fastest INT8 "
                "recipe measured on convolutions (ONNX Runtime dynamic INT8 was slower than "
                "FP32 there)"
            )
            return ["nncf_int8"]
        reasons.append(
            f"convolutional net (4-D input): profile {profile.name!r} lists no OpenVINO, so "
            f"ONNX Runtime static INT8 (calibrated) instead of NNCF"
        )
        return ["ort_static_int8"]
    return []


@dataclass
class CompressionReport:
    """What the optimization achieved for the recommended model.

    Attributes:
        size_reduction_ratio: Baseline size / recommended size.
        latency_improvement_ratio: Best FP32 baseline latency (over runtimes) /
            recommended latency.
        accuracy_drop: Baseline accuracy minus the recommended one (fraction).
        accuracy_kind: What "accuracy" means (top-1 accuracy, or top-1 agreement with
            the original model for unlabelled data).
        constraints_satisfied: Whether the recommended model meets every constraint.
        constraint_violations: One sentence per violated constraint.
        execution_time: Seconds the optimization took.
        backend_used: Runtime and precision of the recommended model.
        candidates_table: One dict per candidate (the pipeline's table).
        custom_metric: The value of the user's ``validation_fn``, if given.
        plan_reasons: Why these techniques were chosen.
        recommended: Name of the recommended candidate.
        gates: Deployment checks of the recommended model.
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
            f"- accuracy drop: {_pct(self.accuracy_drop)} ({self.accuracy_kind})",
            f"- custom metric: {self.custom_metric}",
            f"- execution time: {self.execution_time:.1f} s",
            f"- gates: {json.dumps(self.gates, default=_json_default)}",
            "",
            "## Constraint violations",
            "",
            *([f"- {v}" for v in self.constraint_violations] or ["- none"]),
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


@dataclass
class OptimizationResult:
    """The outcome of :meth:`Optimizer.optimize`.

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

    def save_model(self, path: str | Path) -> Path:
        """Copy the recommended model's files to ``path``.

        Args:
            path: A file path (``.onnx``, ``.xml`` with its ``.bin`` beside it, ``.pt``)
                or an existing directory (files keep their names).

        Returns:
            The path of the main model file.

        Raises:
            HamnetError: If there is no recommended model.
        """
        if self.recommended is None:
            raise HamnetError("there is no recommended model to save")
        files = self.recommended.artifact.files
        main = files[0]
        dest = Path(path)
        if dest.is_dir():
            out = dest / main.name
        else:
            out = dest if dest.suffix else dest.with_suffix(main.suffix)
            out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(main, out)
        for extra in files[1:]:
            shutil.copyfile(extra, out.with_suffix(extra.suffix))
        return out

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


class Optimizer:
    """Optimize one model for a hardware target through the hamnet pipeline.

    Build it with :meth:`from_pytorch`, :meth:`from_onnx` or :meth:`from_tensorflow`.

    Args:
        model_path: A hamnet checkpoint (``.pt``) or an ONNX file.
        kind: "hamnet" or "onnx".
        work_dir: Where runs are written (default ``.hamnet-api/<timestamp>-<id>``).
        trust_checkpoint: Load checkpoints with pickled code (own files only).
        family: What AUTO plans for (see :data:`ModelFamily`); default: told from the
            model (attention in the graph: "transformer", a 4-D input: "conv").

    Attributes:
        input_names: The ONNX model's input names (None for a HAMNet).
        family: The model family AUTO plans for.
    """

    def __init__(
        self,
        model_path: str | Path,
        kind: ModelKind,
        *,
        work_dir: str | Path | None = None,
        trust_checkpoint: bool = False,
        family: ModelFamily | None = None,
    ) -> None:
        path = Path(model_path).expanduser().resolve()
        if not path.is_file():
            raise ModelLoadError(f"model file {str(path)!r} does not exist")
        self.model_path = path
        self.kind: ModelKind = kind
        self.work_dir = _work_dir(work_dir)
        self.trust_checkpoint = trust_checkpoint
        self.input_names: list[str] | None = None
        self._input_dims: dict[str, list[int | None]] = {}
        if kind == "onnx":
            from hamnet.pipeline.plan import onnx_inputs

            self._input_dims = onnx_inputs(path)
            self.input_names = list(self._input_dims)
        self.family: ModelFamily = family or self._detect_family()

    def _detect_family(self) -> ModelFamily:
        if self.kind == "hamnet":
            return "hamnet"
        from hamnet.compress.quantize.base import has_attention

        if has_attention(self.model_path):
            return "transformer"
        if any(len(dims) == 4 for dims in self._input_dims.values()):
            return "conv"
        return "generic"

    # --- constructors -------------------------------------------------------------

    @classmethod
    def from_pytorch(
        cls,
        model: Any,
        input_shape: Sequence[int] | None = None,
        *,
        example_inputs: Any = None,
        input_names: Sequence[str] | None = None,
        dynamic_axes: dict[str, dict[int, str]] | None = None,
        trust_checkpoint: bool = False,
        work_dir: str | Path | None = None,
    ) -> Optimizer:
        """Take a hamnet checkpoint, a HAMNet, or any traceable ``torch.nn.Module``.

        A checkpoint path or HAMNet instance is optimized as a HAMNet (all goals); any
        other module is exported to ONNX (opset 17, dynamic batch axis, and a dynamic
        sequence axis for integer inputs of two or more axes; outputs checked against
        the module in ONNX Runtime) and optimized as an ONNX model (quantization
        only). A Hugging Face model whose forward returns a ``ModelOutput`` is exported
        with its first tensor (``last_hidden_state`` of a ``BertModel``, ``logits`` of a
        ``*ForSequenceClassification``); it is switched to eager attention first (so
        ONNX Runtime's transformer fusion matches) and its head count and hidden size
        are recorded in the ONNX metadata for the fusion (see
        :func:`hamnet.backends.export.export_module`).

        Args:
            model: A ``.pt``/``.pth`` hamnet checkpoint path, a HAMNet, or any module.
            input_shape: The shape of one input, batch first (e.g. ``[1, 64]`` or
                ``[1, 1, 8, 8]``); random float32 inputs of this shape trace the
                module. Give ``example_inputs`` instead for several inputs or integer
                inputs.
            example_inputs: A tensor, a tuple of tensors (positional arguments) or a
                dict ``{argument name: tensor}`` (keyword arguments, e.g.
                ``input_ids``/``attention_mask``) to trace the module with.
            input_names: Graph input names for a tensor or tuple (a dict's keys name
                its inputs).
            dynamic_axes: ``{name: {axis: axis name}}`` overriding the defaults.
            trust_checkpoint: Load the checkpoint with pickled code (own files only).
            work_dir: Where to write the source model and the runs.

        Raises:
            ModelLoadError: If the path does not exist or is not a checkpoint.
            ConfigError: If neither ``input_shape`` nor ``example_inputs`` is given for
                a generic module, or either is invalid.
            ExportError: If the module does not export, or ONNX Runtime's outputs
                differ from the module's.
        """
        if isinstance(model, (str, Path)):
            path = Path(model).expanduser()
            if not path.is_file():
                raise ModelLoadError(
                    f"model file {str(path)!r} does not exist (expected a hamnet .pt checkpoint)"
                )
            if path.suffix.lower() not in (".pt", ".pth"):
                raise ModelLoadError(
                    f"from_pytorch needs a hamnet .pt/.pth checkpoint, but got {str(path)!r}"
                    + (" (use Optimizer.from_onnx)" if path.suffix.lower() == ".onnx" else "")
                )
            from hamnet.models import load_checkpoint

            load_checkpoint(path, trust=trust_checkpoint)
            return cls(path, "hamnet", work_dir=work_dir, trust_checkpoint=trust_checkpoint)
        import torch

        from hamnet.models import HAMNet, save_checkpoint

        if not isinstance(model, torch.nn.Module):
            raise ConfigError(
                f"model must be a checkpoint path or a torch.nn.Module, but got "
                f"{type(model).__name__}"
            )
        root = _work_dir(work_dir)
        if isinstance(model, HAMNet):
            if input_shape is not None:
                features = _check_shape(input_shape, hamnet=True)
                if features != model.config.input_size:
                    raise ConfigError(
                        f"input_shape must match the HAMNet's input_size "
                        f"{model.config.input_size}, but got {list(input_shape)}"
                    )
            out = save_checkpoint(model, root / "source" / "model.pt")
            return cls(out, "hamnet", work_dir=root)
        if example_inputs is None:
            if input_shape is None:
                raise ConfigError(
                    f"input_shape (e.g. [1, features]) or example_inputs must be given for a "
                    f"{type(model).__name__}, but got None"
                )
            _check_shape(input_shape)
            example_inputs = torch.randn(*[int(d) for d in input_shape])
        from hamnet.backends.export import export_module

        hf = getattr(getattr(model, "config", None), "num_attention_heads", None) is not None
        out = export_module(
            model,
            example_inputs,
            root / "source" / "model.onnx",
            input_names=input_names,
            dynamic_axes=dynamic_axes,
            opset=17,
        )
        return cls(out, "onnx", work_dir=root, family="transformer" if hf else None)

    @classmethod
    def from_onnx(
        cls,
        path: str | Path,
        *,
        work_dir: str | Path | None = None,
        family: ModelFamily | None = None,
    ) -> Optimizer:
        """Take an ONNX model with any number of inputs of any rank.

        Args:
            path: The ``.onnx`` file.
            work_dir: Where to write the runs.
            family: What AUTO plans for; default: told from the graph (attention:
                "transformer", a 4-D input: "conv", else "generic").

        Raises:
            ModelLoadError: If the file does not exist or is not a readable ONNX model.
        """
        p = Path(path).expanduser()
        if not p.is_file():
            raise ModelLoadError(f"ONNX file {str(p)!r} does not exist")
        if family is not None and family not in ("transformer", "conv", "generic"):
            raise ConfigError(
                f"family must be 'transformer', 'conv' or 'generic' for an ONNX model, but "
                f"got {family!r}"
            )
        return cls(p, "onnx", work_dir=work_dir, family=family)

    @classmethod
    def from_tensorflow(
        cls,
        path: str | Path,
        input_shape: Sequence[int] | None = None,
        *,
        work_dir: str | Path | None = None,
    ) -> Optimizer:
        """Take a Keras file or SavedModel, converted to ONNX with tf2onnx.

        Raises:
            MissingDependencyError: If tensorflow or tf2onnx is not installed.
            ModelLoadError: If the path does not exist.
        """
        import importlib.util

        missing = [m for m in ("tensorflow", "tf2onnx") if importlib.util.find_spec(m) is None]
        if missing:
            raise MissingDependencyError(
                f"from_tensorflow needs {' and '.join(missing)}, which are not installed: "
                f"pip install 'hamnet[tensorflow]'"
            )
        p = Path(path).expanduser()
        if not p.exists():
            raise ModelLoadError(f"TensorFlow model {str(p)!r} does not exist")
        import tensorflow as tf
        import tf2onnx

        keras_model = tf.keras.models.load_model(str(p))
        features = (
            _check_shape(input_shape, hamnet=True)
            if input_shape
            else int(keras_model.input_shape[-1])
        )
        root = _work_dir(work_dir)
        out = root / "source" / "model.onnx"
        out.parent.mkdir(parents=True, exist_ok=True)
        spec = (tf.TensorSpec([None, features], tf.float32, name="input"),)
        tf2onnx.convert.from_keras(
            keras_model, input_signature=spec, opset=17, output_path=str(out)
        )
        return cls.from_onnx(out, work_dir=root)

    # --- optimization ---------------------------------------------------------------

    def model_size_mb(self) -> float:
        """Size of the source model file in MB."""
        return self.model_path.stat().st_size / 1e6

    def build_config(
        self,
        goal: Goal | str = Goal.AUTO,
        constraints: Constraints | None = None,
        *,
        preferred_backends: Sequence[str] | None = None,
        data_path: str | Path | None = None,
        seed: int = 0,
        track: bool = False,
        plan: AutoPlan | None = None,
        escalate: bool = False,
        overrides: dict[str, Any] | None = None,
    ) -> OptimizeConfig:
        """Build the pipeline configuration for a goal (what :meth:`optimize` runs).

        Raises:
            ConfigError: For an unknown goal or backend, or invalid settings.
            UnsupportedCombinationError: For pruning/distillation of a non-HAMNet.
        """
        from hamnet.core.config import config_from_dict, deep_merge
        from hamnet.core.hardware import load_profile

        goal = _goal(goal)
        constraints = constraints or Constraints()
        profile = load_profile(constraints.target_hardware)
        backends = _backends(preferred_backends, profile)
        if goal in (Goal.PRUNE, Goal.DISTILL) and self.kind != "hamnet":
            raise UnsupportedCombinationError(
                f"structured pruning needs a HAMNet checkpoint, but got an ONNX model "
                f"(goal {goal.value!r}); use Goal.QUANTIZE or Goal.AUTO"
            )
        prune: dict[str, Any] | None = None
        distill: dict[str, Any] | None = None
        precisions: list[str] = []
        chosen: list[str] = []
        if goal is Goal.QUANTIZE:
            precisions = [p for p in ("int8", "fp16") if p in profile.precisions]
            if self.family == "transformer" and "onnx" in backends and "int8" in precisions:
                chosen = [FUSED_METHOD]
        elif goal is Goal.PRUNE:
            prune = {"ratios": list(PRUNE_RATIOS), "criteria": ["l1"], "allocations": ["uniform"]}
        elif goal is Goal.DISTILL:
            prune = {"ratios": list(DISTILL_PRUNE_RATIOS), "criteria": ["l1"]}
            distill = {"recover_pruned": True}
        else:
            plan = plan or self.plan(constraints)
            precisions = list(plan.precisions)
            chosen = list(plan.methods)
            if plan.prune_ratios:
                prune = {"ratios": list(plan.prune_ratios), "criteria": ["l1"]}
            if escalate:
                if self.kind == "hamnet":
                    ratios = sorted(set(plan.prune_ratios) | set(ESCALATION_PRUNE_RATIOS))
                    prune = {"ratios": ratios, "criteria": ["l1"]}
                    distill = {"recover_pruned": True}
                precisions = [p for p in ("int8", "fp16") if p in profile.precisions]
        methods = [m for b in backends for p in precisions for m in BACKEND_METHODS[b][p]]
        if chosen:
            wanted = [m for m in chosen if _method_backend(m) in backends]
            # AUTO's first round runs only the family's methods; an escalation round
            # (and the QUANTIZE goal) adds every method of the chosen backends.
            methods = wanted + ([] if goal is Goal.AUTO and not escalate else methods)
        methods = list(dict.fromkeys(methods))
        data: dict[str, Any]
        if data_path is not None:
            data = {"source": "file", "path": str(data_path), "format": "npz"}
            data["standardize"] = False
        else:
            data = {"source": "digits"}
        cfg: dict[str, Any] = {
            "name": "hamnet-api",
            "seed": seed,
            "workdir": "run",
            "hardware_profile": constraints.target_hardware,
            "model": {
                "source": "file",
                "path": str(self.model_path),
                "trust_checkpoint": self.trust_checkpoint,
            },
            "data": data,
            "constraints": {
                "max_accuracy_drop": constraints.max_accuracy_drop,
                "max_latency_ms": constraints.max_latency_ms,
                "target_size_mb": constraints.target_size_mb,
            },
            "stages": {
                "train": None,
                "prune": prune,
                "distill": distill,
                "export": {"formats": backends} if self.kind == "hamnet" else None,
                "quantize": (
                    {"methods": methods, "calibration_samples": constraints.calibration_samples}
                    if methods
                    else None
                ),
            },
            "tracking": {"enabled": track},
        }
        if overrides:
            cfg = deep_merge(cfg, overrides)
        return config_from_dict(cfg, source="hamnet.api")

    def plan(self, constraints: Constraints | None = None) -> AutoPlan:
        """The :attr:`Goal.AUTO` plan for this model (see :func:`plan_for`)."""
        from hamnet.core.hardware import load_profile

        constraints = constraints or Constraints()
        profile = load_profile(constraints.target_hardware)
        return plan_for(
            constraints,
            self.kind,
            profile,
            model_size_mb=self.model_size_mb(),
            family=self.family,
        )

    def optimize(
        self,
        goal: Goal | str = Goal.AUTO,
        constraints: Constraints | None = None,
        *,
        validation_data: tuple[Any, np.ndarray | None] | None = None,
        validation_fn: Callable[[Callable[[Any], np.ndarray]], float] | None = None,
        preferred_backends: Sequence[str] | None = None,
        work_dir: str | Path | None = None,
        track: bool = False,
        seed: int = 0,
        max_rounds: int = 2,
        verbose: bool = False,
        use_prefect: bool = False,
        _overrides: dict[str, Any] | None = None,
    ) -> OptimizationResult:
        """Optimize the model with the hamnet pipeline.

        Args:
            goal: A :class:`Goal` or its value.
            constraints: Limits and target (default: ``Constraints()``).
            validation_data: ``(x, y)``: ``x`` one array of any rank or a dict of
                named arrays (models with several inputs); ``y`` integer labels, or
                None to score fidelity to the original model (top-1 agreement for
                classifier outputs, mean cosine similarity otherwise; see the module
                docstring).
            validation_fn: ``fn(predict) -> float``, called once on the recommended
                model (``predict`` takes what ``x`` is: an array or a dict of arrays);
                its value is the report's ``custom_metric``.
            preferred_backends: Subset of ``["onnx", "openvino"]`` (default: those the
                profile lists).
            work_dir: Where to run (default: this optimizer's work directory).
            track: Log to MLflow (off by default).
            seed: Seed of the data split and of every stage.
            max_rounds: AUTO only: rounds allowed (a second escalates once when the
                constraints are not met).
            verbose: Print the pipeline's progress.
            use_prefect: Run each round as a ``hamnet-optimize`` Prefect flow run
                (ephemeral server unless ``PREFECT_API_URL`` is set; stage results are
                cached and retried as with ``hamnet run``) instead of in this process.

        Returns:
            The result; never empty: with no feasible candidate the nearest one is
            recommended and ``constraints_satisfied`` is False.

        Raises:
            ConfigError: For invalid arguments (``ValueError``).
            UnsupportedCombinationError: For unsupported goal/model combinations.
        """
        started = time.perf_counter()
        goal = _goal(goal)
        if constraints is None:
            constraints = Constraints()
        elif not isinstance(constraints, Constraints):
            raise ConfigError(
                f"constraints must be a Constraints, but got {type(constraints).__name__}"
            )
        if isinstance(max_rounds, bool) or not isinstance(max_rounds, int) or max_rounds < 1:
            raise ConfigError(f"max_rounds must be a positive integer, but got {max_rounds!r}")
        if not isinstance(use_prefect, bool):
            raise ConfigError(f"use_prefect must be True or False, but got {use_prefect!r}")
        root = _work_dir(work_dir) if work_dir is not None else self.work_dir
        data_path, accuracy_kind = self._prepare_data(validation_data, root)
        overrides = _overrides or {}
        plan = self.plan(constraints) if goal is Goal.AUTO else None
        rounds: list[str] = []
        result: PipelineResult | None = None
        kept_config: OptimizeConfig | None = None
        kept_round = 1
        config: OptimizeConfig | None = None
        n_rounds = max_rounds if goal is Goal.AUTO else 1
        for index in range(n_rounds):
            config = self.build_config(
                goal,
                constraints,
                preferred_backends=preferred_backends,
                data_path=data_path,
                seed=seed,
                track=track,
                plan=plan,
                escalate=index > 0,
                overrides=overrides,
            )
            outcome = _run(config, root / f"round-{index + 1}", verbose, use_prefect)
            stages = " -> ".join(s.name for s in outcome.stages)
            rounds.append(f"round {index + 1}: {stages}: {outcome.selection.message}")
            # A later round only replaces an earlier one when its pick is nearer to
            # meeting the constraints (an escalation can also land further away).
            if result is None or _nearness(outcome) < _nearness(result):
                result, kept_config, kept_round = outcome, config, index + 1
            if outcome.selection.constraints_satisfied:
                break
        assert result is not None and kept_config is not None
        config = kept_config
        if len(rounds) > 1:
            rounds.append(
                f"result: round {kept_round}'s recommendation (nearest to the constraints)"
            )
        report = self._report(
            result,
            accuracy_kind,
            time.perf_counter() - started,
            plan.reasons if plan else [f"goal {goal.value}"],
            config,
            validation_fn,
        )
        selection = result.selection
        return OptimizationResult(
            candidates=list(result.candidates),
            recommended=selection.recommended,
            constraints_satisfied=selection.constraints_satisfied,
            report=report,
            config=config,
            rounds=rounds,
            pipeline=result,
        )

    # --- helpers --------------------------------------------------------------------

    def _prepare_data(
        self, validation_data: tuple[Any, Any] | None, root: Path
    ) -> tuple[Path | None, str]:
        import numpy as np

        if validation_data is None:
            if self.kind == "hamnet":
                from hamnet.models import load_checkpoint

                cfg = load_checkpoint(self.model_path, trust=self.trust_checkpoint).config
                if cfg.input_size == 64 and cfg.num_classes == 10:
                    return None, "top1_accuracy"
            raise ConfigError(
                "validation_data must be given as (x, y) for this model (the built-in "
                "digits data only fits a HAMNet with 64 inputs and 10 classes), but got None"
            )
        if not isinstance(validation_data, tuple) or len(validation_data) != 2:
            raise ConfigError(
                f"validation_data must be a tuple (x, y) with y an array or None, but got "
                f"{type(validation_data).__name__}"
            )
        if self.kind == "hamnet":
            return self._prepare_hamnet_data(validation_data, root)
        x = self._check_inputs(validation_data[0])
        arrays = x if isinstance(x, dict) else {"x": x}
        n = len(next(iter(arrays.values())))
        stored: dict[str, np.ndarray] = (
            {f"x__{k}": v for k, v in x.items()} if isinstance(x, dict) else {"x": x}
        )
        if validation_data[1] is None:
            reference = self._predict_original(x)
            stored["reference"] = reference.astype(np.float32)
            kind = (
                "top1_agreement_with_original_model (no labels: fidelity to the original "
                "model's top-1 class)"
                if reference.ndim == 2
                else "mean_cosine_similarity_to_original_model (no labels: fidelity of the "
                f"outputs {list(reference.shape[1:])} to the original model's)"
            )
        else:
            y = self._check_labels(validation_data[1], n)
            stored["y"] = y
            kind = "top1_accuracy"
        root.mkdir(parents=True, exist_ok=True)
        path = root / "data.npz"
        np.savez(path, **stored)  # type: ignore[arg-type]
        return path, kind

    def _check_inputs(self, x: Any) -> Any:
        """Validate ``x`` against the ONNX model's inputs; float arrays become float32."""
        import numpy as np

        from hamnet.backends.session import pack_inputs

        names = self.input_names or []
        if isinstance(x, dict):
            arrays = {str(k): np.asarray(v) for k, v in x.items()}
            if sorted(arrays) != sorted(names):
                raise ConfigError(
                    f"validation_data x must be a dict keyed by the model's inputs {names}, "
                    f"but got keys {sorted(arrays)}"
                )
            pack_inputs(arrays)  # same batch size, else DataError
            out: Any = {
                k: v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v
                for k, v in arrays.items()
            }
            dims = {k: self._input_dims.get(k, []) for k in out}
        else:
            if len(names) != 1:
                raise ConfigError(
                    f"validation_data x must be a dict of the model's {len(names)} inputs "
                    f"{names}, but got one {type(x).__name__}"
                )
            array = np.asarray(x)
            if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
                raise ConfigError(f"validation_data x must be numeric, but got dtype {array.dtype}")
            out = array.astype(np.float32) if np.issubdtype(array.dtype, np.floating) else array
            dims = {names[0]: self._input_dims.get(names[0], [])}
        shapes = (
            {k: list(v.shape) for k, v in out.items()}
            if isinstance(out, dict)
            else {names[0]: list(out.shape)}
        )
        for name, want in dims.items():
            got = shapes[name]
            if want and (
                len(got) != len(want)
                or any(w is not None and w != g for w, g in zip(want[1:], got[1:], strict=False))
            ):
                raise ConfigError(
                    f"validation_data input {name!r} must have shape "
                    f"{['N', *('?' if w is None else w for w in want[1:])]}, but got {got}"
                )
        if min(s[0] for s in shapes.values()) < 3:
            raise ConfigError(
                f"validation_data x must hold at least 3 samples (split into train, "
                f"validation and test), but got {min(s[0] for s in shapes.values())}"
            )
        return out

    @staticmethod
    def _check_labels(labels: Any, n: int) -> np.ndarray:
        import numpy as np

        y = np.asarray(labels)
        if y.shape != (n,):
            raise ConfigError(f"validation_data y must have shape ({n},), but got {list(y.shape)}")
        if np.issubdtype(y.dtype, np.integer):
            classes = np.unique(y)
            if classes.tolist() != list(range(len(classes))):
                raise DataError(
                    f"validation_data labels must be class indices 0..C-1, each present, "
                    f"but got classes {classes.tolist()[:20]}"
                )
        return y

    def _prepare_hamnet_data(
        self, validation_data: tuple[Any, Any], root: Path
    ) -> tuple[Path | None, str]:
        import numpy as np

        x = np.asarray(validation_data[0], dtype=np.float32)
        if x.ndim != 2:
            raise UnsupportedCombinationError(
                f"validation_data x must be 2-D [samples, features] for a HAMNet, but got "
                f"shape {list(x.shape)}"
            )
        kind = "top1_accuracy"
        if validation_data[1] is None:
            y = self._predict_original(x).argmax(axis=1)
            kind = "top1_agreement_with_original_model (labels are the original predictions)"
            classes, counts = np.unique(y, return_counts=True)
            num_outputs = int(self._predict_original(x[:1]).shape[1])
            if len(classes) != num_outputs or counts.min() < 3:
                raise DataError(
                    f"unlabelled validation_data must make the original model predict every "
                    f"one of its {num_outputs} classes at least 3 times (the labels are its "
                    f"predictions), but it predicts classes {classes.tolist()} with counts "
                    f"{counts.tolist()}; pass labels or more samples"
                )
        else:
            y = self._check_labels(validation_data[1], len(x))
        root.mkdir(parents=True, exist_ok=True)
        path = root / "data.npz"
        np.savez(path, x=x, y=y)
        return path, kind

    def _predict_original(self, x: Any) -> np.ndarray:
        if self.kind == "hamnet":
            from hamnet.models import load_checkpoint
            from hamnet.training.trainer import predict_logits

            model = load_checkpoint(self.model_path, trust=self.trust_checkpoint)
            return predict_logits(model, x)
        import onnxruntime as ort

        from hamnet.backends.session import OnnxRuntimeSession
        from hamnet.evaluate.measure import predict

        session = ort.InferenceSession(str(self.model_path), providers=["CPUExecutionProvider"])
        return predict(OnnxRuntimeSession(session), x, 64)

    def _report(
        self,
        result: PipelineResult,
        accuracy_kind: str,
        seconds: float,
        reasons: list[str],
        config: OptimizeConfig,
        validation_fn: Callable[[Callable[[Any], np.ndarray]], float] | None,
    ) -> CompressionReport:
        import math

        from hamnet.backends.session import load_session
        from hamnet.core.hardware import load_profile

        table = result.table
        selection = result.selection
        rec = selection.recommended
        rows = json.loads(table.to_json(orient="records"))
        size_ratio = latency_ratio = drop = None
        violations: list[str] = []
        gates: dict[str, Any] = {}
        custom: float | None = None
        backend = None
        if rec is not None and rec.metrics is not None:
            row = table[table["id"] == rec.id].iloc[0]
            size_ratio = _finite(row["size_ratio"])
            drop = _finite(row["accuracy_drop"])
            base = table[
                (table["precision"] == "fp32")
                & (
                    table["is_baseline"]
                    | ((table["stage"] == "export") & (table["parent"] == "baseline"))
                )
            ]
            best = float(base["latency_p50_ms"].min()) if len(base) else math.nan
            latency_ratio = _finite(best / rec.metrics.latency_p50_ms)
            assessment = selection.assessments.get(rec.id)
            violations = list(assessment.violations) if assessment else []
            backend = f"{rec.runtime} {rec.precision}"
            profile = load_profile(config.hardware_profile)
            session = None
            try:
                session = load_session(
                    rec.artifact, rec.runtime, profile, trust_checkpoint=self.trust_checkpoint
                )
            except HamnetError:
                session = None
            gates = {
                "loads_in_runtime": session is not None,
                "parity_max_abs_diff": rec.parity_max_abs_diff,
                # The pipeline rejects a candidate slower than its parent (timed side by side).
                "faster_than_parent": rec.rejected is None,
            }
            if validation_fn is not None:
                if session is None:
                    raise HamnetError(
                        f"recommended model {rec.name} does not load in {rec.runtime}"
                    )
                loaded = session

                def predict(x: Any) -> np.ndarray:
                    return loaded.run(x)

                custom = float(validation_fn(predict))
        return CompressionReport(
            size_reduction_ratio=size_ratio,
            latency_improvement_ratio=latency_ratio,
            accuracy_drop=drop,
            accuracy_kind=accuracy_kind,
            constraints_satisfied=selection.constraints_satisfied,
            constraint_violations=violations,
            execution_time=seconds,
            backend_used=backend,
            candidates_table=rows,
            custom_metric=custom,
            plan_reasons=list(reasons),
            recommended=rec.name if rec else None,
            gates=gates,
        )


def _finite(value: Any) -> float | None:
    import math

    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _run(
    config: OptimizeConfig, base_dir: Path, verbose: bool, use_prefect: bool = False
) -> PipelineResult:
    from rich.console import Console

    base_dir.mkdir(parents=True, exist_ok=True)
    if use_prefect:
        return _run_prefect(config, base_dir)
    from hamnet.pipeline.run import run_pipeline

    return run_pipeline(config, base_dir=base_dir, console=Console(quiet=not verbose))


def _run_prefect(config: OptimizeConfig, base_dir: Path) -> PipelineResult:
    """Run ``config`` as a ``hamnet-optimize`` flow run and rebuild the pipeline result.

    The configuration is written to ``base_dir/config.yaml`` and the flow walks it
    exactly as ``hamnet run`` does (an ephemeral Prefect API unless ``PREFECT_API_URL``
    is set). The candidates are the stage tasks' (persisted) results, read back from
    the Prefect API; the selection is recomputed from them and must name the same
    recommended candidate as the flow's summary.

    Raises:
        MissingDependencyError: If Prefect or the flow code cannot be imported.
        StageError: If the flow run fails or its results cannot be read back.
    """
    import yaml

    from hamnet.core.errors import StageError
    from hamnet.evaluate.pareto import candidates_table, select
    from hamnet.pipeline.run import PipelineResult, StageRecord

    try:
        from flows.hamnet_optimize import hamnet_optimize
    except ImportError as err:
        raise MissingDependencyError(
            f"use_prefect=True needs prefect and the project's flows package on sys.path "
            f"(run from the project folder), but the import failed: {err}"
        ) from err
    config_path = base_dir / "config.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    state = hamnet_optimize(  # type: ignore[call-overload]
        config_path=str(config_path), base_dir=str(base_dir), return_state=True
    )
    if not state.is_completed():
        message = getattr(state, "message", None) or state.name
        try:
            state.result()
        except HamnetError:
            raise
        except Exception as err:
            raise StageError(f"hamnet-optimize flow run failed: {err}") from err
        raise StageError(f"hamnet-optimize flow run must complete, but ended {message!r}")
    summary: dict[str, Any] = state.result()
    records = _flow_task_results(state.state_details.flow_run_id)
    candidates: list[Candidate] = []
    stages: list[StageRecord] = []
    for name, (new, notes), cached, seconds in records:
        candidates.extend(new)
        stages.append(StageRecord(name, [c.id for c in new], cached, seconds, list(notes)))
    if not candidates:
        raise StageError("the hamnet-optimize flow run produced no candidate")
    selection = select(candidates, candidates[0], config.constraints, config.selection)
    rec = selection.recommended
    if (rec.id if rec else None) != summary.get("recommended_id"):
        raise StageError(
            f"the candidates read back from Prefect must select the flow's recommended "
            f"candidate {summary.get('recommended_id')!r}, but select "
            f"{rec.id if rec else None!r}"
        )
    return PipelineResult(
        candidates=candidates,
        selection=selection,
        table=candidates_table(candidates, selection),
        stages=stages,
        report_files={k: Path(v) for k, v in (summary.get("report_files") or {}).items()},
        mlflow_run_id=summary.get("mlflow_run_id"),
        registration=None,
        seconds=float(summary.get("seconds") or 0.0),
    )


def _flow_task_results(flow_run_id: Any) -> list[tuple[str, Any, bool, float]]:
    """``(stage, (candidates, notes), cached, seconds)`` of a flow run's stage tasks.

    Tasks are ordered by start time; when a stage ran twice (a cache hit whose files
    were gone is recomputed), the last run counts.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
        )
    latest: dict[str, Any] = {}
    for run in runs:
        latest[run.name] = run  # later runs of the same stage replace earlier ones
    out = []
    for name, run in latest.items():
        state = run.state
        if state is None or not state.is_completed():
            continue
        value = state.result()
        seconds = float(run.total_run_time.total_seconds()) if run.total_run_time else 0.0
        out.append((name, value, state.name == "Cached", seconds))
    return out


def _method_backend(method: str) -> str:
    """The API backend ("onnx" or "openvino") whose runtime runs a method's output."""
    from hamnet.compress.quantize.base import get_quantizer

    runtime = get_quantizer(method).runtime
    return next(b for b, rt in _BACKEND_RUNTIME.items() if rt == runtime)


def _nearness(result: PipelineResult) -> tuple[bool, float]:
    """Sort key of a round's pick: meeting the constraints first, then violation score."""
    selection = result.selection
    rec = selection.recommended
    if rec is None:
        return (True, math.inf)
    assessment = selection.assessments.get(rec.id)
    score = assessment.violation_score if assessment is not None else math.inf
    return (not selection.constraints_satisfied, score)


def _goal(goal: Goal | str) -> Goal:
    try:
        return Goal(goal)
    except ValueError:
        raise ConfigError(
            f"goal must be one of {[g.value for g in Goal]}, but got {goal!r}"
        ) from None


def _backends(preferred: Sequence[str] | None, profile: HardwareProfile) -> list[str]:
    if preferred is None:
        return [b for b, rt in _BACKEND_RUNTIME.items() if rt in profile.runtime_names]
    if isinstance(preferred, str):
        preferred = [preferred]
    unknown = [b for b in preferred if b not in BACKEND_METHODS]
    if unknown or not preferred:
        raise ConfigError(
            f"preferred_backends must be a non-empty subset of {list(BACKEND_METHODS)}, but "
            f"got {list(preferred)}"
        )
    return list(dict.fromkeys(preferred))


def _check_shape(input_shape: Sequence[int], *, hamnet: bool = False) -> int:
    """Validate an input shape (batch first); return its second axis."""
    shape = list(input_shape)
    if not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        raise ConfigError(f"input_shape must hold positive integers, but got {shape}")
    if len(shape) < 2:
        raise ConfigError(
            f"input_shape must have a batch axis and at least one more (e.g. [1, features] "
            f"or [1, 1, 8, 8]), but got {shape}"
        )
    if hamnet and len(shape) != 2:
        raise UnsupportedCombinationError(
            f"input_shape must be 2-D [batch, features] for a HAMNet, but got {shape}"
        )
    return shape[1]


def _work_dir(work_dir: str | Path | None) -> Path:
    if work_dir is not None:
        path = Path(work_dir).expanduser().resolve()
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = (Path.cwd() / DEFAULT_WORK_ROOT / f"{stamp}-{uuid.uuid4().hex[:6]}").resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


__all__ = [
    "AutoPlan",
    "CompressionReport",
    "Constraints",
    "Goal",
    "OptimizationResult",
    "Optimizer",
    "UnsupportedCombinationError",
    "plan_for",
]
