"""Read intermediate outputs of a model with forward hooks, by module name."""

from __future__ import annotations

import re
from collections.abc import Iterable
from types import TracebackType
from typing import Any

import torch
from torch import nn

from hamnet.compress.distill.outputs import CaptureSpec, DistillOutputs
from hamnet.core.errors import ConfigError

EMBEDDING_MODULE = "norm"
"""Module whose output, averaged over tokens, is the embedding (HAMNet's final LayerNorm)."""

_MAX_LISTED = 12


def available_layers(model: nn.Module) -> list[str]:
    """Names of every submodule of ``model`` that can be captured, in definition order."""
    return [name for name, _ in model.named_modules() if name]


def describe_layers(names: Iterable[str]) -> str:
    """A short listing of layer names, with block indices folded (``blocks.*.attn``)."""
    patterns = list(dict.fromkeys(re.sub(r"(?<=\.)\d+(?=\.|$)", "*", n) for n in names))
    shown = ", ".join(patterns[:_MAX_LISTED])
    more = len(patterns) - _MAX_LISTED
    return shown + (f", ... ({more} more)" if more > 0 else "")


def check_layers(model: nn.Module, names: Iterable[str], *, side: str = "model") -> None:
    """Raise if a name is not a submodule of ``model``.

    Args:
        model: The model.
        names: Module names, as in ``model.named_modules()``.
        side: How to call the model in the message (``"student"``, ``"teacher"``).

    Raises:
        ConfigError: Naming the first unknown layer and listing the available ones.
    """
    known = dict(model.named_modules())
    for name in names:
        if not name or name not in known:
            raise ConfigError(
                f"{side} has no layer {name!r}; available layers: "
                f"{describe_layers(available_layers(model))}"
            )


def block_layers(model: nn.Module) -> list[str]:
    """Names of the transformer blocks of a HAMNet-like model (``blocks.0`` ... ``blocks.n-1``).

    Raises:
        ConfigError: If the model has no ``blocks`` module list.
    """
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise ConfigError(
            f"depth mapping needs a model with a 'blocks' ModuleList (like HAMNet), but "
            f"{type(model).__name__} has none; map layers explicitly instead. Available "
            f"layers: {describe_layers(available_layers(model))}"
        )
    return [f"blocks.{i}" for i in range(len(blocks))]


def attention_layers(model: nn.Module) -> list[str]:
    """Names of the attention probes of a HAMNet-like model (``blocks.{i}.attn.attn_probe``).

    Raises:
        ConfigError: If the model has no blocks or a block has no ``attn.attn_probe``.
    """
    names = [f"{block}.attn.attn_probe" for block in block_layers(model)]
    check_layers(model, names)
    return names


class FeatureCapture:
    """Context manager that records the outputs of named modules during forward passes.

    Hooks are registered on entry and removed on exit; each forward pass overwrites
    :attr:`outputs`. For an ``attn_probe`` the output is the attention map. A module whose
    output is a tuple is recorded by its first element.

    Args:
        model: The model.
        names: Module names, as in ``model.named_modules()``.
        detach: Record detached tensors (for models that are not trained).

    Raises:
        ConfigError: If a name is not a submodule of ``model``.

    Example:
        >>> with FeatureCapture(model, ["blocks.0"]) as capture:
        ...     logits = model(x)
        >>> capture.outputs["blocks.0"].shape
    """

    def __init__(self, model: nn.Module, names: Iterable[str], *, detach: bool = False) -> None:
        self.names = list(dict.fromkeys(names))
        check_layers(model, self.names)
        self.model = model
        self.detach = detach
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> FeatureCapture:
        modules = dict(self.model.named_modules())
        self.outputs = {}
        for name in self.names:
            self._handles.append(modules[name].register_forward_hook(self._hook(name)))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _hook(self, name: str) -> Any:
        def record(module: nn.Module, inputs: Any, output: Any) -> None:
            if isinstance(output, (tuple, list)):
                output = output[0]
            self.outputs[name] = output.detach() if self.detach else output

        return record


def model_outputs(model: nn.Module, x: torch.Tensor, spec: CaptureSpec) -> DistillOutputs:
    """Run ``model`` once on ``x`` and collect what ``spec`` asks for.

    The same path serves the student (with gradients) and the teachers (under
    ``torch.inference_mode`` in :func:`~.teacher_cache.compute_teacher_outputs`).
    The embedding is the output of the ``norm`` module averaged over tokens; a model
    without ``norm`` gets ``embedding=None`` (losses then fall back to the logits).

    Args:
        model: The model, in the mode the caller wants.
        x: One batch of inputs.
        spec: Layers to capture.

    Returns:
        The logits and the captured tensors.

    Raises:
        ConfigError: If a layer of ``spec`` is not a submodule of ``model``.
    """
    has_norm = EMBEDDING_MODULE in dict(model.named_modules())
    extra = [EMBEDDING_MODULE] if spec.embedding and has_norm else []
    with FeatureCapture(model, [*spec.features, *spec.attentions, *extra]) as capture:
        logits = model(x)
    embedding = None
    if extra:
        pooled = capture.outputs[EMBEDDING_MODULE]
        embedding = pooled.mean(dim=1) if pooled.dim() == 3 else pooled
    return DistillOutputs(
        logits=logits,
        features={name: capture.outputs[name] for name in spec.features},
        attentions={name: capture.outputs[name] for name in spec.attentions},
        embedding=embedding,
    )
