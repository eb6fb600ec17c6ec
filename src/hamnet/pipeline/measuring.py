"""Measuring what a stage made: metrics, and rejection of children slower than their parent.

Every new candidate is measured by :func:`measure_candidate`, whatever stage made it,
so all candidates of a run are compared on the same footing.
"""

from __future__ import annotations

import logging

from hamnet.core.candidate import Candidate
from hamnet.pipeline.plan import StageContext

logger = logging.getLogger("hamnet.pipeline")


def measure_candidate(
    candidate: Candidate, known: dict[str, Candidate], ctx: StageContext
) -> Candidate:
    """Measure ``candidate`` and mark it rejected when it is slower than its parent."""
    from hamnet.evaluate.measure import measure_artifact

    params, flops = _model_size(candidate, known, ctx)
    metrics = measure_artifact(
        candidate.artifact,
        candidate.runtime,
        ctx.profile,
        ctx.dataset.x_test,
        ctx.dataset.y_test,
        ctx.config.measure,
        params=params,
        flops=flops,
        trust_checkpoint=ctx.config.model.trust_checkpoint,
    )
    rejected = candidate.rejected
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
        how = "measured one after the other"
        if paired:
            child_ms, parent_ms = _paired_latency(candidate, parent, ctx)
            how = f"timed side by side in {settings.paired_rounds} interleaved rounds"
        if child_ms > parent_ms * (1.0 + margin):
            rejected = (
                f"slower than its parent {parent.name}: p50 {child_ms:.3f} ms vs "
                f"{parent_ms:.3f} ms, more than {margin:.0%} slower ({how})"
            )
        else:
            logger.info(
                "%s is not slower than its parent %s when timed side by side "
                "(%.4f vs %.4f ms): kept",
                candidate.name, parent.name, child_ms, parent_ms,
            )  # fmt: skip
    return candidate.model_copy(update={"metrics": metrics, "rejected": rejected})


def _paired_latency(
    candidate: Candidate, parent: Candidate, ctx: StageContext
) -> tuple[float, float]:
    """p50 latency of ``candidate`` and ``parent``, timed in interleaved rounds."""
    from hamnet.backends.session import load_session, pack_inputs
    from hamnet.evaluate.measure import paired_latency_ms

    trust = ctx.config.model.trust_checkpoint
    sessions = [
        load_session(c.artifact, c.runtime, ctx.profile, trust_checkpoint=trust)
        for c in (candidate, parent)
    ]
    x_one = pack_inputs(ctx.dataset.x_test)[: ctx.profile.latency_batch_size]
    settings = ctx.config.measure
    child_ms, parent_ms = paired_latency_ms(
        sessions, x_one, warmup=settings.warmup, repeats=settings.repeats,
        rounds=settings.paired_rounds,
    )  # fmt: skip
    return child_ms, parent_ms


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
