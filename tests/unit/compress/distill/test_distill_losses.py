"""Distillation losses and their spec builder (hamnet.compress.distill.kd)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_hamnet

from hamnet.compress.distill import (
    AttentionTransferLoss,
    CombinedDistillLoss,
    DistillOutputs,
    FeatureLoss,
    LayerPair,
    MultiTeacherLoss,
    RelationalLoss,
    SelfDistillLoss,
    SoftTargetLoss,
    build_distill_loss,
    compute_teacher_outputs,
    model_outputs,
)
from hamnet.core import registry
from hamnet.core.errors import ConfigError
from hamnet.models.hamnet import HAMNet, HAMNetConfig

torch.set_num_threads(1)

Y = torch.tensor([0])


def tiny(seed: int = 0, **overrides: Any) -> HAMNet:
    model: HAMNet = tiny_hamnet(seed, **overrides)
    return model


def logits(*rows: list[float]) -> DistillOutputs:
    return DistillOutputs(logits=torch.tensor(rows, dtype=torch.float32))


def test_registry_holds_every_method() -> None:
    assert set(registry.names("kd_loss")) == {
        "soft",
        "feature",
        "attention",
        "relational",
        "multi_teacher",
        "self",
    }
    assert all(registry.load("kd_loss", name).name == name for name in registry.names("kd_loss"))


def test_soft_targets_two_classes() -> None:
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    student = logits([0.0, 0.0])
    assert SoftTargetLoss(1.0)(student, [logits([math.log(3), 0.0])], Y).item() == pytest.approx(
        kl, rel=1e-5
    )
    # At T=2 the same softened target needs doubled logits; the loss is scaled by T².
    got = SoftTargetLoss(2.0)(student, [logits([2 * math.log(3), 0.0])], Y).item()
    assert got == pytest.approx(4 * kl, rel=1e-5)


def test_soft_targets_average_the_teachers_logits() -> None:
    student = logits([0.3, -0.2, 1.0])
    two = [logits([1.0, 0.0, 0.0]), logits([0.0, 0.0, 3.0])]
    expected = SoftTargetLoss(2.0)(student, [logits([0.5, 0.0, 1.5])], Y)
    torch.testing.assert_close(SoftTargetLoss(2.0)(student, two, Y), expected)


def test_feature_loss_value_and_normalisation() -> None:
    pair = LayerPair("a", "b", "feature", (2, 3), (2, 3))
    student = DistillOutputs(logits=torch.zeros(1, 2), features={"a": torch.zeros(1, 2, 3)})
    teacher = DistillOutputs(logits=torch.zeros(1, 2), features={"b": torch.ones(1, 2, 3)})
    assert FeatureLoss([pair])(student, [teacher], Y).item() == pytest.approx(1.0)
    # Constant vectors normalise to zero.
    assert FeatureLoss([pair], normalize=True)(student, [teacher], Y).item() == pytest.approx(0.0)


def test_attention_transfer_on_known_maps() -> None:
    pair = LayerPair("s", "t", "attention", (1, 2, 2), (2, 2, 2))
    eye = torch.eye(2).view(1, 1, 2, 2)
    flipped = torch.tensor([[0.0, 1.0], [1.0, 0.0]]).view(1, 1, 2, 2)
    student = DistillOutputs(logits=torch.zeros(1, 2), attentions={"s": eye})
    # Two teacher heads whose mean is the uniform map.
    teacher = DistillOutputs(
        logits=torch.zeros(1, 2), attentions={"t": torch.cat([eye, flipped], dim=1)}
    )
    assert AttentionTransferLoss([pair])(student, [teacher], Y).item() == pytest.approx(0.25)

    soft = torch.tensor([[0.75, 0.25], [0.25, 0.75]]).view(1, 1, 2, 2)
    student = DistillOutputs(logits=torch.zeros(1, 2), attentions={"s": soft})
    kl = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    got = AttentionTransferLoss([pair], distance="kl")(student, [teacher], Y).item()
    assert got == pytest.approx(kl, rel=1e-5)


def test_attention_transfer_on_activations() -> None:
    pair = LayerPair("s", "t", "feature", (2, 2), (2, 5))
    student = DistillOutputs(
        logits=torch.zeros(1, 2), features={"s": torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])}
    )
    teacher = DistillOutputs(
        logits=torch.zeros(1, 2), features={"t": torch.tensor([[[0.0] * 5, [2.0] * 5]])}
    )
    # Maps normalise to [1, 0] and [0, 1]: mean squared difference 1.
    assert AttentionTransferLoss([pair])(student, [teacher], Y).item() == pytest.approx(1.0)
    conv = torch.randn(2, 3, 4, 4)
    same = DistillOutputs(logits=torch.zeros(2, 2), features={"s": conv, "t": 2 * conv})
    assert AttentionTransferLoss([pair])(same, [same], Y).item() == pytest.approx(0.0, abs=1e-7)


def test_attention_transfer_per_head_needs_equal_heads() -> None:
    pair = LayerPair("s", "t", "attention", (1, 2, 2), (2, 2, 2))
    with pytest.raises(ConfigError, match="per_head"):
        AttentionTransferLoss([pair], per_head=True)


def _huber(d: float) -> float:
    return 0.5 * d * d if abs(d) < 1 else abs(d) - 0.5


def test_relational_distance_on_three_points() -> None:
    student = DistillOutputs(
        logits=torch.zeros(3, 2), embedding=torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    )
    teacher = DistillOutputs(
        logits=torch.zeros(3, 2), embedding=torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    )
    # Distances normalised by their mean: teacher 3, 4, 5 → 0.75, 1, 1.25.
    m = (2 + math.sqrt(2)) / 3
    diffs = [1 / m - 0.75, 1 / m - 1.0, math.sqrt(2) / m - 1.25]
    expected = 2 * sum(_huber(d) for d in diffs) / 9
    loss = RelationalLoss(distance_weight=1.0, angle_weight=0.0)
    assert loss(student, [teacher], Y).item() == pytest.approx(expected, rel=1e-4)


def test_relational_is_invariant_to_scale_and_falls_back_to_logits() -> None:
    e = torch.randn(6, 5)
    student = DistillOutputs(logits=torch.zeros(6, 2), embedding=e)
    teacher = DistillOutputs(logits=torch.zeros(6, 2), embedding=3 * e)
    assert RelationalLoss()(student, [teacher], Y).item() == pytest.approx(0.0, abs=1e-5)
    no_embedding = DistillOutputs(logits=e)
    assert RelationalLoss()(no_embedding, [teacher], Y).item() == pytest.approx(0.0, abs=1e-5)


def _mixture_loss(student: torch.Tensor, teachers: list[torch.Tensor], w: list[float], T: float):
    mix = sum(wk * torch.softmax(t / T, dim=-1) for wk, t in zip(w, teachers, strict=True))
    assert isinstance(mix, torch.Tensor)
    log_q = torch.log_softmax(student / T, dim=-1)
    return (mix * (mix.log() - log_q)).sum(-1).mean() * T**2


def test_multi_teacher_fixed_weights_is_soft_loss_on_the_mixture() -> None:
    torch.manual_seed(0)
    s, t1, t2 = torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3)
    teachers = [DistillOutputs(logits=t1), DistillOutputs(logits=t2)]
    student = DistillOutputs(logits=s)
    loss = MultiTeacherLoss(temperature=2.0, weights=[1.0, 3.0])
    expected = _mixture_loss(s, [t1, t2], [0.25, 0.75], 2.0)
    torch.testing.assert_close(loss(student, teachers, Y.repeat(4)), expected)
    # At T=1 it is the soft loss whose teacher logits are the mixture's log-probabilities.
    mix = 0.25 * torch.softmax(t1, -1) + 0.75 * torch.softmax(t2, -1)
    soft = SoftTargetLoss(1.0)(student, [DistillOutputs(logits=mix.log())], Y)
    got = MultiTeacherLoss(temperature=1.0, weights=[1.0, 3.0])(student, teachers, Y.repeat(4))
    torch.testing.assert_close(got, soft)


def test_multi_teacher_confidence_favours_the_teacher_right_on_the_label() -> None:
    right = DistillOutputs(logits=torch.tensor([[4.0, 0.0, 0.0]]))
    wrong = DistillOutputs(logits=torch.tensor([[0.0, 4.0, 0.0]]))
    loss = MultiTeacherLoss(temperature=1.0, weighting="confidence")
    w = loss.teacher_weights([wrong, right], Y)
    p_right = torch.softmax(right.logits, -1)[0, 0]
    p_wrong = torch.softmax(wrong.logits, -1)[0, 0]
    torch.testing.assert_close(w[:, 0], torch.stack([p_wrong, p_right]) / (p_right + p_wrong))
    assert w[1, 0] > 0.9
    follows_right = loss(DistillOutputs(logits=right.logits.clone()), [wrong, right], Y)
    follows_wrong = loss(DistillOutputs(logits=wrong.logits.clone()), [wrong, right], Y)
    assert follows_right < follows_wrong
    entropy = MultiTeacherLoss(weighting="entropy").teacher_weights(
        [logits([4.0, 0.0, 0.0]), logits([0.1, 0.0, 0.0])], Y
    )
    assert entropy[0, 0] > entropy[1, 0]


def test_multi_teacher_rejects_bad_weights() -> None:
    with pytest.raises(ConfigError, match="weights"):
        MultiTeacherLoss(weights=[-1.0, 2.0])
    with pytest.raises(ConfigError, match="'fixed' only"):
        MultiTeacherLoss(weighting="confidence", weights=[1.0])
    with pytest.raises(ConfigError, match="weighting must be one of"):
        MultiTeacherLoss(weighting="vote")
    with pytest.raises(ConfigError, match="2 weights, but got 1 teachers"):
        MultiTeacherLoss(weights=[1.0, 1.0])(logits([0.0, 0.0]), [logits([0.0, 1.0])], Y)


def test_self_distillation_deep_value() -> None:
    model = tiny()
    loss = SelfDistillLoss("deep", temperature=2.0, norm=model.norm, head=model.head, layers=["a"])
    # Its only parameters are the auxiliary classifier (a copy of head, not head itself).
    own = list(loss.parameters())
    assert len(own) == len(list(model.head.parameters()))
    assert not {id(p) for p in own} & {id(p) for p in model.parameters()}
    h = torch.randn(3, 4, 8)
    final = torch.randn(3, 3)
    student = DistillOutputs(logits=final, features={"a": h})
    shallow = model.head(model.norm(h).mean(dim=1))
    expected = (
        F.kl_div(
            F.log_softmax(shallow / 2, -1),
            F.log_softmax(final / 2, -1),
            log_target=True,
            reduction="batchmean",
        )
        * 4
    )
    torch.testing.assert_close(loss(student, [], Y), expected)


def _same(model: HAMNet, spec: Any, x: torch.Tensor) -> DistillOutputs:
    with torch.no_grad():
        return model_outputs(model, x, spec)


@pytest.mark.parametrize(
    "term",
    [
        {"method": "soft", "temperature": 3.0},
        {"method": "feature", "layers": "depth"},
        {"method": "feature", "normalize": True},
        {"method": "attention"},
        {"method": "attention", "distance": "kl", "per_head": True},
        {"method": "attention", "source": "features"},
        {"method": "relational"},
        {"method": "multi_teacher", "weighting": "confidence"},
        {"method": "multi_teacher", "weights": [0.2, 0.8]},
        {"method": "self", "mode": "snapshot"},
    ],
)
def test_zero_when_student_equals_teacher(term: dict[str, Any]) -> None:
    model = tiny()
    plan = build_distill_loss(term, student=model, teachers=[model, model], ce_weight=0.0)
    x = torch.randn(6, 16)
    outputs = _same(model, plan.student | plan.teacher, x)
    value = plan.loss(outputs, [outputs, outputs], torch.randint(0, 3, (6,)))
    assert value.item() == pytest.approx(0.0, abs=1e-6)


def test_gradients_reach_student_and_projections_never_teacher() -> None:
    student, teacher = tiny(), tiny(1, hidden_size=12, num_heads=3, num_layers=3)
    spec = [
        {"method": "soft"},
        {"method": "feature", "weight": 0.5},
        {"method": "attention"},
        {"method": "relational"},
        {"method": "multi_teacher", "weighting": "confidence"},
    ]
    plan = build_distill_loss(spec, student=student, teachers=[teacher], ce_weight=0.0)
    x = torch.randn(5, 16)
    # The teacher forward keeps its graph: only the losses' detaching protects it.
    t = model_outputs(teacher, x, plan.teacher)
    s = model_outputs(student, x, plan.student)
    plan.loss(s, [t], torch.randint(0, 3, (5,))).backward()
    assert all(p.grad is None for p in teacher.parameters())
    projections = list(plan.loss.parameters())
    assert projections and all(p.grad is not None for p in projections)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert set(plan.loss.last_terms) == {
        "soft",
        "feature",
        "attention",
        "relational",
        "multi_teacher",
        "total",
    }


def test_combined_loss_weights_terms_and_cross_entropy() -> None:
    student = logits([0.0, 1.0], [2.0, 0.0])
    teacher = logits([1.0, 0.0], [0.0, 0.0])
    y = torch.tensor([1, 0])
    soft, soft_2 = SoftTargetLoss(1.0), SoftTargetLoss(2.0)
    combined = CombinedDistillLoss([(soft, 0.5), (soft_2, 2.0)], ce_weight=0.3)
    total = combined(student, [teacher], y)
    ce = F.cross_entropy(student.logits, y)
    a, b = soft(student, [teacher], y), soft_2(student, [teacher], y)
    torch.testing.assert_close(total, 0.3 * ce + 0.5 * a + 2.0 * b)
    terms = combined.last_terms
    assert terms == pytest.approx(
        {"ce": ce.item(), "soft": a.item(), "soft_2": b.item(), "total": total.item()}
    )


def test_build_reports_capture_needs() -> None:
    student, teacher = tiny(), tiny(1, num_layers=4)
    plan = build_distill_loss(
        [
            {"method": "soft", "weight": 1.0, "temperature": 4.0},
            {"method": "feature", "weight": 0.5, "layers": {"blocks.1": "blocks.3"}},
            {"method": "attention", "layers": "depth"},
            {"method": "relational"},
        ],
        student=student,
        teachers=[teacher, tiny(2)],
    )
    assert plan.student.features == ("blocks.1",)
    assert plan.teacher.features == ("blocks.3",)
    assert plan.teacher.attentions == ("blocks.1.attn.attn_probe", "blocks.3.attn.attn_probe")
    assert plan.student.embedding and plan.teacher.embedding
    assert plan.teacher_spec(1).is_empty
    assert plan.loss.weights == [1.0, 0.5, 1.0, 1.0]
    assert plan.min_teachers == 1
    deep = build_distill_loss({"method": "self"}, student=tiny(num_layers=3))
    assert deep.min_teachers == 0
    assert deep.student.features == ("blocks.0", "blocks.1")


@pytest.mark.parametrize(
    ("spec", "teachers", "match"),
    [
        ({"method": "dark"}, 1, r"must be one of \['attention', 'feature', 'multi_teacher'"),
        ({"weight": 1.0}, 1, "must be one of"),
        ({"method": "soft", "temprature": 2.0}, 1, "has no option 'temprature'"),
        ({"method": "feature", "layers": "depth", "norm": True}, 1, "has no option 'norm'"),
        ({"method": "soft", "temperature": 0}, 1, "temperature must be positive, but got 0"),
        ({"method": "soft", "weight": -1}, 1, "weight must be non-negative"),
        ({"method": "soft"}, 0, "needs a teacher"),
        ({"method": "self", "mode": "snapshot"}, 0, "needs a teacher"),
        ({"method": "self", "mode": "twin"}, 0, "mode must be one of"),
        ({"method": "attention", "source": "logits"}, 1, "source must be one of"),
        ({"method": "multi_teacher", "weights": [1, 2]}, 1, "one weight per teacher"),
        ({"method": "feature", "layers": {"blocks.5": "blocks.0"}}, 1, "student has no layer"),
        ([], 1, "at least one term"),
    ],
)
def test_build_rejects_bad_specs(spec: Any, teachers: int, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_distill_loss(spec, student=tiny(), teachers=[tiny(1)] * teachers)


def test_deep_self_distillation_needs_two_blocks() -> None:
    with pytest.raises(ConfigError, match="at least 2 blocks"):
        build_distill_loss({"method": "self"}, student=tiny(num_layers=1))


def _train(plan: Any, student: HAMNet, teachers: list[Any], steps: int = 25) -> list[float]:
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((32, 16)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 3, 32))
    index = torch.arange(32)
    caches = [
        compute_teacher_outputs(
            t,
            x.numpy(),
            feature_layers=plan.teacher_spec(i).features,
            attention_layers=plan.teacher_spec(i).attentions,
            need_embedding=plan.teacher_spec(i).embedding,
        )
        for i, t in enumerate(teachers)
    ]
    params = list(student.parameters()) + list(plan.loss.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-2)
    history = []
    for _ in range(steps):
        optimizer.zero_grad()
        s = model_outputs(student, x, plan.student)
        loss = plan.loss(s, [c.batch(index) for c in caches], y)
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    return history


def test_multi_teacher_training_reduces_the_loss() -> None:
    student = tiny()
    teachers = [tiny(1, num_layers=3, hidden_size=12, num_heads=3), tiny(2)]
    plan = build_distill_loss(
        [
            {"method": "multi_teacher", "weighting": "confidence", "temperature": 2.0},
            {"method": "feature", "weight": 0.5},
        ],
        student=student,
        teachers=teachers,
        ce_weight=0.5,
    )
    history = _train(plan, student, teachers)
    assert history[-1] < 0.8 * history[0]
    assert all(t.grad is None for teacher in teachers for t in teacher.parameters())


def test_deep_self_distillation_training_reduces_the_loss() -> None:
    student = tiny(num_layers=3)
    plan = build_distill_loss(
        {"method": "self", "mode": "deep", "temperature": 2.0}, student=student, ce_weight=1.0
    )
    history = _train(plan, student, [])
    assert history[-1] < 0.8 * history[0]
    assert set(plan.loss.last_terms) == {"ce", "self", "total"}


def test_deep_self_distillation_leaves_the_classifier_alone() -> None:
    torch.manual_seed(0)
    model = HAMNet(
        HAMNetConfig(
            input_size=16, num_classes=3, hidden_size=8, num_layers=2, num_heads=2,
            token_size=4, dropout_rate=0.0,
        )
    )  # fmt: skip
    plan = build_distill_loss([{"method": "self", "mode": "deep"}], student=model, ce_weight=0.0)
    out = model_outputs(model, torch.randn(5, 16), plan.student)
    plan.loss(out, [], torch.zeros(5, dtype=torch.long)).backward()
    assert model.head.weight.grad is None and model.norm.weight.grad is None
    first_block = model.blocks[0].ffn.fc1.weight.grad
    assert first_block is not None and first_block.abs().sum() > 0
