"""Export torch models to deployable formats, and check that the outputs still match.

:func:`export_onnx` writes an ONNX file with the TorchScript exporter (fast, and its
graphs fuse well in ONNX Runtime), :func:`convert_openvino` turns an ONNX file into
OpenVINO IR (``model.xml`` + ``model.bin``), and :func:`check_parity` compares two
:class:`~hamnet.runtimes.InferenceSession` objects on the same inputs.

Example:
    >>> onnx_path = export_onnx(model, input_size=64, path="out/model.onnx")
    >>> xml_path = convert_openvino(onnx_path, "out/model.xml")
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hamnet.errors import ExportError
from hamnet.runtimes import require

if TYPE_CHECKING:
    from torch import nn

    from hamnet.artifacts import ArtifactRef, ArtifactStore
    from hamnet.hardware import HardwareProfile
    from hamnet.models import HAMNet
    from hamnet.runtimes import InferenceSession

INPUT_NAME = "input"
"""Name of the single input of every exported graph ([batch, features], float32)."""

OUTPUT_NAME = "logits"
"""Name of the single output of every exported graph ([batch, classes], float32)."""


def export_onnx(model: nn.Module, input_size: int, path: str | Path, *, opset: int = 17) -> Path:
    """Export a torch model to ONNX with a dynamic batch axis.

    The TorchScript exporter (``dynamo=False``) is used; the model is exported in eval
    mode and its previous mode is restored afterwards. The result is checked with
    ``onnx.checker.check_model``.

    Args:
        model: A module mapping float32 ``[batch, input_size]`` to ``[batch, classes]``.
        input_size: Number of input features.
        path: Where to write the ``.onnx`` file (parent folders are created).
        opset: ONNX opset version.

    Returns:
        The path of the written file.

    Raises:
        ExportError: If the exporter or the ONNX checker fails.
        MissingDependencyError: If ``onnx`` is not installed.
    """
    import torch

    onnx = require("onnx")
    if input_size < 1:
        raise ExportError(f"input_size must be positive, but got {input_size}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    dummy = torch.randn(2, input_size, device=device)
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            # The legacy exporter warns that it is deprecated; it is chosen on purpose.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            torch.onnx.export(
                model,
                (dummy,),
                str(path),
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=opset,
                do_constant_folding=True,
            )
        onnx.checker.check_model(str(path))
    except Exception as err:
        raise ExportError(
            f"ONNX export of {type(model).__name__} (input_size={input_size}, opset={opset}) "
            f"to {str(path)!r} failed: {type(err).__name__}: {err}"
        ) from err
    finally:
        model.train(was_training)
    return path


def onnx_session(
    model: HAMNet, store: ArtifactStore, profile: HardwareProfile
) -> tuple[InferenceSession, ArtifactRef]:
    """Export a HAMNet to ONNX into ``store`` and open it in ONNX Runtime on ``profile``.

    The one path the searches (R-SPAR episodes, NAS trials) and the pruning benchmark
    use to time a model the way the pipeline measures its ONNX Runtime candidates.

    Returns:
        The session and the stored ONNX file.
    """
    from hamnet.runtimes import load_session

    path = export_onnx(model, model.config.input_size, store.staging_dir() / "model.onnx")
    ref = store.put(path, "onnx")
    return load_session(ref, "onnxruntime", profile), ref


def convert_openvino(
    onnx_path: str | Path, xml_path: str | Path, *, compress_to_fp16: bool = False
) -> Path:
    """Convert an ONNX file to OpenVINO IR.

    ``openvino.save_model`` compresses weights to FP16 unless told otherwise; here FP32
    is the default so an exported model keeps its precision.

    Args:
        onnx_path: The source ONNX file.
        xml_path: Where to write ``model.xml`` (``model.bin`` is written beside it).
        compress_to_fp16: Store the weights as FP16 (halves the file).

    Returns:
        The path of the ``.xml`` file.

    Raises:
        ExportError: If conversion or saving fails.
        MissingDependencyError: If ``openvino`` is not installed.
    """
    ov = require("openvino")
    onnx_path, xml_path = Path(onnx_path), Path(xml_path)
    if xml_path.suffix != ".xml":
        raise ExportError(f"OpenVINO IR path must end with .xml, but got {str(xml_path)!r}")
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        ov_model = ov.convert_model(str(onnx_path))
        ov.save_model(ov_model, str(xml_path), compress_to_fp16=compress_to_fp16)
    except Exception as err:
        raise ExportError(
            f"OpenVINO conversion of {str(onnx_path)!r} to {str(xml_path)!r} failed: "
            f"{type(err).__name__}: {err}"
        ) from err
    return xml_path


def max_abs_diff(
    reference: InferenceSession,
    candidate: InferenceSession,
    x: np.ndarray,
    batch_size: int = 64,
) -> float:
    """Return the largest absolute difference between two sessions' outputs on ``x``.

    Args:
        reference: The session whose outputs are trusted.
        candidate: The session being checked.
        x: Float32 inputs ``[N, features]``.
        batch_size: Rows per call.

    Returns:
        The maximum over every output element; ``inf`` if either output is not finite.

    Raises:
        ExportError: If ``x`` is empty or the output shapes differ.
    """
    if len(x) == 0:
        raise ExportError("parity needs at least one input row, but got an empty array")
    if batch_size < 1:
        raise ExportError(f"batch_size must be positive, but got {batch_size}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    worst = 0.0
    for start in range(0, len(x), batch_size):
        chunk = x[start : start + batch_size]
        ref = np.asarray(reference.run(chunk), dtype=np.float64)
        got = np.asarray(candidate.run(chunk), dtype=np.float64)
        if ref.shape != got.shape:
            raise ExportError(
                f"output shapes differ: {reference.runtime} gives {ref.shape}, "
                f"{candidate.runtime} gives {got.shape}"
            )
        if not (np.isfinite(ref).all() and np.isfinite(got).all()):
            return float("inf")
        worst = max(worst, float(np.max(np.abs(ref - got), initial=0.0)))
    return worst


def check_parity(
    reference: InferenceSession, candidate: InferenceSession, x: np.ndarray, atol: float
) -> float:
    """Check that ``candidate`` reproduces ``reference`` within ``atol`` on ``x``.

    Args:
        reference: The session whose outputs are trusted.
        candidate: The session being checked.
        x: Float32 inputs ``[N, features]``.
        atol: The largest absolute difference allowed.

    Returns:
        The largest absolute difference found.

    Raises:
        ExportError: If the difference exceeds ``atol`` (or an output is not finite).
    """
    diff = max_abs_diff(reference, candidate, x)
    if not diff <= atol:
        raise ExportError(
            f"outputs differ by up to {diff:.3g}, more than the tolerance atol={atol:g} "
            f"({candidate.runtime} vs {reference.runtime} on {len(x)} samples)"
        )
    return diff
