"""Loading a user's model (torch, ONNX, TensorFlow) into what the pipeline needs.

The pipeline loads one model file: a hamnet checkpoint (families that load from a
checkpoint, see :attr:`~hamnet.families.base.ModelFamily.loads_checkpoint`) or an
ONNX file. A module is saved as a checkpoint or exported to ONNX by its family
adapter; a TensorFlow model is converted to ONNX with tf2onnx.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hamnet.api.compiler import ModelKind
from hamnet.api.constraints import UnsupportedCombinationError
from hamnet.core import registry
from hamnet.core.errors import ConfigError, MissingDependencyError, ModelLoadError
from hamnet.families.base import CHECKPOINT_SUFFIXES, ModelSource, detect_family, get_family

DEFAULT_WORK_ROOT = ".hamnet-api"
"""Folder (under the current directory) holding the default work directories."""


@dataclass(frozen=True)
class IngestedModel:
    """A user model as the pipeline loads it.

    Attributes:
        path: The model file (a checkpoint or an ONNX file).
        kind: How the pipeline loads it.
        family: The family told from the user's module (None: tell it from the file).
        work_dir: The work directory the file was written under.
    """

    path: Path
    kind: ModelKind
    family: str | None
    work_dir: Path | None


def work_directory(work_dir: str | Path | None) -> Path:
    """``work_dir`` (created), or a new ``.hamnet-api/<timestamp>-<id>`` folder."""
    if work_dir is not None:
        path = Path(work_dir).expanduser().resolve()
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = (Path.cwd() / DEFAULT_WORK_ROOT / f"{stamp}-{uuid.uuid4().hex[:6]}").resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_shape(input_shape: Sequence[int], *, features_only: bool = False) -> int:
    """Validate an input shape (batch first); return its second axis.

    Raises:
        ConfigError: Non-positive or non-integer dimensions, or no axis after the batch.
        UnsupportedCombinationError: ``features_only`` and not ``[batch, features]``.
    """
    shape = list(input_shape)
    if not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        raise ConfigError(f"input_shape must hold positive integers, but got {shape}")
    if len(shape) < 2:
        raise ConfigError(
            f"input_shape must have a batch axis and at least one more (e.g. [1, features] "
            f"or [1, 1, 8, 8]), but got {shape}"
        )
    if features_only and len(shape) != 2:
        raise UnsupportedCombinationError(
            f"input_shape must be 2-D [batch, features] for a HAMNet, but got {shape}"
        )
    return shape[1]


def check_family(family: str | None, kind: ModelKind) -> None:
    """Check that ``family`` is a family whose models load as ``kind``.

    Raises:
        ConfigError: An unknown family, or one that loads otherwise.
    """
    if family is None:
        return
    fitting = [
        name
        for name in registry.names("family")
        if get_family(name).loads_checkpoint == (kind == "hamnet")
    ]
    if family not in fitting:
        what = "a HAMNet checkpoint" if kind == "hamnet" else "an ONNX model"
        raise ConfigError(f"family must be one of {fitting} for {what}, but got {family!r}")


def ingest_checkpoint(path: str | Path, *, trust_checkpoint: bool = False) -> IngestedModel:
    """Check a checkpoint file (it must load).

    Raises:
        ModelLoadError: The file is missing or not a hamnet checkpoint.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise ModelLoadError(
            f"model file {str(p)!r} does not exist (expected a hamnet .pt checkpoint)"
        )
    if p.suffix.lower() not in CHECKPOINT_SUFFIXES:
        raise ModelLoadError(
            f"from_pytorch needs a hamnet .pt/.pth checkpoint, but got {str(p)!r}"
            + (" (use Optimizer.from_onnx)" if p.suffix.lower() == ".onnx" else "")
        )
    family = detect_family(ModelSource(path=p, checkpoint=True))
    family.load(p, trust_checkpoint=trust_checkpoint)
    return IngestedModel(p, "hamnet", family.name, None)


def ingest_module(
    model: Any,
    root: Path,
    *,
    input_shape: Sequence[int] | None = None,
    example_inputs: Any = None,
    input_names: Sequence[str] | None = None,
    dynamic_axes: dict[str, dict[int, str]] | None = None,
) -> IngestedModel:
    """Save a checkpoint-family module as a checkpoint, or export any other to ONNX.

    Raises:
        ConfigError: Not a module, or a missing/invalid ``input_shape``.
        UnsupportedCombinationError: A HAMNet with a shape other than ``[batch, features]``.
        ExportError: The module does not export, or ONNX Runtime's outputs differ.
    """
    import torch

    if not isinstance(model, torch.nn.Module):
        raise ConfigError(
            f"model must be a checkpoint path or a torch.nn.Module, but got {type(model).__name__}"
        )
    family = detect_family(ModelSource(module=model))
    if family.loads_checkpoint:
        from hamnet.models import HAMNet, save_checkpoint

        if not isinstance(model, HAMNet):
            raise ConfigError(
                f"family {family.name!r} loads from a HAMNet checkpoint, so the module must "
                f"be a HAMNet, but got {type(model).__name__}"
            )
        if input_shape is not None:
            features = check_shape(input_shape, features_only=True)
            if features != model.config.input_size:
                raise ConfigError(
                    f"input_shape must match the HAMNet's input_size "
                    f"{model.config.input_size}, but got {list(input_shape)}"
                )
        out = save_checkpoint(model, root / "source" / "model.pt")
        return IngestedModel(out, "hamnet", family.name, root)
    if example_inputs is None:
        example_inputs = _random_example(model, input_shape)
    out = family.export_onnx(
        model,
        example_inputs,
        root / "source" / "model.onnx",
        input_names=input_names,
        dynamic_axes=dynamic_axes,
    )
    detected = detect_family(ModelSource(module=model, path=out, checkpoint=False))
    return IngestedModel(out, "onnx", detected.name, root)


