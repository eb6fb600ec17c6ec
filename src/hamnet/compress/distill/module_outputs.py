"""What distillation between any two torch modules reads: inputs, outputs and hidden layers.

:func:`~hamnet.compress.distill.modules.distill_module` works on modules it knows nothing
about. This module holds the parts that make that possible:

- :class:`ModuleInputs`: the training inputs (one array or tensor of any rank, named
  arrays passed as keyword arguments, or a numpy structured array with one field per
  named input) as torch tensors, sliced into batches and fed to a module.
- :func:`primary_output`: the tensor a module's output stands for (a tensor; the first
  item of a tuple/list; ``logits``, else ``last_hidden_state``, else the first value of a
  dict or Hugging Face ``ModelOutput``).
- :class:`LayerCapture`: forward hooks that record named submodules' outputs.
- :func:`block_layers_of` and :func:`auto_layer_map`: which submodules are a model's
  blocks (repeated layers such as ``encoder.layer.N``, residual stages, the children of a
  top-level ``Sequential``) and how a student's blocks pair with its teacher's.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any, TypeAlias

import numpy as np
import torch
from torch import nn

from hamnet.backends.inputs import unpack_inputs
from hamnet.compress.distill.capture import FeatureCapture
from hamnet.compress.distill.mapping import depth_pairs
from hamnet.core.errors import ConfigError, DataError
from hamnet.core.registry import did_you_mean

Batch: TypeAlias = torch.Tensor | dict[str, torch.Tensor]
"""One batch as a module takes it: one tensor, or named tensors passed as keyword arguments."""

_OUTPUT_KEYS = ("logits", "last_hidden_state")


def _tensor(value: Any, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach()
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise DataError(f"{what} must be numeric, but got dtype {array.dtype}")
    if array.dtype.kind == "f" and array.dtype != np.float32:
        array = array.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(array))


def _shape_dtype(t: torch.Tensor) -> str:
    return f"{list(t.shape)} {str(t.dtype).removeprefix('torch.')}"


class ModuleInputs:
    """A module's inputs held as torch tensors, sliced into batches along axis 0.

    Floating-point numpy inputs become float32; integer inputs (token ids, masks) keep
    their dtype; tensors are kept as given.

    Args:
        x: One array or tensor of any rank, a mapping ``name -> array or tensor`` (passed
            to the module as keyword arguments), or a numpy structured array with one field
            per named input.
        what: How to call these inputs in messages (``"training inputs"``).

    Raises:
        DataError: If there is no sample, a named input has no batch axis, named inputs
            have different lengths, or an input is not numeric.
    """

    def __init__(self, x: Any, what: str = "inputs") -> None:
        self.what = what
        if isinstance(x, np.ndarray) and x.dtype.names:
            x = unpack_inputs(x)
        if isinstance(x, Mapping):
            if not x:
                raise DataError(f"{what} must name at least one input, but got an empty mapping")
            self.named: dict[str, torch.Tensor] | None = {
                str(k): _tensor(v, f"{what} {k!r}") for k, v in x.items()
            }
            bad = {k: list(t.shape) for k, t in self.named.items() if t.dim() < 1}
            if bad:
                raise DataError(
                    f"every named input of {what} must have a batch axis, but got {bad}"
                )
            sizes = {k: len(t) for k, t in self.named.items()}
            if len(set(sizes.values())) != 1:
                raise DataError(
                    f"named {what} must have the same number of samples, but got {sizes}"
                )
            self.tensor: torch.Tensor | None = None
            self.size = next(iter(sizes.values()))
        else:
            self.named = None
            self.tensor = _tensor(x, what)
            if self.tensor.dim() < 1:
                raise DataError(f"{what} must have a batch axis, but got a scalar")
            self.size = len(self.tensor)
        if self.size == 0:
            raise DataError(f"{what} must hold at least one sample, but got 0 ({self.describe()})")

    def __len__(self) -> int:
        return self.size

    @property
    def names(self) -> tuple[str, ...] | None:
        """The input names, or None for one unnamed input."""
        return None if self.named is None else tuple(self.named)

    def describe(self) -> str:
        """Shapes and dtypes, e.g. ``"tensor [64, 3, 8, 8] float32"``."""
        if self.named is None:
            assert self.tensor is not None
            return (
                f"tensor {list(self.tensor.shape)} {str(self.tensor.dtype).removeprefix('torch.')}"
            )
        return (
            "{"
            + ", ".join(
                f"{k}: {list(t.shape)} {str(t.dtype).removeprefix('torch.')}"
                for k, t in self.named.items()
            )
            + "}"
        )

    def batch(self, index: torch.Tensor | slice, device: torch.device | None = None) -> Batch:
        """The samples at ``index`` (moved to ``device`` when given)."""
        if self.named is None:
            assert self.tensor is not None
            return self.tensor[index].to(device) if device else self.tensor[index]
        return {k: (t[index].to(device) if device else t[index]) for k, t in self.named.items()}


def model_device(model: nn.Module) -> torch.device:
    """The device of the first parameter or buffer of ``model`` (CPU when it has none)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def call_module(model: nn.Module, batch: Batch) -> Any:
    """Run ``model`` on one batch: ``model(x)``, or ``model(**x)`` for named inputs."""
    device = model_device(model)
    if isinstance(batch, dict):
        return model(**{k: v.to(device) for k, v in batch.items()})
    return model(batch.to(device))


