"""Fidelity to the original model, chosen by what its output means.

Without labels a candidate is scored against the original model's outputs on the same
inputs. How depends on what those outputs are: class scores are compared by their
top-1 class (agreement), embeddings and hidden states by direction (mean cosine
similarity); comparing an embedding's argmax dimension would call an INT8 encoder
with cosine 0.99 "7.5 points worse". :func:`fidelity_kind` makes the choice, once,
in this order:

========================  ====================================================  ===========
who says                  condition                                              fidelity
========================  ====================================================  ===========
the explicit setting      ``data.fidelity: agreement`` / ``cosine``              as set
the model's declaration   ``output_kind="class_scores"``                         agreement
the model's declaration   ``output_kind="embedding"`` / ``"hidden_states"``      cosine
rule on the outputs       rank other than 2 (``[N]``, ``[N, seq, hidden]``...)   cosine
rule on the outputs       2-D rows that are probabilities (>= 0, sum 1)          agreement
rule on the outputs       2-D rows of unit L2 norm (all within 1e-3)             cosine
rule on the outputs       any other 2-D output (logits)                          agreement
========================  ====================================================  ===========

Probabilities are tested before unit norm: a row that is both is one-hot, a class
decision. Labelled data is always scored by top-1 accuracy; a user's own metric
(``validation_fn``) is reported beside whichever of these applies.

Example:
    >>> import numpy as np
    >>> emb = np.eye(4)[:3] * 0.6 + np.eye(4)[1:] * 0.8  # unit-norm rows
    >>> fidelity_kind(emb)
    'cosine'
    >>> fidelity_kind(emb, declared="class_scores")
    'agreement'
    >>> fidelity_kind(emb, declared="class_scores", setting="cosine")
    'cosine'
"""

from __future__ import annotations

from typing import Literal, cast

import numpy as np

from hamnet.core.errors import ConfigError, DataError

FidelityKind = Literal["agreement", "cosine"]
"""How outputs are compared with the original model's: top-1 agreement or mean cosine."""

FIDELITY_SETTINGS: tuple[str, ...] = ("auto", "agreement", "cosine")
"""Values of ``data.fidelity`` (``auto``: the declaration, else the rule on the outputs)."""

OUTPUT_KINDS: dict[str, FidelityKind] = {
    "class_scores": "agreement",
    "embedding": "cosine",
    "hidden_states": "cosine",
}
"""What a model may declare its output to be, and the fidelity each one takes."""

UNIT_NORM_TOLERANCE = 1e-3
"""Rows whose L2 norm is within this of 1 count as normalized embeddings."""

_PROBABILITY_TOLERANCE = 1e-3

ACCURACY_KINDS: dict[str, str] = {
    "top1_accuracy": "top-1 accuracy on the labels",
    "top1_agreement": "top-1 agreement with the original model's predicted class",
    "mean_cosine_similarity": "mean cosine similarity to the original model's outputs",
    "none": "not scored (no labels nor reference outputs)",
}
"""Each ``Metrics.accuracy_kind`` and what it means, for reports and tables."""

METRIC_OF: dict[FidelityKind, str] = {
    "agreement": "top1_agreement",
    "cosine": "mean_cosine_similarity",
}
"""The ``accuracy_kind`` a candidate's metrics carry for each fidelity."""


def fidelity_kind(
    reference_outputs: np.ndarray,
    declared: str | None = None,
    *,
    setting: str = "auto",
) -> FidelityKind:
    """Choose how outputs are compared with the original model's (see the module's table).

    Args:
        reference_outputs: The original model's outputs ``[N, ...]`` (the rule reads
            their rank and, for 2-D outputs, whether rows are probabilities or unit
            vectors).
        declared: What the model says its output is: ``"class_scores"``,
            ``"embedding"`` or ``"hidden_states"``; None when it says nothing.
        setting: ``data.fidelity``: ``"auto"`` (the declaration, else the rule),
            ``"agreement"`` or ``"cosine"`` (wins over both).

    Returns:
        ``"agreement"`` (top-1 agreement) or ``"cosine"`` (mean cosine similarity).

    Raises:
        ConfigError: If ``setting`` or ``declared`` is not a known value.
        DataError: If ``reference_outputs`` is empty.
    """
    chosen = declared_fidelity(setting, declared)
    if chosen != "auto":
        return cast("FidelityKind", chosen)
    return _rule(np.asarray(reference_outputs))


def declared_fidelity(setting: str = "auto", declared: str | None = None) -> str:
    """The ``data.fidelity`` value that carries a model's declared output kind.

    A caller that knows what the model's output is (e.g. from a module artifact's
    ``output_kind``) writes this into the run's config, so every measurement of the run,
    in this process or in a Prefect worker, compares outputs the same way.

    Args:
        setting: The user's ``data.fidelity`` (wins unless ``"auto"``).
        declared: The model's declared output kind, or None.

    Returns:
        ``"agreement"`` or ``"cosine"``, or ``"auto"`` when neither says (the rule on
        the outputs then decides).

    Raises:
        ConfigError: If ``setting`` or ``declared`` is not a known value.
    """
    if setting not in FIDELITY_SETTINGS:
        raise ConfigError(f"fidelity must be one of {list(FIDELITY_SETTINGS)}, but got {setting!r}")
    if declared is not None and declared not in OUTPUT_KINDS:
        raise ConfigError(
            f"output_kind must be one of {list(OUTPUT_KINDS)} or None, but got {declared!r}"
        )
    if setting != "auto" or declared is None:
        return setting
    return OUTPUT_KINDS[declared]


