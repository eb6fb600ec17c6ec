from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hamnet.core.config import DataSection
from hamnet.core.errors import DataError
from hamnet.training.data import Dataset, data_fingerprint, load_dataset


def _frame(n: int = 60, classes: int = 3, features: int = 4, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(n, features)), columns=[f"f{i}" for i in range(features)])
    frame["label"] = [f"class-{i % classes}" for i in range(n)]
    return frame


def _file_section(path: Path, **overrides: object) -> DataSection:
    return DataSection.model_validate({"source": "file", "path": path.name, **overrides})


def _all_rows(ds: Dataset) -> int:
    return len(ds.x_train) + len(ds.x_val) + len(ds.x_test)


def test_digits_split_is_deterministic() -> None:
    ds = load_dataset(DataSection())
    assert (ds.num_features, ds.num_classes) == (64, 10)
    assert ds.class_names == [str(i) for i in range(10)]
    assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (1167, 270, 360)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert set(np.unique(ds.y_test)) == set(range(10)), "every class is in every split"

    again = load_dataset(DataSection())
    np.testing.assert_array_equal(ds.x_train, again.x_train)
    np.testing.assert_array_equal(ds.y_val, again.y_val)
    other = load_dataset(DataSection(seed=1))
    assert not np.array_equal(ds.y_train, other.y_train)


def test_standardization_uses_train_statistics_only() -> None:
    ds = load_dataset(DataSection())
    raw = load_dataset(DataSection(standardize=False))
    assert ds.feature_mean is not None and ds.feature_std is not None
    mean, std = (
        raw.x_train.mean(axis=0, dtype=np.float64),
        raw.x_train.std(axis=0, dtype=np.float64),
    )
    np.testing.assert_allclose(ds.feature_mean, mean, rtol=1e-5)
    np.testing.assert_allclose(ds.feature_std, np.where(std == 0, 1.0, std), rtol=1e-5)
    np.testing.assert_allclose(ds.x_train.mean(axis=0), 0.0, atol=1e-5)
    constant = std == 0
    assert constant.any(), "digits has always-blank pixels"
    np.testing.assert_allclose(ds.x_train[:, ~constant].std(axis=0), 1.0, rtol=1e-4)
    expected_test = (raw.x_test - ds.feature_mean) / ds.feature_std
    np.testing.assert_allclose(ds.x_test, expected_test, atol=1e-5)
    assert abs(float(ds.x_test[:, ~constant].mean())) > 1e-4, "test is not re-centred"


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".npz"])
def test_load_file_formats(tmp_path: Path, suffix: str) -> None:
    frame = _frame()
    path = tmp_path / f"data{suffix}"
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".parquet":
        frame.to_parquet(path)
    else:
        np.savez(path, x=frame.drop(columns="label").to_numpy(), y=frame["label"].to_numpy(str))
    ds = load_dataset(_file_section(path, standardize=False), base_dir=tmp_path)
    assert (ds.num_features, ds.num_classes, _all_rows(ds)) == (4, 3, 60)
    assert ds.class_names == ["class-0", "class-1", "class-2"]
    assert suffix.lstrip(".") in ds.source
    rows = {tuple(r) for r in frame.drop(columns="label").to_numpy(np.float32)}
    assert {tuple(r) for r in ds.x_train} <= rows


def test_npz_label_key_and_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "images.npz"
    np.savez(path, X=rng.normal(size=(30, 2, 3)), target=np.repeat([5, 7, 9], 10))
    ds = load_dataset(_file_section(path, label_column="target"), base_dir=tmp_path)
    assert ds.num_features == 6
    assert ds.class_names == ["5", "7", "9"]
    assert set(np.unique(ds.y_train)) == {0, 1, 2}


