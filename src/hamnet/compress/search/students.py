"""Student search: each trial is a fresh student distilled from a teacher.

Two kinds of students, chosen by the teacher's family (``space.kind``):

* HAMNet students (a HAMNet teacher, or any teacher of flat feature vectors): a fresh
  HAMNet sampled from width, depth, heads, FFN ratio and token size;
* students of the teacher's own architecture (a user's module artifact, or an ONNX
  file that converts with onnx2torch): ``width`` x ``depth`` multipliers
  (:class:`MultiplierChoices`), built from the teacher's weights by
  :func:`~hamnet.compress.students.shrink.shrink_module` and distilled from it by
  :func:`~hamnet.compress.distill.modules.distill_module` (logits, hidden states of the
  kept blocks matched to their teacher blocks).

Both go through the same trial (:class:`StudentObjective`): build, measure the batch-1
latency of the untrained student (a student slower than the best feasible one is
pruned untrained), distill while reporting validation accuracy every ``report_every``
epochs, score.

The ``nas`` stage in ``mode: students`` runs this objective. A trial samples a student
architecture from a :class:`~hamnet.core.config.StudentSpaceSection` (width, depth,
heads, FFN ratio, token size; one token of every feature included), trains it by
distillation from the teacher with the configured recipe (by default the one that won
the peers sweep: mixup inputs labelled live by the teacher, the soft-target KL only,
a long schedule whose best validation epoch is kept), reports the validation accuracy
after every ``report_every`` epochs so Hyperband / successive halving stop bad
students early, then exports the student to ONNX and measures its batch-1 latency in
ONNX Runtime on the hardware profile, and its size.

Scores use the VALIDATION split only: :func:`search_split` drops the test split
before the objective ever sees the data, so nothing a search decides can depend on it.

Two ways to score (``selection``):

* ``constrained`` (default): one value to minimize, the measured latency of a student
  whose validation accuracy is within ``max_accuracy_drop`` of the teacher's, and
  :data:`INFEASIBLE_OFFSET_MS` plus the accuracy shortfall for one that is not (so every
  feasible student ranks before every infeasible one, and infeasible ones by how far
  they miss). The intermediate values are validation *errors*, so the single-objective
  study's pruners compare students by accuracy.
* ``pareto``: the stage's ``objectives`` (accuracy, latency_ms, size_mb, ...), as a
  multi-objective study (Optuna cannot prune those).

Any teacher hamnet can run teaches: a HAMNet checkpoint as a torch module, anything
else (an ONNX file, a user's module artifact) through its runtime as a
:class:`~hamnet.compress.distill.session_teacher.SessionTeacher`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from hamnet.core.artifacts import ArtifactRef
from hamnet.core.config import HAMNetSection, StudentSearchSection, StudentSpaceSection
from hamnet.core.errors import ConfigError, DataError

if TYPE_CHECKING:
    from torch import nn

    from hamnet.compress.search.space import SearchSpace
    from hamnet.compress.search.worker import TrialContext, TrialOutcome
    from hamnet.training.data import Dataset

INFEASIBLE_OFFSET_MS = 1.0e6
"""Added to the score of a student that misses the accuracy budget (``constrained``)."""

MAX_TOKENS = 16
"""Default token sizes give at most this many tokens (attention cost grows with it)."""

_WIDTHS = (8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)

DEFAULT_WIDTH_MULTIPLIERS: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
"""Width multipliers of a search over the teacher's own architecture, when not given."""

MODULE_FORMAT = "torch-module"
"""The artifact format of a user's module (a module artifact)."""


@dataclass(frozen=True)
class StudentChoices:
    """The resolved choices of a student search space (every list filled in).

    Attributes:
        hidden_sizes: Widths.
        num_layers: Depths (blocks).
        num_heads: Attention heads (must divide the width; other pairs are pruned).
        ffn_ratios: FFN width over model width.
        token_sizes: Features per token; ``input_size`` is one token of every feature.
    """

    hidden_sizes: tuple[int, ...]
    num_layers: tuple[int, ...]
    num_heads: tuple[int, ...]
    ffn_ratios: tuple[float, ...]
    token_sizes: tuple[int, ...]

    def to_search_space(self) -> SearchSpace:
        """The equivalent :class:`~hamnet.compress.search.space.SearchSpace` (architecture)."""
        from hamnet.compress.search.space import search_space_from_dict

        def categorical(values: Sequence[Any]) -> dict[str, Any]:
            return {"type": "categorical", "choices": list(values)}

        return search_space_from_dict(
            {
                "architecture": {
                    "num_layers": categorical(self.num_layers),
                    "hidden_size": categorical(self.hidden_sizes),
                    "num_heads": categorical(self.num_heads),
                    "ffn_ratio": categorical(self.ffn_ratios),
                    "token_size": categorical(self.token_sizes),
                }
            },
            source="stages.nas.students.space",
        )


