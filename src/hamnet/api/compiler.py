"""A pure config compiler: goal + constraints + model facts -> an ``OptimizeConfig``.

Nothing here runs a model or touches a file: :func:`plan_for` decides what
:attr:`Goal.AUTO` runs (an :class:`AutoPlan` with one reason per decision) and
:func:`compile_config` turns a goal into the pipeline configuration that
``hamnet-optimize`` would run. What depends on the kind of network (can it be pruned,
which quantizers suit it) is asked of its family adapter (:mod:`hamnet.families`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from hamnet.api.constraints import Constraints, Goal, UnsupportedCombinationError
from hamnet.core import registry
from hamnet.core.errors import ConfigError
from hamnet.families.base import ModelFamily, get_family
from hamnet.families.transformer import FUSED_METHOD

if TYPE_CHECKING:
    from hamnet.core.config import OptimizeConfig
    from hamnet.core.hardware import HardwareProfile

ModelKind = Literal["hamnet", "onnx", "module"]
"""How the pipeline loads the model: a hamnet checkpoint, an ONNX file, or a user's torch
module (a module artifact, see :mod:`hamnet.models.sources`)."""

PRUNE_RATIOS: list[float] = [0.3, 0.5, 0.7]
DISTILL_PRUNE_RATIOS: list[float] = [0.5, 0.7]
ESCALATION_PRUNE_RATIOS: list[float] = [0.7, 0.8]
STUDENT_SEARCH_SHARE = 0.6
"""Share of a user's time budget (``budget_minutes``) AUTO gives the student search; the
rest is left for exporting, quantizing and measuring its students and the baseline."""
DEFAULT_STUDENT_MINUTES = 10.0
"""Student search length when AUTO adds one without a time budget from the user."""
QUANTIZE_AND_PRUNE_REACH = 8.0
"""About the size reduction quantization (~4x) and structured pruning (~2x) give together:
a size bound that needs more than this calls for a fresh, smaller student."""
MULTIPLIER_WIDTHS: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
"""Width multipliers of AUTO's search over a user's module's own architecture (the
student search's default, ``DEFAULT_WIDTH_MULTIPLIERS``)."""
MULTIPLIER_EPOCHS = 30
"""Distillation epochs of a student of a user's module's own architecture in AUTO."""
MULTIPLIER_REPORT_EVERY = 5
"""Epochs per Hyperband step of that search."""
BACKEND_RUNTIMES: dict[str, str] = {"onnx": "onnxruntime", "openvino": "openvino"}
"""The API's backend names and the runtime each one means."""
BACKEND_ALIASES: dict[str, str] = {"onnx_runtime": "onnx"}
"""Other names a user may give a backend (the seed API's ``Backend.ONNX_RUNTIME``)."""

__all__ = [
    "FUSED_METHOD",
    "AutoPlan",
    "ModelFacts",
    "QuantizerTarget",
    "accuracy_aware_methods",
    "accuracy_aware_reason",
    "backend_of",
    "choose_backends",
    "compile_config",
    "default_methods",
    "plan_for",
    "quantizer_targets",
]


@dataclass(frozen=True)
class QuantizerTarget:
    """Where a quantization method's output runs and at which precision.

    Attributes:
        runtime: The runtime that runs the method's output.
        precision: The precision it produces ("int8", "fp16").
    """

    runtime: str
    precision: str


def quantizer_targets() -> dict[str, QuantizerTarget]:
    """Runtime and precision of each quantization method, read from the quantizer plugins.

    Loading the plugin classes imports no quantization library.
    """
    from hamnet.compress.quantize.base import quantizer_class

    targets = {}
    for name in registry.names("quantizer"):
        method = quantizer_class(name)
        targets[name] = QuantizerTarget(method.runtime, method.precision)
    return targets


def backend_of(method: str) -> str:
    """The API backend ("onnx" or "openvino") whose runtime runs ``method``'s output.

    Raises:
        ConfigError: ``method`` is not a quantization method the API plans with.
    """
    target = quantizer_targets().get(method)
    if target is None:
        raise ConfigError(
            f"quantization method must be one of {sorted(quantizer_targets())}, but got {method!r}"
        )
    return next(b for b, rt in BACKEND_RUNTIMES.items() if rt == target.runtime)


