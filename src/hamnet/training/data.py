"""Labelled tabular data: loading, validation, and a deterministic stratified split.

Two sources are supported (see :class:`hamnet.core.config.DataSection`):

* ``digits``: scikit-learn's bundled 8x8 handwritten digits (1797 samples, 64 features,
  10 classes). Offline.
* ``file``: an NPZ (arrays ``x``/``X`` and ``y`` or the label column's name), CSV or
  Parquet file with one numeric column per feature and a label column.

NPZ files may hold inputs of any rank and models with several inputs:

* ``x`` of any rank ``[samples, ...]`` (e.g. ``[N, 1, 8, 8]`` images) is kept as is
  (float32);
* several named inputs are arrays ``x__<input name>`` (e.g. ``x__input_ids`` and
  ``x__attention_mask``, each ``[samples, ...]``); they become one structured array
  with a field per input (see :func:`hamnet.backends.session.pack_inputs`), integer inputs
  keep their dtype, and every split slices all of them together;
* instead of labels, an array ``reference`` (float ``[samples, ...]``: the original
  model's outputs) makes the set label-free: the split is random instead of
  stratified, ``num_classes`` is 0 and the ``y_*`` arrays hold the reference outputs,
  which measurement scores by fidelity (top-1 agreement or mean cosine similarity, by
  what the output means: see :func:`hamnet.evaluate.fidelity.fidelity_kind`).

Labels of any type are mapped to ``0..K-1`` in sorted order; the original values are
kept, as strings, in :attr:`Dataset.class_names`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from hamnet.backends.session import pack_inputs
from hamnet.core.config import DataSection
from hamnet.core.errors import DataError
from hamnet.core.hashing import canonical_json, sha256, update_with_file

_SUFFIX_FORMATS = {".npz": "npz", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
_MIN_PER_CLASS = 3


@dataclass(frozen=True)
class Dataset:
    """A labelled data set split into train, validation and test.

    Attributes:
        x_train: Training features, ``float32 [n_train, num_features]`` (or
            ``[n_train, ...]`` for N-D inputs, or a structured array with one field
            per named input, see :attr:`input_names`).
        y_train: Training labels, ``int64 [n_train]`` in ``0..num_classes-1`` (or the
            original model's float outputs for a label-free set, see :attr:`targets`).
        x_val: Validation features.
        y_val: Validation labels.
        x_test: Test features.
        y_test: Test labels.
        num_features: Features per sample (all inputs' elements per sample together).
        num_classes: Number of classes (0 for a label-free set).
        class_names: The original label of each class index, as a string.
        source: A human-readable description of where the data came from.
        feature_mean: Per-feature mean subtracted from every split (None when the data
            was not standardized). A deployed model needs the same preprocessing.
        feature_std: Per-feature scale every split was divided by (None when not
            standardized).
        input_names: Names of the inputs for named (multi-)input data; None for one
            unnamed input.
        targets: ``"labels"`` (class indices) or ``"reference"`` (the original model's
            outputs, for label-free fidelity).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_features: int
    num_classes: int
    class_names: list[str]
    source: str
    feature_mean: np.ndarray | None = field(default=None, repr=False)
    feature_std: np.ndarray | None = field(default=None, repr=False)
    input_names: tuple[str, ...] | None = None
    targets: str = "labels"

    def calibration_samples(self, n: int, seed: int = 0) -> np.ndarray:
        """Draw up to ``n`` training samples, without replacement, for calibration.

        Args:
            n: How many samples; all training samples are returned when there are fewer.
            seed: Seed of the draw.

        Returns:
            ``[min(n, n_train), ...]`` in the training inputs' layout (a structured
            array for named inputs).

        Raises:
            DataError: If ``n`` is not positive.
        """
        if n < 1:
            raise DataError(f"calibration needs at least 1 sample, but got n={n}")
        rng = np.random.default_rng(seed)
        count = min(n, len(self.x_train))
        index = np.sort(rng.choice(len(self.x_train), size=count, replace=False))
        return self.x_train[index]

    def flattened(self) -> Dataset:
        """This data set with N-D inputs flattened to ``[N, num_features]`` (for models
        such as HAMNet that take feature vectors); named inputs are refused.

        Raises:
            DataError: If the inputs are named (several model inputs).
        """
        if self.input_names is not None:
            raise DataError(
                f"only one unnamed input can be flattened to feature vectors, but the data "
                f"has named inputs {list(self.input_names)}"
            )
        if self.x_train.ndim == 2:
            return self
        from dataclasses import replace

        def flat(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a.reshape(len(a) if a.ndim > 1 else 1, -1)

        mean, std = flat(self.feature_mean), flat(self.feature_std)
        return replace(
            self,
            x_train=self.x_train.reshape(len(self.x_train), -1),
            x_val=self.x_val.reshape(len(self.x_val), -1),
            x_test=self.x_test.reshape(len(self.x_test), -1),
            feature_mean=None if mean is None else mean[0],
            feature_std=None if std is None else std[0],
        )

    def check_input_size(self, expected: int) -> None:
        """Check the data has the number of features a model expects.

        Args:
            expected: Features the model takes.

        Raises:
            DataError: If the numbers differ.
        """
        if expected != self.num_features:
            raise DataError(
                f"data has {self.num_features} feature columns, but the model expects "
                f"{expected} (input_size)"
            )


def load_dataset(section: DataSection, base_dir: str | Path = ".") -> Dataset:
    """Load, validate, split and (optionally) standardize the configured data.

    Args:
        section: The ``data`` settings.
        base_dir: Folder a relative ``section.path`` is resolved against.

    Returns:
        The split data set. The split is stratified by class and fixed by
        ``section.seed``; standardization statistics come from the training split only.

    Raises:
        DataError: If the file is missing, unreadable, of an unknown format, lacks the
            label column, has non-numeric, missing or non-finite features, is empty, has
            fewer than two classes, or a class too small to split.
    """
    targets = "labels"
    if section.source == "digits":
        from sklearn.datasets import load_digits

        x_raw, y_raw = load_digits(return_X_y=True)
        source = "sklearn digits (8x8 images, 64 features, 10 classes)"
    else:
        path = _resolve(section, base_dir)
        fmt = _file_format(section, path)
        if fmt == "npz":
            x_raw, y_raw, targets = _read_npz(path, section.label_column)
        else:
            x_raw, y_raw = _read_file(path, fmt, section.label_column)
        source = f"{fmt} file {path}"
    names = x_raw.dtype.names
    if targets == "reference":
        x, y = _validate_inputs(np.asarray(x_raw), source), _validate_reference(y_raw, x_raw)
        class_names: list[str] = []
        x_train, y_train, x_val, y_val, x_test, y_test = _random_split(x, y, section)
    else:
        x, y, class_names = _validate(np.asarray(x_raw), np.asarray(y_raw), source)
        x_train, y_train, x_val, y_val, x_test, y_test = _split(x, y, section, len(class_names))
    if section.train_path is not None:
        # Separate training data: every row of data.path is for validation and test.
        x_train, y_train = _read_train_file(section, base_dir, x, targets, class_names)
        x_val, y_val, x_test, y_test = _eval_split(x, y, section, targets, len(class_names))
        source += f" + {len(x_train)} training rows from {section.train_path}"
    mean = std = None
    if section.standardize and names:
        raise DataError(
            f"data.standardize must be false for named inputs {list(names)} (token ids and "
            f"masks must not be rescaled), but got true"
        )
    if section.standardize:
        mean = x_train.mean(axis=0, dtype=np.float64)
        std = x_train.std(axis=0, dtype=np.float64)
        std[std == 0] = 1.0
        x_train, x_val, x_test = ((a - mean) / std for a in (x_train, x_val, x_test))
        mean, std = mean.astype(np.float32), std.astype(np.float32)
    dtype = None if names else np.float32
    return Dataset(
        x_train=np.ascontiguousarray(x_train, dtype=dtype),
        y_train=y_train,
        x_val=np.ascontiguousarray(x_val, dtype=dtype),
        y_val=y_val,
        x_test=np.ascontiguousarray(x_test, dtype=dtype),
        y_test=y_test,
        num_features=_feature_count(x),
        num_classes=len(class_names),
        class_names=class_names,
        source=f"{source}, {len(x)} samples",
        feature_mean=mean,
        feature_std=std,
        input_names=tuple(names) if names else None,
        targets=targets,
    )


def _feature_count(x: np.ndarray) -> int:
    """Elements per sample, over every input."""
    if x.dtype.names:
        return int(sum(int(np.prod(x.dtype[n].shape)) for n in x.dtype.names))
    return int(np.prod(x.shape[1:]))


def data_fingerprint(section: DataSection, base_dir: str | Path = ".") -> str:
    """A short, stable hash of the data a section describes, for cache keys.

    It covers the section's settings and, for files, the file's content (not its path
    or modification time); for ``digits`` it covers the scikit-learn version.

    Args:
        section: The ``data`` settings.
        base_dir: Folder a relative ``section.path`` is resolved against.

    Returns:
        16 hex characters of a sha256.

    Raises:
        DataError: If the configured file does not exist.
    """
    digest = sha256(canonical_json(section.model_dump(mode="json")))
    if section.source == "digits":
        import sklearn

        digest.update(f"sklearn=={sklearn.__version__}".encode())
    else:
        update_with_file(digest, _resolve(section, base_dir))
    if section.train_path is not None:
        train = Path(section.train_path)
        update_with_file(digest, train if train.is_absolute() else Path(base_dir) / train)
    return digest.hexdigest()[:16]


def _resolve(section: DataSection, base_dir: str | Path) -> Path:
    path = Path(section.path or "")
    if not path.is_absolute():
        path = Path(base_dir) / path
    if not path.is_file():
        raise DataError(
            f"data file {str(path)!r} does not exist (data.path={section.path!r}); expected "
            f"an .npz, .csv or .parquet file"
        )
    return path


def _file_format(section: DataSection, path: Path) -> str:
    if section.format != "auto":
        return section.format
    suffix = path.suffix.lower()
    if suffix not in _SUFFIX_FORMATS:
        raise DataError(
            f"cannot tell the format of data file {str(path)!r} from its suffix "
            f"{suffix or '(none)'!r}: expected one of {sorted(_SUFFIX_FORMATS)}, or set "
            f"data.format"
        )
    return _SUFFIX_FORMATS[suffix]


def _read_file(path: Path, fmt: str, label_column: str) -> tuple[np.ndarray, np.ndarray]:
    if fmt == "npz":
        x, y, _ = _read_npz(path, label_column)
        return x, y
    try:
        frame = pd.read_csv(path) if fmt == "csv" else pd.read_parquet(path)
    except Exception as err:
        raise DataError(
            f"could not read data file {str(path)!r} as {fmt}: {type(err).__name__}: {err}"
        ) from None
    return _split_frame(frame, path, label_column)


NAMED_INPUT_PREFIX = "x__"
"""NPZ arrays named ``x__<input name>`` are the named inputs of a multi-input model."""

REFERENCE_KEY = "reference"
"""NPZ array holding the original model's outputs, for label-free (fidelity) data."""


def _read_npz(path: Path, label_column: str) -> tuple[np.ndarray, np.ndarray, str]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except Exception as err:
        raise DataError(
            f"could not read data file {str(path)!r} as npz: {type(err).__name__}: {err}"
        ) from None
    named = [k for k in arrays if k.startswith(NAMED_INPUT_PREFIX)]
    x_key = next((k for k in ("x", "X") if k in arrays), None)
    y_key = next((k for k in ("y", label_column, REFERENCE_KEY) if k in arrays), None)
    if (x_key is None and not named) or y_key is None:
        raise DataError(
            f"npz file {str(path)!r} must hold a feature array 'x' (or 'X', or named inputs "
            f"'{NAMED_INPUT_PREFIX}<name>') and a label array 'y' (or {label_column!r}, or "
            f"reference outputs {REFERENCE_KEY!r}), but it holds {sorted(arrays)}"
        )
    if x_key is not None and named:
        raise DataError(
            f"npz file {str(path)!r} must hold either one input {x_key!r} or named inputs "
            f"'{NAMED_INPUT_PREFIX}<name>', but it holds both: {sorted(arrays)}"
        )
    y = arrays[y_key]
    if named:
        for key in named:
            _check_numeric(arrays[key], key, path)
        x = pack_inputs({k[len(NAMED_INPUT_PREFIX) :]: arrays[k] for k in named})
    else:
        assert x_key is not None
        x = arrays[x_key]
        if x.ndim < 2:
            raise DataError(
                f"npz array {x_key!r} in {str(path)!r} must be 2-D [samples, features], but "
                f"has shape {list(x.shape)}"
            )
        _check_numeric(x, x_key, path)
    if y_key == REFERENCE_KEY:
        return x, y, "reference"
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(
            f"npz label array {y_key!r} in {str(path)!r} must be 1-D with one label per "
            f"sample ({len(x)}), but has shape {list(y.shape)}"
        )
    return x, y, "labels"


def _check_numeric(x: np.ndarray, key: str, path: Path) -> None:
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise DataError(
            f"npz array {key!r} in {str(path)!r} must be numeric, but has dtype {x.dtype}"
        )


def _validate_inputs(x: np.ndarray, source: str) -> np.ndarray:
    """Check inputs are non-empty and finite; float inputs become float32."""
    names = x.dtype.names
    if not names:
        if len(x) == 0 or x.ndim < 2 or x.shape[1] == 0:
            raise DataError(
                f"{source} is empty: expected at least one sample and one feature, but got "
                f"shape {list(x.shape)}"
            )
        x = x.astype(np.float32)
        bad = int((~np.isfinite(x)).sum())
        if bad:
            raise DataError(
                f"{source} has {bad} missing or non-finite input values (NaN or inf); "
                f"expected finite numbers everywhere"
            )
        return x
    if len(x) == 0:
        raise DataError(f"{source} is empty: expected at least one sample, but got 0")
    arrays: dict[str, np.ndarray] = {}
    for name in names:
        a = np.asarray(x[name])
        if np.issubdtype(a.dtype, np.floating):
            a = a.astype(np.float32)
            bad = int((~np.isfinite(a)).sum())
            if bad:
                raise DataError(
                    f"{source} input {name!r} has {bad} missing or non-finite values (NaN or "
                    f"inf); expected finite numbers everywhere"
                )
        arrays[name] = a
    return pack_inputs(arrays)


def _validate_reference(reference: Any, x: np.ndarray) -> np.ndarray:
    ref = np.asarray(reference)
    if not np.issubdtype(ref.dtype, np.floating) or ref.ndim < 2 or len(ref) != len(x):
        raise DataError(
            f"npz array {REFERENCE_KEY!r} must hold the original model's float outputs "
            f"[{len(x)}, ...] (at least 2-D), but got dtype {ref.dtype} and shape "
            f"{list(ref.shape)}"
        )
    ref = ref.astype(np.float32)
    if not np.isfinite(ref).all():
        raise DataError(
            f"npz array {REFERENCE_KEY!r} has {int((~np.isfinite(ref)).sum())} non-finite "
            f"values, but reference outputs must be finite"
        )
    return ref


def _random_split(x: np.ndarray, y: np.ndarray, section: DataSection) -> tuple[np.ndarray, ...]:
    """A seeded random (unstratified) split for label-free data."""
    n = len(x)
    n_test = int(np.ceil(section.test_fraction * n))
    n_val = int(np.ceil(section.val_fraction * n))
    if min(n_test, n_val, n - n_test - n_val) < 1:
        raise DataError(
            f"{n} samples are too few to split with val_fraction={section.val_fraction} and "
            f"test_fraction={section.test_fraction}: each split needs at least one sample, "
            f"but would get train={n - n_test - n_val}, val={n_val}, test={n_test}"
        )
    order = np.random.default_rng(section.seed).permutation(n)
    test, val, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    return x[train], y[train], x[val], y[val], x[test], y[test]


def _read_train_file(
    section: DataSection, base_dir: str | Path, x_eval: np.ndarray, targets: str,
    class_names: list[str],
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The rows of ``data.train_path``, checked against the validation/test data."""
    path = Path(section.train_path or "")
    if not path.is_absolute():
        path = Path(base_dir) / path
    if not path.is_file():
        raise DataError(f"data.train_path {str(path)!r} does not exist (expected an .npz file)")
    if path.suffix.lower() != ".npz":
        raise DataError(f"data.train_path must be an .npz file, but got {str(path)!r}")
    x_raw, y_raw, train_targets = _read_npz(path, section.label_column)
    source = f"training file {path}"
    if train_targets != targets:
        raise DataError(
            f"{source} must hold {targets} like data.path (labels 'y', or the original "
            f"model's '{REFERENCE_KEY}' outputs), but it holds {train_targets}"
        )
    x = _validate_inputs(np.asarray(x_raw), source)
    if x.dtype != x_eval.dtype or x.shape[1:] != x_eval.shape[1:]:
        raise DataError(
            f"{source} must have inputs like data.path ({_layout(x_eval)} per row), but got "
            f"{_layout(x)}"
        )
    if targets == "reference":
        return x, _validate_reference(y_raw, x_raw)
    y = np.asarray(y_raw)
    if np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0):
        y = y.astype(np.int64)
    labels = np.array([str(v) for v in y.reshape(-1).tolist()])
    unknown = sorted(set(labels.tolist()) - set(class_names))
    if unknown:
        raise DataError(
            f"{source} has labels {_preview(unknown)} that data.path does not, but training "
            f"labels must be among the evaluation classes {_preview(class_names)}"
        )
    index = {name: i for i, name in enumerate(class_names)}
    return x, np.array([index[v] for v in labels], dtype=np.int64)


def _layout(x: np.ndarray) -> str:
    if x.dtype.names:
        return f"named inputs {list(x.dtype.names)}"
    return f"shape {list(x.shape[1:])} of {x.dtype}"


def _eval_split(
    x: np.ndarray, y: np.ndarray, section: DataSection, targets: str, num_classes: int
) -> tuple[np.ndarray, ...]:
    """Split every row into validation and test, in the ratio of the two fractions."""
    n = len(x)
    share = section.val_fraction / (section.val_fraction + section.test_fraction)
    n_val = round(share * n)
    least = max(1, num_classes)
    if min(n_val, n - n_val) < least:
        raise DataError(
            f"{n} evaluation samples are too few to split into validation and test with at "
            f"least {least} each (data.path holds only evaluation rows when data.train_path "
            f"is set)"
        )
    if targets == "reference":
        order = np.random.default_rng(section.seed).permutation(n)
        val, test = order[:n_val], order[n_val:]
        return x[val], y[val], x[test], y[test]
    try:
        x_val, x_test, y_val, y_test = train_test_split(
            x, y, train_size=n_val, stratify=y, random_state=section.seed
        )
    except ValueError as err:
        raise DataError(f"cannot split the data stratified by class: {err}") from None
    return x_val, y_val, x_test, y_test


def _split_frame(
    frame: pd.DataFrame, path: Path, label_column: str
) -> tuple[np.ndarray, np.ndarray]:
    columns = [str(c) for c in frame.columns]
    if label_column not in columns:
        raise DataError(
            f"data file {str(path)!r} has no label column {label_column!r} (data.label_column);"
            f" its columns are {_preview(columns)}"
        )
    if len(frame) == 0:
        raise DataError(
            f"data file {str(path)!r} is empty: expected at least one sample, but it has only "
            f"a header with columns {_preview(columns)}"
        )
    frame.columns = pd.Index(columns)
    features = frame.drop(columns=[label_column])
    bad = [c for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]
    if bad:
        raise DataError(
            f"every column except the label {label_column!r} must be numeric, but "
            f"{len(bad)} are not: {_preview(bad)}"
        )
    if features.shape[1] == 0:
        raise DataError(
            f"data file {str(path)!r} has only the label column {label_column!r}, but "
            f"expected at least one feature column"
        )
    labels = frame[label_column]
    if labels.isna().any():
        raise DataError(
            f"label column {label_column!r} has {int(labels.isna().sum())} missing values, "
            f"but every sample needs a label"
        )
    return features.to_numpy(dtype=np.float64, na_value=np.nan), labels.to_numpy()


def _validate(
    x: np.ndarray, y: np.ndarray, source: str
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    if x.dtype.names or x.ndim > 2:
        x = _validate_inputs(x, source)
        return x, *_validate_labels(y, source)
    if len(x) == 0 or x.shape[1] == 0:
        raise DataError(
            f"{source} is empty: expected at least one sample and one feature, but got "
            f"shape {list(x.shape)}"
        )
    x = x.astype(np.float32)
    finite = np.isfinite(x)
    if not finite.all():
        cols = np.flatnonzero(~finite.all(axis=0)).tolist()
        raise DataError(
            f"{source} has {int((~finite).sum())} missing or non-finite feature values "
            f"(NaN or inf) in feature columns at positions {_preview(cols)}; expected "
            f"finite numbers everywhere"
        )
    return x, *_validate_labels(y, source)


def _validate_labels(y: np.ndarray, source: str) -> tuple[np.ndarray, list[str]]:
    if np.issubdtype(y.dtype, np.floating) and np.isnan(y).any():
        raise DataError(
            f"{source} has {int(np.isnan(y).sum())} missing labels (NaN), but every sample "
            f"needs a label"
        )
    if np.issubdtype(y.dtype, np.floating) and not np.all(np.mod(y, 1) == 0):
        examples = [float(v) for v in y[np.mod(y, 1) != 0][:3]]
        raise DataError(
            f"{source}: the label column must hold class labels (integers or strings), but "
            f"got non-integer floats such as {examples}"
        )
    classes, y_index = _encode_labels(y)
    if len(classes) < 2:
        raise DataError(
            f"{source} has {len(classes)} class(es) {classes}, but classification needs at least 2"
        )
    counts = np.bincount(y_index, minlength=len(classes))
    small = [f"{classes[i]!r} ({counts[i]})" for i in np.flatnonzero(counts < _MIN_PER_CLASS)]
    if small:
        raise DataError(
            f"every class needs at least {_MIN_PER_CLASS} samples for a stratified "
            f"train/val/test split, but these have fewer: {_preview(small)}"
        )
    return y_index.astype(np.int64), classes


def _encode_labels(y: np.ndarray) -> tuple[list[str], np.ndarray]:
    if np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0):
        y = y.astype(np.int64)
    if not (np.issubdtype(y.dtype, np.number) or y.dtype == np.bool_):
        y = y.astype(str)
    values, index = np.unique(y, return_inverse=True)
    return [str(v) for v in values.tolist()], index.reshape(-1)


def _split(
    x: np.ndarray, y: np.ndarray, section: DataSection, num_classes: int
) -> tuple[np.ndarray, ...]:
    n = len(y)
    n_test = int(np.ceil(section.test_fraction * n))
    n_val = int(np.ceil(section.val_fraction * n))
    if min(n_test, n_val, n - n_test - n_val) < num_classes:
        raise DataError(
            f"{n} samples are too few to split {num_classes} classes stratified with "
            f"val_fraction={section.val_fraction} and test_fraction={section.test_fraction}:"
            f" each split needs at least one sample per class, but would get "
            f"train={n - n_test - n_val}, val={n_val}, test={n_test}"
        )
    try:
        x_rest, x_test, y_rest, y_test = train_test_split(
            x, y, test_size=n_test, stratify=y, random_state=section.seed
        )
        x_train, x_val, y_train, y_val = train_test_split(
            x_rest, y_rest, test_size=n_val, stratify=y_rest, random_state=section.seed
        )
    except ValueError as err:
        raise DataError(f"cannot split the data stratified by class: {err}") from None
    return x_train, y_train, x_val, y_val, x_test, y_test


def _preview(items: list[Any], limit: int = 10) -> str:
    shown = ", ".join(str(i) for i in items[:limit])
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return f"[{shown}{more}]"