def ingest_user_module(
    model: Any,
    root: Path,
    *,
    input_shape: Sequence[int] | None = None,
    example_inputs: Any = None,
    source: Any = None,
) -> IngestedModel:
    """Store a user's torch module as a module artifact (prunable and distillable).

    The module is checked to run on the example inputs first. Without a ``source`` (a
    :class:`~hamnet.models.sources.ModuleSource` it was loaded from) the module object is
    saved whole with ``torch.save`` under ``root/source``: hamnet wrote that file itself,
    so the optimizer loads it back with ``trust_checkpoint``.

    Args:
        model: The module.
        root: The work directory.
        input_shape: The shape of one float input, batch first.
        example_inputs: A tensor or a dict ``{argument name: tensor}``.
        source: Where the module came from (a file, a name, a directory), if not the
            object itself.

    Returns:
        The module artifact (kind ``"module"``) and the family told from the module.

    Raises:
        ConfigError: Neither ``input_shape`` nor ``example_inputs`` is given, or either
            is invalid.
        DataError: The module does not run on the example inputs.
    """
    import torch

    from hamnet.models.sources import InputSpec, save_module_artifact

    example = _example(model, input_shape, example_inputs)
    from hamnet.core.errors import DataError
    from hamnet.models.replay import check_module_runs

    check_module_runs(model, example, what="the example inputs", error=DataError)
    spec = InputSpec.of(example)
    dims: dict[str, list[int | None]] = {
        name: [None, *shape[1:]] for name, shape in spec.shapes().items()
    }
    family = detect_family(ModelSource(module=model, input_dims=dims))
    model = model.eval()
    with torch.no_grad():
        out = save_module_artifact(
            root / "source", source=source, inputs=spec, module=None if source else model,
            family=family.name,
        )  # fmt: skip
    return IngestedModel(out, "module", family.name, root)


def _example(model: Any, input_shape: Sequence[int] | None, example_inputs: Any) -> Any:
    """The example inputs as one tensor or a dict of tensors."""
    import torch

    if example_inputs is None:
        return _random_example(model, input_shape)
    if isinstance(example_inputs, torch.Tensor):
        return example_inputs
    if isinstance(example_inputs, Mapping) and all(
        isinstance(v, torch.Tensor) for v in example_inputs.values()
    ):
        return {str(k): v for k, v in example_inputs.items()}
    raise ConfigError(
        f"example_inputs must be a tensor or a dict {{argument name: tensor}}, but got "
        f"{type(example_inputs).__name__}"
    )


def _random_example(model: Any, input_shape: Sequence[int] | None) -> Any:
    """Random float32 inputs of ``input_shape`` (checked).

    Raises:
        ConfigError: ``input_shape`` is None or invalid.
    """
    import torch

    if input_shape is None:
        raise ConfigError(
            f"input_shape (e.g. [1, features]) or example_inputs must be given for a "
            f"{type(model).__name__}, but got None"
        )
    check_shape(input_shape)
    return torch.randn(*[int(d) for d in input_shape])


@dataclass(frozen=True)
class TensorSignature:
    """One input of a TensorFlow model as tf2onnx's ``input_signature`` takes it.

    Attributes:
        name: The input's name (it becomes the ONNX input's name).
        shape: Its sizes, batch axis first; None is a dynamic size (always the batch).
        dtype: Its dtype name, e.g. ``"float32"`` or ``"int32"``.
    """

    name: str
    shape: tuple[int | None, ...]
    dtype: str = "float32"


def _is_dims(value: Any) -> bool:
    """True for one shape (sizes or None), False for a list of shapes."""
    return isinstance(value, Sequence) and all(
        d is None or (isinstance(d, int) and not isinstance(d, bool)) for d in value
    )


