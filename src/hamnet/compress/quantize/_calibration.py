"""Calibration inputs for the quantizers: batches for ONNX Runtime, items for NNCF."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from hamnet.backends.session import require
from hamnet.core.errors import DataError

CALIBRATION_BATCH_SIZE = 32
"""Rows per calibration batch fed to ONNX Runtime's calibrator."""


def feeds(data: np.ndarray, names: list[str]) -> list[dict[str, np.ndarray]]:
    """Return one ``{input name: [1, ...]}`` feed per calibration sample.

    Raises:
        DataError: Named calibration inputs do not match the model's inputs ``names``.
    """
    from hamnet.backends.session import unpack_inputs

    out = []
    for i in range(len(data)):
        row = unpack_inputs(data[i : i + 1])
        if isinstance(row, dict):
            if sorted(row) != sorted(names):
                raise DataError(
                    f"calibration inputs must be named {names} (the model's inputs), but got "
                    f"{sorted(row)}"
                )
            out.append(row)
        else:
            out.append({names[0]: row})
    return out


def nncf_items(data: np.ndarray, names: list[str]) -> list[Any]:
    """One calibration item per sample: an array, or ``{name: array}`` for named inputs."""
    if data.dtype.names is None:
        return [data[i : i + 1] for i in range(len(data))]
    return feeds(data, names)


class _ArrayReader:
    """Feeds calibration inputs to ONNX Runtime in fixed-size batches.

    ``data`` is one array (fed as ``input_name``) or a structured array / mapping of
    named inputs (fed by name; ``input_name`` is then ignored).
    """

    def __init__(self, data: Any, input_name: str, batch_size: int) -> None:
        from hamnet.backends.session import pack_inputs

        self.data = pack_inputs(data)
        self.input_name = input_name
        self.batch_size = batch_size
        self._batches: Iterator[dict[str, np.ndarray]] = self._iterate()

    def _iterate(self) -> Iterator[dict[str, np.ndarray]]:
        from hamnet.backends.session import unpack_inputs

        for start in range(0, len(self.data), self.batch_size):
            batch = unpack_inputs(self.data[start : start + self.batch_size])
            yield batch if isinstance(batch, dict) else {self.input_name: batch}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:
        self._batches = self._iterate()


def make_calibration_reader(
    data: Any, input_name: str = "input", batch_size: int = CALIBRATION_BATCH_SIZE
) -> Any:
    """Return an ``onnxruntime.quantization.CalibrationDataReader`` over ``data``.

    Args:
        data: Inputs ``[N, ...]`` (one array), or named inputs (a mapping or a
            structured array), fed by name.
        input_name: The model's input name (for one array).
        batch_size: Rows per batch.

    Returns:
        A reader that ONNX Runtime's ``quantize_static`` accepts.
    """
    quantization = require("onnxruntime.quantization", "onnxruntime")

    class ArrayCalibrationReader(_ArrayReader, quantization.CalibrationDataReader):  # type: ignore[misc,name-defined]
        pass

    return ArrayCalibrationReader(data, input_name, batch_size)
