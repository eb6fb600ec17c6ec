"""Configuration of one optimization run.

A run is described by one YAML file validated into :class:`OptimizeConfig`. Every model
is frozen and rejects unknown keys, so a typo is an error instead of a silently ignored
setting. Each pipeline stage owns one section under ``stages``; a stage whose section is
absent (or ``null``) does not run.

Example:
    >>> from hamnet.core.config import load_config
    >>> cfg = load_config("configs/default.yaml")
    >>> cfg.stages.train.epochs
    60
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from hamnet.core import registry
from hamnet.core.errors import ConfigError
from hamnet.core.hashing import hash_json

DEFAULT_MLFLOW_URI = "sqlite:///mlflow.db"


class _Section(BaseModel):
    """Base of every config section: frozen and strict about unknown keys."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class HAMNetSection(_Section):
    """Architecture of a HAMNet trained from scratch.

    ``input_size`` and ``num_classes`` are taken from the data when left out.
    """

    hidden_size: int = Field(64, ge=4, le=8192)
    num_layers: int = Field(2, ge=1, le=64)
    num_heads: int = Field(4, ge=1, le=128)
    ffn_ratio: float = Field(2.0, gt=0.0, le=16.0)
    token_size: int | None = Field(
        None, ge=1, description="Features per token; None puts every feature in its own token."
    )
    dropout_rate: float = Field(0.1, ge=0.0, lt=1.0)
    dropout_type: Literal["standard", "gaussian", "alpha"] = Field(
        "standard",
        description="Kind of every dropout in the model: standard (Bernoulli), gaussian "
        "(multiplicative N(1, p/(1-p)) noise) or alpha (keeps SELU-style mean and variance).",
    )
    activation: Literal["gelu", "relu", "silu"] = "gelu"
    input_size: int | None = Field(None, ge=1)
    num_classes: int | None = Field(None, ge=2)

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> HAMNetSection:
        if self.hidden_size % self.num_heads != 0:
            raise ValueError(
                f"hidden_size must be divisible by num_heads, but got hidden_size="
                f"{self.hidden_size} and num_heads={self.num_heads}"
            )
        return self


class ModelSection(_Section):
    """Where the baseline model comes from.

    ``source: train`` trains a HAMNet described by ``hamnet`` on the configured data.
    ``source: file`` loads ``path``: a hamnet checkpoint (``.pt``) or an ONNX file.
    """

    source: Literal["train", "file"] = "train"
    path: str | None = Field(
        None,
        description="A hamnet .pt checkpoint, an .onnx file, a whole-module .pt file "
        "(needs trust_checkpoint), a Hugging Face model directory, or 'torchvision:NAME' / "
        "'timm:NAME' with ``weights``.",
    )
    weights: str | None = Field(
        None, description="A state_dict file for a 'torchvision:NAME' or 'timm:NAME' path."
    )
    task: Literal["auto", "embedding", "classification"] = Field(
        "auto",
        description="What a Hugging Face model directory outputs: sentence embeddings (mean "
        "pooling over the attention mask) or class logits; auto reads its config.",
    )
    hamnet: HAMNetSection = HAMNetSection()
    trust_checkpoint: bool = Field(
        False,
        description="Load .pt files with weights_only=False (executes pickled code). "
        "Only for checkpoints you made yourself.",
    )

    @model_validator(mode="after")
    def _path_matches_source(self) -> ModelSection:
        if self.source == "file" and not self.path:
            raise ValueError("model.path is required when model.source is 'file', but got none")
        if self.source == "train" and self.path:
            raise ValueError(
                f"model.path is only read when model.source is 'file', but got source='train' "
                f"and path={self.path!r}"
            )
        return self


