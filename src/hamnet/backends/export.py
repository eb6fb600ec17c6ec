"""Export torch models to deployable formats, and check that the outputs still match.

:func:`export_onnx` writes an ONNX file with the TorchScript exporter (fast, and its
graphs fuse well in ONNX Runtime), :func:`export_module` does the same for any
traceable module with example inputs (a tensor, a tuple or a dict of named inputs;
Hugging Face models whose forward returns a ``ModelOutput`` export its first tensor)
and checks parity with ONNX Runtime, :func:`convert_openvino` (owned by
:mod:`hamnet.backends.runtimes.openvino`, importable from here) turns an ONNX file into
OpenVINO IR (``model.xml`` + ``model.bin``), and :func:`check_parity` compares two
:class:`~hamnet.backends.session.InferenceSession` objects on the same inputs.

Example:
    >>> onnx_path = export_onnx(model, input_size=64, path="out/model.onnx")
    >>> xml_path = convert_openvino(onnx_path, "out/model.xml")
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hamnet.backends.inputs import batch_size_of, pack_inputs, unpack_inputs
from hamnet.backends.onnx_graph import ORT_DOMAIN as ORT_DOMAIN
from hamnet.backends.onnx_graph import uses_ort_contrib_ops as uses_ort_contrib_ops
from hamnet.backends.runtimes.base import require
from hamnet.backends.runtimes.openvino import convert_openvino as convert_openvino
from hamnet.core.errors import ExportError

if TYPE_CHECKING:
    from torch import nn

    from hamnet.backends.inputs import Inputs
    from hamnet.backends.runtimes.base import InferenceSession
    from hamnet.core.artifacts import ArtifactRef, ArtifactStore
    from hamnet.core.hardware import HardwareProfile
    from hamnet.models import HAMNet

INPUT_NAME = "input"
"""Name of the single input of every exported graph ([batch, features], float32)."""

OUTPUT_NAME = "logits"
"""Name of the single output of every exported graph ([batch, classes], float32)."""


def export_onnx(
    model: nn.Module,
    input_size: int,
    path: str | Path,
    *,
    opset: int = 17,
    ort_fused_attention: bool = False,
) -> Path:
    """Export a torch model to ONNX with a dynamic batch axis.

    The TorchScript exporter (``dynamo=False``) is used; the model is exported in eval
    mode and its previous mode is restored afterwards. The result is checked with
    ``onnx.checker.check_model``.

    Args:
        model: A module mapping float32 ``[batch, input_size]`` to ``[batch, classes]``.
        input_size: Number of input features.
        path: Where to write the ``.onnx`` file (parent folders are created).
        opset: ONNX opset version.
        ort_fused_attention: Write each HAMNet attention as one ONNX Runtime
            ``com.microsoft.Attention`` node (see
            :func:`~hamnet.models.hamnet.ort_attention_export`): fewer operators, which
            is what batch-1 latency of small models is made of, but a graph only ONNX
            Runtime runs. The model must contain HAMNet attention modules.

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
    from hamnet.models.hamnet import folded_one_token_attention

    fused = _fused_attention_context(model, ort_fused_attention)
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings(), fused, folded_one_token_attention(model):
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
                custom_opsets={ORT_DOMAIN: 1} if ort_fused_attention else None,
            )
        onnx.checker.check_model(str(path))
    except Exception as err:
        raise ExportError(
            f"ONNX export of {type(model).__name__} (input_size={input_size}, opset={opset}"
            f"{', ort_fused_attention' if ort_fused_attention else ''}) "
            f"to {str(path)!r} failed: {type(err).__name__}: {err}"
        ) from err
    finally:
        model.train(was_training)
    return path