def default_methods(backends: Sequence[str], precisions: Sequence[str]) -> list[str]:
    """Every default method of ``backends`` at ``precisions``, backend by backend (a method
    that needs an attention graph runs only when a family asks for it)."""
    from hamnet.compress.quantize.base import quantizers_where

    return [
        name
        for backend in backends
        for precision in precisions
        for name in quantizers_where(
            backend=backend, precision=precision, needs_attention=False, tunes_accuracy=False
        )
    ]


def accuracy_aware_methods(backends: Sequence[str], precisions: Sequence[str]) -> list[str]:
    """The accuracy-aware INT8 methods of ``backends`` (none without INT8): they run beside
    plain INT8 and fall back harmful layers to FP32 only when plain INT8 breaks the
    accuracy budget."""
    from hamnet.compress.quantize.base import quantizers_where

    if "int8" not in precisions:
        return []
    return [
        name
        for backend in backends
        for name in quantizers_where(backend=backend, precision="int8", tunes_accuracy=True)
    ]


def accuracy_aware_reason(methods: Sequence[str], max_accuracy_drop: float | None) -> str:
    """The plan's sentence for the accuracy-aware methods."""
    budget = "1.00" if max_accuracy_drop is None else f"{100 * max_accuracy_drop:.2f}"
    return (
        f"accuracy-aware INT8 ({', '.join(methods)}): when plain INT8 loses more than the "
        f"accuracy budget ({budget} points on the validation split), the layers that hurt "
        f"most (measured one by one) stay FP32, greedily then by a bounded Optuna search "
        f"for the fastest mix that meets it; when plain INT8 meets it, plain INT8 stands"
    )


def weight_only_methods(backends: Sequence[str]) -> list[str]:
    """The weight-only quantizers (``weight_only``) that write a model for ``backends``."""
    from hamnet.compress.quantize.base import quantizers_where

    return [m for b in backends for m in quantizers_where(backend=b, weight_only=True)]


