"""Student search: each trial is a fresh HAMNet student distilled from a teacher.

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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


def validation_accuracy(model: nn.Module, dataset: Dataset) -> float:
    """Top-1 accuracy of ``model`` on the validation split."""
    import numpy as np

    from hamnet.training.trainer import predict_logits

    if len(dataset.y_val) == 0:
        raise DataError("a student search needs validation rows, but the validation split is empty")
    logits = predict_logits(model, dataset.x_val)
    return float(np.mean(np.argmax(logits, axis=1) == dataset.y_val))


@dataclass(frozen=True)
class StudentObjective:
    """Distill and measure one HAMNet student per trial (runs in a Ray worker).

    Attributes:
        dataset: Train and validation splits (see :func:`search_split`); shipped to
            the workers with the objective.
        teacher: The teacher every student learns from.
        recipe: The KD recipe and scoring (``stages.nas.students``).
        base_architecture: Settings of the genes a trial does not sample.
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

    @property
    def constrained(self) -> bool:
        """Whether the study minimizes one constrained latency score."""
        return self.recipe.selection == "constrained"

    def __call__(self, ctx: TrialContext, params: dict[str, Any]) -> TrialOutcome:
        """Run one trial: build the student, distill it, measure it."""
        import torch

        from hamnet.compress.distill.train import distill_model
        from hamnet.compress.search.space import to_architecture
        from hamnet.compress.search.worker import PrunedTrial, TrialOutcome
        from hamnet.models import HAMNet, count_flops, count_parameters
        from hamnet.training.trainer import set_seed

        torch.set_num_threads(1)
        dataset = self.dataset
        architecture = to_architecture(params, self.base_architecture)
        model_config = architecture.to_model_config(dataset.num_features, dataset.num_classes)
        set_seed(self.seed)
        student = HAMNet(model_config)
        # Latency depends on the shape only: measured before training, so a student that
        # cannot beat the fastest feasible one found so far is never trained.
        latency, size_mb = self._latency_and_size(student, dataset.x_val[:1])
        best = ctx.best_value() if self.constrained else None
        if best is not None and is_feasible(best) and latency > best * (1 + self.latency_tie):
            raise PrunedTrial(
                f"measured latency {latency:.4f} ms is more than {self.latency_tie:.0%} above "
                f"the best student within the accuracy budget ({best:.4f} ms): not trained"
            )
        teacher = _loaded_teacher(self.teacher)
        every, epochs = self.recipe.report_every, self.recipe.train.epochs

        def report(record: dict[str, float]) -> None:
            epoch = int(record["epoch"])
            if epoch % every and epoch != epochs:
                return
            accuracy = record["val_accuracy"]
            ctx.report(1.0 - accuracy if self.constrained else accuracy, epoch)
            if ctx.should_prune():
                raise PrunedTrial(
                    f"pruned by the pruner at epoch {epoch} (val_accuracy {accuracy:.4f})"
                )

        out = Path(self.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        checkpoint = out / f"trial-{ctx.number}.pt"
        result = distill_model(
            student, [teacher], dataset, self.recipe.methods, self.recipe.train,
            ce_weight=self.recipe.ce_weight, teacher_ids=[self.teacher.artifact.sha256],
            seed=self.seed, checkpoint_path=checkpoint, progress=False, on_epoch_end=report,
        )  # fmt: skip
        accuracy = result.train.best_val_accuracy
        metrics = {
            "accuracy": accuracy,
            "latency_ms": latency,
            "size_mb": size_mb,
            "params": float(count_parameters(student)),
            "flops": float(count_flops(student, model_config.input_size)),
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
                "checkpoint": str(checkpoint),
                "architecture": model_config.model_dump(mode="json"),
                "training": self.recipe.train.model_dump(mode="json"),
                "epochs_run": result.train.epochs_run,
                "best_epoch": result.train.best_epoch,
            },
        )

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
