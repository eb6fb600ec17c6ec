"""Knowledge distillation: losses, layer mapping, feature capture and teacher caches.

The names below are imported on first use, so importing this package (or listing and
validating the loss plugins of :mod:`hamnet.compress.distill.losses`) does not import
torch; using any of them does.

Typical use in a training stage::

    plan = build_distill_loss(spec, student=student, teachers=teachers, ce_weight=0.5)
    cache = compute_teacher_outputs(
        teachers[0], x_train,
        feature_layers=plan.teacher.features,
        attention_layers=plan.teacher.attentions,
        need_embedding=plan.teacher.embedding,
    )
    for index, xb, yb in batches:
        s = model_outputs(student, xb, plan.student)
        loss = plan.loss(s, [cache.batch(index, xb.device)], yb)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hamnet.core.lazy import lazy_exports

if TYPE_CHECKING:
    from hamnet.compress.distill.capture import (
        FeatureCapture,
        attention_layers,
        available_layers,
        block_layers,
        model_outputs,
    )
    from hamnet.compress.distill.kd import (
        AttentionTransferLoss,
        BuildContext,
        CombinedDistillLoss,
        DistillPlan,
        DistillTerm,
        FeatureLoss,
        MultiTeacherLoss,
        RelationalLoss,
        SelfDistillLoss,
        SoftTargetLoss,
        build_distill_loss,
    )
    from hamnet.compress.distill.losses.base import DistillLoss
    from hamnet.compress.distill.mapping import LayerPair, depth_pairs, map_layers
    from hamnet.compress.distill.modules import ModuleDistillResult, distill_module
    from hamnet.compress.distill.outputs import CaptureSpec, DistillOutputs
    from hamnet.compress.distill.teacher_cache import (
        TeacherOutputs,
        cache_key,
        compute_teacher_outputs,
    )

_HOMES: dict[str, tuple[str, ...]] = {
    "modules": ("ModuleDistillResult", "distill_module"),
    "capture": (
        "FeatureCapture",
        "attention_layers",
        "available_layers",
        "block_layers",
        "model_outputs",
    ),
    "kd": (
        "AttentionTransferLoss",
        "BuildContext",
        "CombinedDistillLoss",
        "DistillPlan",
        "DistillTerm",
        "FeatureLoss",
        "MultiTeacherLoss",
        "RelationalLoss",
        "SelfDistillLoss",
        "SoftTargetLoss",
        "build_distill_loss",
    ),
    "losses.base": ("DistillLoss",),
    "mapping": ("LayerPair", "depth_pairs", "map_layers"),
    "outputs": ("CaptureSpec", "DistillOutputs"),
    "teacher_cache": ("TeacherOutputs", "cache_key", "compute_teacher_outputs"),
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [
    "AttentionTransferLoss",
    "BuildContext",
    "CaptureSpec",
    "CombinedDistillLoss",
    "DistillLoss",
    "DistillOutputs",
    "DistillPlan",
    "DistillTerm",
    "FeatureCapture",
    "FeatureLoss",
    "LayerPair",
    "ModuleDistillResult",
    "MultiTeacherLoss",
    "RelationalLoss",
    "SelfDistillLoss",
    "SoftTargetLoss",
    "TeacherOutputs",
    "attention_layers",
    "available_layers",
    "block_layers",
    "build_distill_loss",
    "cache_key",
    "compute_teacher_outputs",
    "depth_pairs",
    "distill_module",
    "map_layers",
    "model_outputs",
]


__getattr__, __dir__ = lazy_exports(__name__, _MODULE_OF, __all__)