def choose_backends(preferred: Sequence[str] | str | None, profile: HardwareProfile) -> list[str]:
    """The backends to run: ``preferred`` (validated), else those the profile lists.

    ``"onnx_runtime"`` is read as ``"onnx"`` (see :data:`BACKEND_ALIASES`).

    Raises:
        ConfigError: ``preferred`` is empty or names an unknown backend.
    """
    if preferred is None:
        return [b for b, rt in BACKEND_RUNTIMES.items() if rt in profile.runtime_names]
    if isinstance(preferred, str):
        preferred = [preferred]
    preferred = [BACKEND_ALIASES.get(str(b), str(b)) for b in preferred]
    unknown = [b for b in preferred if b not in BACKEND_RUNTIMES]
    if unknown or not preferred:
        raise ConfigError(
            f"preferred_backends must be a non-empty subset of {list(BACKEND_RUNTIMES)}, but "
            f"got {list(preferred)}"
        )
    return list(dict.fromkeys(preferred))


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
        student_minutes: Minutes of student search (students distilled from the model,
            ``stages.nas.mode: students``); None: no student search.
        student_space: What the student search samples: ``"hamnet"`` (fresh HAMNet
            students) or ``"multipliers"`` (width x depth multipliers of the model's own
            architecture); None: no student search.
    """

    goal_sequence: list[Goal]
    reasons: list[str]
    prune_ratios: list[float] = field(default_factory=list)
    precisions: list[str] = field(default_factory=list)
    distill: bool = False
    methods: list[str] = field(default_factory=list)
    family: str = "generic"
    student_minutes: float | None = None
    student_space: Literal["hamnet", "multipliers"] | None = None


def quantize_precisions(profile: HardwareProfile) -> list[str]:
    """INT8 on profiles with INT8, plus FP16 where the profile lists it (GPUs always get
    FP16, never INT8), else none.

    On a CPU, FP16 keeps FP16 weights and computes in FP32: rarely the fastest, but a
    near-lossless half-size point the Pareto front should offer beside INT8 (OpenVINO
    FP16 is one of the plain recipes a user would try).
    """
    fp16 = ["fp16"] if "fp16" in profile.precisions else []
    if profile.device == "cuda" or "int8" not in profile.precisions:
        return fp16
    return ["int8", *fp16]


def family_prune_ratios(family: type[ModelFamily]) -> list[float]:
    """The pruning ratios AUTO and PRUNE try on ``family``: its own ``prune_ratios``
    when it declares them (transformers: low ratios, see
    :class:`~hamnet.families.transformer.TransformerFamily`), else :data:`PRUNE_RATIOS`."""
    return list(family.prune_ratios or PRUNE_RATIOS)


def _size_rule(
    constraints: Constraints, size_mb: float | None, prec_text: str, family: type[ModelFamily],
    can_prune: bool, reasons: list[str],
) -> bool:  # fmt: skip
    """Apply the size rule; return whether it adds pruning."""
    target = constraints.target_size_mb
    if target is None:
        return False
    if size_mb is None or target >= size_mb / 2:
        reasons.append(f"size limit {target} MB is within reach of quantization ({prec_text})")
        return False
    needed = size_mb / target
    reasons.append(
        f"size-bound: {size_mb:.3f} MB must shrink {needed:.1f}x to {target} MB, "
        f"so quantization ({prec_text}) comes first"
    )
    if needed <= 4.0:
        return False
    more = f"a {needed:.1f}x reduction is more than quantization gives (~4x),"
    if can_prune:
        reasons.append(f"{more} so structured pruning is added")
        return True
    reasons.append(f"{more} but {family.why_not_prunable}")
    return False


def plan_for(
    constraints: Constraints,
    model_kind: ModelKind,
    profile: HardwareProfile,
    *,
    model_size_mb: float | None = None,
    family: str | None = None,
    has_train_data: bool = False,
    why_not_prunable: str | None = None,
    budget_minutes: float | None = None,
    can_search_students: bool | None = None,
) -> AutoPlan:
    """Choose the techniques for :attr:`Goal.AUTO` by a few documented rules.

    Rules, each recorded as one reason in the plan:
        * size-bound (``target_size_mb`` below half the model's size): quantization
          first, plus structured pruning when the needed ratio exceeds 4x (about what
          INT8 gives) and the family can be pruned (HAMNet checkpoints);
        * latency-bound (``max_latency_ms`` set): pruning (prunable families only)
          plus quantization: INT8 and FP16 where the profile lists them, FP16 only on GPUs;
        * no bound: quantization only;
        * the family's preferred quantizers
          (:meth:`~hamnet.families.base.ModelFamily.preferred_quantizers`):
          transformers get ONNX Runtime transformer fusion + dynamic INT8, convolutional
          nets OpenVINO INT8 via NNCF (ONNX Runtime static INT8 without OpenVINO);
        * ONNX files that do not convert to PyTorch are never pruned;
        * a user's torch module is pruned and recovered by distillation only with
          training data (``train_data``); without it only post-training methods run;
        * student search (students distilled from the model, scored on validation
          accuracy and measured latency; fresh HAMNet students for a HAMNet, width x
          depth multipliers of its own architecture for a user's torch module with
          training data): within ``STUDENT_SEARCH_SHARE`` of the time budget whenever
          one is given, else ``DEFAULT_STUDENT_MINUTES`` when the size bound needs more
          than quantization and pruning reach (``QUANTIZE_AND_PRUNE_REACH``); an
          escalation round adds it when the first round missed the bounds (see
          :func:`compile_config`).

    Args:
        constraints: The user's constraints.
        model_kind: "hamnet" (a checkpoint), "onnx" or "module" (a user's torch module).
        profile: The target's hardware profile.
        model_size_mb: Size of the model file (needed for the size rule).
        family: The model family (default: "hamnet" for a HAMNet, else "generic").
        has_train_data: Whether the user gave training data (read for user modules).
        why_not_prunable: Why this model cannot be pruned (e.g. an ONNX file that did
            not convert to PyTorch); default: the family's reason.
        budget_minutes: The user's time budget for the optimization (None: none).
        can_search_students: Whether HAMNet students can learn from this model (its
            input is one flat feature vector, its output class scores, with data to
            train on); default: only for HAMNet checkpoints. A user's torch module
            (``model_kind="module"``) with training data gets students of its own
            architecture when this is not true.

    Returns:
        The plan with one reason per decision.

    Raises:
        ConfigError: ``family`` is not a model family.
    """
    adapter = get_family(family or ("hamnet" if model_kind == "hamnet" else "generic"))
    reasons: list[str] = []
    can_prune = adapter.can_prune and model_kind != "onnx"
    if not can_prune:
        adapter = _with_reason(adapter, why_not_prunable)
    elif model_kind == "module" and not has_train_data:
        can_prune = False
        adapter = _with_reason(
            adapter,
            "no training data was given (train_data), so only post-training methods run; "
            "pruning and distillation need it",
        )
    if model_kind == "module" and can_prune:
        reasons.append(
            f"{adapter.description} given as a torch module: its {_groups(adapter)} can be "
            f"pruned with torch-pruning's dependency graph and recovered by distillation"
        )
    precisions = quantize_precisions(profile)
    prec_text = "/".join(precisions) or "none"
    prune = _size_rule(constraints, model_size_mb, prec_text, adapter, can_prune, reasons)
    if constraints.max_latency_ms is not None:
        reasons.append(
            f"latency-bound ({constraints.max_latency_ms} ms): quantization ({prec_text}) "
            f"on profile {profile.name!r}"
        )
        if can_prune:
            prune = True
            reasons.append(adapter.prune_reason)
        else:
            reasons.append(f"no pruning: {adapter.why_not_prunable}")
    unbounded = constraints.max_latency_ms is None and constraints.target_size_mb is None
    if unbounded and model_kind == "module" and can_prune:
        prune = True
        reasons.append(
            f"no size or latency bound, but training data was given: pruning + "
            f"distillation are tried beside quantization ({prec_text}), since a smaller "
            f"model is faster (the selection objective); the measurement decides"
        )
    elif unbounded:
        reasons.append(f"no size or latency bound: quantization ({prec_text}) only")
    choice = adapter.preferred_quantizers(precisions, profile.runtime_names, profile.name)
    if choice.reason:
        reasons.append(choice.reason)
    hamnet_students = (
        can_search_students if can_search_students is not None else model_kind == "hamnet"
    )
    space: Literal["hamnet", "multipliers"] | None = "hamnet" if hamnet_students else None
    why_no_students = (
        "HAMNet students learn from a model with one flat feature input and class scores, "
        "given data to train on"
    )
    if space is None and model_kind == "module":
        if has_train_data:
            space = "multipliers"
        else:
            why_no_students = (
                f"{adapter.description} given as a torch module: students of its own "
                f"architecture are distilled from it on training data, and no training data "
                f"was given (train_data)"
            )
    elif space is None and model_kind == "onnx" and not adapter.can_prune:
        why_no_students = f"{adapter.why_not_prunable}"
    student_minutes = _student_rule(
        constraints, model_size_mb, budget_minutes, space, reasons,
        family=adapter, why_not=why_no_students,
    )  # fmt: skip
    sequence = [Goal.PRUNE] if prune else []
    tuned = accuracy_aware_methods(choose_backends(None, profile), precisions)
    if tuned:
        reasons.append(accuracy_aware_reason(tuned, constraints.max_accuracy_drop))
    if precisions:
        sequence.append(Goal.QUANTIZE)
    else:
        reasons.append(f"profile {profile.name!r} supports no INT8/FP16 precision: no quantization")
    return AutoPlan(
        goal_sequence=sequence,
        reasons=reasons,
        prune_ratios=family_prune_ratios(adapter) if prune else [],
        precisions=precisions,
        methods=list(choice.methods),
        family=adapter.name,
        student_minutes=student_minutes,
        student_space=space if student_minutes is not None else None,
    )


def _student_rule(
    constraints: Constraints, size_mb: float | None, budget_minutes: float | None,
    space: Literal["hamnet", "multipliers"] | None, reasons: list[str], *,
    family: type[ModelFamily], why_not: str,
) -> float | None:  # fmt: skip
    """Apply the student-search rule; return its minutes (None: no student search)."""
    if budget_minutes is not None and (
        isinstance(budget_minutes, bool)
        or not isinstance(budget_minutes, int | float)
        or not budget_minutes > 0
    ):
        raise ConfigError(f"budget_minutes must be a positive number, but got {budget_minutes!r}")
    target = constraints.target_size_mb
    needed = size_mb / target if size_mb is not None and target is not None else None
    beyond = needed is not None and needed > QUANTIZE_AND_PRUNE_REACH
    if space is None:
        if budget_minutes is not None or beyond:
            reasons.append(f"no student search: {why_not}")
        return None
    what = _student_space_text(space, family)
    if budget_minutes is not None:
        minutes = round(budget_minutes * STUDENT_SEARCH_SHARE, 2)
        reasons.append(
            f"time budget {budget_minutes:g} min: a student search ({what}, distilled from "
            f"the model, scored on validation accuracy and measured latency) runs for "
            f"{minutes:g} min, its students and their quantized children on the same "
            f"Pareto front"
        )
        return minutes
    if beyond:
        reasons.append(
            f"a {needed:.1f}x size reduction is more than quantization and pruning reach "
            f"together (~{QUANTIZE_AND_PRUNE_REACH:g}x), so a student search ({what}) runs "
            f"for {DEFAULT_STUDENT_MINUTES:g} min"
        )
        return DEFAULT_STUDENT_MINUTES
    return None


def _student_space_text(space: Literal["hamnet", "multipliers"], family: type[ModelFamily]) -> str:
    """The student space in words, naming the family (for plan reasons)."""
    if space == "hamnet":
        return (
            f"fresh HAMNet students of {family.description} ({family.name} family): width, "
            f"depth, heads, FFN ratio and token size"
        )
    return (
        f"students of the model's own architecture, {family.description} ({family.name} "
        f"family): width multipliers {list(MULTIPLIER_WIDTHS)} x depth multipliers from its "
        f"repeated blocks, built from its weights"
    )


def student_search_section(
    minutes: float,
    space: Literal["hamnet", "multipliers"] = "hamnet",
    family: type[ModelFamily] | None = None,
) -> dict[str, Any]:
    """The ``stages.nas`` section of AUTO's student search: ``minutes`` of trials.

    TPE proposes students, Hyperband stops the weak ones after each chunk of epochs,
    and the fastest measured students within the accuracy budget (validation) go on.
    Students of a user's module's own architecture (``multipliers``) train with the
    family's distillation settings (``recovery_training``) for
    :data:`MULTIPLIER_EPOCHS` epochs, reported every :data:`MULTIPLIER_REPORT_EVERY`:
    they start from the teacher's weights, so they need far fewer epochs than fresh
    HAMNets.
    """
    students: dict[str, Any] = {"teacher": "baseline"}
    if space == "multipliers":
        training = dict(family.recovery_training) if family is not None else {}
        students |= {
            "space": {"kind": "multipliers"},
            "methods": [{"method": "soft", "weight": 1.0, "temperature": 2.0}],
            "ce_weight": 0.5,
            "train": {**training, "epochs": MULTIPLIER_EPOCHS, "patience": MULTIPLIER_EPOCHS},
            "report_every": MULTIPLIER_REPORT_EVERY,
        }
    return {
        "mode": "students",
        "strategy": "tpe",
        "pruner": "hyperband",
        "n_trials": None,
        "timeout_seconds": max(1.0, minutes * 60.0),
        "top_k": 3,
        "students": students,
    }


def _with_reason(adapter: type[ModelFamily], reason: str | None) -> type[ModelFamily]:
    """``adapter``, or a subclass whose :attr:`why_not_prunable` is ``reason``."""
    if reason is None:
        return adapter
    return type(adapter.__name__, (adapter,), {"why_not_prunable": reason})


def _groups(adapter: type[ModelFamily]) -> str:
    """The family's prunable structures, for a plan reason."""
    names = [g.name.replace("_", " ") for g in adapter.prunable_groups]
    return ", ".join(names) or "layers"


@dataclass(frozen=True)
class ModelFacts:
    """What the compiler knows about the model.

    Attributes:
        path: The model file the pipeline loads.
        family: The model's family adapter.
        size_mb: Size of the model file (for the size rule).
        trust_checkpoint: Load checkpoints with pickled code.
        source_kind: How the pipeline loads it (None: told from the family and path).
        train_path: The training data file (``data.train_path``), if the user gave one.
        why_not_prunable: Why the model cannot be pruned, when the family's reason does
            not say it (an ONNX file that onnx2torch could not convert).
    """

    path: Path
    family: type[ModelFamily]
    size_mb: float | None = None
    trust_checkpoint: bool = False
    source_kind: ModelKind | None = None
    train_path: Path | None = None
    why_not_prunable: str | None = None

    @property
    def kind(self) -> ModelKind:
        """How the pipeline loads the model."""
        if self.source_kind is not None:
            return self.source_kind
        if self.family.loads_checkpoint:
            return "hamnet"
        return "module" if self.path.suffix.lower() == ".json" else "onnx"

    @property
    def can_prune(self) -> bool:
        """Whether the pipeline can prune (and distill) this model."""
        return self.family.can_prune and self.kind != "onnx"


@dataclass
class _Stages:
    """The technique sections one goal compiles to."""

    precisions: list[str] = field(default_factory=list)
    chosen: list[str] = field(default_factory=list)
    prune: dict[str, Any] | None = None
    distill: dict[str, Any] | None = None
    nas: dict[str, Any] | None = None


def _goal_stages(
    goal: Goal, facts: ModelFacts, profile: HardwareProfile, backends: list[str],
    plan: AutoPlan, escalate: bool,
) -> _Stages:  # fmt: skip
    """Precisions, family methods, pruning and distillation for ``goal``."""
    family = facts.family
    criteria = [family.prune_criterion]
    all_precisions: list[str] = [p for p in ("int8", "fp16") if p in profile.precisions]
    if goal is Goal.QUANTIZE:
        targets = quantizer_targets()
        chosen = [
            m
            for m in family.extra_quantizers
            if targets[m].precision in all_precisions and backend_of(m) in backends
        ]
        return _Stages(all_precisions, chosen)
    if goal is Goal.PRUNE:
        # A user's module is pruned without fine-tuning; distillation recovers it.
        recover = {"recover_pruned": True} if facts.kind == "module" else None
        return _Stages(prune={"ratios": family_prune_ratios(family), "criteria": criteria,
                              "allocations": ["uniform"]}, distill=recover)  # fmt: skip
    if goal is Goal.DISTILL:
        return _Stages(
            prune={"ratios": list(DISTILL_PRUNE_RATIOS), "criteria": criteria},
            distill={"recover_pruned": True},
        )
    stages = _Stages(list(plan.precisions), list(plan.methods))
    if plan.student_minutes is not None:
        stages.nas = student_search_section(
            plan.student_minutes, plan.student_space or "hamnet", family
        )
    if plan.prune_ratios:
        stages.prune = {"ratios": list(plan.prune_ratios), "criteria": criteria}
        if facts.kind == "module":
            stages.distill = {"recover_pruned": True}
    trainable = facts.kind != "module" or facts.train_path is not None
    if escalate:
        if facts.can_prune and trainable:
            ratios = sorted(set(plan.prune_ratios) | set(ESCALATION_PRUNE_RATIOS))
            stages.prune = {"ratios": ratios, "criteria": criteria}
        if facts.can_prune and family.can_distill and trainable:
            stages.distill = {"recover_pruned": True}
        if stages.nas is None and facts.kind == "hamnet":
            # Quantization and pruning missed the bounds: fresh students may reach them.
            stages.nas = student_search_section(DEFAULT_STUDENT_MINUTES)
        elif stages.nas is None and facts.kind == "module" and facts.train_path is not None:
            # The same for a user's module: smaller copies of its own architecture.
            stages.nas = student_search_section(DEFAULT_STUDENT_MINUTES, "multipliers", family)
        stages.precisions = all_precisions
    return stages


def compile_config(
    goal: Goal,
    constraints: Constraints,
    facts: ModelFacts,
    profile: HardwareProfile,
    *,
    preferred_backends: Sequence[str] | str | None = None,
    data_path: str | Path | None = None,
    seed: int = 0,
    track: bool = False,
    plan: AutoPlan | None = None,
    escalate: bool = False,
    overrides: dict[str, Any] | None = None,
) -> OptimizeConfig:
    """Compile a goal into the pipeline configuration :meth:`Optimizer.optimize` runs.

    Args:
        goal: What to do.
        constraints: The user's limits and target (``profile`` is its hardware).
        facts: The model.
        profile: The target's hardware profile.
        preferred_backends: Subset of ``["onnx", "openvino"]`` (default: the profile's).
        data_path: An ``.npz`` of validation data (default: the built-in digits).
        seed: Seed of the data split and of every stage.
        track: Log to MLflow.
        plan: AUTO's plan (default: :func:`plan_for` the model).
        escalate: AUTO's escalation round: every method of the chosen backends and,
            for prunable families, stronger pruning recovered by distillation.
        overrides: Config keys deep-merged over the result.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: For an unknown backend or invalid settings.
        UnsupportedCombinationError: Pruning or distillation of an unprunable family.
    """
    from hamnet.core.config import config_from_dict, deep_merge

    backends = choose_backends(preferred_backends, profile)
    family = facts.family
    if goal in (Goal.PRUNE, Goal.DISTILL) and not facts.can_prune:
        raise UnsupportedCombinationError(
            f"structured pruning needs a torch model (a HAMNet checkpoint or a user's "
            f"torch module), but got {family.description} (goal {goal.value!r}): "
            f"{facts.why_not_prunable or family.why_not_prunable}; use Goal.QUANTIZE or "
            f"Goal.AUTO"
        )
    if goal is Goal.AUTO and plan is None:
        plan = plan_for(
            constraints, facts.kind, profile, model_size_mb=facts.size_mb, family=family.name,
            has_train_data=facts.train_path is not None,
            why_not_prunable=facts.why_not_prunable,
        )  # fmt: skip
    stages = _goal_stages(goal, facts, profile, backends, plan or AutoPlan([], []), escalate)
    if stages.distill is not None and facts.kind == "module":
        stages.distill = {**stages.distill, "train": dict(family.recovery_training)}
    methods = default_methods(backends, stages.precisions)
    if stages.chosen:
        # The family's methods go first (rules order the work); every other method of
        # the chosen backends runs beside them, and measurement picks the winner.
        methods = [m for m in stages.chosen if backend_of(m) in backends] + methods
    if goal in (Goal.AUTO, Goal.QUANTIZE):
        methods += accuracy_aware_methods(backends, stages.precisions)
        if constraints.target_size_mb is not None:
            # A size bound: weight-only methods (integer weights, float activations) are
            # smaller at little accuracy cost; measurement decides whether they win.
            methods += weight_only_methods(backends)
    methods = list(dict.fromkeys(methods))
    quantize = {"methods": methods, "calibration_samples": constraints.calibration_samples}
    cfg = _config_dict(constraints, facts, data_path, seed, track)
    cfg["stages"] = {
        "train": None,
        "nas": stages.nas,
        "prune": stages.prune,
        "distill": stages.distill,
        "export": {"formats": backends} if facts.kind != "onnx" else None,
        "quantize": quantize if methods else None,
    }
    if overrides:
        cfg = deep_merge(cfg, overrides)
    return config_from_dict(cfg, source="hamnet.api")


def _config_dict(
    constraints: Constraints, facts: ModelFacts, data_path: str | Path | None, seed: int,
    track: bool,
) -> dict[str, Any]:  # fmt: skip
    """Every config section but ``stages``."""
    return {
        "name": "hamnet-api",
        "seed": seed,
        "workdir": "run",
        "hardware_profile": constraints.target_hardware,
        "model": {
            "source": "file",
            "path": str(facts.path),
            "trust_checkpoint": facts.trust_checkpoint,
        },
        "data": _data_section(data_path, facts.train_path),
        "constraints": constraints.section(),
        "stages": {},
        "tracking": {"enabled": track},
    }


def _data_section(data_path: str | Path | None, train_path: Path | None) -> dict[str, Any]:
    if data_path is None:
        return {"source": "digits"}
    section = {"source": "file", "path": str(data_path), "format": "npz", "standardize": False}
    if train_path is not None:
        section["train_path"] = str(train_path)
    return section
