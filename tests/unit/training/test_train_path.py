"""``data.train_path``: separate training rows; ``data.path`` splits into validation and test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hamnet.core.config import DataSection
from hamnet.core.errors import DataError
from hamnet.training.data import data_fingerprint, load_dataset


def _npz(path: Path, n: int, seed: int, **extra: np.ndarray) -> Path:
    rng = np.random.default_rng(seed)
    arrays = {"x": rng.normal(size=(n, 6)).astype(np.float32), **extra}
    if "y" not in extra and "reference" not in extra:
        arrays["y"] = np.arange(n) % 3
    np.savez(path, **arrays)
    return path


def test_train_rows_train_and_path_rows_split_into_val_and_test(tmp_path: Path) -> None:
    _npz(tmp_path / "eval.npz", 60, 0)
    _npz(tmp_path / "train.npz", 90, 1)
    section = DataSection(source="file", path="eval.npz", train_path="train.npz", standardize=False)
    data = load_dataset(section, base_dir=tmp_path)
    assert len(data.x_train) == 90 and len(data.x_val) + len(data.x_test) == 60
    assert len(data.x_val) == round(60 * 0.15 / 0.35)
    assert set(np.unique(data.y_val)) == {0, 1, 2} and data.num_classes == 3
    before = data_fingerprint(section, tmp_path)
    _npz(tmp_path / "train.npz", 90, 2)
    assert data_fingerprint(section, tmp_path) != before


def test_train_file_must_match_the_evaluation_data(tmp_path: Path) -> None:
    _npz(tmp_path / "eval.npz", 60, 0)
    np.savez(tmp_path / "wide.npz", x=np.zeros((10, 7), np.float32), y=np.arange(10) % 3)
    np.savez(tmp_path / "new.npz", x=np.zeros((10, 6), np.float32), y=np.arange(10) % 4)
    ref = np.zeros((10, 3), np.float32)
    np.savez(tmp_path / "ref.npz", x=np.zeros((10, 6), np.float32), reference=ref)
    cases = {
        "wide.npz": r"inputs like data.path \(shape \[6\].*but got shape \[7\]",
        "new.npz": r"labels \[3\] that data.path does not",
        "ref.npz": "must hold labels like data.path",
    }
    for name, message in cases.items():
        section = DataSection(source="file", path="eval.npz", train_path=name)
        with pytest.raises(DataError, match=message):
            load_dataset(section, base_dir=tmp_path)
    with pytest.raises(ValueError, match=r"train_path needs data\.source 'file'"):
        DataSection(train_path="train.npz")
