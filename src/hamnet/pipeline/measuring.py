"""Measuring what a stage made: metrics, and rejection of children slower than their parent.

Every new candidate is measured by :func:`measure_candidate`, whatever stage made it,
so all candidates of a run are compared on the same footing: on the validation split,
which the selection reads. After the selection, :func:`score_on_test` scores the
recommended candidate and the baseline once on the test split (``test_accuracy``).
Without labels every score is the fidelity :func:`run_fidelity` chooses for the run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from hamnet.core.candidate import Candidate
from hamnet.core.errors import HamnetError
from hamnet.pipeline.plan import StageContext

logger = logging.getLogger("hamnet.pipeline")


def run_fidelity(ctx: StageContext, output_kind: str | None = None) -> str:
    """How this run compares outputs with the original model's when there are no labels.

    Chosen once per run by :func:`hamnet.evaluate.fidelity.fidelity_kind` from
    ``data.fidelity``, the model's declared ``output_kind`` and the reference outputs of
    every split together, so the validation and the test scores mean the same thing.

    Args:
        ctx: The stage context (config and data set).
        output_kind: What the model declares its output to be (``"class_scores"``,
            ``"embedding"``, ``"hidden_states"``), or None: then a user's module says it
            (its module artifact's ``output_kind``, a Hugging Face directory's task).

    Returns:
        ``"agreement"`` or ``"cosine"`` for label-free data; ``data.fidelity`` as set
        for labelled data (labels are scored by top-1 accuracy whatever it says).
    """
    import numpy as np

    from hamnet.evaluate.fidelity import fidelity_kind

    setting = ctx.config.data.fidelity
    data = ctx.dataset
    if data.targets != "reference":
        return setting
    reference = np.concatenate([data.y_train, data.y_val, data.y_test], axis=0)
    if output_kind is None:
        from hamnet.pipeline.stages._user_modules import declared_output_kind

        output_kind = declared_output_kind(ctx)
    return fidelity_kind(reference, output_kind, setting=setting)


def measure_candidate(
    candidate: Candidate,
    known: dict[str, Candidate],
    ctx: StageContext,
    *,
    output_kind: str | None = None,
) -> Candidate:
    """Measure ``candidate`` on the validation split and mark it rejected when it is
    slower than its parent (unless :func:`size_over_speed` keeps it).

    The rejection quotes the figures by name (:func:`slower_reason`); a slower
    quantized candidate also gets a note on where its time goes, from operator
    profiles of it and its parent (:func:`hamnet.evaluate.op_profile.why_slower`).

    Args:
        candidate: The new candidate.
        known: Candidates measured before, by id (its parent among them).
        ctx: The stage context.
        output_kind: What the model declares its output to be (see
            :func:`run_fidelity`); None to leave it to ``data.fidelity`` and the outputs.

    Returns:
        The candidate with its metrics (and ``rejected`` when slower than its parent).
    """
    from hamnet.evaluate.measure import measure_artifact

    params, flops = _model_size(candidate, known, ctx)
    metrics = measure_artifact(
        candidate.artifact,
        candidate.runtime,
        ctx.profile,
        ctx.dataset.x_val,
        ctx.dataset.y_val,
        ctx.config.measure,
        params=params,
        flops=flops,
        trust_checkpoint=ctx.config.model.trust_checkpoint,
        fidelity=run_fidelity(ctx, output_kind),
    )
    rejected = candidate.rejected
    notes = list(candidate.notes)
    parent = known.get(candidate.parent_id or "")
    settings = ctx.config.measure
    margin = settings.slower_margin
    # The parent was timed earlier, maybe on a busier or an idler machine. A child that
    # is not clearly faster (within the margin either way, or slower) is therefore timed
    # again side by side with it before it is judged: a parent figure inflated by noise
    # must not let a slower child through, nor a lucky one reject an equal child.
    paired = bool(settings.paired_rounds)
    suspect = 1.0 - margin if paired else 1.0 + margin
    if (
        rejected is None
        and parent is not None
        and parent.metrics is not None
        and metrics.latency_p50_ms > parent.metrics.latency_p50_ms * suspect
    ):
        child_ms, parent_ms = metrics.latency_p50_ms, parent.metrics.latency_p50_ms
        if paired:
            child_ms, parent_ms = _paired_latency(candidate, parent, ctx)
        if child_ms > parent_ms * (1.0 + margin):
            reason = slower_reason(
                parent.name,
                logged=(metrics.latency_p50_ms, parent.metrics.latency_p50_ms),
                side_by_side=(child_ms, parent_ms) if paired else None,
                rounds=settings.paired_rounds,
                margin=margin,
            )
            kept = size_over_speed(candidate, metrics.size_mb, parent.metrics.size_mb, ctx)
            if kept is None:
                rejected = reason
            else:
                notes.append(f"kept although {reason}: {kept}")
            if candidate.precision != "fp32":
                notes.append(_why_slower_note(candidate, parent, ctx))
        else:
            logger.info(
                "%s is not slower than its parent %s when timed side by side "
                "(%.4f vs %.4f ms): kept",
                candidate.name, parent.name, child_ms, parent_ms,
            )  # fmt: skip
    return candidate.model_copy(update={"metrics": metrics, "rejected": rejected, "notes": notes})


def size_over_speed(
    candidate: Candidate, size_mb: float, parent_size_mb: float, ctx: StageContext
) -> str | None:
    """Why a slower child is kept: a weight-only quantized model (its method's
    ``weight_only`` capability: integer or FP16 weights, FP32 compute) that is smaller
    than its parent. Such methods trade latency for size, so being slower is their
    price, not a defect: the child stays a candidate (the front's smaller point) and the
    selection, which prefers faster models, takes it only when a size bound needs it
    (``max_latency_ms`` still holds). None (rejected as usual) otherwise.
    """
    if candidate.stage != "quantize" or size_mb >= parent_size_mb:
        return None
    from hamnet.compress.quantize.base import quantizer_class

    try:
        weight_only = quantizer_class(candidate.method).weight_only
    except HamnetError:  # a method since removed: judged as any other
        return None
    if not weight_only:
        return None
    target = ctx.config.constraints.target_size_mb
    why = (
        f"this run has a size bound (target_size_mb {target})"
        if target is not None
        else "it stays on the front as the smaller model; the selection prefers faster ones"
    )
    return (
        f"{candidate.method} is weight-only ({size_mb:.3f} MB vs parent {parent_size_mb:.3f} "
        f"MB) and trades latency for size: {why}"
    )


def slower_reason(
    parent_name: str,
    *,
    logged: tuple[float, float],
    side_by_side: tuple[float, float] | None,
    rounds: int,
    margin: float,
) -> str:
    """Why a child is rejected as slower than its parent, quoting the figures by name.

    The logged figures are the ``latency_p50_ms`` metrics of both candidates (what
    MLflow and the tables show); the side-by-side figures, when the child was timed
    again beside its parent, are what decided. Both are quoted, each named, so a reason
    never shows a figure the run's metrics do not explain.

    Args:
        parent_name: The parent's name.
        logged: The child's and the parent's logged ``latency_p50_ms``.
        side_by_side: The child's and the parent's p50 when timed side by side (None
            when the decision was made on the logged figures alone).
        rounds: The interleaved rounds of the side-by-side timing.
        margin: The slower margin (a fraction).

    Returns:
        E.g. ``"slower than its parent export-onnx: side-by-side p50 0.210 ms vs parent
        0.180 ms (timed side by side in 5 interleaved rounds); logged latency_p50_ms
        0.200 ms vs parent 0.170 ms; more than 5% slower"`` (5 decimals below 0.1 ms).
    """
    logged_text = f"logged latency_p50_ms {_ms(logged[0])} ms vs parent {_ms(logged[1])} ms"
    if side_by_side is None:
        return (
            f"slower than its parent {parent_name}: {logged_text} (measured one after the "
            f"other); more than {margin:.0%} slower"
        )
    return (
        f"slower than its parent {parent_name}: side-by-side p50 {_ms(side_by_side[0])} ms vs "
        f"parent {_ms(side_by_side[1])} ms (timed side by side in {rounds} interleaved "
        f"rounds); {logged_text}; more than {margin:.0%} slower"
    )


def _ms(value: float) -> str:
    """A latency in ms with 3 decimals, 5 below 0.1 ms (microsecond models stay readable)."""
    return f"{value:.3f}" if value >= 0.1 else f"{value:.5f}"


_RUNS = {"warmup": 5, "runs": 30}
"""Calls of the operator profiles behind a why-slower note (medians need few)."""


def _why_slower_note(candidate: Candidate, parent: Candidate, ctx: StageContext) -> str:
    """A note on where a slower quantized candidate spends its time (op profiles of it
    and its parent); a profile that cannot be made says so instead of failing the run."""
    from hamnet.backends.session import pack_inputs
    from hamnet.evaluate.op_profile import PROFILED_RUNTIMES, profile_ops, why_slower

    if candidate.runtime not in PROFILED_RUNTIMES:
        return (
            f"why slower: no operator profile, which exists for runtimes "
            f"{list(PROFILED_RUNTIMES)}, but this candidate runs in {candidate.runtime!r}"
        )
    x_one = pack_inputs(ctx.dataset.x_val)[: ctx.profile.latency_batch_size]
    try:
        child = profile_ops(candidate.artifact, candidate.runtime, ctx.profile, x_one, **_RUNS)
        theirs = None
        if parent.runtime == candidate.runtime:
            theirs = profile_ops(parent.artifact, parent.runtime, ctx.profile, x_one, **_RUNS)
    except Exception as err:  # an explanation must not fail the measurement
        logger.warning("op profile of %s failed: %s", candidate.name, err)
        return f"why slower: the operator profile failed: {type(err).__name__}: {err}"
    return why_slower(child, theirs)


def _paired_latency(
    candidate: Candidate, parent: Candidate, ctx: StageContext
) -> tuple[float, float]:
    """p50 latency of ``candidate`` and ``parent``, timed in interleaved rounds."""
    from hamnet.backends.session import load_session
    from hamnet.evaluate.measure import latency_rows, paired_latency_ms

    trust = ctx.config.model.trust_checkpoint
    sessions = [
        load_session(c.artifact, c.runtime, ctx.profile, trust_checkpoint=trust)
        for c in (candidate, parent)
    ]
    batch_size = ctx.profile.latency_batch_size
    settings = ctx.config.measure
    child_ms, parent_ms = paired_latency_ms(
        sessions, latency_rows(ctx.dataset.x_val, batch_size), warmup=settings.warmup,
        repeats=settings.repeats, rounds=settings.paired_rounds, batch_size=batch_size,
    )  # fmt: skip
    return child_ms, parent_ms


def score_on_test(
    candidates: Iterable[Candidate],
    ctx: StageContext,
    *,
    output_kind: str | None = None,
) -> dict[str, Candidate]:
    """Score measured candidates once on the test split (after the selection).

    Args:
        candidates: The candidates to score: the recommended one and the baseline
            (duplicates are scored once).
        ctx: The stage context.
        output_kind: As for :func:`measure_candidate`.

    Returns:
        Each candidate, by id, with ``metrics.test_accuracy`` set.

    Raises:
        StageError: If a candidate was not measured before.
    """
    from hamnet.core.errors import StageError
    from hamnet.evaluate.measure import score_artifact

    fidelity = run_fidelity(ctx, output_kind)
    scored: dict[str, Candidate] = {}
    for candidate in candidates:
        if candidate.id in scored:
            continue
        if candidate.metrics is None:
            raise StageError(
                f"candidate {candidate.name!r} must be measured on the validation split "
                f"before it is scored on the test split, but it has no metrics"
            )
        score, kind = score_artifact(
            candidate.artifact,
            candidate.runtime,
            ctx.profile,
            ctx.dataset.x_test,
            ctx.dataset.y_test,
            ctx.config.measure,
            trust_checkpoint=ctx.config.model.trust_checkpoint,
            fidelity=fidelity,
        )
        if kind != candidate.metrics.accuracy_kind:
            raise StageError(
                f"the test score of {candidate.name!r} must be of the same kind as its "
                f"validation score {candidate.metrics.accuracy_kind!r}, but got {kind!r}"
            )
        metrics = candidate.metrics.model_copy(update={"test_accuracy": score})
        scored[candidate.id] = candidate.model_copy(update={"metrics": metrics})
    return scored


def _model_size(
    candidate: Candidate, known: dict[str, Candidate], ctx: StageContext
) -> tuple[int, int]:
    """Parameters and FLOPs: counted on torch models, inherited by their exports."""
    if candidate.artifact.format == "torch":
        from hamnet.models import count_flops, count_parameters, load_checkpoint

        model = load_checkpoint(candidate.artifact.path, trust=ctx.config.model.trust_checkpoint)
        return count_parameters(model), count_flops(model, model.config.input_size)
    ancestor = known.get(candidate.parent_id or "")
    while ancestor is not None:
        if ancestor.metrics is not None:
            return ancestor.metrics.params, ancestor.metrics.flops
        ancestor = known.get(ancestor.parent_id or "")
    if candidate.artifact.format == "onnx":
        return _onnx_parameter_count(candidate.artifact.path), 0
    return 0, 0


def _onnx_parameter_count(path: str) -> int:
    import numpy as np
    import onnx

    model = onnx.load(path)
    return int(sum(int(np.prod(init.dims)) for init in model.graph.initializer))
