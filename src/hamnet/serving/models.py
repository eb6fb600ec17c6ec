"""Resolve what to serve (a registry alias, a registry version or a file) into a session.

A reference is ``models:/<name>@<alias>``, ``models:/<name>/<version>`` or a path to an
``.onnx`` / OpenVINO ``.xml`` / hamnet ``.pt`` file. :func:`load_model` downloads a
registry version's ``model/`` files, picks the runtime (the version's
``hamnet.runtime`` tag when the hardware profile lists it, else the profile's first
runtime that reads the format) and loads it with the profile's settings.
:class:`ModelSlot` holds the model currently served for one reference and swaps in a
new one atomically when the alias moves. ``mlflow`` and the runtimes are imported lazily.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hamnet.core.errors import ConfigError, ModelLoadError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from hamnet.backends.session import InferenceSession
    from hamnet.core.hardware import HardwareProfile

logger = logging.getLogger("hamnet.serving")

_REF = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")
_SUFFIX_FORMATS = {".onnx": "onnx", ".xml": "openvino", ".pt": "torch"}


@dataclass(frozen=True)
class ModelRef:
    """What to serve: a registry alias, a registry version or a file.

    Attributes:
        text: The reference as given.
        name: Registered model name (None for a file).
        alias: Registry alias, e.g. ``champion`` (None unless an alias reference).
        version: Registry version (None unless a version reference).
        path: Model file (None for a registry reference).
    """

    text: str
    name: str | None = None
    alias: str | None = None
    version: str | None = None
    path: Path | None = None

    @property
    def is_registry(self) -> bool:
        """Whether the model comes from the MLflow registry."""
        return self.name is not None

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        """Parse ``models:/name@alias``, ``models:/name/3`` or a file path.

        Raises:
            ConfigError: If a ``models:/`` reference is malformed.
            ModelLoadError: If a file reference does not exist or has an unknown suffix.
        """
        if text.startswith("models:/"):
            match = _REF.match(text)
            if match is None:
                raise ConfigError(
                    "model reference must be models:/<name>@<alias> or models:/<name>/<version>, "
                    f"but got {text!r}"
                )
            return cls(text, match["name"], match["alias"], match["version"])
        path = Path(text)
        if not path.is_file():
            raise ModelLoadError(f"model file must exist, but got {text!r} (no such file)")
        if path.suffix.lower() not in _SUFFIX_FORMATS:
            raise ModelLoadError(
                f"model file must end with one of {sorted(_SUFFIX_FORMATS)}, but got {text!r}"
            )
        return cls(text, path=path.resolve())

    def with_alias(self, alias: str) -> ModelRef:
        """The same registered model under another alias."""
        if self.name is None:
            raise ConfigError(
                f"an A/B arm named by alias needs a models:/ reference, but got {self.text!r}"
            )
        return ModelRef(f"models:/{self.name}@{alias}", self.name, alias=alias)


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


def registry_client(tracking_uri: str | None) -> MlflowClient:
    """An ``MlflowClient`` on ``tracking_uri`` (else ``$MLFLOW_TRACKING_URI``, else SQLite)."""
    from mlflow.tracking import MlflowClient

    from hamnet.core.config import DEFAULT_MLFLOW_URI
    from hamnet.tracking.tracker import resolve_tracking_uri

    uri = resolve_tracking_uri(
        tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_MLFLOW_URI
    )
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def registry_version(client: MlflowClient, ref: ModelRef) -> Any:
    """The ``ModelVersion`` a registry reference points at now.

    Raises:
        ModelLoadError: If the model, alias or version does not exist.
    """
    from mlflow.exceptions import MlflowException

    assert ref.name is not None
    try:
        if ref.alias is not None:
            return client.get_model_version_by_alias(ref.name, ref.alias)
        return client.get_model_version(ref.name, str(ref.version))
    except MlflowException as err:
        raise ModelLoadError(
            f"registry reference {ref.text!r} must name an existing model version, but the "
            f"registry at {client.tracking_uri} answered: {err.message}"
        ) from None


def _main_file(folder: Path, fmt: str | None) -> Path:
    files = [p for p in sorted(folder.rglob("*")) if p.suffix.lower() in _SUFFIX_FORMATS]
    if fmt is not None:
        files = [p for p in files if _SUFFIX_FORMATS[p.suffix.lower()] == fmt] or files
    if not files:
        raise ModelLoadError(
            f"registered model files must include a .onnx, .xml or .pt file, but "
            f"{str(folder)!r} holds {[p.name for p in folder.rglob('*')]}"
        )
    return files[0]


def feature_count(path: Path, fmt: str) -> int:
    """Read the number of input features from a model file.

    Raises:
        ModelLoadError: If the model's input is not ``[batch, features]`` with a fixed
            feature count.
    """
    features: Any
    if fmt == "onnx":
        import onnx

        graph = onnx.load(str(path), load_external_data=False).graph
        initializers = {i.name for i in graph.initializer}
        inputs = [i for i in graph.input if i.name not in initializers]
        dims = [d.dim_value if d.HasField("dim_value") else None for d in
                inputs[0].type.tensor_type.shape.dim]  # fmt: skip
        features = dims[1] if len(dims) == 2 else None
    elif fmt == "openvino":
        from hamnet.backends.session import openvino_core

        shape = openvino_core().read_model(str(path)).inputs[0].partial_shape
        dims = [None if d.is_dynamic else d.get_length() for d in shape]
        features = dims[1] if len(dims) == 2 else None
    else:
        import torch

        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            features = (payload.get("config") or {}).get("input_size")
        except Exception:
            features = None
        dims = [None, features]
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
    from hamnet.backends.session import runtime_class

    fitting = [r for r in profile.runtime_names if fmt in runtime_class(r).formats]
    if preferred in fitting:
        return str(preferred)
    if not fitting:
        raise ConfigError(
            f"the hardware profile must list a runtime that reads {fmt} models, but "
            f"{profile.name!r} lists {profile.runtime_names}"
        )
    return fitting[0]


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
    from hamnet.backends.session import get_runtime, runtime_spec
    from hamnet.core.artifacts import ArtifactRef, artifact_files, hash_files

    tags: dict[str, str] = {}
    metrics: dict[str, float] = {}
    run_id: str | None = None
    target: Path | None = None
    if ref.is_registry:
        if client is None:
            raise ConfigError(f"a registry client is needed to load {ref.text!r}, but got none")
        mv = version if version is not None else registry_version(client, ref)
        tags = dict(mv.tags or {})
        run_id = mv.run_id or None
        target = Path(tempfile.mkdtemp(prefix=f"v{mv.version}-", dir=cache_dir))
        try:
            import mlflow.artifacts

            local = mlflow.artifacts.download_artifacts(
                artifact_uri=mv.source, dst_path=str(target), tracking_uri=client.tracking_uri
            )
        except Exception as err:
            shutil.rmtree(target, ignore_errors=True)
            raise ModelLoadError(
                f"files of {ref.text!r} (version {mv.version}, source {mv.source}) must be "
                f"downloadable, but got {type(err).__name__}: {err}"
            ) from None
        path = _main_file(Path(local), tags.get("hamnet.format"))
        name, version_text = str(mv.name), str(mv.version)
        if run_id:
            metrics = dict(client.get_run(run_id).data.metrics)
    else:
        assert ref.path is not None
        path = ref.path
    fmt = _SUFFIX_FORMATS[path.suffix.lower()]
    files = artifact_files(path, fmt)
    sha = hash_files(files) if all(f.is_file() for f in files) else ""
    if not ref.is_registry:
        name, version_text = path.name, sha[:12]
    runtime_name = choose_runtime(fmt, profile, runtime or tags.get("hamnet.runtime"))
    if runtime is not None and runtime_name != runtime:
        raise ConfigError(
            f"runtime must be listed by profile {profile.name!r} and read {fmt} models, but "
            f"got {runtime!r}"
        )
    artifact = ArtifactRef(
        path=str(path), sha256=sha, format=fmt, size_bytes=sum(f.stat().st_size for f in files)
    )  # type: ignore[arg-type]
    try:
        spec = runtime_spec(profile, runtime_name)
        engine = get_runtime(runtime_name)
        session = engine.load(artifact, spec, threads if threads is not None else profile.threads)
        features = feature_count(path, fmt)
        try:
            probe = session.run(np.zeros((1, features), dtype=np.float32))
        except Exception as err:
            raise ModelLoadError(
                f"a served model must map [batch, {features}] float32 to logits, but "
                f"{str(path)!r} failed on zeros: {type(err).__name__}: {err}"
            ) from None
    except Exception:
        if target is not None:
            shutil.rmtree(target, ignore_errors=True)
        raise
    info = ModelInfo(
        ref=ref.text,
        name=name,
        version=version_text,
        alias=ref.alias,
        run_id=run_id,
        runtime=runtime_name,
        format=fmt,
        path=str(path),
        features=features,
        classes=int(probe.shape[-1]),
        metrics=metrics,
        tags=tags,
    )
    return LoadedModel(session, info, target)


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
