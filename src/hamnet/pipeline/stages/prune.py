"""The ``prune`` stage: structured pruning (heads, FFN channels) and unstructured sparsity."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast

from pydantic import BaseModel

from hamnet.core import registry
from hamnet.core.candidate import Candidate
from hamnet.core.config import PruneStageConfig, TrainStageConfig
from hamnet.pipeline.stages._user_modules import is_module, prune_candidate
from hamnet.pipeline.stages.base import (
    Stage,
    StageContext,
    candidate_family,
    child_name,
    pruned_suffix,
    store_plan,
)

if TYPE_CHECKING:
    from hamnet.compress.pruning.allocations.base import Allocation
    from hamnet.models import HAMNet


class PruneStage(Stage[PruneStageConfig]):
    """Physically remove attention heads and FFN channels from the baseline HAMNet, or the
    prunable layer groups (filters, neurons, heads) of a user's torch module.

    One candidate per configured ratio; each is fine-tuned after pruning and carries
    its pruning plan (kept head / channel indices) as a JSON file beside the store, so
    the pruned model can be rebuilt from the original with ``apply_plan``. Only models
    whose family :attr:`~hamnet.families.base.ModelFamily.can_prune` are pruned; the
    stage notes the family's reason for the others.
    """

    name = "prune"
    section = "prune"
    Options: ClassVar[type[BaseModel]] = PruneStageConfig
    order = 40

    def run(self, inputs: list[Candidate], ctx: StageContext) -> list[Candidate]:
        cfg = self.options(ctx.config)
        bases = [c for c in inputs if c.stage in ("train", "load", "nas", "hpo") and not c.rejected]
        families = {c.id: candidate_family(c) for c in bases}
        # A torch model (a HAMNet checkpoint or a user's module) whose family prunes.
        sources = [c for c in bases if families[c.id].can_prune and c.artifact.format != "onnx"]
        if not sources:
            reasons = sorted({f.why_not_prunable for f in families.values()}) or [
                "the baseline is not a PyTorch HAMNet checkpoint"
            ]
            ctx.notes.append(f"prune: skipped, {'; '.join(reasons)}")
            return []
        out: list[Candidate] = []
        for parent in sources:
            for criterion, allocation, ratio in itertools.product(
                cfg.criteria, cfg.allocations, cfg.ratios
            ):
                if is_module(parent):
                    options = self._allocation_options(allocation, ctx)
                    out.append(
                        prune_candidate(parent, criterion, allocation, ratio, ctx, cfg, options)
                    )
                    continue
                out.append(self._prune(parent, criterion, allocation, ratio, ctx))
            if cfg.unstructured_sparsity and not is_module(parent):
                out.append(self._sparsify(parent, cfg.unstructured_sparsity, ctx))
        return out

    def _sparsify(self, parent: Candidate, sparsity: float, ctx: StageContext) -> Candidate:
        from hamnet.compress.pruning.unstructured import unstructured_sparsity
        from hamnet.models import save_checkpoint

        model = self._load(parent, ctx)
        report = unstructured_sparsity(model, sparsity)
        sparse = cast("HAMNet", report.model)
        checkpoint = save_checkpoint(sparse, ctx.store.staging_dir() / "model.pt")
        return Candidate.create(
            name=child_name(parent, f"sparse-{round(100 * sparsity)}"),
            stage=self.name,
            method="unstructured-l1",
            artifact=ctx.store.put(checkpoint, "torch"),
            runtime="torch",
            parent=parent,
            params={
                "sparsity": sparsity,
                "sparsity_achieved": round(report.sparsity_achieved, 4),
                "dense_onnx_bytes": report.dense_onnx_bytes,
                "zipped_onnx_bytes": report.zipped_onnx_bytes,
            },
            notes=list(report.notes),
        )

    def _prune(
        self, parent: Candidate, criterion: str, allocation: str, ratio: float, ctx: StageContext
    ) -> Candidate:
        from hamnet.compress.pruning import prune_hamnet
        from hamnet.models import save_checkpoint

        cfg = self.options(ctx.config)
        model = self._load(parent, ctx)
        result = prune_hamnet(
            model,
            ctx.dataset,
            ratio=ratio,
            criterion=criterion,
            allocation=allocation,
            schedule=cfg.schedule,
            steps=cfg.steps,
            finetune=cfg.finetune,
            seed=ctx.config.seed,
            allocation_options=self._allocation_options(allocation, ctx),
        )
        checkpoint = save_checkpoint(result.model, ctx.store.staging_dir() / "model.pt")
        ref = ctx.store.put(checkpoint, "torch")
        plan_file = store_plan(ctx, result.plan, ref)
        suffix = pruned_suffix(ratio, criterion, allocation, cfg)
        return Candidate.create(
            name=child_name(parent, suffix),
            stage=self.name,
            method=f"{criterion}-{allocation}",
            artifact=ref,
            runtime="torch",
            parent=parent,
            params={
                "ratio": ratio,
                "criterion": criterion,
                "allocation": allocation,
                "schedule": cfg.schedule,
                "steps": cfg.steps,
                "finetune_epochs": cfg.finetune.epochs if cfg.finetune else 0,
                "layer_ratios": result.layer_ratios,
                "layer_heads": result.model.config.layer_heads,
                "layer_ffn": result.model.config.layer_ffn,
                "params_before": result.params_before,
                "params_after": result.params_after,
            },
            plan_file=str(plan_file),
        )

    @staticmethod
    def _load(parent: Candidate, ctx: StageContext) -> HAMNet:
        family = candidate_family(parent)
        path = Path(parent.artifact.path)
        return cast("HAMNet", family.load(path, trust_checkpoint=ctx.config.model.trust_checkpoint))

    def _allocation_options(self, allocation: str, ctx: StageContext) -> dict[str, Any]:
        """Options of a :attr:`~Allocation.per_layer` allocation: the settings of the
        ``rspar`` section its options take (the search's target, episodes, recovery...);
        none for the others."""
        plugin = cast("type[Allocation]", registry.load("allocation", allocation))
        if not plugin.per_layer:
            return {}
        cfg = self.options(ctx.config)
        recovery = (cfg.finetune or TrainStageConfig()).model_copy(
            update={"epochs": cfg.rspar.recovery_epochs}
        )
        settings = {
            "target": cfg.rspar.target,
            "profile": ctx.profile,
            "episodes": cfg.rspar.episodes,
            "recovery": recovery,
            "tolerance": cfg.rspar.tolerance,
        }
        return {k: v for k, v in settings.items() if k in plugin.Options.model_fields}


PLUGIN = PruneStage