def tensorflow_signature(
    shapes: Any,
    *,
    names: Sequence[str] | None = None,
    dtypes: Sequence[str] | None = None,
    input_shape: Sequence[int] | None = None,
) -> list[TensorSignature]:
    """The input signature of a Keras model, from its own input shape(s).

    The signature follows the model: any rank, several inputs by name. The batch axis is
    always dynamic (None); other sizes the model leaves open stay open unless
    ``input_shape`` fixes them. Nothing here imports TensorFlow.

    Args:
        shapes: ``model.input_shape``: one shape such as ``(None, 28, 28, 1)``, a list of
            shapes (several inputs), or a mapping ``{name: shape}``.
        names: The inputs' names (``model.inputs[i].name``); a ``:0`` suffix is dropped.
            Default ``input`` for one input, ``input_<i>`` for several.
        dtypes: The inputs' dtype names; default ``float32``.
        input_shape: For a one-input model: sizes (batch first) for the axes after the
            batch axis; it must have the model's rank and agree with its fixed sizes.

    Returns:
        One :class:`TensorSignature` per input, in the model's order.

    Raises:
        ConfigError: ``shapes`` is no shape or list of shapes; ``input_shape`` is invalid,
            given for a model with several inputs, of another rank than the model's, or
            conflicts with a size the model fixes; ``names``/``dtypes`` of the wrong length.
    """
    if isinstance(shapes, Mapping):
        names = [str(k) for k in shapes] if names is None else names
        shapes = list(shapes.values())
    if _is_dims(shapes) and shapes:
        model_shapes = [tuple(shapes)]
    elif isinstance(shapes, Sequence) and shapes and all(_is_dims(s) and s for s in shapes):
        model_shapes = [tuple(s) for s in shapes]
    else:
        raise ConfigError(
            f"the Keras model's input_shape must be a shape such as (None, 28, 28, 1) or a "
            f"list of shapes, but got {shapes!r}"
        )
    count = len(model_shapes)
    for label, given in (("names", names), ("dtypes", dtypes)):
        if given is not None and len(given) != count:
            raise ConfigError(
                f"{label} must list one entry per model input ({count}), but got {list(given)}"
            )
    if input_shape is not None:
        if count != 1:
            raise ConfigError(
                f"input_shape applies to a model with one input, but the model has {count} "
                f"inputs with shapes {[list(s) for s in model_shapes]}"
            )
        check_shape(input_shape)
        model = model_shapes[0]
        if len(input_shape) != len(model):
            raise ConfigError(
                f"input_shape must have the model's rank {len(model)} (model input shape "
                f"{list(model)}), but got {list(input_shape)} (rank {len(input_shape)})"
            )
        fixed = [
            (axis, m, int(g))
            for axis, (m, g) in enumerate(zip(model, input_shape, strict=True))
            if axis > 0 and m is not None and m != g
        ]
        if fixed:
            raise ConfigError(
                f"input_shape must agree with the sizes the model fixes (model input shape "
                f"{list(model)}), but got {list(input_shape)} (axis, model, given: {fixed})"
            )
        model_shapes = [(None, *(int(d) for d in input_shape[1:]))]
    default_names = ["input"] if count == 1 else [f"input_{i}" for i in range(count)]
    clean = [str(n).split(":")[0] for n in names] if names is not None else default_names
    if len(set(clean)) != count or not all(clean):
        clean = default_names
    return [
        TensorSignature(
            name=name,
            shape=(None, *shape[1:]),
            dtype=str(dtypes[i]) if dtypes is not None else "float32",
        )
        for i, (name, shape) in enumerate(zip(clean, model_shapes, strict=True))
    ]


def ingest_tensorflow(
    path: str | Path, work_dir: str | Path | None, input_shape: Sequence[int] | None
) -> tuple[Path, Path]:
    """Convert a Keras file or SavedModel to ``<work dir>/source/model.onnx`` with tf2onnx.

    The input signature follows the Keras model's own input shape(s) (any rank, several
    inputs by name; see :func:`tensorflow_signature`); ``input_shape`` fixes the sizes
    after the batch axis of a one-input model.

    Returns:
        The ONNX file and the work directory (see :func:`work_directory`).

    Raises:
        MissingDependencyError: If tensorflow or tf2onnx is not installed.
        ModelLoadError: If the path does not exist.
        ConfigError: If ``input_shape`` does not fit the model (see
            :func:`tensorflow_signature`).
    """
    import importlib.util

    missing = [m for m in ("tensorflow", "tf2onnx") if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingDependencyError(
            f"from_tensorflow needs tensorflow and tf2onnx, but {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not installed: install hamnet's "
            f"tensorflow extra with pip install 'hamnet[tensorflow]'"
        )
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelLoadError(f"TensorFlow model {str(p)!r} does not exist")
    import tensorflow as tf
    import tf2onnx

    keras_model = tf.keras.models.load_model(str(p))
    tensors = list(getattr(keras_model, "inputs", None) or [])
    names = [str(getattr(t, "name", "")) for t in tensors] or None
    dtypes = [str(getattr(t.dtype, "name", t.dtype)) for t in tensors] or None
    signature = tensorflow_signature(
        keras_model.input_shape, names=names, dtypes=dtypes, input_shape=input_shape
    )
    root = work_directory(work_dir)
    out = root / "source" / "model.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    spec = tuple(tf.TensorSpec(s.shape, tf.as_dtype(s.dtype), name=s.name) for s in signature)
    tf2onnx.convert.from_keras(keras_model, input_signature=spec, opset=17, output_path=str(out))
    return out, root