def student_choices(
    space: StudentSpaceSection, input_size: int, teacher: HAMNetSection | None = None
) -> StudentChoices:
    """Resolve and check a student space against the data and the teacher.

    Lists left out are derived: widths up to the teacher's (up to 128 for a teacher
    that is not a HAMNet), depths 1 to the teacher's (1 to 2), heads 1, 2 and 4, FFN
    ratios 1, 2 and 4, and every token size that divides the input into at most
    :data:`MAX_TOKENS` tokens (one token of every feature included).

    Args:
        space: The configured space (``stages.nas.students.space``).
        input_size: Features per sample of the data.
        teacher: The teacher's architecture when it is a HAMNet.

    Returns:
        The choices, each sorted.

    Raises:
        ConfigError: A token size does not divide ``input_size``, or no width is
            divisible by any head count (no student could be built).
    """
    if input_size < 1:
        raise DataError(f"input_size must be a positive integer, but got {input_size}")
    top_width = teacher.hidden_size if teacher is not None else 128
    top_depth = teacher.num_layers if teacher is not None else 2
    widths = space.hidden_sizes or [w for w in _WIDTHS if w <= top_width] or [top_width]
    depths = space.num_layers or list(range(1, top_depth + 1))
    heads = space.num_heads or [1, 2, 4]
    ffn = space.ffn_ratios or [1.0, 2.0, 4.0]
    tokens: list[int] = [input_size if t == "all" else int(t) for t in space.token_sizes or []]
    if not tokens:
        tokens = [d for d in range(1, input_size + 1) if input_size % d == 0]
        tokens = [d for d in tokens if input_size // d <= MAX_TOKENS]
    bad = sorted({t for t in tokens if input_size % t})
    if bad:
        raise ConfigError(
            f"stages.nas.students.space.token_sizes must divide the input's {input_size} "
            f"features (or be 'all'), but got {bad}"
        )
    if not any(w % h == 0 for w in widths for h in heads):
        raise ConfigError(
            f"stages.nas.students.space: some hidden size must be divisible by some head "
            f"count, but got hidden_sizes={sorted(widths)} and num_heads={sorted(heads)}"
        )
    choices = StudentChoices(
        hidden_sizes=tuple(sorted(set(widths))),
        num_layers=tuple(sorted(set(depths))),
        num_heads=tuple(sorted(set(heads))),
        ffn_ratios=tuple(sorted({float(r) for r in ffn})),
        token_sizes=tuple(sorted(set(tokens))),
    )
    choices.to_search_space()  # every value checked against HAMNetSection's bounds
    return choices


def check_student(
    params: dict[str, Any], *, base: HAMNetSection, input_size: int, num_classes: int
) -> None:
    """Raise :class:`~hamnet.compress.search.space.InfeasibleParams` for a student that
    cannot be built (a width the head count does not divide, a token size that does not
    divide the input), so the driver prunes the trial without training it."""
    from hamnet.compress.search.space import InfeasibleParams, to_architecture

    token = params.get("token_size")
    if isinstance(token, int) and input_size % token:
        raise InfeasibleParams(
            f"token_size must divide the input's {input_size} features, but got {token}"
        )
    try:
        to_architecture(params, base).to_model_config(input_size, num_classes)
    except InfeasibleParams:
        raise
    except (ConfigError, ValueError) as err:
        raise InfeasibleParams(str(err)) from None


def student_key(params: dict[str, Any], *, input_size: int) -> tuple[tuple[str, Any], ...]:
    """What identifies the HAMNet student ``params`` build, for spotting repeats.

    Over one token of every feature (``token_size`` ``"all"`` or the input size), the
    attention softmax has a single key, so every head count builds the same function with
    the same parameters: the key records such students with one head.

    Example:
        >>> a = {"hidden_size": 32, "num_heads": 4, "token_size": "all"}
        >>> student_key(a, input_size=64) == student_key(
        ...     {"hidden_size": 32, "num_heads": 1, "token_size": 64}, input_size=64)
        True
    """
    key = dict(params)
    if key.get("token_size") in ("all", input_size):
        key["token_size"] = input_size
        if "num_heads" in key:
            key["num_heads"] = 1
    return tuple(sorted(key.items()))


def warm_start(choices: StudentChoices, input_size: int) -> list[dict[str, Any]]:
    """The first students a constrained search trains, before its sampler takes over.

    One block over one token of every feature (attention over one token is a linear
    map, so the block is a residual MLP: the fewest operators at batch 1) at the middle
    width of the space, then at the width below it. A feasible fast student early lets
    every slower proposal be pruned without training (its latency is measured first).
    Shapes the space does not hold are skipped.

    Returns:
        Parameter dicts to enqueue (empty when the space has no one-token shape).
    """
    if input_size not in choices.token_sizes:
        return []
    widths = choices.hidden_sizes
    middle = len(widths) // 2
    picks = [widths[middle]] + ([widths[middle - 1]] if middle > 0 else [])
    ffn = choices.ffn_ratios[len(choices.ffn_ratios) // 2]
    out = []
    for width in picks:
        heads = [h for h in choices.num_heads if width % h == 0]
        if not heads:
            continue
        out.append(
            {
                "num_layers": choices.num_layers[0],
                "hidden_size": width,
                "num_heads": heads[0],
                "ffn_ratio": ffn,
                "token_size": input_size,
            }
        )
    return out


@dataclass(frozen=True)
class MultiplierChoices:
    """The resolved space of students of the teacher's own architecture.

    Attributes:
        widths: Width multipliers (fraction of every prunable group kept).
        depths: Depth multipliers (fraction of every stack of repeated blocks kept).
    """

    widths: tuple[float, ...]
    depths: tuple[float, ...]

    def to_search_space(self) -> SearchSpace:
        """A :class:`~hamnet.compress.search.space.SearchSpace` with the two categorical
        parameters ``width`` and ``depth``, so the samplers, the grid and ``suggest``
        work on it unchanged (built without the HAMNet gene check: they are not HAMNet
        genes)."""
        from hamnet.compress.search.space import CategoricalParameter, SearchSpace

        parameters: dict[str, Any] = {
            name: CategoricalParameter(type="categorical", choices=list(values))
            for name, values in (("width", self.widths), ("depth", self.depths))
        }
        return SearchSpace.model_construct(architecture=parameters, training={}, evolution=None)

    def describe(self) -> str:
        """The space in words, for notes and plan reasons."""
        widths = ", ".join(f"{w:g}" for w in self.widths)
        depths = ", ".join(f"{d:g}" for d in self.depths)
        return f"width multipliers [{widths}] x depth multipliers [{depths}]"


def multiplier_choices(
    space: StudentSpaceSection, teacher: nn.Module, example_inputs: Any
) -> MultiplierChoices:
    """Resolve a space of students of ``teacher``'s own architecture.

    Widths default to :data:`DEFAULT_WIDTH_MULTIPLIERS`; depths to the multipliers that
    give distinct depths of the teacher's longest stack of repeated blocks
    (:func:`~hamnet.compress.students.shrink.depth_multipliers`), or ``[1.0]`` when it
    has none.

    Raises:
        ConfigError: Depths below 1 for a teacher with no repeated blocks, or a space
            whose only student is the teacher itself.
    """
    from hamnet.compress.students.shrink import depth_multipliers, find_block_stacks

    widths = sorted({float(w) for w in space.width_multipliers or DEFAULT_WIDTH_MULTIPLIERS})
    if space.depth_multipliers:
        depths = sorted({float(d) for d in space.depth_multipliers})
        if any(d < 1 for d in depths) and not find_block_stacks(teacher, example_inputs):
            raise ConfigError(
                f"stages.nas.students.space.depth_multipliers below 1 need repeated "
                f"shape-preserving blocks, but {type(teacher).__name__} has none; got "
                f"{depths}"
            )
    else:
        depths = depth_multipliers(teacher, example_inputs) or [1.0]
    if widths == [1.0] and depths == [1.0]:
        raise ConfigError(
            f"a student search needs a student smaller than the teacher, but the space holds "
            f"only width 1.0 and depth 1.0 ({type(teacher).__name__} has no repeated blocks "
            f"to drop): give width_multipliers below 1"
        )
    return MultiplierChoices(widths=tuple(widths), depths=tuple(depths))


def check_multipliers(params: dict[str, Any]) -> None:
    """Raise :class:`~hamnet.compress.search.space.InfeasibleParams` for the teacher itself
    (width and depth 1), so the driver prunes it without training."""
    from hamnet.compress.search.space import InfeasibleParams

    if float(params.get("width", 1.0)) >= 1.0 and float(params.get("depth", 1.0)) >= 1.0:
        raise InfeasibleParams("width 1.0 and depth 1.0 is the teacher itself, not a student")


def multiplier_warm_start(choices: MultiplierChoices) -> list[dict[str, Any]]:
    """The first student of a constrained search over multipliers: the middle width and
    depth below 1 (a fast student early lets the latency bound prune slower ones)."""
    widths = [w for w in choices.widths if w < 1] or list(choices.widths)
    depths = [d for d in choices.depths if d < 1] or list(choices.depths)
    start = {"width": widths[len(widths) // 2], "depth": depths[len(depths) // 2]}
    if start["width"] >= 1 and start["depth"] >= 1:
        return []
    return [start]


def module_accuracy(model: nn.Module, x: Any, y: Any, batch_size: int = 256) -> float:
    """Top-1 accuracy of a torch module on inputs of any rank or named inputs.

    Raises:
        DataError: No rows.
    """
    return module_fidelity(model, x, y, "accuracy", batch_size)


def module_fidelity(
    model: nn.Module,
    x: Any,
    y: Any,
    kind: Literal["accuracy", "agreement", "cosine"],
    batch_size: int = 256,
) -> float:
    """How well a torch module's outputs on ``x`` match ``y``.

    ``accuracy`` / ``agreement``: top-1 against class indices (labels, or the teacher's
    top-1 class); ``cosine``: mean cosine similarity of each output row (flattened) to
    the reference output row ``y`` (the teacher's embeddings).

    Raises:
        DataError: No rows.
    """
    import numpy as np
    import torch

    from hamnet.compress.distill.module_outputs import ModuleInputs, call_module, primary_output

    if len(y) == 0:
        raise DataError("a student search needs validation rows, but the validation split is empty")
    inputs = ModuleInputs(x, "validation inputs")
    outputs = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(inputs), batch_size):
                batch = inputs.batch(slice(start, start + batch_size))
                outputs.append(primary_output(call_module(model, batch)).float().cpu())
    finally:
        model.train(was_training)
    out = torch.cat(outputs)
    if kind == "cosine":
        reference = torch.as_tensor(np.asarray(y), dtype=torch.float32).reshape(len(out), -1)
        cos = torch.nn.functional.cosine_similarity(out.reshape(len(out), -1), reference, dim=1)
        return float(cos.mean())
    return float(np.mean(out.argmax(dim=-1).numpy() == np.asarray(y)))


Fidelity = Literal["accuracy", "agreement", "cosine"]
"""How a search over the teacher's own architecture scores a student (see
:func:`teacher_labelled`)."""


def teacher_labelled(dataset: Dataset, declared: str | None) -> tuple[Dataset, Fidelity]:
    """The data a search over the teacher's own architecture scores on, and how.

    Labelled data is scored by ``accuracy``. Label-free data (``targets ==
    "reference"``: the teacher's outputs) is scored as the pipeline scores fidelity
    (:func:`hamnet.evaluate.fidelity.fidelity_kind`): class scores by ``agreement``
    (the teacher's top-1 class becomes the label), embeddings by ``cosine``.
    """
    import numpy as np

    from hamnet.evaluate.fidelity import fidelity_kind

    if dataset.targets == "labels":
        return dataset, "accuracy"
    if fidelity_kind(dataset.y_val, declared) == "cosine":
        return dataset, "cosine"

    def top1(y: Any) -> Any:
        return np.asarray(y).reshape(len(y), -1).argmax(axis=1).astype(np.int64)

    classes = int(np.asarray(dataset.y_val).reshape(len(dataset.y_val), -1).shape[1])
    labelled = dataclasses.replace(
        dataset, y_train=top1(dataset.y_train), y_val=top1(dataset.y_val),
        y_test=top1(dataset.y_test), num_classes=classes, targets="labels",
    )  # fmt: skip
    return labelled, "agreement"


def search_split(dataset: Dataset) -> Dataset:
    """``dataset`` without its test rows: what a search may read (train and validation)."""
    return dataclasses.replace(dataset, x_test=dataset.x_test[:0], y_test=dataset.y_test[:0])


def constrained_score(
    latency_ms: float, accuracy: float, reference_accuracy: float, max_accuracy_drop: float
) -> float:
    """The value a ``constrained`` student search minimizes.

    Returns:
        ``latency_ms`` when ``reference_accuracy - accuracy <= max_accuracy_drop``, else
        :data:`INFEASIBLE_OFFSET_MS` plus the shortfall in points (100 x accuracy).
    """
    shortfall = (reference_accuracy - accuracy) - max_accuracy_drop
    if shortfall <= 1e-12:
        return float(latency_ms)
    return INFEASIBLE_OFFSET_MS + 100.0 * shortfall


def is_feasible(score: float) -> bool:
    """Whether a ``constrained`` score belongs to a student within the accuracy budget."""
    return score < INFEASIBLE_OFFSET_MS


@dataclass(frozen=True)
class TeacherSource:
    """A teacher a Ray worker can load: its stored file and the runtime that runs it.

    Attributes:
        artifact: The teacher's file (a HAMNet checkpoint, an ONNX file, a module
            artifact).
        runtime: The runtime that runs a teacher that is not a HAMNet checkpoint.
        profile: Hardware profile name for that runtime.
        trust_checkpoint: Load checkpoints with pickled code (files you made yourself).
    """

    artifact: ArtifactRef
    runtime: str
    profile: str
    trust_checkpoint: bool = False

    @property
    def is_hamnet(self) -> bool:
        """Whether the teacher is a HAMNet checkpoint (loaded as a torch module)."""
        from hamnet.families.base import ModelSource, detect_family

        if self.artifact.format != "torch":
            return False
        source = ModelSource(path=Path(self.artifact.path), checkpoint=True)
        return bool(detect_family(source).loads_checkpoint)

    @property
    def is_module(self) -> bool:
        """Whether the teacher is a user's module artifact (``torch-module``)."""
        return self.artifact.format == MODULE_FORMAT

    def module(self) -> nn.Module:
        """The teacher as a frozen torch module whose architecture students copy.

        A module artifact is loaded as one (its plan replayed, its weights loaded); an
        ONNX file is converted with onnx2torch.

        Raises:
            ConfigError: A teacher that is neither.
            ModelLoadError: The module does not load (an ONNX file onnx2torch cannot
                convert: the message names the operators).
        """
        model: nn.Module
        if self.is_module:
            from hamnet.models.sources import load_module_artifact

            model = load_module_artifact(self.artifact.path, trust_checkpoint=self.trust_checkpoint)
        elif self.artifact.format == "onnx":
            from hamnet.models.sources import ModuleSource, load_source

            model = load_source(ModuleSource(kind="onnx", path=str(Path(self.artifact.path))))
        else:
            raise ConfigError(
                f"students of the teacher's own architecture need a user's module or an ONNX "
                f"file as the teacher, but got a {self.artifact.format!r} model"
            )
        model.eval()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        return model

    def student_source(self, dataset: Dataset) -> dict[str, Any]:
        """What a student's module artifact records of its teacher: the root's source
        (absolute), the input spec, the output kind and the family."""
        from hamnet.models.sources import InputSpec, ModuleSource, read_module_artifact

        if self.is_module:
            main = Path(self.artifact.path)
            artifact = read_module_artifact(main)
            source = artifact.source
            if source.path and not Path(source.path).is_absolute():
                source = source.model_copy(update={"path": str(main.parent / source.path)})
            return {"source": source, "inputs": artifact.inputs,
                    "output_kind": artifact.output_kind, "family": artifact.family}  # fmt: skip
        return {
            "source": ModuleSource(kind="onnx", path=str(Path(self.artifact.path).resolve())),
            "inputs": InputSpec.of(dataset.x_val[:1]),
            "output_kind": "class_scores",
            "family": None,
        }

    def load(self) -> nn.Module:
        """The teacher as a frozen torch module in eval mode."""
        model: nn.Module
        if self.is_hamnet:
            from hamnet.models import load_checkpoint

            model = load_checkpoint(self.artifact.path, trust=self.trust_checkpoint)
        else:
            from hamnet.backends.session import load_session
            from hamnet.compress.distill.session_teacher import SessionTeacher
            from hamnet.core.hardware import load_profile

            profile = load_profile(self.profile).model_copy(update={"threads": 1})
            session = load_session(
                self.artifact, self.runtime, profile, trust_checkpoint=self.trust_checkpoint
            )
            model = SessionTeacher(session, self.artifact.sha256)
        model.eval()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        return model

    def architecture(self) -> HAMNetSection | None:
        """The teacher's HAMNet architecture, or None for another model."""
        if not self.is_hamnet:
            return None
        from hamnet.models import load_checkpoint

        cfg = load_checkpoint(self.artifact.path, trust=self.trust_checkpoint).config
        return HAMNetSection(
            hidden_size=cfg.hidden_size, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
            ffn_ratio=cfg.ffn_ratio, token_size=cfg.token_size,
        )  # fmt: skip


@functools.cache
def _loaded_teacher(source: TeacherSource) -> nn.Module:
    """One teacher per worker process (trials on the same worker share it)."""
    return source.load()


@functools.cache
def _teacher_module(source: TeacherSource) -> nn.Module:
    """The teacher whose architecture students copy, once per worker process."""
    return source.module()


def validation_accuracy(model: nn.Module, dataset: Dataset) -> float:
    """Top-1 accuracy of ``model`` on the validation split."""
    import numpy as np

    from hamnet.training.trainer import predict_logits

    if len(dataset.y_val) == 0:
        raise DataError("a student search needs validation rows, but the validation split is empty")
    logits = predict_logits(model, dataset.x_val)
    return float(np.mean(np.argmax(logits, axis=1) == dataset.y_val))


@dataclass
class _Reporter:
    """Reports validation accuracy to the pruner after every ``every`` epochs (and the
    last), and prunes the trial when the pruner says so."""

    ctx: TrialContext
    every: int
    epochs: int
    constrained: bool

    def due(self, epoch: int) -> bool:
        """Whether ``epoch`` ends a fidelity step."""
        return epoch % self.every == 0 or epoch == self.epochs

    def __call__(self, epoch: int, accuracy: float) -> None:
        from hamnet.compress.search.worker import PrunedTrial

        if not self.due(epoch):
            return
        self.ctx.report(1.0 - accuracy if self.constrained else accuracy, epoch)
        if self.ctx.should_prune():
            raise PrunedTrial(
                f"pruned by the pruner at epoch {epoch} (val_accuracy {accuracy:.4f})"
            )


@dataclass
class _Built:
    """A student built for one trial, before training.

    Attributes:
        model: The untrained student (HAMNet: fresh weights; module: the teacher's).
        metrics: What describes its size besides the latency (params, flops...).
        attrs: Trial attributes that describe the student (architecture, multipliers).
        plan: The replayable plan of a student of the teacher's own architecture.
        layer_map: Student block -> teacher block (hidden-state matching).
    """

    model: Any
    metrics: dict[str, float] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    plan: Any = None
    layer_map: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StudentObjective:
    """Distill and measure one student per trial (runs in a Ray worker).

    What a student is follows the teacher's family (``student_kind``): a fresh HAMNet
    (``hamnet``), or a width/depth-multiplier copy of the teacher's own architecture
    (``multipliers``). Every trial goes the same way: build, measure the untrained
    student's latency (prune it untrained when it cannot beat the fastest feasible one),
    distill it with validation accuracy reported every ``report_every`` epochs, score.

    Attributes:
        dataset: Train and validation splits (see :func:`search_split`); shipped to
            the workers with the objective.
        teacher: The teacher every student learns from.
        recipe: The KD recipe and scoring (``stages.nas.students``).
        base_architecture: Settings of the genes a trial does not sample (HAMNet).
        reference_accuracy: The teacher's validation accuracy.
        max_accuracy_drop: The budget of the ``constrained`` score.
        objectives: The values of a ``pareto`` search, in order.
        profile: Hardware profile name for the latency measurement.
        out_dir: Where trial checkpoints are written (reachable by the driver).
        seed: Seeds model initialisation and training.
        latency_repeats: Timed ONNX Runtime calls per trial.
        latency_threads: Intra-op threads of the latency measurement (None: the profile's).
        latency_tie: A student is pruned untrained only when its latency is more than this
            fraction above the best feasible student's (batch-1 timings of tiny models
            drift by a few percent; the selection treats such latencies as ties).
        student_kind: ``hamnet`` or ``multipliers`` (see above).
        keep: Modules of the teacher whose outputs keep their width (``multipliers``).
        fidelity: What "accuracy" means for ``multipliers`` students (see
            :func:`teacher_labelled`): top-1 ``accuracy`` on labels, top-1 ``agreement``
            with the teacher, or mean ``cosine`` similarity to its embeddings.
    """

    dataset: Dataset
    teacher: TeacherSource
    recipe: StudentSearchSection
    base_architecture: HAMNetSection
    reference_accuracy: float
    max_accuracy_drop: float
    objectives: tuple[str, ...]
    profile: str
    out_dir: str
    seed: int = 0
    latency_repeats: int = 50
    latency_threads: int | None = None
    latency_tie: float = 0.05
    student_kind: Literal["hamnet", "multipliers"] = "hamnet"
    keep: tuple[str, ...] = ()
    fidelity: Literal["accuracy", "agreement", "cosine"] = "accuracy"

    @property
    def constrained(self) -> bool:
        """Whether the study minimizes one constrained latency score."""
        return self.recipe.selection == "constrained"

    def __call__(self, ctx: TrialContext, params: dict[str, Any]) -> TrialOutcome:
        """Run one trial: build the student, measure it untrained, distill it, score it."""
        import torch

        from hamnet.compress.search.worker import PrunedTrial, TrialOutcome
        from hamnet.training.trainer import set_seed

        torch.set_num_threads(1)
        set_seed(self.seed)
        multipliers = self.student_kind == "multipliers"
        built = self._build_module(params) if multipliers else self._build_hamnet(params)
        # Latency depends on the shape only: measured before training, so a student that
        # cannot beat the fastest feasible one found so far is never trained.
        latency, size_mb = (
            self._module_latency_and_size(built.model)
            if multipliers
            else self._latency_and_size(built.model, self.dataset.x_val[:1])
        )
        best = ctx.best_value() if self.constrained else None
        if best is not None and is_feasible(best) and latency > best * (1 + self.latency_tie):
            raise PrunedTrial(
                f"measured latency {latency:.4f} ms is more than {self.latency_tie:.0%} above "
                f"the best student within the accuracy budget ({best:.4f} ms): not trained"
            )
        reporter = _Reporter(
            ctx, self.recipe.report_every, self.recipe.train.epochs, self.constrained
        )
        out = Path(self.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        train = self._train_module if multipliers else self._train_hamnet
        accuracy, trained = train(built, reporter, out, ctx.number)
        metrics = {
            "accuracy": accuracy,
            "latency_ms": latency,
            "size_mb": size_mb,
            **built.metrics,
            "reference_accuracy": self.reference_accuracy,
            "accuracy_drop": self.reference_accuracy - accuracy,
        }
        if self.constrained:
            values = [
                constrained_score(
                    latency, accuracy, self.reference_accuracy, self.max_accuracy_drop
                )
            ]
        else:
            values = [metrics[name] for name in self.objectives]
        return TrialOutcome(
            values=values,
            user_attrs={
                "metrics": metrics,
                "feasible": metrics["accuracy_drop"] <= self.max_accuracy_drop + 1e-12,
                **built.attrs,
                "training": self.recipe.train.model_dump(mode="json"),
                **trained,
            },
        )

    # ------------------------------------------------------------ HAMNet students

    def _build_hamnet(self, params: dict[str, Any]) -> _Built:
        from hamnet.compress.search.space import to_architecture
        from hamnet.models import HAMNet, count_flops, count_parameters

        dataset = self.dataset
        architecture = to_architecture(params, self.base_architecture)
        model_config = architecture.to_model_config(dataset.num_features, dataset.num_classes)
        student = HAMNet(model_config)
        return _Built(
            model=student,
            metrics={
                "params": float(count_parameters(student)),
                "flops": float(count_flops(student, model_config.input_size)),
            },
            attrs={"architecture": model_config.model_dump(mode="json")},
        )

    def _train_hamnet(
        self, built: _Built, reporter: _Reporter, out: Path, number: int
    ) -> tuple[float, dict[str, Any]]:
        from hamnet.compress.distill.train import distill_model

        teacher = _loaded_teacher(self.teacher)
        checkpoint = out / f"trial-{number}.pt"
        result = distill_model(
            built.model, [teacher], self.dataset, self.recipe.methods, self.recipe.train,
            ce_weight=self.recipe.ce_weight, teacher_ids=[self.teacher.artifact.sha256],
            seed=self.seed, checkpoint_path=checkpoint, progress=False,
            on_epoch_end=lambda record: reporter(int(record["epoch"]), record["val_accuracy"]),
        )  # fmt: skip
        return result.train.best_val_accuracy, {
            "checkpoint": str(checkpoint),
            "epochs_run": result.train.epochs_run,
            "best_epoch": result.train.best_epoch,
        }

    def _latency_and_size(self, model: Any, x_one: Any) -> tuple[float, float]:
        """Batch-1 p50 latency (ms) of the exported ONNX file in ONNX Runtime, and its MB.

        A student with several tokens is exported with its attention as one ONNX
        Runtime ``Attention`` node per block (what the pipeline's export writes for
        ONNX Runtime); one token exports as plain ``Gemm`` operators.
        """
        from hamnet.compress.search.objective import trial_latency_and_size

        return trial_latency_and_size(
            model, x_one, profile=self.profile, threads=self.latency_threads,
            repeats=self.latency_repeats, ort_fused_attention=model.config.num_tokens > 1,
        )  # fmt: skip

    # ------------------------------------- students of the teacher's own architecture

    def _example(self) -> Any:
        from hamnet.compress.distill.module_outputs import ModuleInputs

        return ModuleInputs(self.dataset.x_val[:1], "validation inputs").batch(slice(0, 1))

    def _build_module(self, params: dict[str, Any]) -> _Built:
        from hamnet.compress.students.shrink import shrink_module

        width, depth = float(params["width"]), float(params["depth"])
        result = shrink_module(
            _teacher_module(self.teacher), self._example(), width=width, depth=depth,
            keep=self.keep, seed=self.seed,
        )  # fmt: skip
        return _Built(
            model=result.model,
            metrics={"params": float(result.params_after)},
            attrs={
                "architecture": None,
                "student": {
                    "width": width,
                    "depth": depth,
                    "params_before": result.params_before,
                    "params_after": result.params_after,
                    "kept_blocks": {
                        s.container or "<root>": k
                        for s, k in zip(result.stacks, result.kept, strict=True)
                    },
                },
            },
            plan=result.plan,
            layer_map=dict(result.layer_map),
        )

    def _module_latency_and_size(self, model: Any) -> tuple[float, float]:
        """Batch-1 p50 latency (ms) of the student exported to ONNX, in ONNX Runtime on
        the profile (as the pipeline measures its ONNX Runtime candidates), and its MB."""
        import tempfile

        import numpy as np

        from hamnet.backends.export import export_module
        from hamnet.backends.session import load_session
        from hamnet.core.artifacts import ArtifactStore
        from hamnet.core.hardware import load_profile
        from hamnet.evaluate.measure import latency_ms

        hardware = load_profile(self.profile)
        if self.latency_threads is not None:
            hardware = hardware.model_copy(update={"threads": self.latency_threads})
        x_one = self.dataset.x_val[:1]
        with tempfile.TemporaryDirectory(prefix="hamnet-trial-") as tmp:
            store = ArtifactStore(Path(tmp))
            path = export_module(
                model, self._example(), store.staging_dir() / "model.onnx", parity_atol=None
            )
            ref = store.put(path, "onnx")
            session = load_session(ref, "onnxruntime", hardware)
            x = x_one if x_one.dtype.names else np.ascontiguousarray(x_one, dtype=np.float32)
            p50, _ = latency_ms(session, x, warmup=10, repeats=self.latency_repeats)
            del session
            return p50, ref.size_mb

    def _train_module(
        self, built: _Built, reporter: _Reporter, out: Path, number: int
    ) -> tuple[float, dict[str, Any]]:
        """Distill the student from the teacher module (logits at the recipe's
        temperature, the labels weighted by ``ce_weight``; cosine for embeddings; hidden
        states of the kept blocks matched to their teacher blocks); store it as a module
        artifact."""
        from hamnet.compress.distill.modules import distill_module
        from hamnet.models.sources import save_module_artifact

        data, recipe = self.dataset, self.recipe
        student = built.model
        scores = self.fidelity != "cosine"

        def progress(record: dict[str, Any]) -> None:
            epoch = int(record["epoch"])
            if reporter.due(epoch):
                reporter(epoch, module_fidelity(student, data.x_val, data.y_val, self.fidelity))

        temperature = float(
            next((t.get("temperature", 2.0) for t in recipe.methods if "temperature" in t), 2.0)
        )
        labels = self.fidelity == "accuracy"
        result = distill_module(
            _teacher_module(self.teacher), student, data.x_train,
            data.y_train if labels else None, objective="logits" if scores else "cosine",
            class_scores=scores, hidden_map=built.layer_map or None, temperature=temperature,
            alpha=recipe.ce_weight, epochs=recipe.train.epochs, lr=recipe.train.learning_rate,
            batch_size=recipe.train.batch_size, val_x=data.x_val,
            val_y=data.y_val if labels else None, seed=self.seed, progress=progress,
        )  # fmt: skip
        accuracy = module_fidelity(result.model, data.x_val, data.y_val, self.fidelity)
        main = save_module_artifact(
            out / f"trial-{number}", module=result.model, plan=built.plan,
            **self.teacher.student_source(data),
        )  # fmt: skip
        return accuracy, {
            "checkpoint": str(main),
            "format": MODULE_FORMAT,
            "epochs_run": len(result.history),
            "best_epoch": max((r["epoch"] for r in result.history if r.get("kept")), default=0),
            "mapped_layers": dict(result.mapped_layers),
        }