def check_input_names(model: nn.Module, names: Iterable[str] | None, *, side: str) -> None:
    """Raise if named inputs are not parameters of ``model.forward``.

    Nothing is checked for one unnamed input, or when ``forward`` takes ``**kwargs``.

    Raises:
        DataError: Naming the first unknown input, with a did-you-mean hint and the names
            ``forward`` accepts.
    """
    if names is None:
        return
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [
        n
        for n, p in params.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    unknown = [n for n in names if n not in accepted]
    if unknown:
        raise DataError(
            f"the {side} ({type(model).__name__}.forward) accepts inputs {accepted}, but got "
            f"the named input {unknown[0]!r}{did_you_mean(unknown[0], accepted)}"
        )


def primary_output(out: Any, *, side: str = "model") -> torch.Tensor:
    """The tensor a module's output stands for.

    A tensor is itself; a tuple or list gives its first item; a dict or Hugging Face
    ``ModelOutput`` gives ``logits``, else ``last_hidden_state``, else its first value
    (each looked into again the same way).

    Raises:
        DataError: If the output holds no tensor.
    """
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        for key in _OUTPUT_KEYS:
            if isinstance(out.get(key), torch.Tensor):
                return out[key]
        values = [v for v in out.values() if v is not None]
        if values:
            return primary_output(values[0], side=side)
    elif isinstance(out, (tuple, list)) and out:
        return primary_output(out[0], side=side)
    raise DataError(
        f"the {side}'s output must be a tensor, a tuple/list or a dict holding one, but got "
        f"{type(out).__name__}"
    )


def check_layer_names(model: nn.Module, names: Iterable[str], *, side: str) -> None:
    """Raise if a name is not a submodule of ``model``.

    Raises:
        ConfigError: Naming the unknown layer, with a did-you-mean hint.
    """
    known = [name for name, _ in model.named_modules() if name]
    for name in names:
        if name not in known:
            shown = ", ".join(known[:8]) + (", ..." if len(known) > 8 else "")
            raise ConfigError(
                f"hidden_map must name submodules of the {side}, but got {name!r}"
                f"{did_you_mean(name, known)}; the {side}'s submodules include {shown}"
            )


class LayerCapture(FeatureCapture):
    """Context manager recording the outputs of named submodules of any module, each by
    :func:`primary_output` (a :class:`FeatureCapture` without HAMNet's name check: the
    names were checked by :func:`check_layer_names`).

    Args:
        model: The model.
        names: Submodule names, as in ``model.named_modules()``.
    """

    def __init__(self, model: nn.Module, names: Iterable[str]) -> None:
        self.names = list(dict.fromkeys(names))
        self.model = model
        self.detach = False
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, name: str) -> Any:
        def record(module: nn.Module, inputs: Any, output: Any) -> None:
            self.outputs[name] = primary_output(output, side=f"layer {name!r}")

        return record


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _is_block(module: nn.Module) -> bool:
    return any(True for _ in module.children()) and _n_params(module) > 0