def _fused_attention_context(
    model: nn.Module, enabled: bool
) -> contextlib.AbstractContextManager[None]:
    if not enabled:
        return contextlib.nullcontext()
    from hamnet.models.hamnet import MultiHeadSelfAttention, ort_attention_export

    if not any(isinstance(m, MultiHeadSelfAttention) for m in model.modules()):
        raise ExportError(
            "ort_fused_attention needs a model with HAMNet attention (MultiHeadSelfAttention "
            f"modules), but {type(model).__name__} has none"
        )
    return ort_attention_export(model)


GENERIC_OUTPUT_NAME = "output"
"""Name of the output of a graph exported by :func:`export_module`."""


def _named_examples(
    example_inputs: Any, input_names: Sequence[str] | None
) -> tuple[list[str], list[Any], bool]:
    """Return (names, tensors, as_keywords) for any accepted form of example inputs."""
    import torch

    if isinstance(example_inputs, torch.Tensor):
        tensors, keywords = [example_inputs], False
        names = list(input_names) if input_names is not None else ["input"]
    elif isinstance(example_inputs, Mapping):
        names = [str(k) for k in example_inputs]
        tensors, keywords = list(example_inputs.values()), True
        if input_names is not None and list(input_names) != names:
            raise ExportError(
                f"input_names must match the keys of example_inputs {names}, but got "
                f"{list(input_names)}"
            )
    elif isinstance(example_inputs, (tuple, list)):
        tensors, keywords = list(example_inputs), False
        default = ["input"] if len(tensors) == 1 else [f"input_{i}" for i in range(len(tensors))]
        names = list(input_names) if input_names is not None else default
    else:
        raise ExportError(
            f"example_inputs must be a tensor, a tuple of tensors or a dict of named tensors, "
            f"but got {type(example_inputs).__name__}"
        )
    bad = [n for n, t in zip(names, tensors, strict=False) if not isinstance(t, torch.Tensor)]
    if not tensors or bad:
        raise ExportError(
            f"example_inputs must hold at least one tensor and only tensors, but got "
            f"non-tensors for {bad or 'nothing'}"
        )
    if len(names) != len(tensors) or len(set(names)) != len(names):
        raise ExportError(
            f"input_names must name each of the {len(tensors)} example inputs once, but got {names}"
        )
    bad_rank = [n for n, t in zip(names, tensors, strict=True) if t.ndim < 1]
    if bad_rank:
        raise ExportError(f"every example input must have a batch axis, but {bad_rank} are 0-D")
    return names, tensors, keywords


def _first_output_module(model: nn.Module, names: list[str], keywords: bool) -> nn.Module:
    """Wrap ``model`` so that it takes positional tensors and returns its first tensor."""
    from torch import nn

    from hamnet.backends.runtimes.torch import first_tensor

    class FirstOutput(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, *args: Any) -> Any:
            out = (
                self.inner(**dict(zip(names, args, strict=True))) if keywords else self.inner(*args)
            )
            return first_tensor(out)

    return FirstOutput()


def default_dynamic_axes(
    names: Sequence[str], tensors: Sequence[Any], output_rank: int
) -> dict[str, dict[int, str]]:
    """Axis 0 of every input and of the output is ``batch``; integer inputs with two or
    more axes (token ids, attention masks) get a ``sequence`` axis 1, and so does an
    output with three or more axes (``[batch, sequence, hidden]``)."""
    import torch

    axes: dict[str, dict[int, str]] = {}
    tokens = False
    for name, tensor in zip(names, tensors, strict=True):
        axes[name] = {0: "batch"}
        if tensor.ndim >= 2 and not torch.is_floating_point(tensor):
            axes[name][1] = "sequence"
            tokens = True
    axes[GENERIC_OUTPUT_NAME] = {0: "batch"}
    if tokens and output_rank >= 3:
        axes[GENERIC_OUTPUT_NAME][1] = "sequence"
    return axes


