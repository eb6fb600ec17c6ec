"""The distillation transfer set: inputs without labels, labelled by the teacher.

Labelled data is scarce; inputs usually are not (logged traffic, the rest of a data
lake). A pruned model recovered with cross-entropy can only learn from the labelled
samples, while a distillation term learns from every input the teacher can see. The
transfer set is read from a file, checked like the labelled data and preprocessed the
same way (the labelled split's standardization), then appended to the training split
with the label ``-1`` (:data:`hamnet.training.UNLABELLED`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hamnet.core.errors import DataError
from hamnet.training.data import Dataset

_FORMATS = (".npz", ".csv", ".parquet", ".pq")


def load_transfer_set(
    path: str | Path, dataset: Dataset, label_column: str = "label"
) -> np.ndarray:
    """Read unlabelled inputs and preprocess them like ``dataset``.

    Args:
        path: An ``.npz`` file with an array ``x`` (or exactly one array), or a CSV /
            Parquet file whose columns are the features (a ``label_column``, if present,
            is ignored).
        dataset: The labelled data the inputs must match (per-sample shape,
            standardization).
        label_column: Column dropped from CSV/Parquet files when present.

    Returns:
        ``float32`` inputs with the per-sample shape of ``dataset.x_train``.

    Raises:
        DataError: If the file is missing, of an unknown format, empty, not numeric, not
            finite, or of the wrong per-sample shape.
    """
    file = Path(path)
    if not file.is_file():
        raise DataError(f"distill.unlabelled_data {str(file)!r} does not exist")
    suffix = file.suffix.lower()
    if suffix not in _FORMATS:
        raise DataError(
            f"distill.unlabelled_data must be one of {list(_FORMATS)} files, but got {str(file)!r}"
        )
    if dataset.x_train.dtype.names:
        raise DataError(
            "distill.unlabelled_data supports single-input data only, but the labelled data "
            f"has named inputs {list(dataset.x_train.dtype.names)}"
        )
    if suffix == ".npz":
        with np.load(file, allow_pickle=False) as archive:
            keys = list(archive.files)
            key = "x" if "x" in keys else (keys[0] if len(keys) == 1 else None)
            if key is None:
                raise DataError(
                    f"distill.unlabelled_data {str(file)!r} must hold an array 'x' (or exactly "
                    f"one array), but holds {keys}"
                )
            x = np.asarray(archive[key])
    else:
        import pandas as pd

        frame = pd.read_csv(file) if suffix == ".csv" else pd.read_parquet(file)
        frame = frame.drop(columns=[label_column], errors="ignore")
        bad = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
        if bad:
            raise DataError(
                f"distill.unlabelled_data columns must be numeric features, but {bad[:5]} "
                f"are not (in {str(file)!r})"
            )
        x = frame.to_numpy()
    if not np.issubdtype(x.dtype, np.number):
        raise DataError(
            f"distill.unlabelled_data must be numeric, but got dtype {x.dtype} in {str(file)!r}"
        )
    expected = list(dataset.x_train.shape[1:])
    if len(x) == 0 or list(x.shape[1:]) != expected:
        raise DataError(
            f"distill.unlabelled_data must hold samples of shape {expected} like the labelled "
            f"data, but got shape {list(x.shape)} in {str(file)!r}"
        )
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        rows = np.unique(np.nonzero(~np.isfinite(x))[0])
        raise DataError(
            f"distill.unlabelled_data must be finite, but {len(rows)} sample(s) hold NaN or "
            f"inf (first rows: {rows[:5].tolist()}) in {str(file)!r}"
        )
    if dataset.feature_mean is not None and dataset.feature_std is not None:
        x = (x - dataset.feature_mean) / dataset.feature_std
    return np.ascontiguousarray(x, dtype=np.float32)


__all__ = ["load_transfer_set"]
