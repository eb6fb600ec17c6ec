"""Run a stored model on a runtime: PyTorch, ONNX Runtime or OpenVINO.

Each runtime is the registry's ``runtime`` plugin of the same name: one module of
:mod:`hamnet.backends.runtimes` holding its :class:`Runtime` and its session class.
Loading an artifact gives an :class:`InferenceSession` whose
:meth:`~InferenceSession.run` maps a batch of inputs (one array of any rank, or named
arrays for multi-input models such as BERT's ``input_ids``/``attention_mask``) to the
model's first output as float32 (logits ``[batch, classes]`` for a classifier); every
candidate is measured through that one method. The heavy libraries are imported inside
the methods that use them, so ``import hamnet`` stays fast.

A runtime never falls back silently: an execution provider or device the hardware
profile asks for but this machine lacks is a :class:`~hamnet.core.errors.HardwareProfileError`.

The runtimes' classes and the input helpers are importable from here too.

Example:
    >>> from hamnet.core.hardware import load_profile
    >>> session = load_session(ref, "openvino", load_profile("x86-avx2"))
    >>> logits = session.run(x_test[:8])
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, cast

from hamnet.backends.inputs import (
    Inputs,
    batch_size_of,
    feed_inputs,
    input_names,
    pack_inputs,
    unpack_inputs,
)
from hamnet.backends.runtimes.base import InferenceSession, Runtime, require
from hamnet.backends.runtimes.onnxruntime import OnnxRuntime, OnnxRuntimeSession
from hamnet.backends.runtimes.openvino import OpenVINORuntime, OpenVINOSession, openvino_core
from hamnet.backends.runtimes.torch import TorchRuntime, TorchSession, first_tensor
from hamnet.core import registry
from hamnet.core.artifacts import format_suffixes
from hamnet.core.errors import ConfigError, HardwareProfileError, ModelLoadError

if TYPE_CHECKING:
    from hamnet.core.artifacts import ArtifactRef
    from hamnet.core.hardware import HardwareProfile, RuntimeSpec

__all__ = [
    "InferenceSession",
    "Inputs",
    "OnnxRuntime",
    "OnnxRuntimeSession",
    "OpenVINORuntime",
    "OpenVINOSession",
    "Runtime",
    "TorchRuntime",
    "TorchSession",
    "batch_size_of",
    "feed_inputs",
    "first_tensor",
    "format_of",
    "format_owner",
    "format_suffixes",
    "get_runtime",
    "input_dims",
    "input_names",
    "load_session",
    "main_suffixes",
    "openvino_core",
    "pack_inputs",
    "require",
    "runtime_class",
    "runtime_spec",
    "unpack_inputs",
    "weight_precision",
]


def runtime_class(name: str) -> type[Runtime]:
    """Return the class of the runtime called ``name`` (a ``runtime`` plugin).

    Raises:
        ConfigError: If no runtime has that name.
    """
    known = registry.names("runtime")
    if name not in known:
        hint = registry.did_you_mean(name, known)
        raise ConfigError(f"unknown runtime {name!r}: expected one of {sorted(known)}{hint}")
    return cast("type[Runtime]", registry.load("runtime", name))


def get_runtime(name: str) -> Runtime:
    """Instantiate the runtime called ``name``.

    Raises:
        ConfigError: If no runtime has that name.
    """
    return runtime_class(name)()


def main_suffixes() -> list[str]:
    """Return the suffixes of every format's main file, as the runtimes declare them."""
    return [suffixes[0] for suffixes in format_suffixes().values() if suffixes]


def format_of(path: str | Path) -> str | None:
    """Return the artifact format whose main file has ``path``'s suffix, or None."""
    suffix = Path(path).suffix.lower()
    return next((fmt for fmt, s in format_suffixes().items() if s[0] == suffix), None)


def format_owner(fmt: str) -> type[Runtime]:
    """Return the class of the runtime that owns the artifact format ``fmt``.

    Raises:
        ModelLoadError: If no runtime owns the format.
    """
    for name in registry.names("runtime"):
        runtime = runtime_class(name)
        if fmt in runtime.file_suffixes:
            return runtime
    raise ModelLoadError(
        f"artifact format must be one a runtime owns, {sorted(format_suffixes())}, but got {fmt!r}"
    )


def input_dims(path: str | Path, fmt: str) -> list[int | None]:
    """Read the dims of a model file's first input (None for a dynamic axis).

    Args:
        path: The model's main file.
        fmt: Its artifact format; the runtime that owns it reads the file.

    Raises:
        ModelLoadError: If no runtime owns the format, or the file cannot be read.
    """
    return format_owner(fmt).input_dims(Path(path))


def weight_precision(path: str | Path, fmt: str) -> str | None:
    """Tell the weights' precision of a model file (``"fp32"``, ``"fp16"`` or ``"int8"``).

    Args:
        path: The model's main file.
        fmt: Its artifact format; the runtime that owns it reads the file.

    Returns:
        The precision, or None when the owning runtime cannot tell it.

    Raises:
        ModelLoadError: If no runtime owns the format, or the file cannot be read.
    """
    return format_owner(fmt).weight_precision(Path(path))


def runtime_spec(profile: HardwareProfile, runtime_name: str) -> RuntimeSpec:
    """Return the profile's settings for ``runtime_name``.

    Raises:
        ConfigError: If the runtime is unknown.
        HardwareProfileError: If the profile does not list the runtime.
    """
    runtime_class(runtime_name)
    spec = profile.runtime(runtime_name)
    if spec is None:
        raise HardwareProfileError(
            f"runtime {runtime_name!r} is not listed by hardware profile {profile.name!r}, "
            f"which lists {profile.runtime_names}"
        )
    return spec


def load_session(
    artifact: ArtifactRef,
    runtime_name: str,
    profile: HardwareProfile,
    *,
    trust_checkpoint: bool = False,
) -> InferenceSession:
    """Load a stored model in a runtime with the hardware profile's settings.

    Args:
        artifact: The model.
        runtime_name: A ``runtime`` plugin name that the profile lists.
        profile: Supplies the runtime's providers/device and the thread count.
        trust_checkpoint: Allow pickled code in torch checkpoints.

    Returns:
        A session ready to run.

    Raises:
        ConfigError: If the runtime is unknown.
        HardwareProfileError: If the profile does not list the runtime, or the machine
            lacks the provider or device it asks for.
        ModelLoadError: If the model cannot be loaded.
    """
    spec = runtime_spec(profile, runtime_name)
    runtime = get_runtime(runtime_name)
    return runtime.load(artifact, spec, profile.threads, trust_checkpoint=trust_checkpoint)
