"""Teacher outputs computed once over a dataset, stored as one ``.npz`` and sliced per batch.

A teacher is frozen during distillation, so its logits, features, attention maps and
embedding on the training set are computed once (:func:`compute_teacher_outputs`), saved
(:meth:`TeacherOutputs.save`), and reused across epochs and reruns under a key
(:func:`cache_key`) derived from the teacher's and the data's hashes and the captured
layers.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hamnet.compress.distill.capture import model_outputs
from hamnet.compress.distill.outputs import CaptureSpec, DistillOutputs
from hamnet.core.artifacts import atomic_writer
from hamnet.core.errors import ConfigError, DataError
from hamnet.core.hashing import hash_json

CACHE_FORMAT = "hamnet-teacher-outputs/1"

_FEATURE = "feature:"
_ATTENTION = "attention:"


@dataclass
class TeacherOutputs:
    """A teacher's outputs on every row of a dataset, as numpy arrays (row ``i`` ↔ sample ``i``).

    Attributes:
        logits: ``[N, C]``.
        features: Layer name → ``[N, ...]`` output.
        attentions: Probe name → ``[N, heads, T, T]`` attention map.
        embedding: ``[N, D]``, or None when not captured.
    """

    logits: np.ndarray
    features: dict[str, np.ndarray] = field(default_factory=dict)
    attentions: dict[str, np.ndarray] = field(default_factory=dict)
    embedding: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.logits.shape[0])

    @property
    def spec(self) -> CaptureSpec:
        """What this cache holds."""
        return CaptureSpec(
            features=tuple(self.features),
            attentions=tuple(self.attentions),
            embedding=self.embedding is not None,
        )

    def batch(
        self, index: torch.Tensor, device: torch.device | str | None = None
    ) -> DistillOutputs:
        """The rows of one training batch, as float32 tensors on ``device``.

        Args:
            index: Row indices of the batch (any device).
            device: Where the tensors go (default CPU).

        Returns:
            The teacher's :class:`DistillOutputs` for the batch.
        """
        rows = index.detach().cpu().numpy()

        def take(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(array[rows])).to(
                device=device, dtype=torch.float32
            )

        return DistillOutputs(
            logits=take(self.logits),
            features={k: take(v) for k, v in self.features.items()},
            attentions={k: take(v) for k, v in self.attentions.items()},
            embedding=None if self.embedding is None else take(self.embedding),
        )

    def save(self, path: str | Path) -> Path:
        """Write the outputs as one uncompressed ``.npz`` (atomically: temp file + rename).

        Args:
            path: Destination file; missing parent folders are created.

        Returns:
            The path written.
        """
        arrays: dict[str, np.ndarray] = {"format": np.array(CACHE_FORMAT), "logits": self.logits}
        arrays.update({_FEATURE + k: v for k, v in self.features.items()})
        arrays.update({_ATTENTION + k: v for k, v in self.attentions.items()})
        if self.embedding is not None:
            arrays["embedding"] = self.embedding
        with atomic_writer(path) as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> TeacherOutputs:
        """Read outputs written by :meth:`save`.

        Raises:
            DataError: If the file is missing or is not a teacher-outputs file.
        """
        path = Path(path)
        if not path.is_file():
            raise DataError(f"teacher outputs {str(path)!r} do not exist")
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
        except (OSError, ValueError, zipfile.BadZipFile) as err:
            raise DataError(
                f"teacher outputs {str(path)!r} are not a readable .npz: {err}"
            ) from None
        found = str(arrays.pop("format", None))
        if found != CACHE_FORMAT or "logits" not in arrays:
            raise DataError(
                f"{str(path)!r} is not a teacher-outputs file (expected format "
                f"{CACHE_FORMAT!r}, got {found!r})"
            )
        return cls(
            logits=arrays["logits"],
            features={
                k.removeprefix(_FEATURE): v for k, v in arrays.items() if k.startswith(_FEATURE)
            },
            attentions={
                k.removeprefix(_ATTENTION): v for k, v in arrays.items() if k.startswith(_ATTENTION)
            },
            embedding=arrays.get("embedding"),
        )


def compute_teacher_outputs(
    teacher: nn.Module,
    x: np.ndarray,
    *,
    feature_layers: Sequence[str] = (),
    attention_layers: Sequence[str] = (),
    need_embedding: bool = False,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    dtype: np.dtype | type = np.float32,
) -> TeacherOutputs:
    """Run a teacher over a dataset once (eval mode, inference mode) and keep its outputs.

    Args:
        teacher: The teacher; its train/eval mode is restored afterwards.
        x: Inputs ``[N, features]``.
        feature_layers: Layers whose outputs to keep.
        attention_layers: Attention probes whose maps to keep.
        need_embedding: Keep the embedding (``norm`` output averaged over tokens); stays
            None for a model without ``norm``.
        batch_size: Rows per forward pass.
        device: Where to run (default: the teacher's device).
        dtype: Storage type of features, attention maps and embedding (e.g. ``np.float16``
            halves the size of large attention caches); logits stay float32.

    Returns:
        The outputs, row ``i`` for ``x[i]``.

    Raises:
        ConfigError: If ``batch_size`` is not positive or a layer is unknown.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be positive, but got {batch_size}")
    spec = CaptureSpec(tuple(feature_layers), tuple(attention_layers), need_embedding)
    if device is None:
        device = next((p.device for p in teacher.parameters()), torch.device("cpu"))
    n = len(x)
    out: TeacherOutputs | None = None
    was_training = teacher.training
    teacher.eval()
    try:
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                xb = torch.as_tensor(x[start : start + batch_size], dtype=torch.float32)
                got = model_outputs(teacher, xb.to(device), spec)
                if out is None:
                    out = _allocate(got, n, dtype)
                _fill(out, got, slice(start, start + len(xb)))
    finally:
        teacher.train(was_training)
    if out is None:
        raise ConfigError("cannot compute teacher outputs on an empty dataset")
    return out


def _allocate(first: DistillOutputs, n: int, dtype: np.dtype | type) -> TeacherOutputs:
    def empty(t: torch.Tensor, kind: np.dtype | type) -> np.ndarray:
        return np.empty((n, *t.shape[1:]), dtype=kind)

    return TeacherOutputs(
        logits=empty(first.logits, np.float32),
        features={k: empty(v, dtype) for k, v in first.features.items()},
        attentions={k: empty(v, dtype) for k, v in first.attentions.items()},
        embedding=None if first.embedding is None else empty(first.embedding, dtype),
    )


def _fill(out: TeacherOutputs, got: DistillOutputs, rows: slice) -> None:
    def put(target: np.ndarray, t: torch.Tensor) -> None:
        target[rows] = t.detach().float().cpu().numpy()

    put(out.logits, got.logits)
    for k, v in got.features.items():
        put(out.features[k], v)
    for k, v in got.attentions.items():
        put(out.attentions[k], v)
    if out.embedding is not None and got.embedding is not None:
        put(out.embedding, got.embedding)


def cache_key(
    teacher_sha256: str,
    data_fingerprint: str,
    *,
    feature_layers: Sequence[str] = (),
    attention_layers: Sequence[str] = (),
    need_embedding: bool = False,
    dtype: str = "float32",
) -> str:
    """A content key for a teacher's outputs: same teacher, data and layers → same key.

    Args:
        teacher_sha256: Hash of the teacher's weights (e.g. its ``ArtifactRef.sha256``).
        data_fingerprint: Hash of the inputs the outputs were computed on.
        feature_layers: Captured feature layers (order does not matter).
        attention_layers: Captured attention probes (order does not matter).
        need_embedding: Whether the embedding is captured.
        dtype: Storage type of the captured tensors.

    Returns:
        A sha256 hex digest.
    """
    payload = {
        "format": CACHE_FORMAT,
        "teacher": teacher_sha256,
        "data": data_fingerprint,
        "features": sorted(set(feature_layers)),
        "attentions": sorted(set(attention_layers)),
        "embedding": bool(need_embedding),
        "dtype": str(np.dtype(dtype)),
    }
    return hash_json(payload)
