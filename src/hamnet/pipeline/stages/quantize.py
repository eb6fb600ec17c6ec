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
    return params


PLUGIN = QuantizeStage
