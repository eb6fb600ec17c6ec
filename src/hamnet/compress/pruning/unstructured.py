"""Unstructured magnitude sparsity, offered as an honest baseline.

Zeroing individual weights leaves every matrix dense: ONNX Runtime and OpenVINO CPU
kernels multiply the zeros like any other value, so latency and memory do not improve.
The only gain is that a compressed copy of the model file is smaller, which
:class:`UnstructuredReport` measures and states.
"""

from __future__ import annotations

import copy
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import prune

from hamnet.core.errors import ConfigError

NOTE_DENSE = (
    "unstructured sparsity leaves every matrix dense: ONNX Runtime/OpenVINO CPU kernels do "
    "the same work, so latency does not improve; the ONNX file only shrinks when stored "
    "compressed"
)


@dataclass
class UnstructuredReport:
    """The outcome of :func:`unstructured_sparsity`.

    Attributes:
        model: A sparsified copy (zeros written into the weights, shapes unchanged).
        sparsity_achieved: Fraction of zero weights over all ``nn.Linear`` weights.
        dense_onnx_bytes: Size of the exported ONNX file as written.
        zipped_onnx_bytes: Size of that file compressed with zlib.
        notes: Plain statements of what the sparsity does and does not buy.
    """

    model: nn.Module
    sparsity_achieved: float
    dense_onnx_bytes: int
    zipped_onnx_bytes: int
    notes: list[str] = field(default_factory=list)


def unstructured_sparsity(
    model: nn.Module, sparsity: float, *, input_size: int | None = None
) -> UnstructuredReport:
    """Zero the smallest-magnitude fraction of every ``nn.Linear`` weight.

    Each layer's weight gets ``torch.nn.utils.prune.l1_unstructured`` with ``amount =
    sparsity`` followed by ``prune.remove`` (the zeros are written into the weight, no
    mask or hook stays). Runs on a deep copy; ``model`` is not modified.

    Args:
        model: The model, mapping float32 ``[batch, input_size]`` to logits.
        sparsity: Fraction of each layer's weights to zero, in ``[0, 1)``.
        input_size: Input features for the ONNX export; read from ``model.config``
            (a HAMNet) when None.

    Returns:
        The sparsified copy, the achieved sparsity, the ONNX sizes and notes.

    Raises:
        ConfigError: If ``sparsity`` is out of range, the model has no ``nn.Linear``,
            or the input size is unknown.
        ExportError: If the ONNX export fails.
    """
    from hamnet.backends.export import export_onnx

    if not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"sparsity must be in [0, 1), but got {sparsity}")
    if input_size is None:
        input_size = getattr(getattr(model, "config", None), "input_size", None)
        if input_size is None:
            raise ConfigError(
                f"input_size is needed for the ONNX export, but got None and "
                f"{type(model).__name__} has no config.input_size"
            )
    sparse = copy.deepcopy(model)
    linears = [m for m in sparse.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(
            f"unstructured sparsity needs nn.Linear layers, but got {type(model).__name__} "
            "with none"
        )
    for module in linears:
        prune.l1_unstructured(module, name="weight", amount=float(sparsity))
        prune.remove(module, "weight")
    with torch.no_grad():
        zeros = sum(int((m.weight == 0).sum()) for m in linears)
        total = sum(m.weight.numel() for m in linears)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(sparse, int(input_size), Path(tmp) / "sparse.onnx")
        raw = path.read_bytes()
    return UnstructuredReport(
        model=sparse,
        sparsity_achieved=zeros / total,
        dense_onnx_bytes=len(raw),
        zipped_onnx_bytes=len(zlib.compress(raw, 9)),
        notes=[NOTE_DENSE],
    )