def use_eager_attention(model: nn.Module) -> bool:
    """Switch a Hugging Face model to eager attention (plain MatMul + Softmax).

    SDPA attention exports to a graph ONNX Runtime's transformer fusion does not
    match. Returns whether the model is a Hugging Face model now on eager attention.
    """
    config = getattr(model, "config", None)
    current = getattr(config, "_attn_implementation", None)
    if current is None:
        return False
    if current != "eager":
        setter = getattr(model, "set_attn_implementation", None)
        if not callable(setter):
            return False
        setter("eager")
    return getattr(config, "_attn_implementation", None) == "eager"


def hugging_face_part(model: nn.Module) -> nn.Module | None:
    """The Hugging Face model inside ``model``: itself, else the first submodule with a
    Hugging Face config (a user's wrapper, e.g. a mean-pooling sentence encoder), or None."""
    for module in model.modules():
        if getattr(getattr(module, "config", None), "_attn_implementation", None) is not None:
            return module
    return None


def _transformer_shape(model: nn.Module) -> tuple[int, int] | None:
    """``(num_heads, attention width)`` for ONNX Runtime's fusion, or None.

    From the Hugging Face config, or, when every layer kept the same number of heads
    after pruning, that number and its width (``heads x head size``: what ORT's fusion
    takes for a pruned model). Layers with different head counts record nothing (one
    value would be wrong for some of them).
    """
    config = getattr(model, "config", None)
    heads = getattr(config, "num_attention_heads", None)
    hidden = getattr(config, "hidden_size", None)
    if not (isinstance(heads, int) and isinstance(hidden, int)) or heads < 1:
        return None
    counts = {
        count
        for module in model.modules()
        if isinstance(count := getattr(module, "num_attention_heads", None), int)
    }
    if len(counts) > 1:
        return None
    head_size = hidden // heads
    kept = counts.pop() if counts else heads
    return kept, kept * head_size


TRANSFORMER_METADATA = ("hamnet.num_heads", "hamnet.hidden_size")
"""ONNX ``metadata_props`` keys :func:`hamnet.api.Optimizer.from_pytorch` writes for
Hugging Face encoders; the transformer fusion reads them (0 = let ORT detect)."""


def _write_metadata(path: Path, entries: Mapping[str, Any]) -> None:
    """Set ``entries`` in an ONNX file's ``metadata_props`` (replacing the same keys)."""
    onnx = require("onnx")
    model = onnx.load(str(path))
    keep = [p for p in model.metadata_props if p.key not in entries]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in entries.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.save(model, str(path))


