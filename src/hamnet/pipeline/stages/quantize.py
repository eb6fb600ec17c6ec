"""The ``quantize`` stage: every FP32 ONNX candidate with each configured method."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel

from hamnet.core.candidate import Candidate
from hamnet.core.config import QuantizeStageConfig
from hamnet.core.hardware import HardwareProfile
from hamnet.pipeline.stages.base import Stage, StageContext, child_name

if TYPE_CHECKING:
    from hamnet.compress.quantize.base import QuantizationMethod


logger = logging.getLogger("hamnet.pipeline")


class QuantizeStage(Stage[QuantizeStageConfig]):
    """Quantize every FP32 ONNX candidate with each configured method."""

    name = "quantize"
    section = "quantize"
    Options: ClassVar[type[BaseModel]] = QuantizeStageConfig
    order = 70

    def run(self, inputs: list[Candidate], ctx: StageContext) -> list[Candidate]:
        from hamnet.backends.export import max_abs_diff
        from hamnet.backends.session import load_session
        from hamnet.compress.quantize.base import get_quantizer

        cfg = self.options(ctx.config)
        sources = [c for c in inputs if c.artifact.format == "onnx" and c.precision == "fp32"]
        if not sources:
            ctx.notes.append("quantize: no FP32 ONNX candidate to quantize (is export enabled?)")
            return []
        calibration = ctx.dataset.calibration_samples(cfg.calibration_samples, ctx.config.seed)
        x = ctx.dataset.x_val[:64]
        out: list[Candidate] = []
        for source in sources:
            source_session = load_session(source.artifact, source.runtime, ctx.profile)
            for method_name in cfg.methods:
                method = get_quantizer(method_name)
                reason = method.supported(ctx.profile) or method.applicable(
                    Path(source.artifact.path)
                )
                if reason:
                    ctx.notes.append(f"quantize: {method_name} skipped for {source.name}: {reason}")
                    continue
                if method.tunes_accuracy:
                    out.extend(self._tuned(method, source, inputs, calibration, cfg, ctx))
                    continue
                try:
                    main = method.quantize(
                        Path(source.artifact.path),
                        ctx.store.staging_dir(),
                        calibration=calibration if method.needs_calibration else None,
                        cfg=cfg,
                        profile=ctx.profile,
                    )
                    ref = ctx.store.put(main, method.output_format)  # type: ignore[arg-type]
                    session = load_session(ref, method.runtime, ctx.profile)
                    diff = max_abs_diff(source_session, session, x)
                except Exception as err:  # one method failing on one model: the rest go on
                    logger.warning("quantize: %s failed for %s", method_name, source.name)
                    ctx.notes.append(
                        f"quantize: {method_name} failed for {source.name} and was left out: "
                        f"{type(err).__name__}: {str(err)[:300]}"
                    )
                    continue
                parent = _runtime_sibling(source, inputs, method.runtime)
                out.append(
                    Candidate.create(
                        name=child_name(parent, method_name.replace("_", "-")),
                        stage=self.name,
                        method=method_name,
                        artifact=ref,
                        runtime=method.runtime,
                        parent=parent,
                        precision=method.precision,
                        params=_quantize_params(method, cfg, ctx.profile),
                        parity_max_abs_diff=diff,
                        notes=[*method.notes, *method.extra_notes],
                    )
                )
        return out

    def _tuned(
        self, method: QuantizationMethod, source: Candidate, inputs: list[Candidate],
        calibration: Any, cfg: QuantizeStageConfig, ctx: StageContext,
    ) -> list[Candidate]:  # fmt: skip
        """The candidates of an accuracy-aware method: every assignment the tuning
        measured (plain INT8, each greedy level, each search trial; one per set of
        fallback layers, at most ``max_trials``, the best always among them), so the
        selection's Pareto front shows the accuracy/latency trade-off of each fallback
        level; or none when plain INT8 already meets the budget and a plain INT8 method
        of the same runtime runs beside it. The models the tuning built are stored as
        they are (nothing is rebuilt but the assignments read back from an earlier run)."""
        from hamnet.compress.quantize.attribution import LAYERS_PARAM

        name = method.name
        budget_drop = ctx.config.constraints.max_accuracy_drop
        try:
            result = method.tune(  # type: ignore[attr-defined]
                Path(source.artifact.path), ctx.store.staging_dir(), calibration=calibration,
                x_val=ctx.dataset.x_val, y_val=ctx.dataset.y_val, cfg=cfg, profile=ctx.profile,
                fidelity=_fidelity(ctx), max_accuracy_drop=budget_drop,
                storage_dir=ctx.store.root.parent / "quantize", seed=ctx.config.seed,
            )  # fmt: skip
        except Exception as err:  # one method failing on one model: the rest go on
            logger.warning("quantize: %s failed for %s", name, source.name)
            ctx.notes.append(
                f"quantize: {name} failed for {source.name} and was left out: "
                f"{type(err).__name__}: {str(err)[:300]}"
            )
            return []
        ctx.notes.append(
            f"quantize: {name} for {source.name}: {result.summary()}; time: "
            f"{result.timing_summary()}"
        )
        plain = [
            m for m in cfg.methods
            if m != name and _is_plain_int8(m, method.runtime)
        ]  # fmt: skip
        all_int8 = next((t for t in result.tried if not t.fallback), None)
        if all_int8 is not None and all_int8.meets_budget and plain:
            ctx.notes.append(
                f"quantize: {name}: plain INT8 meets the accuracy budget for {source.name}, so "
                f"no layer falls back and {plain[0]} stands for it"
            )
            return []
        # The all-INT8 assignment is the plain method's model: left to it when it runs.
        chosen = _children_of(result, skip_all_int8=bool(plain))
        best = result.best()
        parent = _runtime_sibling(source, inputs, method.runtime)
        data = method._calibration(calibration)
        out: list[Candidate] = []
        stored: set[str] = set()
        for tried in chosen:
            main = method.materialize(  # type: ignore[attr-defined]
                result,
                tried,
                Path(source.artifact.path),
                ctx.store.staging_dir(),
                data,
                cfg,
                ctx.profile,
            )
            ref = ctx.store.put(main, method.output_format)  # type: ignore[arg-type]
            if ref.sha256 in stored:  # two assignments that built the same model file
                continue
            stored.add(ref.sha256)
            kept = ", ".join(tried.fallback) or "none"
            verdict = "meets" if tried.meets_budget else "misses"
            params = _quantize_params(method, cfg, ctx.profile)
            params.update(
                max_accuracy_drop=result.budget.max_accuracy_drop,
                fallback_layers=list(tried.fallback),
                trial=tried.trial,
                origin=tried.origin,
                study=result.study_name,
            )
            params[LAYERS_PARAM] = [r.as_record() for r in result.layers_for(tried)]
            suffix = f"t{tried.trial}" if tried.fallback else "all"
            out.append(
                Candidate.create(
                    name=child_name(parent, f"{name.replace('_', '-')}-{suffix}"),
                    stage=self.name,
                    method=name,
                    artifact=ref,
                    runtime=method.runtime,
                    parent=parent,
                    precision=tried.precision,
                    params=params,
                    notes=[
                        *method.notes,
                        f"layers kept FP32 ({tried.origin}, trial {tried.trial}): {kept}; "
                        f"validation drop {100 * tried.drop:.2f} points {verdict} the budget "
                        f"of {100 * result.budget.max_accuracy_drop:.2f}; tuning p50 "
                        f"{tried.latency_ms:.4f} ms"
                        + ("; the tuning's pick" if tried is best else ""),
                    ],
                )
            )
        return out


def _children_of(result: Any, *, skip_all_int8: bool) -> list[Any]:
    """The assignments of ``result`` that become candidates, by trial: every measured
    one (already one per set of fallback layers), the all-INT8 one left out when
    ``skip_all_int8``, at most ``max_trials`` of them; the best is always kept (a study
    resumed with a smaller ``max_trials`` holds more)."""
    best = result.best()
    tried = [t for t in result.tried if t.fallback or not skip_all_int8]
    cap = result.budget.max_trials
    if len(tried) <= cap:
        return list(tried)
    kept = tried[:cap]
    if best is not None and best in tried and best not in kept:
        kept = [*kept[: cap - 1], best]
    return kept


def _fidelity(ctx: StageContext) -> str:
    """How label-free outputs are compared, as :func:`hamnet.pipeline.measuring.run_fidelity`
    chooses it for the run (that module imports the plan, which imports this stage)."""
    import numpy as np

    from hamnet.evaluate.fidelity import fidelity_kind

    setting = ctx.config.data.fidelity
    data = ctx.dataset
    if data.targets != "reference":
        return setting
    from hamnet.pipeline.stages._user_modules import declared_output_kind

    reference = np.concatenate([data.y_train, data.y_val, data.y_test], axis=0)
    return fidelity_kind(reference, declared_output_kind(ctx), setting=setting)


def _is_plain_int8(method_name: str, runtime: str) -> bool:
    """Whether ``method_name`` is a static INT8 method of ``runtime`` that tunes nothing."""
    from hamnet.compress.quantize.base import quantizer_class

    cls = quantizer_class(method_name)
    return (
        cls.runtime == runtime and cls.precision == "int8" and cls.needs_calibration
        and not cls.tunes_accuracy and not cls.needs_attention
    )  # fmt: skip


def _runtime_sibling(source: Candidate, inputs: list[Candidate], runtime: str) -> Candidate:
    """The FP32 candidate in ``runtime`` made from the same model as ``source``.

    A quantized OpenVINO model is compared with the FP32 OpenVINO model, not with the
    ONNX Runtime one it was converted from, so "faster than its parent" is a fair test.
    """
    if source.runtime == runtime:
        return source
    for c in inputs:
        if c.parent_id == source.parent_id and c.runtime == runtime and c.precision == "fp32":
            return c
    return source


def _quantize_params(
    method: QuantizationMethod, cfg: QuantizeStageConfig, profile: HardwareProfile
) -> dict[str, Any]:
    """The params a quantized candidate records: the calibration size and, for the ONNX
    Runtime INT8 methods (those whose :attr:`~QuantizationMethod.settings` include
    ``reduce_range``), both INT8 settings as resolved for ``profile``.

    ``per_channel`` is recorded beside ``reduce_range`` even by a method that ignores it
    (``ort_fused_dynamic_int8``), as candidates always recorded it: params stay the same.
    """
    from hamnet.compress.quantize.base import resolve_reduce_range

    params: dict[str, Any] = {"calibration_samples": cfg.calibration_samples}
    if "reduce_range" in method.settings:
        params["per_channel"] = cfg.per_channel
        params["reduce_range"] = resolve_reduce_range(cfg, profile)
    for key in ("weight_only_block_size", "nncf_weight_mode"):
        if key in method.settings:
            params[key] = getattr(cfg, key)
    return params


PLUGIN = QuantizeStage