def _rule(reference: np.ndarray) -> FidelityKind:
    """The rule on the outputs when neither a setting nor a declaration says."""
    if reference.size == 0:
        raise DataError(
            f"choosing a fidelity needs reference outputs, but got an empty array of shape "
            f"{list(reference.shape)}"
        )
    if reference.ndim != 2:
        return "cosine"
    rows = reference.astype(np.float64)
    if is_probabilities(rows):
        return "agreement"
    if is_unit_norm(rows):
        return "cosine"
    return "agreement"


def is_probabilities(rows: np.ndarray) -> bool:
    """Whether every row of a 2-D array is a probability vector (>= 0, sums to 1)."""
    rows = np.asarray(rows, dtype=np.float64)
    return bool(
        rows.ndim == 2
        and np.all(rows >= -_PROBABILITY_TOLERANCE)
        and np.allclose(rows.sum(axis=1), 1.0, atol=_PROBABILITY_TOLERANCE, rtol=0.0)
    )


def is_unit_norm(rows: np.ndarray, tolerance: float = UNIT_NORM_TOLERANCE) -> bool:
    """Whether every row of a 2-D array has an L2 norm within ``tolerance`` of 1."""
    rows = np.asarray(rows, dtype=np.float64)
    norms = np.linalg.norm(rows.reshape(len(rows), -1), axis=1)
    return bool(np.all(np.abs(norms - 1.0) <= tolerance))


def cosine_similarity(outputs: np.ndarray, reference: np.ndarray) -> float:
    """Return the mean cosine similarity of each sample's output to the reference's.

    Each sample's output (all axes but the first, flattened) is compared with the
    reference's; two all-zero vectors count as identical.

    Raises:
        DataError: If the shapes differ.
    """
    a = np.asarray(outputs, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape:
        raise DataError(
            f"outputs and reference must have the same shape, but got {list(a.shape)} and "
            f"{list(b.shape)}"
        )
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = np.sum(a * b, axis=1)
    both_zero = norms == 0
    cos = np.where(both_zero, 1.0, dots / np.where(both_zero, 1.0, norms))
    return float(np.mean(cos))


def top1_agreement(outputs: np.ndarray, reference: np.ndarray) -> float:
    """How often the top-1 class of ``outputs`` equals the reference's.

    Class scores are read along the last axis: ``[N, classes]``, or ``[N, ..., classes]``
    (e.g. per-token scores, every position counted).

    Raises:
        DataError: If the shapes differ or the outputs have fewer than 2 axes.
    """
    a, b = np.asarray(outputs), np.asarray(reference)
    if a.shape != b.shape or a.ndim < 2:
        raise DataError(
            f"top-1 agreement needs outputs and reference of the same shape [N, ..., "
            f"classes], but got {list(a.shape)} and {list(b.shape)}"
        )
    return float(np.mean(a.argmax(axis=-1) == b.argmax(axis=-1)))


def score_fidelity(
    outputs: np.ndarray, reference: np.ndarray, kind: FidelityKind
) -> tuple[float, str]:
    """Score ``outputs`` against the original model's ``reference`` outputs by ``kind``.

    Args:
        outputs: A candidate's outputs ``[N, ...]``.
        reference: The original model's outputs on the same inputs.
        kind: ``"agreement"`` or ``"cosine"`` (from :func:`fidelity_kind`).

    Returns:
        The score and the ``accuracy_kind`` metrics carry (``"top1_agreement"`` or
        ``"mean_cosine_similarity"``).

    Raises:
        ConfigError: If ``kind`` is unknown.
        DataError: If the lengths or shapes differ.
    """
    if kind == "agreement":
        return top1_agreement(outputs, reference), METRIC_OF[kind]
    if kind == "cosine":
        return cosine_similarity(outputs, reference), METRIC_OF[kind]
    raise ConfigError(f"fidelity kind must be 'agreement' or 'cosine', but got {kind!r}")


REPORT_NAMES: dict[str, str] = {
    "top1_accuracy": "top1_accuracy",
    "top1_agreement": "top1_agreement_with_original_model",
    "mean_cosine_similarity": "mean_cosine_similarity_to_original_model",
}
"""How reports name each ``accuracy_kind`` (the fidelity kinds say what they compare to)."""


def describe_accuracy_kind(accuracy_kind: str) -> str:
    """What an ``accuracy_kind`` means, in words (e.g. ``"mean cosine similarity to the
    original model's outputs"``); an unknown kind is returned as is."""
    return ACCURACY_KINDS.get(accuracy_kind, accuracy_kind)