def export_module(
    model: nn.Module,
    example_inputs: Any,
    path: str | Path,
    *,
    input_names: Sequence[str] | None = None,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
    opset: int = 17,
    parity_atol: float | None = 1e-4,
    trim_padding: str | None = None,
) -> Path:
    """Export any traceable module to ONNX, with dynamic axes, and check it in ONNX Runtime.

    The TorchScript exporter (``dynamo=False``) traces the module in eval mode (the
    mode of every submodule is restored afterwards). A module whose forward returns a
    tuple, a dict or a Hugging Face ``ModelOutput`` is exported with its first tensor
    (``last_hidden_state`` of a ``BertModel``, ``logits`` of a
    ``*ForSequenceClassification``) as the one output :data:`GENERIC_OUTPUT_NAME`.
    Hugging Face models are switched to eager attention first (see
    :func:`use_eager_attention`) so ONNX Runtime's transformer fusion matches the graph,
    and their head count and hidden size are written to the ONNX metadata
    (:data:`TRANSFORMER_METADATA`) for that fusion.

    Args:
        model: The module.
        example_inputs: One tensor, a tuple of tensors (positional arguments), or a
            dict ``{argument name: tensor}`` (keyword arguments, e.g. ``input_ids`` and
            ``attention_mask``); their dtypes become the graph's input types.
        path: Where to write the ``.onnx`` file (parent folders are created).
        input_names: Graph input names for a tensor or tuple (default ``"input"`` or
            ``"input_0"``, ``"input_1"``...); a dict's keys are its names.
        dynamic_axes: ``{name: {axis: axis name}}``; default: see
            :func:`default_dynamic_axes` (batch everywhere, sequence for token inputs).
        opset: ONNX opset version.
        parity_atol: Largest absolute difference allowed between the module and ONNX
            Runtime on the example inputs repeated to twice their batch (which also
            checks the dynamic batch axis); None skips the check.
        trim_padding: Skip padded tokens inside the graph (see
            :mod:`hamnet.backends.padding`): ``"auto"`` trims by an ``attention_mask``
            input when appending padding to the example leaves the output unchanged, an
            input name requires it, None (default, what ``torch.onnx.export`` writes)
            keeps every position. The mask used is recorded in the metadata
            (:data:`hamnet.backends.padding.METADATA_KEY`, see :func:`trimmed_by`).

    Returns:
        The path of the written file.

    Raises:
        ExportError: If the inputs are malformed, the exporter or the ONNX checker
            fails, ONNX Runtime's outputs differ by more than ``parity_atol``, or a
            named ``trim_padding`` mask cannot be trimmed by.
        MissingDependencyError: If ``onnx`` (or ``onnxruntime`` for the check) is not
            installed.
    """
    from hamnet.backends import padding

    onnx = require("onnx")
    names, tensors, keywords = _named_examples(example_inputs, input_names)
    hf_model = hugging_face_part(model)
    hf_shape = (
        _transformer_shape(hf_model)
        if hf_model is not None and use_eager_attention(hf_model)
        else None
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _modes_restored(model):
        wrapper = _first_output_module(model, names, keywords).eval()
        wrapper, mask = padding.trim_padding(wrapper, names, tensors, trim_padding)
        try:
            _trace_to_onnx(wrapper, names, tensors, path, dynamic_axes=dynamic_axes, opset=opset)
            onnx.checker.check_model(str(path))
            metadata: dict[str, Any] = {}
            if hf_shape is not None:
                metadata.update(zip(TRANSFORMER_METADATA, hf_shape, strict=True))
            if mask is not None:
                metadata[padding.METADATA_KEY] = mask
            if metadata:
                _write_metadata(path, metadata)
        except ExportError:
            raise
        except Exception as err:
            raise ExportError(
                f"ONNX export of {type(model).__name__} (inputs {names}, opset={opset}) to "
                f"{str(path)!r} failed: {type(err).__name__}: {err}"
            ) from err
    if parity_atol is not None:
        _check_export_parity(wrapper, names, tensors, path, parity_atol)
    return path


def trimmed_by(path: str | Path) -> str | None:
    """The mask input an exported graph skips padded tokens by (see ``trim_padding`` of
    :func:`export_module`), or None."""
    from hamnet.backends.onnx_graph import graph_facts
    from hamnet.backends.padding import METADATA_KEY

    return graph_facts(path).metadata.get(METADATA_KEY)


@contextlib.contextmanager
def _modes_restored(model: nn.Module) -> Iterator[None]:
    """Give every submodule of ``model`` its train/eval mode back on exit."""
    modes = {m: m.training for m in model.modules()}
    try:
        yield
    finally:
        for module, mode in modes.items():
            module.training = mode


def _trace_to_onnx(
    wrapper: nn.Module,
    names: list[str],
    tensors: list[Any],
    path: Path,
    *,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None,
    opset: int,
) -> None:
    """Trace ``wrapper`` (TorchScript exporter) to ``path`` with one output and dynamic axes.

    Without ``dynamic_axes`` the axes of :func:`default_dynamic_axes` are used, for an
    output of the rank ``wrapper`` gives on ``tensors``.
    """
    import torch

    if dynamic_axes is None:
        with torch.no_grad():
            reference = wrapper(*tensors)
        axes = default_dynamic_axes(names, tensors, reference.ndim)
    else:
        axes = {k: dict(v) for k, v in dynamic_axes.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        torch.onnx.export(
            wrapper,
            tuple(tensors),
            str(path),
            dynamo=False,
            input_names=names,
            output_names=[GENERIC_OUTPUT_NAME],
            dynamic_axes=axes,  # type: ignore[arg-type]
            opset_version=opset,
            do_constant_folding=True,
        )


def _check_export_parity(
    wrapper: nn.Module, names: list[str], tensors: list[Any], path: Path, atol: float
) -> float:
    import torch

    from hamnet.backends.runtimes.base import InferenceSession
    from hamnet.backends.runtimes.onnxruntime import OnnxRuntimeSession

    ort = require("onnxruntime")
    doubled = {
        n: torch.cat([t, t], dim=0).cpu().numpy() for n, t in zip(names, tensors, strict=True)
    }

    class Positional(InferenceSession):
        runtime = "torch"

        def run(self, x: Inputs) -> np.ndarray:
            assert isinstance(x, Mapping)
            with torch.inference_mode():
                out = wrapper(*(torch.from_numpy(np.asarray(x[n])) for n in names))
            return np.array(out.float().cpu().numpy(), dtype=np.float32)

    with _modes_restored(wrapper):
        wrapper.eval()
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        diff = max_abs_diff(Positional(), OnnxRuntimeSession(session), doubled)
    if not diff <= atol:
        raise ExportError(
            f"ONNX Runtime's outputs of {str(path)!r} must match the module within "
            f"atol={atol:g}, but differ by up to {diff:.3g}"
        )
    return diff


def onnx_session(
    model: HAMNet,
    store: ArtifactStore,
    profile: HardwareProfile,
    *,
    ort_fused_attention: bool = False,
) -> tuple[InferenceSession, ArtifactRef]:
    """Export a HAMNet to ONNX into ``store`` and open it in ONNX Runtime on ``profile``.

    The one path the searches (R-SPAR episodes, NAS and student trials) and the pruning
    benchmark use to time a model the way the pipeline measures its ONNX Runtime
    candidates.

    Args:
        model: The HAMNet.
        store: Where the ONNX file is kept.
        profile: The hardware profile the session runs on.
        ort_fused_attention: Export each attention as one ONNX Runtime ``Attention``
            node (what the export stage writes for ONNX Runtime).

    Returns:
        The session and the stored ONNX file.
    """
    from hamnet.backends.session import load_session

    path = export_onnx(
        model,
        model.config.input_size,
        store.staging_dir() / "model.onnx",
        ort_fused_attention=ort_fused_attention,
    )
    ref = store.put(path, "onnx")
    return load_session(ref, "onnxruntime", profile), ref


def max_abs_diff(
    reference: InferenceSession,
    candidate: InferenceSession,
    x: Inputs,
    batch_size: int = 64,
) -> float:
    """Return the largest absolute difference between two sessions' outputs on ``x``.

    Args:
        reference: The session whose outputs are trusted.
        candidate: The session being checked.
        x: Inputs ``[N, ...]``: one array of any rank, or named inputs (a mapping or
            a packed structured array); batches slice axis 0 of every input.
        batch_size: Rows per call.

    Returns:
        The maximum over every output element; ``inf`` if either output is not finite.

    Raises:
        ExportError: If ``x`` is empty or the output shapes differ.
    """
    x = pack_inputs(x)
    if len(x) == 0:
        raise ExportError("parity needs at least one input row, but got an empty array")
    if batch_size < 1:
        raise ExportError(f"batch_size must be positive, but got {batch_size}")
    worst = 0.0
    for start in range(0, len(x), batch_size):
        chunk: Any = unpack_inputs(x[start : start + batch_size])
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
    reference: InferenceSession, candidate: InferenceSession, x: Inputs, atol: float
) -> float:
    """Check that ``candidate`` reproduces ``reference`` within ``atol`` on ``x``.

    Args:
        reference: The session whose outputs are trusted.
        candidate: The session being checked.
        x: Inputs ``[N, ...]`` (one array or named inputs).
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
            f"({candidate.runtime} vs {reference.runtime} on {_count(x)} samples)"
        )
    return diff


def _count(x: Inputs) -> int:
    return batch_size_of(x)