def test_explicit_format_overrides_suffix(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    _frame().to_csv(path, index=False)
    with pytest.raises(DataError, match=r"suffix '\.txt': expected one of"):
        load_dataset(_file_section(path), base_dir=tmp_path)
    assert load_dataset(_file_section(path, format="csv"), base_dir=tmp_path).num_features == 4


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing\.csv' does not exist"):
        load_dataset(_file_section(tmp_path / "missing.csv"), base_dir=tmp_path)


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"could not read data file .* as parquet"):
        load_dataset(_file_section(path), base_dir=tmp_path)


def test_missing_label_column(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    _frame().rename(columns={"label": "target"}).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"no label column 'label'.*\[f0, f1, f2, f3, target\]"):
        load_dataset(_file_section(path), base_dir=tmp_path)


def test_non_numeric_columns(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    frame = _frame()
    frame["city"] = "paris"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"must be numeric, but 1 are not: \[city\]"):
        load_dataset(_file_section(path), base_dir=tmp_path)


def test_nan_features(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    frame = _frame()
    frame.loc[3, "f2"] = np.nan
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"1 missing or non-finite .* positions \[2\]"):
        load_dataset(_file_section(path), base_dir=tmp_path)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (["a"] * 20, "has 1 class"),
        (["a"] * 18 + ["b"] * 2, r"at least 3 samples .* \['b' \(2\)\]"),
    ],
)
def test_bad_label_distributions(tmp_path: Path, labels: list[str], message: str) -> None:
    path = tmp_path / "data.csv"
    frame = _frame(n=len(labels))
    frame["label"] = labels
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match=message):
        load_dataset(_file_section(path), base_dir=tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    _frame().iloc[:0].to_csv(path, index=False)
    with pytest.raises(DataError, match="is empty"):
        load_dataset(_file_section(path), base_dir=tmp_path)


def test_too_few_samples_to_split(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    _frame(n=12, classes=4).to_csv(path, index=False)
    with pytest.raises(DataError, match="too few to split 4 classes"):
        load_dataset(_file_section(path), base_dir=tmp_path)


def test_check_input_size() -> None:
    ds = load_dataset(DataSection())
    ds.check_input_size(64)
    with pytest.raises(DataError, match=r"data has 64 feature columns, but the model expects 10"):
        ds.check_input_size(10)


def test_calibration_samples() -> None:
    ds = load_dataset(DataSection())
    a = ds.calibration_samples(100, seed=1)
    assert a.shape == (100, 64) and a.dtype == np.float32
    np.testing.assert_array_equal(a, ds.calibration_samples(100, seed=1))
    assert not np.array_equal(a, ds.calibration_samples(100, seed=2))
    assert len(ds.calibration_samples(10_000)) == len(ds.x_train)
    with pytest.raises(DataError, match="n=0"):
        ds.calibration_samples(0)


def test_fingerprint(tmp_path: Path) -> None:
    assert data_fingerprint(DataSection()) == data_fingerprint(DataSection())
    assert data_fingerprint(DataSection()) != data_fingerprint(DataSection(seed=1))
    path = tmp_path / "data.csv"
    _frame().to_csv(path, index=False)
    section = _file_section(path)
    first = data_fingerprint(section, base_dir=tmp_path)
    assert len(first) == 16
    _frame(seed=1).to_csv(path, index=False)
    assert data_fingerprint(section, base_dir=tmp_path) != first
    with pytest.raises(DataError, match="does not exist"):
        data_fingerprint(_file_section(tmp_path / "gone.csv"), base_dir=tmp_path)


def test_npz_keeps_nd_inputs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "images.npz"
    np.savez(path, x=rng.normal(size=(60, 1, 8, 8)), y=np.repeat(np.arange(3), 20))
    ds = load_dataset(_file_section(path), base_dir=tmp_path)
    assert ds.x_train.shape[1:] == (1, 8, 8) and ds.x_train.dtype == np.float32
    assert (ds.num_features, ds.num_classes, _all_rows(ds)) == (64, 3, 60)
    assert ds.input_names is None and ds.targets == "labels"
    assert ds.feature_mean is not None and ds.feature_mean.shape == (1, 8, 8)
    assert ds.calibration_samples(5).shape == (5, 1, 8, 8)
    flat = ds.flattened()
    assert flat.x_train.shape == (len(ds.x_train), 64) and flat.num_features == 64
    np.testing.assert_array_equal(flat.x_test[0], ds.x_test[0].ravel())
    assert flat.feature_mean is not None and flat.feature_mean.shape == (64,)


def test_npz_named_inputs_and_reference_outputs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "tokens.npz"
    ids = rng.integers(0, 100, size=(50, 16))
    mask = np.ones((50, 16), dtype=np.int64)
    reference = rng.normal(size=(50, 16, 8)).astype(np.float32)
    np.savez(path, x__input_ids=ids, x__attention_mask=mask, reference=reference)
    ds = load_dataset(_file_section(path, standardize=False), base_dir=tmp_path)
    assert ds.input_names == ("input_ids", "attention_mask") and ds.targets == "reference"
    assert ds.x_train.dtype["input_ids"].base == np.int64
    assert ds.y_test.shape[1:] == (16, 8) and ds.num_classes == 0 and _all_rows(ds) == 50
    assert ds.num_features == 32
    rows = ds.x_test["input_ids"]
    for row, out in zip(rows, ds.y_test, strict=True):  # inputs and outputs stay paired
        match = np.flatnonzero((ids == row).all(axis=1))[0]
        np.testing.assert_array_equal(out, reference[match])
    with pytest.raises(DataError, match="named inputs"):
        ds.flattened()
    calibration = ds.calibration_samples(4)
    assert calibration.dtype.names == ("input_ids", "attention_mask") and len(calibration) == 4
    again = load_dataset(_file_section(path, standardize=False), base_dir=tmp_path)
    np.testing.assert_array_equal(again.x_test["input_ids"], rows)


def test_npz_named_inputs_errors(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(2), 10)
    cases = {
        "both.npz": ({"x": rng.normal(size=(20, 3)), "x__a": rng.normal(size=(20, 3)),
                      "y": labels}, "either one input 'x' or named inputs"),
        "sizes.npz": ({"x__a": rng.normal(size=(20, 3)), "x__b": rng.normal(size=(19, 3)),
                       "y": labels}, "same batch size"),
        "nan.npz": ({"x__a": np.full((20, 3), np.nan), "y": labels}, "input 'a' has 60 missing"),
        "ref.npz": ({"x__a": rng.normal(size=(20, 3)), "reference": labels},
                    "must hold the original model's float outputs"),
        "text.npz": ({"x__a": np.array(["a"] * 20), "y": labels}, "must be numeric"),
    }  # fmt: skip
    for name, (arrays, message) in cases.items():
        np.savez(tmp_path / name, **arrays)
        with pytest.raises(DataError, match=message):
            load_dataset(_file_section(tmp_path / name, standardize=False), base_dir=tmp_path)
    np.savez(tmp_path / "std.npz", x__a=rng.normal(size=(20, 3)), y=labels)
    with pytest.raises(DataError, match="standardize must be false for named inputs"):
        load_dataset(_file_section(tmp_path / "std.npz"), base_dir=tmp_path)


def test_a_hamnet_gets_image_inputs_flattened_an_onnx_model_as_stored(tmp_path: Path) -> None:
    from hamnet.core.config import config_from_dict
    from hamnet.pipeline.run import make_context

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "img.npz", x=rng.normal(size=(60, 1, 4, 4)), y=np.repeat(np.arange(3), 20))
    data = {"source": "file", "path": "img.npz", "format": "npz"}
    trained = config_from_dict({"data": data, "stages": {"train": {"epochs": 1}}})
    assert make_context(trained, tmp_path).dataset.x_train.shape[1:] == (16,)
    onnx = config_from_dict(
        {"data": data, "model": {"source": "file", "path": "m.onnx"}, "stages": {}}
    )
    assert make_context(onnx, tmp_path).dataset.x_train.shape[1:] == (1, 4, 4)
