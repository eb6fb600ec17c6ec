"""What hamnet reads from an ONNX file: its inputs and operator types, checked against data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hamnet.backends.onnx_graph import graph_facts
from hamnet.core.errors import DataError, ModelLoadError

if TYPE_CHECKING:
    from hamnet.training.data import Dataset


def onnx_inputs(path: Path) -> dict[str, list[int | None]]:
    """The graph inputs of an ONNX file: ``{name: dims}`` (None for a dynamic axis).

    Raises:
        ModelLoadError: If the file is not a readable ONNX model or has no input.
    """
    inputs = {name: list(dims) for name, dims in graph_facts(Path(path)).inputs.items()}
    if not inputs:
        raise ModelLoadError(f"ONNX model {str(path)!r} must have at least one input, but has none")
    return inputs


def check_onnx_inputs(path: Path, dataset: Dataset) -> None:
    """Check an ONNX model's inputs against the data's (names, ranks, static sizes).

    Raises:
        ModelLoadError: If the file is not a readable ONNX model or has no input.
        DataError: If its inputs differ from the data's.
    """
    check_inputs_against(onnx_inputs(path), dataset, f"ONNX model {str(path)!r}")


def check_inputs_against(
    inputs: Mapping[str, Sequence[int | None]], dataset: Dataset, model: str
) -> None:
    """Check a model's inputs ``{name: dims}`` (None: any size) against the data's names,
    ranks and sizes; ``model`` names the model in the messages.

    Raises:
        DataError: If the model's inputs differ from the data's.
    """
    import numpy as np

    x = dataset.x_test
    if dataset.input_names is not None:
        if sorted(inputs) != sorted(dataset.input_names):
            raise DataError(
                f"the data's named inputs must match the inputs of {model} "
                f"{sorted(inputs)}, but got {sorted(dataset.input_names)}"
            )
        shapes = {n: (len(x), *x.dtype[n].shape) for n in dataset.input_names}
    else:
        if len(inputs) != 1:
            raise DataError(
                f"data with one input array must match a model with one input, but "
                f"{model} has inputs {sorted(inputs)}: store named inputs as "
                f"'x__<name>' arrays"
            )
        shapes = {next(iter(inputs)): tuple(np.shape(x))}
    for name, dims in inputs.items():
        shape = shapes[name]
        if len(dims) != len(shape):
            raise DataError(
                f"input {name!r} of {model} must be {len(dims)}-D "
                f"{['?' if d is None else d for d in dims]}, but the data has shape "
                f"{['N', *shape[1:]]}"
            )
        if len(dims) == 2 and dataset.input_names is None and dims[1] is not None:
            dataset.check_input_size(int(dims[1]))
        for axis, (want, got) in enumerate(zip(dims, shape, strict=True)):
            if axis > 0 and want is not None and want != got:
                raise DataError(
                    f"input {name!r} of {model} must have size {want} on axis {axis}, but "
                    f"the data has {got}"
                )