class DataSection(_Section):
    """The data set, its deterministic split, and how outputs are scored without labels.

    Candidates are measured and selected on the validation split; the recommended one
    and the baseline are scored once on the test split. ``fidelity`` applies to data
    that holds the original model's outputs instead of labels (``reference``):
    ``agreement`` compares top-1 classes, ``cosine`` the outputs' direction, ``auto``
    follows the model's declared output kind, else the outputs themselves (see
    :func:`hamnet.evaluate.fidelity.fidelity_kind`). Labels are always scored by top-1
    accuracy.
    """

    source: Literal["digits", "file"] = "digits"
    path: str | None = None
    train_path: str | None = Field(
        None,
        description="An .npz of training data (same arrays as ``path``: labels, or the "
        "original model's ``reference`` outputs). When set, every row of it trains and the "
        "rows of ``path`` are split into validation and test only.",
    )
    format: Literal["auto", "npz", "csv", "parquet"] = "auto"
    label_column: str = "label"
    val_fraction: float = Field(0.15, gt=0.0, lt=0.5)
    test_fraction: float = Field(0.2, gt=0.0, lt=0.5)
    seed: int = 0
    standardize: bool = True
    fidelity: Literal["auto", "agreement", "cosine"] = Field(
        "auto",
        description="How outputs are compared with the original model's when the data "
        "holds its outputs instead of labels: top-1 agreement (class scores), mean "
        "cosine similarity (embeddings, hidden states), or auto (declared output kind, "
        "else a rule on the outputs).",
    )

    @model_validator(mode="after")
    def _path_matches_source(self) -> DataSection:
        if self.source == "file" and not self.path:
            raise ValueError("data.path is required when data.source is 'file', but got none")
        if self.train_path is not None and self.source != "file":
            raise ValueError(
                f"data.train_path needs data.source 'file' (validation and test rows come "
                f"from data.path), but got source={self.source!r}"
            )
        return self


class ConstraintsSection(_Section):
    """What the recommended model must satisfy. ``None`` means unconstrained."""

    max_accuracy_drop: float | None = Field(
        0.01, ge=0.0, le=1.0, description="Absolute drop from the baseline (0.01 = 1 point)."
    )
    max_latency_ms: float | None = Field(None, gt=0.0)
    target_size_mb: float | None = Field(None, gt=0.0)


class SelectionSection(_Section):
    """How the recommended candidate is chosen among those that meet the constraints."""

    objective: Literal["latency_p50_ms", "size_mb", "accuracy", "throughput_sps"] = "latency_p50_ms"
    champion_min_improvement: float = Field(
        0.05,
        ge=0.0,
        lt=1.0,
        description="Relative margin by which a new model must beat the champion on the "
        "objective before the champion alias moves (guards against latency noise).",
    )
    latency_tie: float = Field(
        0.05,
        ge=0.0,
        lt=1.0,
        description="Selecting by latency: candidates within this fraction of the fastest "
        "feasible one count as equally fast, and the tie goes to higher accuracy, then "
        "smaller size.",
    )


