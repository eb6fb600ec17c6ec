"""The ``export`` stage: every torch candidate to ONNX and OpenVINO IR, checked for parity."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel

from hamnet.core.artifacts import ArtifactRef
from hamnet.core.candidate import Candidate
from hamnet.core.config import ExportStageConfig
from hamnet.families.base import ModelFamily
from hamnet.pipeline.stages._user_modules import MODULE_FORMAT, export_arguments, is_module
from hamnet.pipeline.stages.base import Stage, StageContext, candidate_family, child_name

TRIM_NOTE = (
    "Padded tokens skipped inside the graph: the token inputs are cut after the last "
    "position {mask!r} marks in the batch (checked exact on padded examples)."
)

FUSED_NOTE = (
    "Attention exported as ONNX Runtime's com.microsoft.Attention (one node per block instead "
    "of ~17): runs in ONNX Runtime only."
)


class ExportStage(Stage[ExportStageConfig]):
    """Export every torch candidate to ONNX and OpenVINO IR, each checked for parity.

    The candidate's model family loads the checkpoint and exports it (see
    :meth:`~hamnet.families.base.ModelFamily.export_onnx`); it also says whether the
    model has attention to fuse for ``ort_fused_attention``.
    """

    name = "export"
    section = "export"
    Options: ClassVar[type[BaseModel]] = ExportStageConfig
    order = 60

    def run(self, inputs: list[Candidate], ctx: StageContext) -> list[Candidate]:
        from hamnet.backends.export import check_parity
        from hamnet.backends.session import load_session

        cfg = self.options(ctx.config)
        runtimes = ctx.profile.runtime_names
        x = ctx.dataset.x_val[: cfg.parity_samples]
        out: list[Candidate] = []
        recovered = {c.parent_id for c in inputs if c.stage == "distill" and is_module(c)}
        superseded = [c for c in inputs if c.id in recovered and c.stage == "prune"]
        if superseded:
            ctx.notes.append(
                f"export: {len(superseded)} pruned module(s) not exported, their distilled "
                f"recoveries are ({', '.join(c.name for c in superseded)})"
            )
        for parent in inputs:
            # A rejected parent (e.g. a pruned model no faster in eager PyTorch, where
            # Python overhead dominates) is still exported: its exports can be faster.
            # A user's pruned module is not fine-tuned: its recovery replaces it.
            if parent.artifact.format not in ("torch", MODULE_FORMAT) or parent in superseded:
                continue
            family = candidate_family(parent)
            trust = ctx.config.model.trust_checkpoint
            model = family.load(Path(parent.artifact.path), trust_checkpoint=trust)
            reference = load_session(parent.artifact, "torch", ctx.profile, trust_checkpoint=trust)
            export = self._export_arguments(parent)
            for runtime, ref, fused, mask in self._targets(family, model, ctx, export):
                session = load_session(ref, runtime, ctx.profile)
                diff = check_parity(reference, session, x, atol=cfg.parity_atol)
                out.append(
                    Candidate.create(
                        name=child_name(parent, f"{runtime}{'-fused' if fused else ''}-fp32"),
                        stage=self.name,
                        method=f"export_{ref.format}{'_ort_fused' if fused else ''}",
                        artifact=ref,
                        runtime=runtime,
                        parent=parent,
                        params={
                            "opset": cfg.opset,
                            "parity_atol": cfg.parity_atol,
                            "ort_fused_attention": fused,
                            "trim_padding": mask,
                        },
                        parity_max_abs_diff=diff,
                        notes=([FUSED_NOTE] if fused else [])
                        + ([TRIM_NOTE.format(mask=mask)] if mask else []),
                    )
                )
        skipped = [f for f in cfg.formats if {"onnx": "onnxruntime"}.get(f, f) not in runtimes]
        if skipped:
            ctx.notes.append(
                f"export: {skipped} skipped, the profile {ctx.profile.name!r} lists runtimes "
                f"{runtimes}"
            )
        return out

    @staticmethod
    def _export_arguments(parent: Candidate) -> dict[str, Any]:
        """Example inputs, input names and dynamic axes of a user's module (a HAMNet's
        are fixed by its config)."""
        if not is_module(parent):
            return {"example_inputs": None}
        example, names, axes = export_arguments(Path(parent.artifact.path))
        return {"example_inputs": example, "input_names": names, "dynamic_axes": axes}

    def _targets(
        self, family: type[ModelFamily], model: Any, ctx: StageContext, export: dict[str, Any]
    ) -> list[tuple[str, ArtifactRef, bool, str | None]]:
        """Export ``model`` of ``family`` to every configured format the profile runs.

        Returns:
            ``(runtime, stored model, attention fused into ORT contrib ops, the mask input
            padding is trimmed by or None)`` per export.
        """
        from hamnet.backends.export import convert_openvino, trimmed_by

        cfg = self.options(ctx.config)
        runtimes = ctx.profile.runtime_names
        staging = ctx.store.staging_dir()
        onnx_path = family.export_onnx(
            model,
            path=staging / "model.onnx",
            opset=cfg.opset,
            trim_padding=cfg.trim_padding if export.get("example_inputs") is not None else None,
            **export,
        )
        onnx_ref = ctx.store.put(onnx_path, "onnx")
        mask = trimmed_by(onnx_ref.path)
        targets: list[tuple[str, ArtifactRef, bool, str | None]] = []
        ort = "onnx" in cfg.formats and "onnxruntime" in runtimes
        if ort:
            targets.append(("onnxruntime", onnx_ref, False, mask))
        if "openvino" in cfg.formats and "openvino" in runtimes:
            xml = convert_openvino(onnx_ref.path, staging / "model.xml", compress_to_fp16=False)
            targets.append(("openvino", ctx.store.put(xml, "openvino"), False, mask))
        if ort and cfg.ort_fused_attention and family.fusable_attention(model):
            fused_path = family.export_onnx(
                model,
                path=ctx.store.staging_dir() / "model.onnx",
                opset=cfg.opset,
                ort_fused_attention=True,
                **export,
            )
            targets.append(("onnxruntime", ctx.store.put(fused_path, "onnx"), True, None))
        return targets


PLUGIN = ExportStage
