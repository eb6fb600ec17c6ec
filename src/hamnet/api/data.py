"""Validation data for the API: checked against the model and written as ``data.npz``.

``validation_data=(x, y)`` is taken as-is (not standardized). Without labels the
metric is fidelity to the original model, whose outputs come from its family adapter
(:meth:`~hamnet.families.base.ModelFamily.predict`): for a checkpoint family the
labels are its own predictions; for an ONNX model its outputs are stored as the
``reference`` every candidate is scored against, by top-1 agreement or mean cosine
similarity as :func:`hamnet.evaluate.fidelity.fidelity_kind` chooses from the
``fidelity`` setting, the model's declared ``output_kind`` and the outputs themselves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hamnet.api.constraints import UnsupportedCombinationError
from hamnet.core.errors import ConfigError, DataError
from hamnet.families.base import ModelFamily

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class DataTarget:
    """The model the validation data is for.

    Attributes:
        family: The model's family adapter.
        path: The model file.
        trust_checkpoint: Load checkpoints with pickled code.
        input_dims: The ONNX model's inputs ``{name: dims}`` (empty for a checkpoint).
        output_kind: What the model declares its output to be (``"class_scores"``,
            ``"embedding"``, ``"hidden_states"``), or None when it says nothing.
    """

    family: type[ModelFamily]
    path: Path
    trust_checkpoint: bool = False
    input_dims: Mapping[str, Sequence[int | None]] = field(default_factory=dict)
    output_kind: str | None = None

    def predict(self, x: Any) -> np.ndarray:
        """The original model's outputs on ``x``."""
        import numpy as np

        out = self.family.predict(self.path, x, trust_checkpoint=self.trust_checkpoint)
        return np.asarray(out)


def prepare_data(
    target: DataTarget,
    validation_data: tuple[Any, Any] | None,
    root: Path,
    *,
    fidelity: str = "auto",
) -> tuple[Path | None, str]:
    """Check ``validation_data`` and write it to ``root/data.npz``.

    Args:
        target: The model the data is for.
        validation_data: ``(x, y)``, ``(x, None)`` for fidelity to the original model,
            or None for the built-in digits data.
        root: Where ``data.npz`` is written.
        fidelity: ``data.fidelity`` for label-free data: ``"auto"``, ``"agreement"``
            or ``"cosine"`` (the run's config should carry the same value, see
            :func:`hamnet.evaluate.fidelity.declared_fidelity`).

    Returns:
        The data file (None: the built-in digits data) and what accuracy means: the
        metric's name (``"top1_accuracy"``, ``"top1_agreement"``,
        ``"mean_cosine_similarity"``) followed by its meaning in words.

    Raises:
        ConfigError: Missing or malformed data.
        DataError: Labels that are not class indices 0..C-1.
        UnsupportedCombinationError: Data of a rank the family cannot take.
    """
    if validation_data is None:
        if target.family.fits_builtin_data(target.path, trust_checkpoint=target.trust_checkpoint):
            return None, "top1_accuracy"
        raise ConfigError(
            "validation_data must be given as (x, y) for this model (the built-in "
            "digits data only fits a HAMNet with 64 inputs and 10 classes), but got None"
        )
    if not isinstance(validation_data, tuple) or len(validation_data) != 2:
        raise ConfigError(
            f"validation_data must be a tuple (x, y) with y an array or None, but got "
            f"{type(validation_data).__name__}"
        )
    if target.family.loads_checkpoint:
        return _prepare_feature_data(target, validation_data, root)
    return _prepare_onnx_data(target, validation_data, root, fidelity)


def reference_kind(
    reference: np.ndarray, *, fidelity: str = "auto", declared: str | None = None
) -> str:
    """What the fidelity score of label-free data means, for the report's ``accuracy_kind``.

    Args:
        reference: The original model's outputs ``[N, ...]``.
        fidelity: ``data.fidelity`` (``"auto"``, ``"agreement"``, ``"cosine"``).
        declared: The model's declared output kind, or None.

    Returns:
        E.g. ``"mean_cosine_similarity_to_original_model (no labels: mean cosine similarity to the
        original model's outputs [384]; the outputs are unit-norm embeddings)"``.

    Raises:
        ConfigError: If ``fidelity`` or ``declared`` is not a known value.
    """
    from hamnet.evaluate.fidelity import (
        METRIC_OF,
        REPORT_NAMES,
        describe_accuracy_kind,
        fidelity_kind,
    )

    kind = fidelity_kind(reference, declared, setting=fidelity)
    metric = METRIC_OF[kind]
    if fidelity != "auto":
        why = f"data.fidelity is {fidelity!r}"
    elif declared is not None:
        why = f"the model declares its output as {declared!r}"
    else:
        why = _rule_reason(reference, kind)
    return (
        f"{REPORT_NAMES[metric]} (no labels: {describe_accuracy_kind(metric)} "
        f"{list(reference.shape[1:])}; {why})"
    )


def _rule_reason(reference: np.ndarray, kind: str) -> str:
    from hamnet.evaluate.fidelity import is_probabilities, is_unit_norm

    if reference.ndim != 2:
        return f"outputs of rank {reference.ndim} are hidden states or embeddings"
    if kind == "cosine" and is_unit_norm(reference):
        return "the outputs are unit-norm embeddings"
    if is_probabilities(reference):
        return "the outputs are class probabilities"
    return "2-D outputs are read as class scores"


