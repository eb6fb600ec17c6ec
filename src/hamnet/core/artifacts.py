"""A content-addressed store for model files.

Models travel through the pipeline as :class:`ArtifactRef` records (path + sha256 +
format), never as tensors: Prefect cache keys and MLflow params hash the reference.
An artifact is one folder ``<root>/<sha256>/`` holding the model's file(s); the ref
points at the main file (e.g. ``model.onnx`` or ``model.xml`` beside ``model.bin``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, BinaryIO

from pydantic import AfterValidator, BaseModel, ConfigDict

from hamnet.core import registry
from hamnet.core.errors import ModelLoadError
from hamnet.core.hashing import hash_named_files


def format_suffixes() -> dict[str, tuple[str, ...]]:
    """Return every artifact format a runtime owns, with its files' suffixes (main first)."""
    suffixes: dict[str, tuple[str, ...]] = {}
    for name in registry.names("runtime"):
        owned: Mapping[str, tuple[str, ...]] = getattr(
            registry.load("runtime", name), "file_suffixes", {}
        )
        suffixes.update(owned)
    return suffixes


def _format_suffixes() -> dict[str, tuple[str, ...]]:
    """Format -> its files' suffixes (main first), from every runtime; empty tuple = any."""
    loaded = {
        fmt: ()
        for name in registry.names("runtime")
        for fmt in getattr(registry.load("runtime", name), "formats", ())
    }
    return {**loaded, **format_suffixes()}


def artifact_formats() -> tuple[str, ...]:
    """Return every artifact format some runtime loads or owns (``runtime`` plugins)."""
    return tuple(sorted(_format_suffixes()))


def _check_format(fmt: str) -> str:
    known = artifact_formats()
    if fmt not in known:
        raise ValueError(f"artifact format must be one of {list(known)}, but got {fmt!r}")
    return fmt


ArtifactFormat = Annotated[str, AfterValidator(_check_format)]
"""An artifact format: one a runtime plugin loads (``torch``, ``onnx``, ``openvino``)."""


class ArtifactRef(BaseModel):
    """A reference to a stored model: where it is, what it hashes to, what it is."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    sha256: str
    format: ArtifactFormat
    size_bytes: int

    @property
    def files(self) -> list[Path]:
        """Every file that belongs to the artifact (the main file and its siblings)."""
        return artifact_files(Path(self.path), self.format)

    @property
    def size_mb(self) -> float:
        """Size on disk in MB (10^6 bytes)."""
        return self.size_bytes / 1e6

    def is_present(self) -> bool:
        """True when every file of the artifact exists (no hashing)."""
        return all(p.is_file() for p in self.files)

    def verify(self) -> None:
        """Check the files are present and still hash to :attr:`sha256`.

        Raises:
            ModelLoadError: If a file is missing or its content changed.
        """
        missing = [str(p) for p in self.files if not p.is_file()]
        if missing:
            raise ModelLoadError(f"artifact files missing: {missing} (ref sha256 {self.sha256})")
        actual = hash_files(self.files)
        if actual != self.sha256:
            raise ModelLoadError(
                f"artifact {self.path} changed on disk: expected sha256 {self.sha256}, got {actual}"
            )


def artifact_files(main: Path, fmt: str) -> list[Path]:
    """Return the files of an artifact whose main file is ``main``.

    The siblings are the format's further file suffixes, as its runtime declares them
    (OpenVINO IR: ``model.bin`` beside ``model.xml``), or the files the runtime's
    ``artifact_files(main, fmt)`` lists (a module artifact names its files in its main
    JSON file).
    """
    listed = _runtime_listing("artifact_files", main, fmt)
    if listed is not None:
        return listed
    siblings = _format_suffixes().get(fmt, ())[1:]
    return [main, *(main.with_suffix(suffix) for suffix in siblings)]


def weight_files(main: Path, fmt: str) -> list[Path]:
    """The files of an artifact that make up the model's size: all of them, unless the
    format's runtime says otherwise with ``weight_files(main, fmt)`` (a module artifact
    counts its weights, not its JSON, plan or a copy of its source)."""
    listed = _runtime_listing("weight_files", main, fmt)
    return artifact_files(main, fmt) if listed is None else listed


def _runtime_listing(hook: str, main: Path, fmt: str) -> list[Path] | None:
    """What the runtime owning ``fmt`` lists with its ``hook(main, fmt)``; None when the
    owner has no such hook."""
    for name in registry.names("runtime"):
        runtime = registry.load("runtime", name)
        lister = getattr(runtime, hook, None)
        if lister is not None and fmt in getattr(runtime, "file_suffixes", {}):
            listed: list[Path] = lister(main, fmt)
            return listed
    return None


def hash_files(paths: list[Path]) -> str:
    """Return the sha256 over the names and contents of ``paths`` (in the given order)."""
    return hash_named_files(paths)


@contextlib.contextmanager
def atomic_writer(path: str | Path) -> Iterator[BinaryIO]:
    """Open ``path`` for writing so readers see the old file or the new one, never half.

    The bytes go to a temp file in the same folder; when the ``with`` block ends they
    are flushed to disk and replace ``path`` with :func:`os.replace` (atomic on POSIX
    and Windows). An error in the block removes the temp file and leaves ``path`` as it
    was; a crash leaves at most a ``.tmp-*`` file behind (``hamnet gc`` removes old ones).

    Args:
        path: The file to (over)write; its folder is created when missing.

    Yields:
        The binary file to write to.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".tmp-{target.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_writer`).

    Args:
        path: The file to (over)write; its folder is created when missing.
        data: The content.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    with atomic_writer(path) as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


class ArtifactStore:
    """Stores model files under ``root`` by content hash.

    Args:
        root: Folder of the store; created when missing.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def staging_dir(self) -> Path:
        """Return a fresh folder inside the store to write a model into before :meth:`put`."""
        staging = self.root / "_staging"
        staging.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=staging))

    def put(self, main_file: str | Path, fmt: ArtifactFormat) -> ArtifactRef:
        """Move a model (its main file and siblings) into the store.

        Args:
            main_file: The model's main file, e.g. ``model.onnx`` or ``model.xml``.
            fmt: The model's format.

        Returns:
            A reference to the stored copy. Storing identical content twice returns the
            same reference.
        """
        main = Path(main_file)
        files = artifact_files(main, fmt)
        for f in files:
            if not f.is_file():
                raise ModelLoadError(f"cannot store {fmt} model: file {str(f)!r} does not exist")
        sha = hash_files(files)
        target_dir = self.root / sha[:2] / sha
        if not target_dir.is_dir():
            # Copy into a private temp folder, flush, then rename it into place in one
            # step: a reader (or a concurrent run) never sees a half-written artifact.
            tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=".put-"))
            try:
                for f in files:
                    shutil.copy2(f, tmp / f.name)
                    with (tmp / f.name).open("rb") as fh:
                        os.fsync(fh.fileno())
                target_dir.parent.mkdir(parents=True, exist_ok=True)
                tmp.rename(target_dir)
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)
                if not target_dir.is_dir():
                    raise
                # else another writer stored the same content first
        stored = target_dir / main.name
        size = sum(p.stat().st_size for p in weight_files(stored, fmt))
        return ArtifactRef(path=str(stored), sha256=sha, format=fmt, size_bytes=size)
