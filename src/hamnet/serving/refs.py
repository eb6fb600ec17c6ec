"""What to serve, resolved to local model files: a registry alias, a registry version or a file.

A reference is ``models:/<name>@<alias>``, ``models:/<name>/<version>`` or a path to a
model file whose suffix is a runtime's main file suffix (``.onnx``, OpenVINO ``.xml``,
hamnet ``.pt``: the runtimes declare them, see
:func:`hamnet.backends.session.format_suffixes`). :func:`resolve` turns a reference into
a :class:`ModelSource`: the local main file with its format, hash and what the registry
says about it, downloading a registry version's files first. ``mlflow`` is imported
lazily.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hamnet.backends.session import format_of
from hamnet.backends.session import main_suffixes as main_suffixes
from hamnet.core.artifacts import ArtifactRef, artifact_files, hash_files
from hamnet.core.errors import ConfigError, ModelLoadError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

_REF = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")


def model_format(path: str | Path) -> str:
    """Return the format of the model file ``path`` from its suffix.

    Raises:
        ModelLoadError: If no runtime owns a format with that main file suffix.
    """
    fmt = format_of(path)
    if fmt is None:
        raise ModelLoadError(
            f"model file must end with one of {sorted(main_suffixes())}, but got {str(path)!r}"
        )
    return fmt


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
        model_format(text)
        return cls(text, path=path.resolve())

    def with_alias(self, alias: str) -> ModelRef:
        """The same registered model under another alias."""
        if self.name is None:
            raise ConfigError(
                f"an A/B arm named by alias needs a models:/ reference, but got {self.text!r}"
            )
        return ModelRef(f"models:/{self.name}@{alias}", self.name, alias=alias)


@dataclass(frozen=True)
class ModelSource:
    """A model resolved to a local main file, with what is known about it.

    Attributes:
        path: The local main file.
        format: Its format (from its suffix).
        name: Registered model name, or the file name.
        version: Registry version, or the first 12 hex digits of the files' sha256.
        sha256: Hash of the model's files ("" when a sibling file is missing).
        size_bytes: Total size of the model's files.
        run_id: The MLflow run that logged it, if any.
        tags: The model version's tags (empty for a file).
        metrics: The MLflow run's metrics (empty for a file).
        download_dir: The temp folder holding downloaded files (None for a file).
    """

    path: Path
    format: str
    name: str
    version: str
    sha256: str
    size_bytes: int
    run_id: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
    download_dir: Path | None = None

    @classmethod
    def of_file(cls, path: Path, **facts: Any) -> ModelSource:
        """Describe the model whose main file is ``path`` (format, hash, size).

        Args:
            path: The main file.
            **facts: ``name``, ``version`` and further fields; the name defaults to the
                file name and the version to the hash's first 12 hex digits.

        Raises:
            ModelLoadError: If the suffix is not a runtime's main file suffix.
        """
        fmt = model_format(path)
        files = artifact_files(path, fmt)
        sha = hash_files(files) if all(f.is_file() for f in files) else ""
        size = sum(f.stat().st_size for f in files)
        facts.setdefault("name", path.name)
        facts.setdefault("version", sha[:12])
        return cls(path=path, format=fmt, sha256=sha, size_bytes=size, **facts)

    def artifact(self) -> ArtifactRef:
        """The :class:`ArtifactRef` a runtime loads."""
        return ArtifactRef(
            path=str(self.path), sha256=self.sha256, format=self.format,  # type: ignore[arg-type]
            size_bytes=self.size_bytes,
        )  # fmt: skip

    def discard(self) -> None:
        """Remove the downloaded files, if any (the runtime holds a loaded model in memory)."""
        if self.download_dir is not None:
            shutil.rmtree(self.download_dir, ignore_errors=True)


def main_file(folder: Path, fmt: str | None) -> Path:
    """Return the model's main file among a downloaded folder's files.

    Args:
        folder: The downloaded files.
        fmt: The format to prefer (the registry's ``hamnet.format`` tag), if known.

    Raises:
        ModelLoadError: If no file has a runtime's main file suffix.
    """
    files = [p for p in sorted(folder.rglob("*")) if format_of(p) is not None]
    if fmt is not None:
        files = [p for p in files if format_of(p) == fmt] or files
    if not files:
        suffixes = main_suffixes()
        listed = ", ".join(suffixes[:-1]) + (" or " if len(suffixes) > 1 else "") + suffixes[-1]
        raise ModelLoadError(
            f"registered model files must include a {listed} file, but "
            f"{str(folder)!r} holds {[p.name for p in folder.rglob('*')]}"
        )
    return files[0]


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


def download_version(ref: ModelRef, mv: Any, tracking_uri: str, target: Path) -> Path:
    """Download a model version's files into ``target``; return the local folder.

    Raises:
        ModelLoadError: If the files cannot be downloaded.
    """
    import mlflow.artifacts

    try:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=mv.source, dst_path=str(target), tracking_uri=tracking_uri
        )
    except Exception as err:
        raise ModelLoadError(
            f"files of {ref.text!r} (version {mv.version}, source {mv.source}) must be "
            f"downloadable, but got {type(err).__name__}: {err}"
        ) from None
    return Path(local)


def registry_source(
    ref: ModelRef, client: MlflowClient, version: Any = None, cache_dir: Path | None = None
) -> ModelSource:
    """Download the model version ``ref`` points at and describe it.

    Args:
        ref: A registry reference.
        client: The registry client.
        version: The ``ModelVersion`` to load (looked up from ``ref`` when None).
        cache_dir: Where the files are downloaded (a temp folder by default).

    Raises:
        ModelLoadError: If the version does not exist or its files cannot be used.
    """
    mv = version if version is not None else registry_version(client, ref)
    tags = dict(mv.tags or {})
    run_id = mv.run_id or None
    target = Path(tempfile.mkdtemp(prefix=f"v{mv.version}-", dir=cache_dir))
    try:
        local = download_version(ref, mv, client.tracking_uri, target)
        path = main_file(local, tags.get("hamnet.format"))
        metrics = dict(client.get_run(run_id).data.metrics) if run_id else {}
        return ModelSource.of_file(
            path, name=str(mv.name), version=str(mv.version), run_id=run_id, tags=tags,
            metrics=metrics, download_dir=target,
        )  # fmt: skip
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise


def resolve(
    ref: ModelRef,
    *,
    client: MlflowClient | None = None,
    version: Any = None,
    cache_dir: Path | None = None,
) -> ModelSource:
    """Resolve ``ref`` to local model files.

    Args:
        ref: What to serve.
        client: Registry client (required for a registry reference).
        version: The ``ModelVersion`` to load (looked up from ``ref`` when None).
        cache_dir: Where registry files are downloaded (a temp folder by default).

    Raises:
        ConfigError: If a registry reference comes without a client.
        ModelLoadError: If the model or its files cannot be found.
    """
    if not ref.is_registry:
        assert ref.path is not None
        return ModelSource.of_file(ref.path)
    if client is None:
        raise ConfigError(f"a registry client is needed to load {ref.text!r}, but got none")
    return registry_source(ref, client, version, cache_dir)
