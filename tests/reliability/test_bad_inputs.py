"""Bad inputs: each one is a clear hamnet error before any work starts, and leaves nothing.

Each case builds a project folder with one defect and calls what a user calls (the
pipeline's preflight through :class:`hamnet.pipeline.run.PipelineRun`, the config and
search-space loaders, the checkpoint loader). The error must be the project's, name
what must hold and what was got, and no file may be left in the workdir.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import tiny_config, tiny_hamnet

from hamnet.core.errors import (
    ConfigError,
    DataError,
    HamnetError,
    HardwareProfileError,
    ModelLoadError,
)

from .conftest import FaultTable, Stopwatch, files_under


def _start(project: Path, **overrides: Any) -> None:
    """What ``hamnet run`` does first: validate the config and preflight it."""
    from hamnet.core.config import config_from_dict
    from hamnet.pipeline.run import PipelineRun

    cfg = tiny_config(tracking={"mlflow_uri": f"sqlite:///{project / 'mlflow.db'}"}, **overrides)
    PipelineRun(config_from_dict(cfg), base_dir=project)


def _model_file(project: Path, name: str) -> dict[str, Any]:
    return {"model": {"source": "file", "path": name}, "stages": {"train": None}}


def _digits_like(project: Path, x: np.ndarray, y: Any) -> dict[str, Any]:
    import pandas as pd

    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(x.shape[1])])
    frame["label"] = y
    frame.to_csv(project / "data.csv", index=False)
    return {"data": {"source": "file", "path": "data.csv"}}


def _x(n: int = 60, features: int = 16) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, features))


def corrupt_onnx(project: Path) -> None:
    (project / "model.onnx").write_bytes(b"\x08\x07this is not a protobuf graph" * 10)
    _start(project, **_model_file(project, "model.onnx"))


def truncated_checkpoint(project: Path) -> None:
    from hamnet.models import save_checkpoint

    path = save_checkpoint(tiny_hamnet(input_size=64, num_classes=10, token_size=8), "m.pt")
    data = path.read_bytes()
    (project / "model.pt").write_bytes(data[: len(data) // 2])
    path.unlink()
    _start(project, **_model_file(project, "model.pt"))


def pickling_checkpoint(project: Path) -> None:
    _pickled_checkpoint(project / "model.pt")
    _start(project, **_model_file(project, "model.pt"))


def _pickled_checkpoint(path: Path) -> Path:
    """A valid hamnet checkpoint that also pickles a Python object (needs weights_only=False)."""
    import torch

    from hamnet.models import save_checkpoint

    save_checkpoint(tiny_hamnet(input_size=64, num_classes=10, token_size=8), path)
    payload = torch.load(path, weights_only=True)
    payload["extra"] = argparse.Namespace(note="arbitrary Python object")
    torch.save(payload, path)
    return path


def nan_in_data(project: Path) -> None:
    x = _x()
    x[3, 5] = np.nan
    x[7, 2] = np.inf
    _start(project, **_digits_like(project, x, np.arange(60) % 3))


def empty_data(project: Path) -> None:
    _start(project, **_digits_like(project, _x(0), np.array([], dtype=int)))


def label_of_wrong_type(project: Path) -> None:
    """Continuous float labels (a regression target) where class labels are expected."""
    y = np.random.default_rng(1).uniform(0.0, 1.0, size=60)
    _start(project, **_digits_like(project, _x(), y))


def search_space_empty_range(project: Path) -> None:
    from hamnet.compress.search.space import search_space_from_dict

    space = {"training": {"learning_rate": {"type": "float", "low": 0.01, "high": 0.001}}}
    search_space_from_dict(space, source="space.yaml")


def config_key_typo(project: Path) -> None:
    _start(project, stages={"train": {"epoch": 3}})


def absent_hardware(project: Path) -> None:
    _start(project, hardware_profile="nvidia-gpu")


@dataclass
class Case:
    build: Callable[[Path], None]
    error: type[HamnetError]
    message: str  # a regex the message must match


CASES = {
    "corrupt ONNX file": Case(corrupt_onnx, ModelLoadError, r"model\.onnx"),
    "truncated checkpoint": Case(truncated_checkpoint, ModelLoadError, r"not a readable torch"),
    "checkpoint that needs pickle": Case(
        pickling_checkpoint, ModelLoadError, r"pickles Python code.*trust_checkpoint: true"
    ),
    "NaN/inf in data": Case(nan_in_data, DataError, r"2 missing or non-finite"),
    "empty data set": Case(empty_data, DataError, r"is empty"),
    "label column of wrong type (float)": Case(
        label_of_wrong_type, DataError, r"must hold class labels"
    ),
    "search space with an empty range": Case(
        search_space_empty_range, ConfigError, r"empty range: low must be below high"
    ),
    "config key typo": Case(config_key_typo, ConfigError, r"did you mean 'epochs'\?"),
    "hardware profile not present": Case(absent_hardware, HardwareProfileError, r"nvidia-gpu"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_a_clear_error_and_leaves_nothing(
    name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fault_table: FaultTable,
    request: pytest.FixtureRequest,
) -> None:
    monkeypatch.chdir(tmp_path)  # anything written by accident would land here
    case = CASES[name]
    before = set(files_under(tmp_path))
    with Stopwatch() as sw, pytest.raises(HamnetError) as info:
        case.build(tmp_path)
    message = str(info.value)
    left = sorted(set(files_under(tmp_path)) - before - _inputs(tmp_path))
    shown = message.splitlines()[-1].replace(str(tmp_path), "<project>").strip()[:140]
    fault_table.add(
        request,
        f"bad input: {name}",
        f"{type(info.value).__name__} after {sw.seconds:.2f} s: {shown}",
        "nothing; no file written" if not left else f"left {left}",
    )
    assert isinstance(info.value, case.error), message
    assert re.search(case.message, message, flags=re.IGNORECASE | re.DOTALL), message
    assert left == [], f"partial state left behind: {left}"
    assert not (tmp_path / ".hamnet").exists()


def _inputs(project: Path) -> set[Path]:
    return {project / n for n in ("model.onnx", "model.pt", "data.csv")}


def test_a_pickling_checkpoint_loads_when_the_user_opts_in(tmp_path: Path) -> None:
    from hamnet.models import load_checkpoint

    path = _pickled_checkpoint(tmp_path / "model.pt")
    with pytest.raises(ModelLoadError, match="weights_only=False"):
        load_checkpoint(path)
    assert load_checkpoint(path, trust=True).config.input_size == 64
