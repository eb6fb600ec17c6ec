"""Knowledge distillation: losses, layer mapping, feature capture and teacher caches.

Importing this package imports torch; ``import hamnet`` does not import it.

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

from hamnet.compress.distill.capture import (
    FeatureCapture,
    attention_layers,
    available_layers,
    block_layers,
    model_outputs,
)
from hamnet.compress.distill.kd import (
    DISTILL_LOSSES,
    AttentionTransferLoss,
    BuildContext,
    CombinedDistillLoss,
    DistillLoss,
    DistillPlan,
    FeatureLoss,
    MultiTeacherLoss,
    RelationalLoss,
    SelfDistillLoss,
    SoftTargetLoss,
    build_distill_loss,
)
from hamnet.compress.distill.mapping import LayerPair, depth_pairs, map_layers
from hamnet.compress.distill.outputs import CaptureSpec, DistillOutputs
from hamnet.compress.distill.teacher_cache import TeacherOutputs, cache_key, compute_teacher_outputs

__all__ = [
    "DISTILL_LOSSES",
    "AttentionTransferLoss",
    "BuildContext",
    "CaptureSpec",
    "CombinedDistillLoss",
    "DistillLoss",
    "DistillOutputs",
    "DistillPlan",
    "FeatureCapture",
    "FeatureLoss",
    "LayerPair",
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
    "map_layers",
    "model_outputs",
]