def _inside(name: str, outer: str) -> bool:
    return name.startswith(outer + ".")


def _instances(model: nn.Module, kind: str) -> list[str]:
    """Names of the blocks of class ``kind``, without containers and nested blocks.

    A block whose children include several blocks of its class is their container (a
    ``Sequential`` of ``Sequential`` stages), not a block; a block inside another one
    (a ResNet block's ``downsample`` inside its ``Sequential`` stage) is not either.
    """
    modules = dict(model.named_modules())
    names = [n for n, m in modules.items() if n and type(m).__qualname__ == kind and _is_block(m)]
    children = {n: {f"{n}.{c}" for c, _ in modules[n].named_children()} for n in names}
    names = [n for n in names if len(children[n].intersection(names)) < 2]
    return [n for n in names if not any(_inside(n, o) for o in names)]


def block_class(model: nn.Module) -> str | None:
    """The class of a model's blocks, or None when it has no repeated composite layers.

    Blocks are submodules with children and parameters that occur at least twice (a
    ``BertLayer`` in ``encoder.layer.N``, a ResNet stage ``layerK``, the ``Sequential``
    stages of a ``Sequential`` model); a container of several is not itself a block. The
    class whose blocks hold the most parameters wins.
    """
    kinds = {type(m).__qualname__ for n, m in model.named_modules() if n and _is_block(m)}
    modules = dict(model.named_modules())
    best: tuple[int, int, str] | None = None
    for kind in sorted(kinds):
        names = _instances(model, kind)
        if len(names) < 2:
            continue
        score = (sum(_n_params(modules[n]) for n in names), -len(names), kind)
        if best is None or score[:2] > best[:2]:
            best = score
    return None if best is None else best[2]


def block_layers_of(model: nn.Module, kind: str | None) -> list[str]:
    """Names of a model's blocks of class ``kind``, in definition order.

    With ``kind=None`` (no repeated blocks, e.g. a ``Sequential`` of plain layers) the
    blocks are the model's top-level children that hold parameters, the last one (the
    head) excepted. The last child of a top-level ``Sequential`` makes the model's output,
    so it is never a block either.

    Args:
        model: The model.
        kind: The block class (a class ``__qualname__``, see :func:`block_class`) or None.
    """
    if kind is not None:
        names = _instances(model, kind)
    else:
        names = [n for n, m in model.named_children() if _n_params(m) > 0][:-1]
    if isinstance(model, nn.Sequential) and len(model):
        last = str(len(model) - 1)
        names = [n for n in names if n != last and not _inside(n, last)]
    return names


def auto_layer_map(student: nn.Module, teacher: nn.Module) -> dict[str, str]:
    """Pair the student's blocks with the teacher's.

    The block class is read on the teacher (see :func:`block_class`); the student's
    blocks are its blocks of that class (see :func:`block_layers_of`). Student block ``i``
    of ``n`` learns from teacher block ``round((i + 1) * m / n) - 1`` of ``m`` (uniform,
    like TinyBERT), so a pruned copy pairs each block with its namesake and a shallower
    student spreads over the teacher.

    Returns:
        ``{student_layer: teacher_layer}``; empty when either side has no blocks.
    """
    kind = block_class(teacher)
    t_layers = block_layers_of(teacher, kind)
    s_layers = block_layers_of(student, kind)
    if not t_layers or not s_layers:
        return {}
    return {s_layers[i]: t_layers[j] for i, j in depth_pairs(len(s_layers), len(t_layers))}
