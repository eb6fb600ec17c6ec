"""The ``distill`` stage: KD recovery of pruned candidates, and fresh students."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast

from pydantic import BaseModel

from hamnet.core import registry
from hamnet.core.candidate import Candidate, TeacherRef
from hamnet.core.config import DistillStageConfig, OptimizeConfig, TrainStageConfig
from hamnet.core.errors import ConfigError
from hamnet.families.base import ModelSource, detect_family
from hamnet.pipeline.stages._user_modules import (
    is_module,
    load_module_transfer,
    recover_candidate,
    student_candidate,
)
from hamnet.pipeline.stages.base import Stage, StageContext, candidate_family

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

    from hamnet.compress.distill.losses.base import DistillLoss
    from hamnet.models import HAMNet


class DistillStage(Stage[DistillStageConfig]):
    """Knowledge distillation: KD recovery of pruned candidates, and fresh students.

    A user's module (a module artifact) is recovered from its own parent, and with
    ``student`` (``{width, depth}``) a smaller student of its own architecture is built
    from the original and distilled from it. Teachers are candidates of this run (by
    name, usually ``baseline``) or hamnet checkpoint files. For every pruned candidate
    (``recover_pruned``), the pruning plan is replayed on its baseline and the pruned
    model is recovered with the KD loss instead of cross-entropy, for ``train.epochs``;
    every configured student is a fresh HAMNet trained with the KD loss. Each result is
    a candidate whose parent is the pruned candidate (or, for a student, the first
    teacher, or the original module); its ``teachers`` lineage (and MLflow tags) name
    the teachers, its params the methods.
    """

    name = "distill"
    section = "distill"
    Options: ClassVar[type[BaseModel]] = DistillStageConfig
    order = 50

    def input_files(self, config: OptimizeConfig) -> list[str]:
        """Teachers given as checkpoint files (names of candidates are not files), and
        the unlabelled transfer set."""
        cfg = self.options(config)
        files = [t for t in cfg.teachers if t.endswith((".pt", ".pth", ".onnx")) or "/" in t]
        return files + ([cfg.unlabelled_data] if cfg.unlabelled_data else [])

    def run(self, inputs: list[Candidate], ctx: StageContext) -> list[Candidate]:
        cfg = self.options(ctx.config)
        transfer = None
        if cfg.unlabelled_data and any(is_module(c) for c in inputs):
            transfer = load_module_transfer(ctx.resolve(cfg.unlabelled_data), ctx.dataset)
        elif cfg.unlabelled_data:
            from hamnet.compress.distill.transfer import load_transfer_set

            transfer = load_transfer_set(
                ctx.resolve(cfg.unlabelled_data), ctx.dataset, ctx.config.data.label_column
            )
        if transfer is not None:
            ctx.notes.append(
                f"distill: {len(transfer)} unlabelled inputs from {cfg.unlabelled_data} "
                f"added for the distillation terms"
            )
        # A user's module is recovered from its own parent; HAMNet recoveries and fresh
        # students use the configured teachers, loaded only when there are some.
        hamnet_work = bool(cfg.students or cfg.nas_students) or any(
            c.stage == "prune" and not is_module(c) for c in inputs
        )
        teachers = [self._teacher(ref, inputs, ctx) for ref in cfg.teachers] if hamnet_work else []
        out: list[Candidate] = []
        if cfg.student is not None:  # first: a student that cannot be built fails untrained
            out += self._module_students(inputs, ctx, transfer)
        if cfg.recover_pruned:
            out += self._recoveries(inputs, teachers, ctx, transfer)
        out += self._students(inputs, teachers, ctx, transfer)
        if not out:
            ctx.notes.append(
                "distill: nothing to distill (no pruned candidates and no students configured)"
            )
        return out

    def _recoveries(
        self,
        inputs: list[Candidate],
        teachers: list[tuple[Candidate, nn.Module]],
        ctx: StageContext,
        transfer: np.ndarray | None,
    ) -> list[Candidate]:
        """KD recovery of every pruned candidate: its plan replayed on its parent."""
        from hamnet.compress.pruning import PruningPlan, apply_plan

        cfg = self.options(ctx.config)
        by_id = {c.id: c for c in inputs}
        out: list[Candidate] = []
        for pruned in inputs:
            parent = by_id.get(pruned.parent_id or "")
            if pruned.stage != "prune" or not pruned.plan_file or parent is None:
                continue
            if is_module(pruned):
                out.append(recover_candidate(pruned, parent, ctx, cfg, transfer))
                continue
            family = candidate_family(parent)
            if not family.can_distill:
                ctx.notes.append(
                    f"distill: {pruned.name} not recovered, a {family.name} model cannot be "
                    f"recovered by distillation"
                )
                continue
            base = family.load(
                Path(parent.artifact.path), trust_checkpoint=ctx.config.model.trust_checkpoint
            )
            student = apply_plan(base, PruningPlan.load(pruned.plan_file))
            out.append(
                self._distill(
                    student, pruned, f"{pruned.name}+kd-{_recipe(cfg)}", teachers, cfg.train,
                    ctx, transfer,
                    params={"recovery_of": pruned.name, "started_from": "pruning plan "
                            "replayed on the baseline (KD instead of cross-entropy fine-tuning)"},
                )
            )  # fmt: skip
        return out

    def _students(
        self,
        inputs: list[Candidate],
        teachers: list[tuple[Candidate, nn.Module]],
        ctx: StageContext,
        transfer: np.ndarray | None,
    ) -> list[Candidate]:
        """Fresh students: the configured ones, then the best ``nas`` architectures."""
        from hamnet.models import HAMNet, HAMNetConfig
        from hamnet.training.trainer import set_seed

        cfg = self.options(ctx.config)
        dataset = ctx.dataset
        students = [
            (section.name, HAMNetConfig.from_section(
                section.hamnet, input_size=dataset.num_features, num_classes=dataset.num_classes
            ))
            for section in cfg.students
        ]  # fmt: skip
        found = [c for c in inputs if c.stage == "nas" and c.architecture]
        students += [
            (c.name, HAMNetConfig.model_validate(c.architecture)) for c in found[: cfg.nas_students]
        ]
        if cfg.nas_students and not found:
            ctx.notes.append("distill: nas_students is set, but no nas candidate exists")
        out: list[Candidate] = []
        for student_name, model_cfg in students:
            set_seed(ctx.config.seed)
            out.append(
                self._distill(
                    HAMNet(model_cfg), teachers[0][0],
                    f"student-{student_name}+kd-{_recipe(cfg)}", teachers, cfg.student_train,
                    ctx, transfer, params={"student": student_name},
                    architecture=model_cfg.model_dump(mode="json"),
                )
            )  # fmt: skip
        return out

    def _module_students(
        self, inputs: list[Candidate], ctx: StageContext, transfer: np.ndarray | None
    ) -> list[Candidate]:
        """``stages.distill.student``: a smaller student of each original user module
        (a module candidate with no parent), built from it and distilled from it."""
        cfg = self.options(ctx.config)
        assert cfg.student is not None
        originals = [c for c in inputs if is_module(c) and c.parent_id is None]
        if not originals:
            ctx.notes.append(
                "distill: student is set, but no candidate is a user's torch module (HAMNet "
                "students are configured under stages.distill.students)"
            )
            return []
        out = [student_candidate(c, ctx, cfg, transfer) for c in originals]
        for c in out:
            ctx.notes.append(
                f"distill: student {c.name} of the original's own architecture (width "
                f"{c.params['width']:g}, depth {c.params['depth']:g}): "
                f"{c.params['params_after']} of {c.params['params_before']} parameters, "
                f"distilled by {c.params['objective']}"
            )
        return out

    def _teacher(
        self, ref: str, inputs: list[Candidate], ctx: StageContext
    ) -> tuple[Candidate, nn.Module]:
        """A teacher by candidate name or file. A model whose family
        :attr:`~hamnet.families.base.ModelFamily.loads_checkpoint` (a HAMNet checkpoint)
        is loaded as a torch model; any other model (e.g. the ONNX baseline of a conv net)
        teaches through its logits, run in its runtime (see
        :class:`~hamnet.compress.distill.session_teacher.SessionTeacher`).
        """
        trust = ctx.config.model.trust_checkpoint
        named = [c for c in inputs if c.name == ref]
        if named:
            candidate = named[0]
            family = candidate_family(candidate)
            if not family.loads_checkpoint:
                return candidate, self._session_teacher(candidate, ctx)
            model = family.load(Path(candidate.artifact.path), trust_checkpoint=trust)
            return candidate, model
        path = ctx.resolve(ref)
        if not path.is_file():
            raise ConfigError(
                f"distill teacher {ref!r} is neither a candidate of this run (candidates: "
                f"{sorted({c.name for c in inputs})}) nor an existing hamnet checkpoint or "
                f"ONNX file"
            )
        family = detect_family(ModelSource(path=path, checkpoint=path.suffix != ".onnx"))
        if family.loads_checkpoint:
            family.check_data(path, ctx.dataset, trust_checkpoint=trust)
        fmt = "torch" if family.loads_checkpoint else "onnx"
        candidate = Candidate.create(
            name=f"teacher-{path.stem}", stage="load", method=fmt,
            artifact=ctx.store.put(path, fmt),
            runtime="torch" if family.loads_checkpoint else "onnxruntime",
            params={"source_file": str(path)},
        )  # fmt: skip
        if not family.loads_checkpoint:
            return candidate, self._session_teacher(candidate, ctx)
        return candidate, family.load(path, trust_checkpoint=trust)

    def _session_teacher(self, candidate: Candidate, ctx: StageContext) -> nn.Module:
        from hamnet.backends.session import load_session
        from hamnet.compress.distill.session_teacher import SessionTeacher

        cfg = self.options(ctx.config)
        methods = sorted({str(t["method"]) for t in cfg.methods})
        layered = [m for m in methods if _kd_loss(m).reads_teacher_layers]
        if layered:
            raise ConfigError(
                f"distill methods {layered} read the teacher's hidden layers, but teacher "
                f"{candidate.name!r} is a {candidate.artifact.format} model that gives logits "
                f"only; use logit-based methods (soft, relational, multi_teacher)"
            )
        session = load_session(
            candidate.artifact, candidate.runtime, ctx.profile,
            trust_checkpoint=ctx.config.model.trust_checkpoint,
        )  # fmt: skip
        return SessionTeacher(session, candidate.artifact.sha256)

    def _distill(
        self,
        student: HAMNet,
        parent: Candidate,
        name: str,
        teachers: list[tuple[Candidate, nn.Module]],
        train_cfg: TrainStageConfig,
        ctx: StageContext,
        transfer: np.ndarray | None,
        *,
        params: dict[str, Any],
        architecture: dict[str, Any] | None = None,
    ) -> Candidate:
        from hamnet.compress.distill.train import distill_model

        cfg = self.options(ctx.config)
        checkpoint = ctx.store.staging_dir() / "model.pt"
        result = distill_model(
            student,
            [model for _, model in teachers],
            ctx.dataset,
            cfg.methods,
            train_cfg,
            ce_weight=cfg.ce_weight,
            cache_dir=ctx.store.root / "teacher-outputs" if cfg.cache_teacher_outputs else None,
            teacher_ids=[c.artifact.sha256 for c, _ in teachers],
            seed=ctx.config.seed,
            device=ctx.device,
            checkpoint_path=checkpoint,
            unlabelled_x=transfer,
        )
        return Candidate.create(
            name=name,
            stage=self.name,
            method="kd-" + "+".join(result.methods),
            artifact=ctx.store.put(checkpoint, "torch"),
            runtime="torch",
            parent=parent,
            architecture=architecture,
            teachers=[TeacherRef(name=c.name, candidate_id=c.id) for c, _ in teachers],
            params={
                **params,
                "methods": cfg.methods,
                "ce_weight": cfg.ce_weight,
                "epochs": train_cfg.epochs,
                "augment": train_cfg.augment,
                "epochs_run": result.train.epochs_run,
                "best_val_accuracy": round(result.train.best_val_accuracy, 6),
                "teacher_cache_files": [str(p) for p in result.teacher_cache_files],
                "teacher_cache_hits": result.teacher_cache_hits,
                "unlabelled_samples": 0 if transfer is None else len(transfer),
                "layer_heads": student.config.layer_heads,
                "layer_ffn": student.config.layer_ffn,
            },
        )


def _kd_loss(method: str) -> type[DistillLoss]:
    return cast("type[DistillLoss]", registry.load("kd_loss", method))


def _recipe(cfg: DistillStageConfig) -> str:
    """The methods of the KD loss, as a name suffix: ``soft+attention``."""
    return "+".join(str(term["method"]) for term in cfg.methods)


PLUGIN = DistillStage
