"""Open a resolved model in a runtime session fit to serve: runtime choice, input width, probe.

:func:`select_runtime` picks the runtime (an explicit choice, else the registry's
``hamnet.runtime`` tag when the hardware profile lists it, else the profile's first
runtime that reads the format); :func:`open_session` loads the model with the profile's
settings, reads its feature count and runs one batch of zeros, so a server never starts
with a model it cannot run. The runtimes' libraries are imported lazily.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hamnet.backends.session import get_runtime, input_dims, runtime_class, runtime_spec
from hamnet.core.errors import ConfigError, ModelLoadError

if TYPE_CHECKING:
    from hamnet.backends.session import InferenceSession
    from hamnet.core.hardware import HardwareProfile
    from hamnet.serving.refs import ModelSource


def feature_count(path: Path, fmt: str) -> int:
    """Read the number of input features from a model file.

    Args:
        path: The model's main file.
        fmt: Its format (``onnx``, ``openvino``, ``torch`` or one an added runtime
            owns); the runtime that owns it reads the input (:meth:`Runtime.input_dims`).

    Raises:
        ModelLoadError: If the model's input is not ``[batch, features]`` with a fixed
            feature count, or no runtime owns the format.
    """
    dims = input_dims(path, fmt)
    features = dims[1] if len(dims) == 2 else None
    if not isinstance(features, int) or features <= 0:
        raise ModelLoadError(
            f"a served model's input must be [batch, features] with a fixed feature count, "
            f"but {str(path)!r} has input dims {dims}"
        )
    return features


def choose_runtime(fmt: str, profile: HardwareProfile, preferred: str | None = None) -> str:
    """The runtime to serve a ``fmt`` model with on ``profile``.

    Args:
        fmt: The model's format.
        profile: The hardware profile (its runtimes in preference order).
        preferred: A runtime to use when the profile lists it and it reads ``fmt``
            (an explicit choice or the registry's ``hamnet.runtime`` tag).

    Raises:
        ConfigError: If no runtime of the profile reads the format.
    """
    fitting = [r for r in profile.runtime_names if fmt in runtime_class(r).formats]
    if preferred in fitting:
        return str(preferred)
    if not fitting:
        raise ConfigError(
            f"the hardware profile must list a runtime that reads {fmt} models, but "
            f"{profile.name!r} lists {profile.runtime_names}"
        )
    return fitting[0]


def select_runtime(
    fmt: str, profile: HardwareProfile, forced: str | None = None, tagged: str | None = None
) -> str:
    """The runtime to serve a ``fmt`` model with: ``forced``, else ``tagged``, else the profile's.

    Args:
        fmt: The model's format.
        profile: The hardware profile.
        forced: A runtime the user asked for; it must fit.
        tagged: The registry's ``hamnet.runtime`` tag, used when it fits.

    Raises:
        ConfigError: If ``forced`` does not fit, or no runtime of the profile reads ``fmt``.
    """
    chosen = choose_runtime(fmt, profile, forced or tagged)
    if forced is not None and chosen != forced:
        raise ConfigError(
            f"runtime must be listed by profile {profile.name!r} and read {fmt} models, but "
            f"got {forced!r}"
        )
    return chosen


@dataclass(frozen=True)
class OpenedSession:
    """A runtime session that has run once, with the model's input and output widths.

    Attributes:
        session: The session.
        runtime: The runtime's name.
        features: Input features per sample.
        classes: Output logits per sample.
    """

    session: InferenceSession
    runtime: str
    features: int
    classes: int


def open_session(
    source: ModelSource, profile: HardwareProfile, runtime: str, threads: int | None = None
) -> OpenedSession:
    """Load ``source`` in ``runtime`` and run one batch of zeros through it.

    Args:
        source: The resolved model.
        profile: Supplies the runtime's providers/device and the default thread count.
        runtime: The runtime (from :func:`select_runtime`).
        threads: Intra-op threads (default: the profile's).

    Raises:
        ModelLoadError: If the model cannot be loaded, its input is not
            ``[batch, features]``, or it fails on zeros.
        HardwareProfileError: If the runtime's provider or device is absent.
    """
    spec = runtime_spec(profile, runtime)
    engine = get_runtime(runtime)
    session = engine.load(
        source.artifact(), spec, threads if threads is not None else profile.threads
    )
    features = feature_count(source.path, source.format)
    try:
        probe = session.run(np.zeros((1, features), dtype=np.float32))
    except Exception as err:
        raise ModelLoadError(
            f"a served model must map [batch, {features}] float32 to logits, but "
            f"{str(source.path)!r} failed on zeros: {type(err).__name__}: {err}"
        ) from None
    return OpenedSession(session, runtime, features, int(probe.shape[-1]))
