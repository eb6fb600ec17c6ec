"""Skip padded tokens inside an exported graph.

Token models are fed fixed-length inputs: a tokenizer pads every sentence to
``max_length`` and marks the padding with zeros in ``attention_mask``. A model that
honours the mask (BERT-style encoders pooled or classified from unpadded tokens) gives
the same output whatever follows the last unpadded token, yet spends its time on every
padded position: at batch 1 a 16-token sentence padded to 64 pays for 64.

:func:`trim_padding` wraps a module so that its graph first cuts every token input
after the last position the mask marks as used in the batch (a ``Range`` and a
``Gather`` in ONNX, shapes stay dynamic inside the graph; the inputs keep their
shape). It is applied only after checking, on the example inputs with padding
appended, that the module's output keeps its shape and values; a module whose output
has a token axis (hidden states per token) or that reads padded positions is left
alone, with the reason.

Example:
    >>> trimmed, mask = trim_padding(module, ["input_ids", "attention_mask"], tensors, "auto")
    >>> torch.onnx.export(trimmed, tuple(tensors), "model.onnx", ...)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from hamnet.core.errors import ExportError

if TYPE_CHECKING:
    from torch import nn

AUTO = "auto"
"""Trim by an input named :data:`DEFAULT_MASK` when there is one that qualifies."""

DEFAULT_MASK = "attention_mask"
"""The padding-mask input :data:`AUTO` looks for (Hugging Face's name)."""

METADATA_KEY = "hamnet.trim_padding"
"""ONNX ``metadata_props`` key naming the mask input a graph trims by."""

PROBE_PADDING = 4
"""Padded positions appended to the example inputs to check that trimming is exact."""


def resolve_mask(setting: str | None, names: Sequence[str], shapes: Sequence[Any]) -> str | None:
    """The padding-mask input ``setting`` asks for, or None.

    Args:
        setting: ``"auto"`` (the input :data:`DEFAULT_MASK` if present), an input name,
            or None (no trimming).
        names: The model's input names.
        shapes: Their shapes (``[batch, tokens]`` is required of the mask).

    Returns:
        The mask's name, or None when ``setting`` is None or ``"auto"`` finds no mask.

    Raises:
        ExportError: If a named mask is not an input or is not ``[batch, tokens]``.
    """
    if setting is None:
        return None
    name = (DEFAULT_MASK if DEFAULT_MASK in names else None) if setting == AUTO else setting
    if name is None:
        return None
    if name not in names:
        raise ExportError(
            f"the padding mask must be one of the inputs {list(names)}, but got {name!r}"
        )
    shape = list(shapes[list(names).index(name)])
    if len(shape) != 2:
        raise ExportError(
            f"the padding mask {name!r} must be a [batch, tokens] input, but got shape {shape}"
        )
    return name


def token_inputs(names: Sequence[str], shapes: Sequence[Any], mask: str) -> list[int]:
    """Indices of the inputs cut with the mask: those whose first two axes are its shape."""
    mask_shape = tuple(shapes[list(names).index(mask)])
    return [i for i, shape in enumerate(shapes) if tuple(shape[:2]) == mask_shape]


def trimming_wrapper(module: nn.Module, mask_index: int, tokens: Sequence[int]) -> nn.Module:
    """``module`` (positional inputs) behind a cut of the inputs ``tokens`` after the
    last position input ``mask_index`` uses over the batch (traceable: the cut is a
    ``ReduceMax``, a ``Range`` and a ``Gather`` in ONNX)."""
    import torch
    from torch import nn

    cut = tuple(tokens)

    class PaddingTrimmed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = module

        def forward(self, *args: Any) -> Any:
            mask = args[mask_index]
            used = (mask != 0).any(dim=0).to(torch.int64)
            positions = torch.arange(1, mask.shape[1] + 1, device=mask.device)
            length = (used * positions).max().clamp(min=1)
            keep = torch.arange(length, device=mask.device)
            return self.inner(
                *(a.index_select(1, keep) if i in cut else a for i, a in enumerate(args))
            )

    return PaddingTrimmed()


def trim_padding(
    module: nn.Module,
    names: Sequence[str],
    tensors: Sequence[Any],
    setting: str | None,
    *,
    atol: float = 1e-4,
) -> tuple[nn.Module, str | None]:
    """Wrap ``module`` to skip padded tokens, when that leaves its outputs unchanged.

    Args:
        module: Takes the inputs positionally (in ``names`` order) and returns one tensor.
        names: Input names.
        tensors: Example inputs.
        setting: See :func:`resolve_mask`.
        atol: Largest change of the outputs accepted when padding is appended.

    Returns:
        ``(the module to export, the mask's name)``; ``(module, None)`` when ``setting``
        is None, ``"auto"`` finds no mask, or ``"auto"``'s check fails.

    Raises:
        ExportError: If a named mask is malformed, or its check fails (the output has a
            token axis, or depends on padded positions).
    """

    shapes = [tuple(t.shape) for t in tensors]
    mask = resolve_mask(setting, names, shapes)
    if mask is None:
        return module, None
    mask_index = list(names).index(mask)
    tokens = token_inputs(names, shapes, mask)
    trimmed = trimming_wrapper(module, mask_index, tokens)
    reason = _check(module, trimmed, tensors, tokens, atol)
    if reason is None:
        return trimmed, mask
    if setting == AUTO:
        return module, None
    raise ExportError(f"padding cannot be trimmed by {mask!r}: {reason}")


def _check(
    module: nn.Module,
    trimmed: nn.Module,
    tensors: Sequence[Any],
    tokens: Sequence[int],
    atol: float,
) -> str | None:
    """Why trimming is not exact on the example with padding appended, or None."""
    import torch

    padded = [
        torch.cat([t, t.new_zeros((t.shape[0], PROBE_PADDING, *t.shape[2:]))], dim=1)
        if i in tokens
        else t
        for i, t in enumerate(tensors)
    ]
    try:
        with torch.no_grad():
            plain = module(*tensors)
            full = module(*padded)
            cut = trimmed(*padded)
    except Exception as err:  # a module that needs its full length is left alone
        return f"the model does not run on padded inputs ({type(err).__name__}: {err})"
    if not (plain.shape == full.shape == cut.shape):
        return (
            f"its output must not have a token axis, but its shape follows the input "
            f"length ({list(plain.shape)} at {tensors[tokens[0]].shape[1]} tokens, "
            f"{list(full.shape)} at {padded[tokens[0]].shape[1]})"
        )
    for what, got in (("appended padding", full), ("the cut", cut)):
        moved = float((got.float() - plain.float()).abs().max())
        if not moved <= atol:
            return f"{what} moves its outputs by {moved:.3g} (> {atol:g}): it reads padded tokens"
    return None