def _prepare_onnx_data(
    target: DataTarget, validation_data: tuple[Any, Any], root: Path, fidelity: str
) -> tuple[Path, str]:
    import numpy as np

    x = check_inputs(x=validation_data[0], input_dims=target.input_dims)
    arrays = x if isinstance(x, dict) else {"x": x}
    n = len(next(iter(arrays.values())))
    stored: dict[str, np.ndarray] = (
        {f"x__{k}": v for k, v in x.items()} if isinstance(x, dict) else {"x": x}
    )
    if validation_data[1] is None:
        reference = target.predict(x)
        stored["reference"] = reference.astype(np.float32)
        kind = reference_kind(reference, fidelity=fidelity, declared=target.output_kind)
    else:
        stored["y"] = check_labels(validation_data[1], n)
        kind = "top1_accuracy"
    root.mkdir(parents=True, exist_ok=True)
    path = root / "data.npz"
    np.savez(path, **stored)  # type: ignore[arg-type]
    return path, kind


def _prepare_feature_data(
    target: DataTarget, validation_data: tuple[Any, Any], root: Path
) -> tuple[Path, str]:
    import numpy as np

    x = np.asarray(validation_data[0], dtype=np.float32)
    if x.ndim != 2:
        raise UnsupportedCombinationError(
            f"validation_data x must be 2-D [samples, features] for a HAMNet, but got "
            f"shape {list(x.shape)}"
        )
    kind = "top1_accuracy"
    if validation_data[1] is None:
        logits = target.predict(x)
        y = logits.argmax(axis=1)
        kind = "top1_agreement_with_original_model (labels are the original predictions)"
        classes, counts = np.unique(y, return_counts=True)
        num_outputs = int(logits.shape[1])
        if len(classes) != num_outputs or counts.min() < 3:
            raise DataError(
                f"unlabelled validation_data must make the original model predict every "
                f"one of its {num_outputs} classes at least 3 times (the labels are its "
                f"predictions), but it predicts classes {classes.tolist()} with counts "
                f"{counts.tolist()}; pass labels or more samples"
            )
    else:
        y = check_labels(validation_data[1], len(x))
    root.mkdir(parents=True, exist_ok=True)
    path = root / "data.npz"
    np.savez(path, x=x, y=y)
    return path, kind


def check_inputs(x: Any, input_dims: Mapping[str, Sequence[int | None]]) -> Any:
    """Validate ``x`` against an ONNX model's inputs; float arrays become float32.

    Args:
        x: One array (single-input models) or a dict keyed by the model's inputs.
        input_dims: The model's inputs ``{name: dims}``.

    Returns:
        The array, or the dict of arrays.

    Raises:
        ConfigError: Wrong keys, dtype, shape, or fewer than 3 samples.
        DataError: Inputs of different batch sizes.
    """
    import numpy as np

    from hamnet.backends.session import pack_inputs

    names = list(input_dims)
    if isinstance(x, dict):
        arrays = {str(k): np.asarray(v) for k, v in x.items()}
        if sorted(arrays) != sorted(names):
            raise ConfigError(
                f"validation_data x must be a dict keyed by the model's inputs {names}, "
                f"but got keys {sorted(arrays)}"
            )
        pack_inputs(arrays)  # same batch size, else DataError
        out: Any = {
            k: v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v
            for k, v in arrays.items()
        }
        shapes = {k: list(v.shape) for k, v in out.items()}
    else:
        if len(names) != 1:
            raise ConfigError(
                f"validation_data x must be a dict of the model's {len(names)} inputs "
                f"{names}, but got one {type(x).__name__}"
            )
        array = np.asarray(x)
        if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
            raise ConfigError(f"validation_data x must be numeric, but got dtype {array.dtype}")
        out = array.astype(np.float32) if np.issubdtype(array.dtype, np.floating) else array
        shapes = {names[0]: list(out.shape)}
    for name, got in shapes.items():
        _check_shape(name, list(input_dims.get(name, [])), got)
    if min(s[0] for s in shapes.values()) < 3:
        raise ConfigError(
            f"validation_data x must hold at least 3 samples (split into train, "
            f"validation and test), but got {min(s[0] for s in shapes.values())}"
        )
    return out


def _check_shape(name: str, want: list[int | None], got: list[int]) -> None:
    if want and (
        len(got) != len(want)
        or any(w is not None and w != g for w, g in zip(want[1:], got[1:], strict=False))
    ):
        raise ConfigError(
            f"validation_data input {name!r} must have shape "
            f"{['N', *('?' if w is None else w for w in want[1:])]}, but got {got}"
        )


def check_labels(labels: Any, n: int) -> np.ndarray:
    """Validate labels: shape ``(n,)``; integer labels must be class indices 0..C-1.

    Raises:
        ConfigError: Wrong shape.
        DataError: Integer labels that skip a class.
    """
    import numpy as np

    y = np.asarray(labels)
    if y.shape != (n,):
        raise ConfigError(f"validation_data y must have shape ({n},), but got {list(y.shape)}")
    if np.issubdtype(y.dtype, np.integer):
        classes = np.unique(y)
        if classes.tolist() != list(range(len(classes))):
            raise DataError(
                f"validation_data labels must be class indices 0..C-1, each present, "
                f"but got classes {classes.tolist()[:20]}"
            )
    return y
