"""What the families do with a module artifact (a user's torch module, ``module.json``).

A module artifact (:mod:`hamnet.models.sources`) names where the user's module comes
from and its inputs; the family it belongs to (conv, transformer, generic) is recorded
in it when it is written, or told from the loaded module otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from hamnet.families._onnx import check_inputs_against

if TYPE_CHECKING:
    import numpy as np

    from hamnet.training.data import Dataset

MODULE_SUFFIX = ".json"
"""Suffix of a module artifact's main file."""


def is_module_artifact(path: Path | None) -> bool:
    """Whether ``path`` is a module artifact's main file."""
    return path is not None and path.suffix.lower() == MODULE_SUFFIX


def family_name(path: Path) -> str | None:
    """The family a module artifact records (None when it records none)."""
    import json

    try:
        recorded = json.loads(Path(path).read_text()).get("family")
    except (OSError, ValueError, AttributeError):
        return None
    return recorded if isinstance(recorded, str) else None


def load_module(path: Path, *, trust_checkpoint: bool = False) -> Any:
    """The module of a module artifact (eval mode, CPU)."""
    from hamnet.models.sources import load_module_artifact

    return load_module_artifact(path, trust_checkpoint=trust_checkpoint)


def input_dims(path: Path) -> dict[str, list[int | None]]:
    """The module's inputs ``{name: dims}`` with a dynamic batch axis, and a dynamic
    sequence axis for integer inputs of two or more axes (token ids, masks)."""
    from hamnet.models.sources import read_module_artifact

    spec = read_module_artifact(path).inputs
    dtypes = (
        {name: one.dtype for name, one in spec.root.items()}
        if isinstance(spec.root, dict)
        else {"input": spec.root.dtype}
    )
    dims: dict[str, list[int | None]] = {}
    for name, shape in spec.shapes().items():
        tokens = len(shape) >= 2 and not dtypes[name].startswith(("float", "bfloat"))
        dims[name] = [None, None, *shape[2:]] if tokens else [None, *shape[1:]]
    return dims


def predict_module(path: Path, x: Any, *, trust_checkpoint: bool = False) -> np.ndarray:
    """The module's outputs on ``x`` (an array, a dict or a structured array), batched."""
    from hamnet.backends.runtimes.torch import TorchSession
    from hamnet.evaluate.measure import predict

    module = load_module(path, trust_checkpoint=trust_checkpoint)
    return predict(TorchSession(module, "cpu"), x, 64)


def check_module_data(path: Path, dataset: Dataset, *, trust_checkpoint: bool = False) -> None:
    """Check the data's inputs against the module artifact's (names, ranks, sizes).

    Raises:
        DataError: The data's inputs differ from the module's.
    """
    check_inputs_against(input_dims(path), dataset, "the model")
