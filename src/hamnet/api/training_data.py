"""Training data for the API: ``optimize(..., train_data=...)`` written as ``train.npz``.

Training data trains (fine-tuning, distillation, calibration of pruning); the
validation data then only selects and reports (the pipeline splits it into validation
and test, see ``data.train_path``). Unlabelled training data is labelled by the
original model: its predicted class when the validation data has labels, else its
outputs, which the student matches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hamnet.api.data import DataTarget, check_inputs
from hamnet.core.errors import ConfigError, DataError


def prepare_train_data(
    target: DataTarget, train_data: Any, root: Path, *, labelled_eval: bool
) -> Path:
    """Check ``train_data`` against the model and write ``root/train.npz``.

    Args:
        target: The original model.
        train_data: ``(x, y)`` with integer labels ``y``, or ``x`` alone (or ``(x, None)``)
            for unlabelled data; ``x`` is one array of any rank or a dict of named arrays.
        root: Folder to write into.
        labelled_eval: Whether the validation data has labels (then unlabelled rows get
            the original model's predicted class as their label).

    Returns:
        The written file.

    Raises:
        ConfigError: ``train_data`` is not an array, a dict or an ``(x, y)`` tuple.
        DataError: Inputs that do not fit the model, or labels of the wrong length.
    """
    import numpy as np

    x_given, y_given = _unpack(train_data)
    x = check_inputs(x=x_given, input_dims=target.input_dims)
    stored: dict[str, np.ndarray] = (
        {f"x__{k}": np.asarray(v) for k, v in x.items()}
        if isinstance(x, dict)
        else {"x": np.asarray(x)}
    )
    n = len(next(iter(stored.values())))
    if y_given is not None:
        if not labelled_eval:
            raise DataError(
                "train_data labels need labelled validation_data (x, y) to score against, "
                "but validation_data has no labels; pass train_data=x alone to train on "
                "the original model's outputs"
            )
        y = np.asarray(y_given)
        if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
            raise DataError(
                f"train_data y must be integer class labels of shape ({n},), but got "
                f"{y.dtype} of shape {list(y.shape)}"
            )
        stored["y"] = y
    else:
        outputs = target.predict(x)
        if labelled_eval:
            if outputs.ndim != 2:
                raise DataError(
                    f"unlabelled train_data with labelled validation_data is labelled with "
                    f"the original model's predicted class, so its outputs must be 2-D "
                    f"[samples, classes], but got shape {list(outputs.shape)}"
                )
            stored["y"] = outputs.argmax(axis=1).astype(np.int64)
        else:
            stored["reference"] = outputs.astype(np.float32)
    root.mkdir(parents=True, exist_ok=True)
    path = root / "train.npz"
    np.savez(path, **stored)  # type: ignore[arg-type]
    return path


def _unpack(train_data: Any) -> tuple[Any, Any]:
    """``(x, y)`` of ``train_data`` (``y`` None when unlabelled)."""
    if train_data is None:
        raise ConfigError("train_data must be x or (x, y), but got None")
    if isinstance(train_data, tuple):
        if len(train_data) != 2:
            raise ConfigError(
                f"train_data must be x or a pair (x, y), but got a tuple of {len(train_data)} items"
            )
        return train_data
    if isinstance(train_data, list):
        raise ConfigError(
            "train_data must be an array, a dict of named arrays or a tuple (x, y), but "
            "got a list (a tuple is read as (x, y); wrap arrays with numpy.asarray)"
        )
    return train_data, None