class TrainStageConfig(_Section):
    """Training of the baseline (and the trainer settings later stages reuse).

    ``augment`` mixes each training batch with a shuffled copy of itself: ``mixup``
    blends whole samples, ``cutmix`` pastes one contiguous span of the partner's features
    (whole tokens for a HAMNet). Validation is never augmented.
    """

    epochs: int = Field(60, ge=1, le=10000)
    batch_size: int = Field(64, ge=1)
    learning_rate: float = Field(2e-3, gt=0.0, lt=10.0)
    weight_decay: float = Field(0.01, ge=0.0)
    weight_decay_type: Literal["decoupled", "l2", "l1", "elastic"] = Field(
        "decoupled",
        description="decoupled: AdamW's decay of the weights; l2, l1, elastic: a penalty "
        "added to the loss (weight_decay/2 * ||w||², weight_decay * ||w||₁, or their mix "
        "by l1_ratio). Biases, norms and no_weight_decay() tensors are never penalised.",
    )
    l1_ratio: float = Field(
        0.5, ge=0.0, le=1.0, description="Share of the L1 term in the elastic-net penalty."
    )
    scheduler: Literal["cosine", "constant", "linear"] = "cosine"
    warmup_epochs: int = Field(2, ge=0)
    patience: int = Field(10, ge=1, description="Early stopping on validation accuracy.")
    grad_accum_steps: int = Field(1, ge=1)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    amp: Literal["auto", "on", "off"] = "auto"
    max_grad_norm: float | None = Field(1.0, gt=0.0)
    augment: Literal["none", "mixup", "cutmix"] = "none"
    mixup_alpha: float = Field(
        0.2,
        gt=0.0,
        description="Mixing weights are drawn from Beta(mixup_alpha, mixup_alpha) (mixup "
        "and cutmix).",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute activations in the backward pass to save memory (HAMNet, "
        "or models with a gradient_checkpointing_enable() method).",
    )


def plugin_name(kind: str) -> AfterValidator:
    """Validator of a plugin name of ``kind``, checked against the registry without importing
    the plugin; the error names the accepted ones and the closest (the formatter adds the
    value given)."""

    def check(value: str) -> str:
        known = registry.names(kind)
        if value in known:
            return value
        raise PydanticCustomError(
            "plugin_name",
            "{kind} must be one of {known}{hint}",
            {"kind": kind, "known": str(list(known)), "hint": registry.did_you_mean(value, known)},
        )

    return AfterValidator(check)


PruneCriterion = Annotated[str, plugin_name("criterion")]
"""A pruning criterion: a name of ``registry.names("criterion")``."""
PruneAllocation = Annotated[str, plugin_name("allocation")]
"""A pruning allocation: a name of ``registry.names("allocation")``."""


class RsparSection(_Section):
    """Settings of the R-SPAR (PPO) per-layer budget allocation."""

    target: Literal["flops", "latency"] = Field(
        "latency",
        description="Cost the agent must not exceed: FLOPs, or latency measured "
        "in ONNX Runtime on the hardware profile.",
    )
    episodes: int = Field(12, ge=1, le=1000)
    recovery_epochs: int = Field(
        1, ge=1, le=100, description="Fine-tuning epochs before each episode's reward."
    )
    tolerance: float | None = Field(
        None,
        ge=0.0,
        lt=1.0,
        description="Relative cost overrun over the uniform allocation that is not "
        "penalized; default 0.03 for latency (timing noise after paired timing), 0 for FLOPs.",
    )


class PruneStageConfig(_Section):
    """Structured pruning of attention heads and FFN channels, with fine-tuning.

    One pruned candidate per (criterion, allocation, ratio) from the baseline.
    """

    ratios: list[float] = Field([0.5], min_length=1)
    criteria: list[PruneCriterion] = Field(["l1"], min_length=1)
    allocations: list[PruneAllocation] = Field(["uniform"], min_length=1)
    rspar: RsparSection = RsparSection()
    unstructured_sparsity: float | None = Field(
        None,
        ge=0.0,
        lt=1.0,
        description="Also emit a magnitude-sparsified (unstructured) candidate. Honest "
        "caveat, repeated on the candidate: dense CPU kernels do not get faster from it.",
    )
    keep: list[str] = Field(
        [],
        description="Module names of a user's model that are never pruned (its output "
        "layers are always kept).",
    )
    schedule: Literal["one-shot", "linear", "cubic"] = "one-shot"
    steps: int = Field(1, ge=1, le=100)
    finetune: TrainStageConfig | None = TrainStageConfig(
        epochs=15, patience=5, learning_rate=1e-3, warmup_epochs=0
    )

    @model_validator(mode="after")
    def _ratios_in_range(self) -> PruneStageConfig:
        bad = [r for r in self.ratios if not 0.0 < r < 1.0]
        if bad:
            raise ValueError(f"every pruning ratio must be in (0, 1), but got {bad}")
        return self


class RaySection(_Section):
    """Where and how search trials run on Ray."""

    address: str | None = Field(
        None,
        description="None starts a local Ray for the run; 'auto' or 'host:port' joins a "
        "running cluster (e.g. after `ray start --head`).",
    )
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray (None: all).")
    cpus_per_trial: float = Field(1.0, gt=0.0)
    gpus_per_trial: float = Field(0.0, ge=0.0)
    max_concurrent: int | None = Field(
        None, ge=1, description="Trials in flight at once (None: as the resources allow)."
    )


SearchObjective = Literal["accuracy", "latency_ms", "size_mb", "params", "flops"]

SamplerName = Annotated[
    str,
    plugin_name("sampler"),
    Field(description="An Optuna sampler plugin: random, grid, tpe, gp, nsga2, ..."),
]
"""Name of a sampler plugin (``hamnet.core.registry.names("sampler")``)."""
PrunerName = Annotated[
    str,
    plugin_name("pruner"),
    Field(description="An Optuna pruner plugin: none, median, successive_halving, hyperband."),
]
"""Name of a pruner plugin (``hamnet.core.registry.names("pruner")``)."""


class StudentSpaceSection(_Section):
    """The HAMNet students a student search samples (``stages.nas.students.space``).

    Every list is a set of choices; ``token_sizes`` may hold ``"all"`` (one token of
    every feature: attention over one token is a linear map, so the block is a residual
    MLP, the fastest shape at batch 1). Left out, a list is derived from the teacher
    (widths and depths up to the teacher's).

    Students of the teacher's own architecture (a user's module, or an ONNX file that
    converts with onnx2torch): ``width_multipliers`` x ``depth_multipliers``, each in
    ``(0, 1]`` (see :func:`hamnet.compress.students.shrink.shrink_module`).
    """

    kind: Literal["auto", "hamnet", "multipliers"] = Field(
        "auto",
        description="hamnet: fresh HAMNet students; multipliers: width/depth multipliers "
        "of the teacher's own architecture; auto: multipliers for a user's module teacher "
        "(or when a multiplier list is given), HAMNet students otherwise.",
    )
    hidden_sizes: list[int] | None = Field(None, min_length=1)
    num_layers: list[int] | None = Field(None, min_length=1)
    num_heads: list[int] | None = Field(None, min_length=1)
    ffn_ratios: list[float] | None = Field(None, min_length=1)
    token_sizes: list[int | Literal["all"]] | None = Field(None, min_length=1)
    width_multipliers: list[float] | None = Field(
        None, min_length=1, description="Default [0.25, 0.5, 0.75, 1.0]."
    )
    depth_multipliers: list[float] | None = Field(
        None, min_length=1, description="Default: from the teacher's repeated blocks."
    )

    @model_validator(mode="after")
    def _positive_unique(self) -> StudentSpaceSection:
        for name in ("width_multipliers", "depth_multipliers"):
            values = getattr(self, name) or []
            bad = [v for v in values if not 0.0 < v <= 1.0]
            if bad:
                raise ValueError(f"{name} must hold multipliers in (0, 1], but got {bad}")
            if len(set(values)) != len(values):
                raise ValueError(f"{name} must not repeat a choice, but got {values}")
        for name in ("hidden_sizes", "num_layers", "num_heads", "ffn_ratios", "token_sizes"):
            values = getattr(self, name)
            if values is None:
                continue
            bad = [v for v in values if v != "all" and not (isinstance(v, int | float) and v > 0)]
            if bad:
                raise ValueError(f"{name} must hold positive numbers, but got {bad}")
            if len(set(values)) != len(values):
                raise ValueError(f"{name} must not repeat a choice, but got {values}")
        return self


class StudentSearchSection(_Section):
    """How a student search (``stages.nas.mode: students``) trains and scores a student.

    Each trial is a fresh HAMNet trained by distillation from ``teacher``; the default
    recipe won the peers sweep (benchmarks/students.py): every batch mixed (mixup,
    alpha 1), the teacher labelling exactly the mixed inputs live, the soft-target KL
    only, a long schedule whose best validation epoch is kept.
    """

    teacher: str = Field(
        "baseline", description="A candidate of this run, or a .pt / .onnx / module file."
    )
    space: StudentSpaceSection = StudentSpaceSection()
    methods: list[dict[str, Any]] = Field(
        [{"method": "soft", "weight": 1.0, "temperature": 1.0}], min_length=1
    )
    ce_weight: float = Field(0.0, ge=0.0)
    train: TrainStageConfig = TrainStageConfig(
        epochs=300, patience=300, augment="mixup", mixup_alpha=1.0, learning_rate=2e-3,
        warmup_epochs=5,
    )  # fmt: skip
    report_every: int = Field(
        10, ge=1, description="Epochs per fidelity step: validation accuracy is reported "
        "to the pruner (hyperband / successive_halving) after every chunk."
    )  # fmt: skip
    selection: Literal["constrained", "pareto"] = Field(
        "constrained",
        description="constrained: minimize measured latency among students within "
        "max_accuracy_drop of the teacher (validation); pareto: the search's objectives.",
    )
    max_accuracy_drop: float | None = Field(
        None, ge=0.0, le=1.0, description="None: constraints.max_accuracy_drop (else 0.01)."
    )

    @model_validator(mode="after")
    def _known_methods(self) -> StudentSearchSection:
        for index, term in enumerate(self.methods):
            _check_distill_term(index, term)
        return self


class SearchStageConfig(_Section):
    """An Optuna study whose trials train HAMNets on Ray workers (``nas`` or ``hpo``).

    ``nas`` samples the ``architecture`` group of the space (training as in
    ``stages.train``); ``hpo`` samples the ``training`` group for ``model.hamnet``.
    The study lives in an RDB (``storage``), so a killed run restarted with the same
    config resumes it; the ``top_k`` best trials become candidates.
    """

    mode: Literal["train", "students"] = Field(
        "train",
        description="train: trials train HAMNets on the labels; students: trials train "
        "HAMNet students by distillation from a teacher (see ``students``).",
    )
    students: StudentSearchSection = Field(default_factory=lambda: StudentSearchSection())
    space: str = "search_spaces/hamnet_digits.yaml"
    strategy: SamplerName = "tpe"
    pruner: PrunerName = "none"
    objectives: list[SearchObjective] = Field(["accuracy", "latency_ms"], min_length=1)
    n_trials: int | None = Field(16, ge=1)
    timeout_seconds: float | None = Field(None, gt=0.0)
    storage: str | None = Field(
        None, description="SQLAlchemy URL of the Optuna study; default sqlite in the workdir."
    )
    study_name: str | None = Field(None, description="Default: '<run name>-<stage>'.")
    top_k: int = Field(2, ge=1, le=100)
    max_params: int | None = Field(None, ge=1, description="Prune bigger architectures.")
    max_flops: int | None = Field(None, ge=1, description="Prune costlier architectures.")
    heartbeat_seconds: int = Field(
        5,
        ge=1,
        le=3600,
        description="Seconds between two heartbeats of a running trial in the study's "
        "storage (Optuna's heartbeat_interval).",
    )
    stale_after_seconds: int | None = Field(
        None,
        ge=2,
        description="Seconds without a heartbeat after which a running trial counts as "
        "interrupted and is queued again (Optuna's grace_period); default twice "
        "heartbeat_seconds. A resumed search waits this long for a killed run's trials.",
    )
    max_retries: int | None = Field(
        3, ge=0, description="How often an interrupted trial is queued again (null: always)."
    )
    ray: RaySection = RaySection()

    @model_validator(mode="after")
    def _budget(self) -> SearchStageConfig:
        if self.n_trials is None and self.timeout_seconds is None:
            raise ValueError("a search needs a budget: set n_trials, timeout_seconds or both")
        if len(set(self.objectives)) != len(self.objectives):
            raise ValueError(f"objectives must be distinct, but got {self.objectives}")
        stale = self.stale_after_seconds
        if stale is not None and stale <= self.heartbeat_seconds:
            raise ValueError(
                f"stale_after_seconds must be longer than heartbeat_seconds "
                f"({self.heartbeat_seconds}), but got {stale}"
            )
        return self


def _check_distill_term(index: int, term: dict[str, Any]) -> None:
    """Check ``methods[index]`` against its ``kd_loss`` plugin (importing no torch).

    Raises:
        ValueError: Unknown method, negative weight, or an unknown or invalid option; the
            message starts with ``methods[index]``.
    """
    where = f"methods[{index}]"
    method = term.get("method")
    known = list(registry.names("kd_loss"))
    if not isinstance(method, str):
        raise ValueError(f"{where}.method must be one of {known}, but got {method!r}")
    try:
        plugin = registry.load("kd_loss", method)
    except ConfigError as exc:
        raise ValueError(f"{where}.method {str(exc).removeprefix('kd_loss ')}") from None
    weight = term.get("weight", 1.0)
    if not isinstance(weight, (int, float)) or not 0 <= weight < float("inf"):
        raise ValueError(f"{where}.weight must be non-negative, but got {weight!r}")
    options = {key: value for key, value in term.items() if key not in ("method", "weight")}
    try:
        plugin.parse_options(options)
    except ConfigError as exc:
        raise ValueError(f"{where}: {exc}") from None


class DistillStudentSection(_Section):
    """A fresh, smaller HAMNet trained from scratch by distillation."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    hamnet: HAMNetSection


class ModuleStudentSection(_Section):
    """A smaller student of a user's own module (``stages.distill.student``).

    Built from the original by :func:`hamnet.compress.students.shrink.shrink_module`
    (``depth``: evenly spaced repeated blocks kept; ``width``: every prunable group
    narrowed with torch-pruning), then distilled from the original.
    """

    width: float = Field(1.0, gt=0.0, le=1.0, description="Units of every group kept.")
    depth: float = Field(1.0, gt=0.0, le=1.0, description="Blocks of every stack kept.")
    criterion: PruneCriterion = Field("l1", description="Which units the width keeps.")
    keep: list[str] = Field([], description="Modules whose outputs keep their width.")
    train: TrainStageConfig | None = Field(
        None, description="Training of the student (None: the stage's train)."
    )

    @model_validator(mode="after")
    def _smaller(self) -> ModuleStudentSection:
        if self.width == 1.0 and self.depth == 1.0:
            raise ValueError(
                "a student must be smaller than its teacher: width or depth must be below 1, "
                "but got width=1.0 and depth=1.0"
            )
        return self


class DistillStageConfig(_Section):
    """Knowledge distillation: KD recovery of pruned candidates, and fresh students.

    ``methods`` is one combined loss: a list of terms ``{method, weight, **options}``
    (``method`` is a ``kd_loss`` plugin of ``hamnet.compress.distill.losses``, whose
    ``Options`` are the term's other keys, checked when the config is loaded), plus
    ``ce_weight`` times cross-entropy on the labels. Options are plain data; nothing in
    them is executed.
    """

    teachers: list[str] = Field(
        ["baseline"],
        min_length=1,
        description="Candidate names of this run (usually 'baseline') or paths to hamnet "
        ".pt checkpoints; the first one's layers are matched by feature/attention terms.",
    )
    methods: list[dict[str, Any]] = Field(
        [{"method": "soft", "weight": 1.0, "temperature": 4.0}], min_length=1
    )
    ce_weight: float = Field(0.5, ge=0.0)
    recover_pruned: bool = Field(
        True,
        description="Re-fine-tune every pruned candidate with KD instead of cross-entropy: "
        "its pruning plan is replayed on the baseline and recovered for the same epochs.",
    )
    students: list[DistillStudentSection] = []
    nas_students: int = Field(
        0,
        ge=0,
        le=10,
        description="Also train the architectures of the best N nas candidates from "
        "scratch as KD students (needs stages.nas).",
    )
    train: TrainStageConfig = Field(
        TrainStageConfig(epochs=15, patience=5, learning_rate=1e-3, warmup_epochs=0),
        description="Training of KD recovery; fresh students use student_train.",
    )
    student_train: TrainStageConfig = TrainStageConfig()
    cache_teacher_outputs: bool = Field(
        True,
        description="Compute teacher outputs on the training set once and keep them as a "
        "file (not per epoch); with mixup/cutmix the teacher runs on every mixed batch.",
    )
    unlabelled_data: str | None = Field(
        None,
        description="A transfer set: a .npz (array 'x'), CSV or Parquet file of inputs "
        "without labels, preprocessed like the labelled data and added to the training "
        "split for the distillation terms only (the cross-entropy skips them).",
    )

    objective: Literal["auto", "logits", "cosine", "mse"] = Field(
        "auto",
        description="A user's model (not a HAMNet): what the student matches: the "
        "teacher's logits (classifiers), or its embeddings by cosine or MSE; auto: logits "
        "for labelled class scores, cosine otherwise.",
    )
    hidden_states: bool = Field(
        True,
        description="A user's model: also match hidden states of mapped layers (same-named "
        "blocks of a pruned copy, evenly spaced layers of a shallower student).",
    )
    student: ModuleStudentSection | None = Field(
        None,
        description="A user's model: also build a smaller student of the original's own "
        "architecture ({width, depth} multipliers) and distill it from the original.",
    )

    @model_validator(mode="after")
    def _known_methods(self) -> DistillStageConfig:
        for index, term in enumerate(self.methods):
            _check_distill_term(index, term)
        names = [s.name for s in self.students]
        if len(set(names)) != len(names):
            raise ValueError(f"student names must be unique, but got {names}")
        return self


class ExportStageConfig(_Section):
    """Export of torch candidates to deployable formats, each checked for parity."""

    formats: list[Literal["onnx", "openvino"]] = ["onnx", "openvino"]
    opset: int = Field(17, ge=13, le=23)
    parity_atol: float = Field(1e-3, gt=0.0)
    parity_samples: int = Field(64, ge=1)
    trim_padding: str | None = Field(
        "auto",
        description="Skip padded tokens inside the exported graph of a user's token model: "
        "'auto' trims by an 'attention_mask' input when appending padding to the example "
        "inputs leaves the outputs unchanged (a pooled or classified encoder; not "
        "one with per-token outputs), an input name requires it, null keeps every position. "
        "A 16-token sentence padded to 64 then costs 16 positions, not 64.",
    )
    ort_fused_attention: bool = Field(
        True,
        description="Also export each HAMNet for ONNX Runtime with every attention as one "
        "com.microsoft.Attention node (an extra candidate that runs in ORT only): at batch 1 "
        "the latency of small transformers is per-operator overhead, and this removes ~17 "
        "operators per block.",
    )


QuantizeMethod = Annotated[str, plugin_name("quantizer")]
"""A name of :mod:`hamnet.compress.quantize.methods` (``registry.names("quantizer")``)."""


class QuantizeStageConfig(_Section):
    """Post-training quantization methods; each produces one candidate."""

    methods: list[QuantizeMethod] = [
        "ort_dynamic_int8",
        "ort_static_int8",
        "nncf_int8",
        "openvino_fp16",
    ]
    calibration_samples: int = Field(300, ge=1)
    per_channel: bool = True
    reduce_range: bool | Literal["auto"] = Field(
        "auto", description="'auto' follows the hardware profile (True on CPUs without VNNI)."
    )
    max_accuracy_drop: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Accuracy budget of the accuracy-aware INT8 methods (fraction, 0.01 = one "
        "point, on the validation split); None uses constraints.max_accuracy_drop.",
    )
    max_trials: int = Field(
        12, ge=1, description="Accuracy-aware INT8: most precision assignments tried."
    )
    time_budget_s: float = Field(
        600.0, gt=0.0, description="Accuracy-aware INT8: seconds one tuning may spend."
    )
    fallback_top_k: int = Field(
        8, ge=1, description="Accuracy-aware INT8: most harmful layers that may stay float."
    )
    weight_only_block_size: Literal[16, 32, 64, 128, 256] = Field(
        32,
        description="Weights per scale of the weight-only methods (ort_weight_only_int4/int8 "
        "block size, nncf_weight_compression INT4 group size): smaller keeps more accuracy, "
        "larger gives a smaller file.",
    )
    nncf_weight_mode: Literal["int8_asym", "int4_sym"] = Field(
        "int8_asym",
        description="nncf_weight_compression's mode: INT8 per-channel asymmetric weights, or "
        "INT4 symmetric weights in groups of weight_only_block_size.",
    )


class StagesSection(_Section):
    """The stages to run. Order is fixed by the pipeline; absent stages are skipped."""

    train: TrainStageConfig | None = TrainStageConfig()
    nas: SearchStageConfig | None = None
    hpo: SearchStageConfig | None = None
    prune: PruneStageConfig | None = None
    distill: DistillStageConfig | None = None
    export: ExportStageConfig | None = ExportStageConfig()
    quantize: QuantizeStageConfig | None = QuantizeStageConfig()


class MeasureSection(_Section):
    """How every candidate is measured (one code path for all)."""

    warmup: int = Field(20, ge=0)
    repeats: int = Field(200, ge=5)
    max_eval_samples: int | None = Field(None, ge=1)
    slower_margin: float = Field(
        0.05,
        ge=0.0,
        lt=1.0,
        description="A candidate whose p50 latency exceeds its parent's by more than this "
        "fraction is marked slower than its parent and never recommended. Sub-millisecond "
        "latencies on a busy CPU vary by several percent between runs.",
    )
    paired_rounds: int = Field(
        5,
        ge=0,
        le=50,
        description="Before a candidate is marked slower than its parent, both are timed "
        "again side by side in this many interleaved rounds (medians compared), so machine "
        "noise hits both alike; 0 decides on the first measurement alone.",
    )


class TrackingSection(_Section):
    """MLflow tracking and model registry."""

    enabled: bool = True
    mlflow_uri: str | None = Field(
        None,
        description="Tracking URI; None uses $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db "
        "(relative to the project folder).",
    )
    experiment: str = "hamnet"
    registered_model: str | None = "hamnet-digits"
    champion_alias: str = "champion"
    log_models: bool = True

    def resolved_uri(self) -> str:
        """The tracking URI in force: this section's, else the environment's, else SQLite."""
        return self.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_MLFLOW_URI


class ExecutionSection(_Section):
    """Orchestration policies: retries, caching, time limits."""

    retries: int = Field(1, ge=0, le=10)
    retry_delay_seconds: float = Field(2.0, ge=0.0)
    cache: bool = True
    stage_timeout_seconds: float | None = Field(3600.0, gt=0.0)


class RetentionSection(_Section):
    """How much of the workdir survives nightly runs (``hamnet gc``, and after each run).

    Artifacts of candidates on the Pareto front or recommended in the last ``keep_runs``
    runs are kept; other artifacts, result-cache entries and reports unused for
    ``max_age_days`` are deleted.
    """

    keep_runs: int = Field(5, ge=1)
    max_age_days: float = Field(14.0, gt=0.0)
    auto_gc: bool = Field(True, description="Collect garbage at the end of every run.")


class OptimizeConfig(_Section):
    """Everything one ``hamnet-optimize`` run needs."""

    name: str = "hamnet"
    seed: int = 0
    workdir: str = ".hamnet"
    hardware_profile: str = "x86-avx2"
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    constraints: ConstraintsSection = ConstraintsSection()
    selection: SelectionSection = SelectionSection()
    stages: StagesSection = StagesSection()
    measure: MeasureSection = MeasureSection()
    tracking: TrackingSection = TrackingSection()
    execution: ExecutionSection = ExecutionSection()
    retention: RetentionSection = RetentionSection()

    @model_validator(mode="after")
    def _train_needs_training_source(self) -> OptimizeConfig:
        if self.model.source == "train" and self.stages.train is None:
            raise ValueError(
                "model.source is 'train' but stages.train is absent: either configure "
                "stages.train or load a model with model.source 'file'"
            )
        return self

    def fingerprint(self, *sections: str) -> str:
        """Return a short sha256 of the named top-level sections (all when none given)."""
        data = self.model_dump(mode="json")
        if sections:
            data = {name: data[name] for name in sections}
        return hash_json(data, length=16)


def _section_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The config section class found by following ``loc`` from ``model`` (None if lost)."""
    import typing

    current: type[BaseModel] | None = model
    for part in loc:
        field = current.model_fields.get(str(part)) if current is not None else None
        if field is None:
            return None
        candidates = typing.get_args(field.annotation) or (field.annotation,)
        current = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
    return current


def _unknown_key_hint(model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    """``"; did you mean 'epochs'?"`` for the closest allowed key, else the allowed keys."""

    section = _section_at(model, loc[:-1])
    if section is None:
        return ""
    allowed = sorted(section.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f"; allowed keys: {', '.join(allowed)}"


def _format_validation_error(
    err: ValidationError, source: str, model: type[BaseModel] | None = None
) -> str:
    lines = [f"invalid configuration in {source}:"]
    for item in err.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        kind = item["type"]
        if kind == "extra_forbidden":
            hint = _unknown_key_hint(model or OptimizeConfig, tuple(item["loc"]))
            lines.append(f"  - {where}: unknown key (not one of the allowed settings){hint}")
            continue
        message = str(item["msg"]).removeprefix("Value error, ")
        # A section-level check names what it got itself; quoting the whole section is noise.
        section_check = kind == "value_error" and isinstance(item.get("input"), dict)
        quote = "input" in item and kind != "missing" and not section_check
        if quote and "but got" not in message:
            message = f"{message}, but got {item['input']!r}"
        lines.append(f"  - {where}: {message}")
    return "\n".join(lines)


def config_from_dict(data: dict[str, Any], source: str = "<dict>") -> OptimizeConfig:
    """Validate a mapping into an :class:`OptimizeConfig`.

    Args:
        data: The parsed configuration.
        source: Where it came from, for error messages.

    Returns:
        The validated, frozen configuration.

    Raises:
        ConfigError: If a key is unknown, a value has the wrong type or is out of range.
    """
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source} must hold a mapping of settings, but got {type(data).__name__}"
        )
    try:
        return OptimizeConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> OptimizeConfig:
    """Load and validate a YAML configuration file.

    Args:
        path: The YAML file.
        overrides: Nested settings merged over the file's content (e.g. from a
            deployment parameter or a CLI flag).

    Returns:
        The validated configuration.

    Raises:
        ConfigError: If the file is missing, is not YAML, or does not validate.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist (expected a YAML file)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {err}") from None
    if overrides:
        data = deep_merge(data, overrides)
    return config_from_dict(data, source=str(path))


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``override`` merged in recursively (override wins)."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
