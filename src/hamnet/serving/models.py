"""Load what to serve (a registry alias, a registry version or a file) and keep it current.

:func:`load_model` resolves a reference to local files (:mod:`hamnet.serving.refs`),
picks the runtime and opens a session that has run once (:mod:`hamnet.serving.sessions`).
:class:`ModelSlot` holds the model currently served for one reference and swaps in a
new one atomically when the alias moves. ``mlflow`` and the runtimes' libraries are
imported lazily.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hamnet.serving.refs import (
    ModelRef,
    ModelSource,
    main_file,
    model_format,
    registry_client,
    registry_version,
    resolve,
)
from hamnet.serving.sessions import choose_runtime, feature_count, open_session, select_runtime

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from hamnet.backends.session import InferenceSession
    from hamnet.core.hardware import HardwareProfile

__all__ = [
    "LoadedModel",
    "ModelInfo",
    "ModelRef",
    "ModelSlot",
    "ModelSource",
    "choose_runtime",
    "feature_count",
    "load_model",
    "main_file",
    "model_format",
    "registry_client",
    "registry_version",
]

logger = logging.getLogger("hamnet.serving")


@dataclass(frozen=True)
class ModelInfo:
    """Facts about a loaded model, served by ``/model``.

    Attributes:
        ref: The reference it was resolved from.
        name: Registered model name, or the file name.
        version: Registry version, or the first 12 hex digits of the file's sha256.
        alias: The alias it was resolved through, if any.
        run_id: The MLflow run that logged it, if any.
        runtime: The runtime that runs it.
        format: ``onnx``, ``openvino`` or ``torch``.
        path: The local model file.
        features: Input features per sample.
        classes: Output logits per sample.
        metrics: The MLflow run's metrics (empty for a file).
        tags: The model version's tags (empty for a file).
    """

    ref: str
    name: str
    version: str
    alias: str | None
    run_id: str | None
    runtime: str
    format: str
    path: str
    features: int
    classes: int
    metrics: Mapping[str, float] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "ref": self.ref,
            "name": self.name,
            "version": self.version,
            "alias": self.alias,
            "run_id": self.run_id,
            "runtime": self.runtime,
            "format": self.format,
            "features": self.features,
            "classes": self.classes,
            "metrics": dict(self.metrics),
        }


class LoadedModel:
    """A runtime session with its :class:`ModelInfo`; :meth:`run` is thread-safe.

    OpenVINO sessions reuse their infer requests and must not run from two threads at
    once, so calls are serialised by a lock (one inference at a time per model).
    """

    def __init__(
        self, session: InferenceSession, info: ModelInfo, download_dir: Path | None = None
    ) -> None:
        self.session = session
        self.info = info
        self.download_dir = download_dir
        self._lock = threading.Lock()

    def run(self, x: np.ndarray) -> np.ndarray:
        """Return float32 logits ``[batch, classes]`` for float32 inputs ``[batch, features]``."""
        with self._lock:
            return self.session.run(x)


def load_model(
    ref: ModelRef,
    profile: HardwareProfile,
    *,
    runtime: str | None = None,
    threads: int | None = None,
    client: MlflowClient | None = None,
    cache_dir: Path | None = None,
    version: Any = None,
) -> LoadedModel:
    """Resolve ``ref`` and load it into a runtime session.

    Args:
        ref: What to serve.
        profile: Hardware profile: runtimes, devices, default threads.
        runtime: Force a runtime (it must be listed by the profile and read the format).
        threads: Intra-op threads (default: the profile's).
        client: Registry client (required for a registry reference).
        cache_dir: Where registry files are downloaded (a temp folder by default).
        version: The ``ModelVersion`` to load (looked up from ``ref`` when None).

    Returns:
        The loaded model; it has already run one batch of zeros.

    Raises:
        ModelLoadError: If the reference, the files or the model cannot be loaded.
        ConfigError: If no runtime fits.
        HardwareProfileError: If the runtime's provider or device is absent.
    """
    source = resolve(ref, client=client, version=version, cache_dir=cache_dir)
    try:
        chosen = select_runtime(source.format, profile, runtime, source.tags.get("hamnet.runtime"))
        opened = open_session(source, profile, chosen, threads)
    except BaseException:
        source.discard()
        raise
    info = ModelInfo(
        ref=ref.text,
        name=source.name,
        version=source.version,
        alias=ref.alias,
        run_id=source.run_id,
        runtime=opened.runtime,
        format=source.format,
        path=str(source.path),
        features=opened.features,
        classes=opened.classes,
        metrics=dict(source.metrics),
        tags=dict(source.tags),
    )
    return LoadedModel(opened.session, info, source.download_dir)


class ModelSlot:
    """The model currently served for one reference; reloads when its alias moves.

    :attr:`model` is replaced by one assignment only after the new model is fully
    loaded and has run, so a request never sees a half-loaded model; requests already
    running finish on the model they started with.

    Args:
        ref: What to serve.
        profile: Hardware profile.
        runtime: Force a runtime.
        threads: Intra-op threads.
        tracking_uri: MLflow tracking URI for registry references.
        cache_dir: Where registry files are downloaded.
    """

    def __init__(
        self,
        ref: ModelRef,
        profile: HardwareProfile,
        *,
        runtime: str | None = None,
        threads: int | None = None,
        tracking_uri: str | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        self.ref = ref
        self.profile = profile
        self.runtime = runtime
        self.threads = threads
        self.cache_dir = cache_dir
        self.client = registry_client(tracking_uri) if ref.is_registry else None
        self._reload_lock = threading.Lock()
        self.model: LoadedModel = load_model(
            ref, profile, runtime=runtime, threads=threads, client=self.client,
            cache_dir=cache_dir,
        )  # fmt: skip

    def refresh(self) -> bool:
        """Load the version the alias points at now if it changed; return whether it did.

        A file or a pinned version never changes. Errors while loading the new version
        propagate and leave the current model in service.
        """
        if self.client is None or self.ref.alias is None:
            return False
        with self._reload_lock:
            current = registry_version(self.client, self.ref)
            if str(current.version) == self.model.info.version:
                return False
            new = load_model(
                self.ref, self.profile, runtime=self.runtime, threads=self.threads,
                client=self.client, cache_dir=self.cache_dir, version=current,
            )  # fmt: skip
            old = self.model
            self.model = new
            logger.info(
                "%s moved from v%s to v%s", self.ref.text, old.info.version, new.info.version
            )
            if old.download_dir is not None:  # the runtime holds the model in memory
                shutil.rmtree(old.download_dir, ignore_errors=True)
            return True
