"""Hugging Face models as plain modules that take token arrays and return one tensor.

A Hugging Face model returns a ``ModelOutput``; the pipeline measures, prunes, distills
and exports modules whose output is one tensor. :class:`MeanPoolingEncoder` turns an
encoder (``AutoModel``) into a sentence-embedding model (mean over the unmasked tokens,
L2-normalized when asked), :class:`SequenceClassifier` returns a sequence classifier's
logits. Both take ``input_ids``, ``attention_mask`` and optionally ``token_type_ids``
and export with ``torch.onnx.export(..., dynamo=False)``.

:func:`tokenize` turns texts into the int64 arrays these modules take, with the
tokenizer saved in the model's directory (local files only).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hamnet.core.errors import DataError, MissingDependencyError, ModelLoadError

__all__ = ["MeanPoolingEncoder", "SequenceClassifier", "hidden_states_of", "tokenize"]


def _token_kwargs(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if token_type_ids is not None:
        kwargs["token_type_ids"] = token_type_ids
    return kwargs


def hidden_states_of(output: Any) -> torch.Tensor:
    """Return the token states ``[batch, tokens, hidden]`` of an encoder's output.

    Args:
        output: A ``ModelOutput`` or dict (``last_hidden_state``), or a tuple (first item).
    """
    if isinstance(output, torch.Tensor):
        return output
    state = output.get("last_hidden_state") if hasattr(output, "get") else None
    if state is None:
        state = output[0]
    return state  # type: ignore[no-any-return]


class MeanPoolingEncoder(nn.Module):
    """A sentence encoder: the mean of a Hugging Face encoder's token states.

    Args:
        model: The encoder (e.g. from ``AutoModel``); kept as :attr:`model`.
        normalize: L2-normalize every embedding (sentence-transformers' ``Normalize``).

    Example:
        >>> encoder = MeanPoolingEncoder(AutoModel.from_pretrained(directory))
        >>> encoder(input_ids, attention_mask).shape  # [batch, hidden]
    """

    def __init__(self, model: nn.Module, *, normalize: bool = False) -> None:
        super().__init__()
        self.model = model
        self.normalize = normalize

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return the embeddings ``[batch, hidden]``: the mean over unmasked tokens."""
        output = self.model(**_token_kwargs(input_ids, attention_mask, token_type_ids))
        states = hidden_states_of(output)
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        summed = (states * mask).sum(dim=1)
        counts = mask.sum(dim=1).clamp(min=1e-9)
        pooled = summed / counts
        if self.normalize:
            pooled = nn.functional.normalize(pooled, p=2.0, dim=1)
        return pooled

    def extra_repr(self) -> str:
        return f"normalize={self.normalize}"


class SequenceClassifier(nn.Module):
    """A Hugging Face sequence classifier that returns its logits ``[batch, labels]``.

    Args:
        model: The classifier (e.g. from ``AutoModelForSequenceClassification``); kept
            as :attr:`model`.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return the logits ``[batch, labels]``."""
        output = self.model(**_token_kwargs(input_ids, attention_mask, token_type_ids))
        if isinstance(output, torch.Tensor):
            return output
        logits = output.get("logits") if hasattr(output, "get") else None
        return logits if logits is not None else output[0]


def tokenize(
    directory: str | Path,
    texts: Sequence[str],
    *,
    max_length: int = 128,
    padding: str = "max_length",
) -> dict[str, np.ndarray]:
    """Tokenize ``texts`` with the tokenizer saved in a Hugging Face model directory.

    Only local files are read (``local_files_only=True``); the tokenizer's code is never
    fetched or run from the directory.

    Args:
        directory: The model directory (holding ``tokenizer.json`` or a vocabulary).
        texts: The texts.
        max_length: Longest sequence; longer texts are truncated.
        padding: ``"max_length"`` (every row ``max_length`` long, fixed shapes for
            export and batching) or ``"longest"`` (pad to the longest text).

    Returns:
        The tokenizer's arrays (``input_ids``, ``attention_mask`` and, where the
        tokenizer makes them, ``token_type_ids``), each int64 ``[len(texts), length]``.

    Raises:
        MissingDependencyError: If transformers is not installed.
        ModelLoadError: If the directory holds no tokenizer.
        DataError: If ``texts`` is empty or holds something other than strings.
    """
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts) or not texts:
        raise DataError(
            f"texts must be a non-empty sequence of strings, but got {type(texts).__name__}"
            + (f" of {len(texts)} items" if hasattr(texts, "__len__") else "")
        )
    if padding not in ("max_length", "longest"):
        raise DataError(f"padding must be 'max_length' or 'longest', but got {padding!r}")
    try:
        from transformers import AutoTokenizer
    except ImportError as err:
        raise MissingDependencyError(
            f"tokenize needs transformers, which is not importable: {err}"
        ) from None
    path = Path(directory).expanduser()
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=False
        )
    except Exception as err:
        raise ModelLoadError(
            f"directory {str(path)!r} must hold a Hugging Face tokenizer (tokenizer.json or "
            f"a vocabulary with tokenizer_config.json), but loading it failed: "
            f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
        ) from None
    encoded = tokenizer(
        list(texts),
        max_length=max_length,
        padding=padding,
        truncation=True,
        return_tensors="np",
    )
    return {str(k): np.asarray(v, dtype=np.int64) for k, v in encoded.items()}
