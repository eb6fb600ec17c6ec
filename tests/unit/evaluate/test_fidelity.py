"""Fidelity follows what the output means: the choice table, the scores, the words."""

from __future__ import annotations

import numpy as np
import pytest

from hamnet.core.errors import ConfigError, DataError
from hamnet.evaluate.fidelity import (
    declared_fidelity,
    describe_accuracy_kind,
    fidelity_kind,
    is_probabilities,
    is_unit_norm,
    score_fidelity,
    top1_agreement,
)
from hamnet.evaluate.measure import fidelity, score_outputs

RNG = np.random.default_rng(0)


def _embeddings(n: int = 50, dim: int = 32) -> np.ndarray:
    raw = RNG.normal(size=(n, dim))
    return raw / np.linalg.norm(raw, axis=1, keepdims=True)


def _probabilities(n: int = 50, classes: int = 5) -> np.ndarray:
    logits = RNG.normal(size=(n, classes))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize(
    ("reference", "declared", "setting", "expected"),
    [
        # the rule on the outputs
        (_embeddings(), None, "auto", "cosine"),  # unit-norm rows: a sentence encoder
        (_embeddings().astype(np.float32), None, "auto", "cosine"),  # float32 rounding
        (_probabilities(), None, "auto", "agreement"),  # softmax outputs
        (np.eye(4)[[0, 1, 2, 3, 1]], None, "auto", "agreement"),  # one-hot: unit AND sum 1
        (RNG.normal(size=(50, 10)), None, "auto", "agreement"),  # logits
        (RNG.normal(size=(8, 6, 16)), None, "auto", "cosine"),  # hidden states [N, seq, h]
        (RNG.normal(size=(20,)), None, "auto", "cosine"),  # one value per sample
        (_embeddings() * 1.01, None, "auto", "agreement"),  # norms 1.01: not normalized
        # the model's declaration wins over the rule
        (_embeddings(), "class_scores", "auto", "agreement"),
        (RNG.normal(size=(50, 10)), "embedding", "auto", "cosine"),
        (RNG.normal(size=(50, 10)), "hidden_states", "auto", "cosine"),
        # the explicit setting wins over both
        (_embeddings(), "embedding", "agreement", "agreement"),
        (_probabilities(), "class_scores", "cosine", "cosine"),
        (RNG.normal(size=(8, 6, 16)), None, "agreement", "agreement"),
    ],
)
def test_fidelity_choice_table(
    reference: np.ndarray, declared: str | None, setting: str, expected: str
) -> None:
    assert fidelity_kind(reference, declared, setting=setting) == expected


def test_declared_fidelity_is_what_a_config_carries() -> None:
    assert declared_fidelity("auto", None) == "auto"
    assert declared_fidelity("auto", "embedding") == "cosine"
    assert declared_fidelity("auto", "class_scores") == "agreement"
    assert declared_fidelity("cosine", "class_scores") == "cosine"


def test_unknown_values_name_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"fidelity must be one of \['auto', 'agreement', "):
        fidelity_kind(_embeddings(), setting="cos")
    with pytest.raises(ConfigError, match=r"output_kind must be one of .* but got 'logits'"):
        fidelity_kind(_embeddings(), "logits")
    with pytest.raises(DataError, match=r"needs reference outputs, but got an empty array"):
        fidelity_kind(np.zeros((0, 4)))


def test_row_tests() -> None:
    assert is_unit_norm(_embeddings()) and not is_unit_norm(_embeddings() * 1.002)
    assert is_unit_norm(_embeddings() * 1.0009)  # within 1e-3
    assert is_probabilities(_probabilities()) and not is_probabilities(_embeddings())


def test_an_embedding_close_in_direction_scores_cosine_not_argmax_agreement() -> None:
    """The user's case: an INT8 encoder with cosine >= 0.99 was '7.5 points worse'."""
    reference = _embeddings(400, 384)
    noisy = reference + RNG.normal(scale=0.004, size=reference.shape)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    argmax_agreement = top1_agreement(noisy, reference)
    score, kind = fidelity(noisy, reference)
    assert kind == "mean_cosine_similarity" and score > 0.99
    assert 1.0 - argmax_agreement > 0.01  # the old score would have broken a 1-point limit
    assert fidelity(noisy, reference, output_kind="class_scores")[1] == "top1_agreement"
    assert fidelity(noisy, reference, setting="agreement") == (
        argmax_agreement,
        "top1_agreement",
    )


def test_scores_and_their_words() -> None:
    reference = np.eye(3)[[0, 1, 2, 0]]
    outputs = np.eye(3)[[0, 1, 2, 1]]
    assert score_fidelity(outputs, reference, "agreement") == (0.75, "top1_agreement")
    assert score_fidelity(reference, reference, "cosine") == (1.0, "mean_cosine_similarity")
    tokens = RNG.normal(size=(4, 5, 7))  # per-token class scores: argmax on the last axis
    assert top1_agreement(tokens, tokens) == 1.0
    with pytest.raises(DataError, match=r"same shape \[N, \.\.\., classes\], but got \[4\]"):
        top1_agreement(np.zeros(4), np.zeros(4))
    with pytest.raises(ConfigError, match="'agreement' or 'cosine', but got 'l2'"):
        score_fidelity(outputs, reference, "l2")  # type: ignore[arg-type]
    assert describe_accuracy_kind("mean_cosine_similarity") == (
        "mean cosine similarity to the original model's outputs"
    )
    assert "agreement" in describe_accuracy_kind("top1_agreement")
    assert describe_accuracy_kind("f1") == "f1"


def test_score_outputs_labels_win_and_references_follow_the_rule() -> None:
    logits = RNG.normal(size=(6, 3))
    labels = logits.argmax(axis=1)
    assert score_outputs(logits, labels) == (1.0, "top1_accuracy")
    emb = _embeddings(6, 8)
    assert score_outputs(emb, emb) == (pytest.approx(1.0), "mean_cosine_similarity")
    assert score_outputs(emb, None, emb) == (pytest.approx(1.0), "mean_cosine_similarity")
    assert score_outputs(emb, None, emb, fidelity_setting="agreement") == (1.0, "top1_agreement")
    assert score_outputs(logits, None, logits, output_kind="embedding")[1] == (
        "mean_cosine_similarity"
    )
    assert score_outputs(logits, None, required=False) == (None, "none")
