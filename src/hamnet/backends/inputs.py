"""What a session runs on: one array, or named arrays packed into one structured array.

Every :class:`~hamnet.backends.runtimes.base.InferenceSession` takes a batch of inputs
as one array of any rank (axis 0 is the batch) or, for multi-input models such as
BERT's ``input_ids``/``attention_mask``, a mapping of named arrays. :func:`pack_inputs`
turns named arrays into one structured array so batches of every input are sliced
together; :func:`unpack_inputs` is its inverse; :func:`feed_inputs` maps either form to
a model's declared input names, ranks and dtypes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeAlias

import numpy as np

from hamnet.core.errors import DataError

Inputs: TypeAlias = np.ndarray | Mapping[str, np.ndarray]
"""What a session runs on: one array (axis 0 is the batch), a mapping of named arrays,
or a structured array with one field per named input (see :func:`pack_inputs`)."""


def _plain(a: Any) -> np.ndarray:
    """One input array, contiguous; floating point becomes float32, other dtypes stay."""
    a = np.asarray(a)
    if np.issubdtype(a.dtype, np.floating) and a.dtype != np.float32:
        a = a.astype(np.float32)
    return np.ascontiguousarray(a)


def pack_inputs(x: Inputs) -> np.ndarray:
    """Return inputs as one array whose axis 0 is the batch.

    A plain array is returned contiguous (floating point as float32, integers kept). A
    mapping of named arrays becomes a structured array with one field per input (field
    shape = the input's shape without the batch axis, dtype kept), so batches of every
    input are sliced, repeated and concatenated together along axis 0.

    Args:
        x: One array, a mapping of named arrays, or an already packed structured array.

    Returns:
        The packed array.

    Raises:
        DataError: If the mapping is empty, an entry is not at least 1-D, or the
            entries have different batch sizes.
    """
    if isinstance(x, Mapping):
        if not x:
            raise DataError("inputs must hold at least one named array, but got an empty mapping")
        arrays = {str(k): _plain(v) for k, v in x.items()}
        bad = {k: list(a.shape) for k, a in arrays.items() if a.ndim < 1}
        if bad:
            raise DataError(f"every named input must have a batch axis, but got shapes {bad}")
        sizes = {k: len(a) for k, a in arrays.items()}
        if len(set(sizes.values())) != 1:
            raise DataError(f"named inputs must have the same batch size (axis 0), but got {sizes}")
        dtype = np.dtype([(k, a.dtype, a.shape[1:]) for k, a in arrays.items()])
        packed = np.empty(next(iter(sizes.values())), dtype=dtype)
        for k, a in arrays.items():
            packed[k] = a
        return packed
    a = np.asarray(x)
    if a.dtype.names:
        return np.ascontiguousarray(a)
    return _plain(a)


def input_names(x: np.ndarray | Mapping[str, np.ndarray]) -> tuple[str, ...] | None:
    """The input names of a mapping or packed array; None for one unnamed array."""
    if isinstance(x, Mapping):
        return tuple(str(k) for k in x)
    names = np.asarray(x).dtype.names
    return tuple(names) if names else None


def unpack_inputs(x: Inputs) -> dict[str, np.ndarray] | np.ndarray:
    """Return named inputs as a dict of contiguous arrays, or the one plain array.

    The inverse of :func:`pack_inputs`: a structured array or a mapping gives a dict
    ``{name: array}``; a plain array is returned contiguous (floats as float32).
    """
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    a = np.asarray(x)
    if a.dtype.names:
        return {name: np.ascontiguousarray(a[name]) for name in a.dtype.names}
    return _plain(a)


def batch_size_of(x: Inputs) -> int:
    """The number of samples (axis 0) of one array or of named inputs."""
    if isinstance(x, Mapping):
        return len(next(iter(x.values()))) if x else 0
    return len(x)


def as_matrix(x: np.ndarray) -> np.ndarray:
    """Return ``x`` as a contiguous float32 ``[batch, features]`` array.

    Raises:
        ValueError: If ``x`` is not 2-D.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"inputs must be a 2-D array [batch, features], but got shape {x.shape}")
    return x


def feed_inputs(
    x: Inputs, names: list[str], ranks: dict[str, int | None], dtypes: dict[str, Any]
) -> dict[str, np.ndarray]:
    """Map inputs to a model's named inputs, each cast to the dtype the model declares.

    Args:
        x: One array, a mapping of named arrays or a packed structured array.
        names: The model's input names, in order.
        ranks: Each input's rank (None when the model does not fix it).
        dtypes: Each input's numpy dtype (None when it cannot be told).

    Returns:
        ``{input name: array}`` ready for the runtime.

    Raises:
        DataError: If the names do not match, or a single array is given to a model
            with several inputs, or an array's rank differs from the model's.
        ValueError: If one array is given to a one-input ``[batch, features]`` model
            with another rank.
    """
    data = unpack_inputs(x)
    if isinstance(data, dict):
        if sorted(data) != sorted(names):
            raise DataError(
                f"inputs must be named {names} (the model's inputs), but got {sorted(data)}"
            )
        feed = data
    else:
        if len(names) != 1:
            raise DataError(
                f"inputs must be a mapping of the model's {len(names)} named inputs {names}, "
                f"but got one array of shape {list(data.shape)}"
            )
        feed = {names[0]: data}
    out: dict[str, np.ndarray] = {}
    for name, array in feed.items():
        rank = ranks.get(name)
        if rank is not None and array.ndim != rank:
            if rank == 2 and len(names) == 1:
                raise ValueError(
                    f"inputs must be a 2-D array [batch, features], but got shape {array.shape}"
                )
            raise DataError(
                f"input {name!r} must be a {rank}-D array, but got shape {list(array.shape)}"
            )
        want = dtypes.get(name)
        out[name] = array if want is None or array.dtype == want else array.astype(want)
    return out
