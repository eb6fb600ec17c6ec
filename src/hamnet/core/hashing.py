"""SHA-256 digests for every id and cache key hamnet makes, computed one way.

Artifacts are addressed by the sha256 of their files, candidates and studies are named
by short digests of canonical JSON, caches are keyed by digests of their inputs. Every
such digest goes through these helpers, so the same content always gives the same id.

Example:
    >>> hash_json({"b": 1, "a": [2, 3]}, length=12)
    '4f9d2e0d1b1a'  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _hashlib import HASH

CHUNK_BYTES = 1 << 20
"""Bytes read from a file per update."""


def sha256(*parts: bytes | str) -> HASH:
    """Return a running sha256 fed with ``parts`` (text as UTF-8); update it further.

    Args:
        *parts: Bytes or text to feed, in order.

    Returns:
        The ``hashlib`` sha256 object.
    """
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8") if isinstance(part, str) else part)
    return digest


def update_with_file(digest: HASH, path: str | Path) -> HASH:
    """Feed a file's content to ``digest`` in chunks of :data:`CHUNK_BYTES`.

    Returns:
        ``digest``, updated.

    Raises:
        OSError: If the file cannot be read.
    """
    with Path(path).open("rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest


def canonical_json(obj: Any) -> bytes:
    """Return ``obj`` as JSON with sorted keys (``json.dumps`` defaults otherwise), UTF-8.

    Raises:
        TypeError: If ``obj`` holds something JSON cannot encode.
    """
    return json.dumps(obj, sort_keys=True).encode("utf-8")


def _cut(hexdigest: str, length: int | None) -> str:
    if length is None:
        return hexdigest
    if not 1 <= length <= len(hexdigest):
        raise ValueError(f"length must be in [1, {len(hexdigest)}], but got {length}")
    return hexdigest[:length]


def hash_bytes(data: bytes | str, *, length: int | None = None) -> str:
    """Return the sha256 hex digest of bytes or UTF-8 text.

    Args:
        data: What to hash.
        length: Keep only the first ``length`` hex characters (a short id).

    Returns:
        The hex digest (64 characters unless ``length`` is given).
    """
    return _cut(sha256(data).hexdigest(), length)


def hash_json(obj: Any, *, length: int | None = None) -> str:
    """Return the sha256 hex digest of ``obj``'s :func:`canonical_json`.

    Args:
        obj: A JSON-able object (dicts are hashed with their keys sorted).
        length: Keep only the first ``length`` hex characters (a short id).

    Returns:
        The hex digest.

    Raises:
        TypeError: If ``obj`` holds something JSON cannot encode.
    """
    return _cut(sha256(canonical_json(obj)).hexdigest(), length)


def hash_file(path: str | Path, *, length: int | None = None) -> str:
    """Return the sha256 hex digest of a file's content, read in chunks.

    Raises:
        OSError: If the file cannot be read.
    """
    return _cut(update_with_file(sha256(), path).hexdigest(), length)


def hash_named_files(paths: Iterable[str | Path]) -> str:
    """Return the sha256 over each file's name then content, in the given order.

    Raises:
        OSError: If a file cannot be read.
    """
    digest = sha256()
    for path in paths:
        digest.update(Path(path).name.encode())
        update_with_file(digest, path)
    return digest.hexdigest()


def short_id(hexdigest: str, length: int = 12) -> str:
    """Return the first ``length`` characters of a hex digest.

    Raises:
        ValueError: If ``length`` is not in ``[1, len(hexdigest)]``.
    """
    return _cut(hexdigest, length)
