"""Replayable structured-pruning plans for ANY torch module.

A structurally pruned module cannot be rebuilt from its original class alone: its
linears, convolutions and attentions have fewer channels or heads. A
:class:`ModulePlan` records what is needed to rebuild it from the ORIGINAL module:

* torch-pruning's pruning history (``DependencyGraph.pruning_history()``: which root
  module lost which channels, step by step), replayed by
  ``DependencyGraph.load_pruning_history``;
* the integer attributes of submodules that pruning changed and torch-pruning does not
  maintain itself (e.g. ``num_attention_heads`` / ``all_head_size`` of a Hugging Face
  attention), found generically by diffing every submodule's ``int`` attributes before
  and after pruning;
* for a shallower student (:mod:`hamnet.compress.students.shrink`), the blocks removed
  from repeated-block containers (:class:`DroppedBlocks`: an ``nn.ModuleList`` or
  ``nn.Sequential`` and the child indices that went) and the counts that follow them
  (``config.num_hidden_layers``, ``num_layers``, a block's ``layer_idx``).

:func:`apply_module_plan` rebuilds the architecture on a copy of the original, depth
first (blocks dropped), then width (the history replayed); its weights then come from
the pruned model's saved ``state_dict``.

Inputs follow hamnet's convention: one tensor, a tuple of tensors (positional), or a
mapping ``name -> tensor`` passed as keyword arguments. Outputs may be a tensor, a
tuple/list (the first item counts), or a mapping / Hugging Face ``ModelOutput``
(``logits``, else ``last_hidden_state``, else the first value).

torch and torch-pruning are imported inside the functions.

Example:
    >>> plan = result.plan
    >>> plan.save("out/plan.json")
    >>> pruned = apply_module_plan(original, ModulePlan.load("out/plan.json"), example)
    >>> pruned.load_state_dict(torch.load("out/weights.pt", weights_only=True))
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hamnet.core.artifacts import atomic_write_text
from hamnet.core.errors import ConfigError, HamnetError, ModelLoadError

if TYPE_CHECKING:
    import torch
    from torch import nn

MODULE_PLAN_FORMAT = "hamnet-module-plan/1"

ModuleInputs = Any
"""One tensor, a tuple/list of tensors (positional) or a ``name -> tensor`` mapping."""

__all__ = [
    "MODULE_PLAN_FORMAT",
    "DroppedBlocks",
    "HistoryStep",
    "ModuleInputs",
    "ModulePlan",
    "PlanGroup",
    "apply_module_plan",
    "build_dependency_graph",
    "call_module",
    "changed_int_attributes",
    "drop_blocks",
    "int_attributes",
    "keep_children",
    "primary_output",
    "set_int_attributes",
    "set_path_attributes",
]


class HistoryStep(BaseModel):
    """One entry of torch-pruning's pruning history.

    Attributes:
        module: Qualified name of the group's root module.
        out_channels: True when the root's output channels were pruned.
        indices: Channel indices removed, as they were numbered at that step.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    module: str
    out_channels: bool
    indices: list[int]


class PlanGroup(BaseModel):
    """What pruning did to one prunable group (descriptive).

    Attributes:
        name: Qualified name of the group's root module.
        kind: ``conv``, ``linear``, ``heads`` (whole attention heads) or ``embed``
            (an ``nn.MultiheadAttention`` embedding width).
        size: Units before pruning (channels, or heads for ``heads``).
        removed: Units removed.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    kind: str
    size: int
    removed: int


class DroppedBlocks(BaseModel):
    """Children removed from one repeated-block container (a shallower student).

    Attributes:
        container: Qualified name of the ``nn.ModuleList`` / ``nn.Sequential``, as named
            in the original module (``""``: the root itself).
        size: Children the container had.
        removed: Child indices removed (a block of several children removes them all).
            The children left keep their order; numbered children (``"0"``, ``"1"``...)
            are numbered again from 0, named ones keep their names.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    container: str
    size: int = Field(ge=1)
    removed: list[int] = Field(min_length=1)


class ModulePlan(BaseModel):
    """A replayable description of a structurally pruned module.

    Attributes:
        format: The file format tag (:data:`MODULE_PLAN_FORMAT`).
        model_class: Class name of the pruned root module (checked on replay).
        history: torch-pruning's pruning history, in order.
        attributes: ``"sub.module.attr" -> value`` for the integer attributes that
            pruning changed (an attribute of the root itself has no prefix).
        ratio: The fraction of units that was to be removed.
        criterion: The importance criterion used.
        allocation: How the budget was spread over the groups.
        kept: Modules left unpruned on purpose (output layers and ``keep``).
        layer_ratios: Per-group removal fractions, in the order of ``groups``.
        params_before: Parameters of the original module.
        params_after: Parameters of the pruned module.
        groups: What happened to every prunable group.
        blocks: Blocks removed before the width was pruned (depth), in order.
        block_attributes: ``"dotted.path" -> value`` set after the blocks went (paths of
            the model after the removal; they may pass through non-module objects such
            as a Hugging Face ``config``).
        width: The width multiplier of a student (None: a pruning plan).
        depth: The depth multiplier of a student (None: a pruning plan).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["hamnet-module-plan/1"] = "hamnet-module-plan/1"
    model_class: str
    history: list[HistoryStep]
    attributes: dict[str, int] = Field(default_factory=dict)
    ratio: float
    criterion: str
    allocation: str
    kept: list[str] = Field(default_factory=list)
    layer_ratios: list[float] = Field(default_factory=list)
    params_before: int
    params_after: int
    groups: list[PlanGroup] = Field(default_factory=list)
    blocks: list[DroppedBlocks] = Field(default_factory=list)
    block_attributes: dict[str, int] = Field(default_factory=dict)
    width: float | None = None
    depth: float | None = None

    def to_json(self) -> str:
        """The plan as a JSON string."""
        return json.dumps(self.model_dump(mode="json"), indent=2)

    @classmethod
    def from_json(cls, text: str, *, source: str = "the pruning plan") -> Self:
        """Parse a plan written by :meth:`to_json`.

        Raises:
            ConfigError: If ``text`` is not JSON or not a plan of this format.
        """
        try:
            payload = json.loads(text)
        except ValueError as err:
            raise ConfigError(f"expected JSON in {source}, but got: {err}") from None
        found = payload.get("format") if isinstance(payload, dict) else None
        if found != MODULE_PLAN_FORMAT:
            raise ConfigError(
                f"expected a {MODULE_PLAN_FORMAT!r} JSON object in {source}, but got format "
                f"{found!r}"
            )
        try:
            return cls.model_validate(payload)
        except ValidationError as err:
            raise ConfigError(f"{source} is not a valid ModulePlan: {err}") from None

    def save(self, path: str | Path) -> Path:
        """Write the plan as JSON (parent folders are created); return the path."""
        return atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Self:
        """Read a plan written by :meth:`save`.

        Raises:
            ModelLoadError: If the file is missing or unreadable.
            ConfigError: If the file is not a plan of this format.
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise ModelLoadError(
                f"expected a module pruning plan JSON file at {path}, but could not read it: {err}"
            ) from None
        return cls.from_json(text, source=str(path))

    def followed_by(self, later: ModulePlan) -> ModulePlan:
        """One plan that replays this plan, then ``later`` (made on this plan's result).

        The child of an already pruned or shrunk module is stored against the original
        root, so its plan must hold both: this plan's blocks and history, then
        ``later``'s history (its names and channel indices are those of this plan's
        result), the integer attributes of both (``later``'s win). The descriptive
        fields (ratio, criterion, groups, ...) are ``later``'s; ``params_before`` stays
        the root's.

        Raises:
            ConfigError: ``later`` drops blocks itself (only the first plan may), or was
                made for another class.
        """
        if later.blocks:
            raise ConfigError(
                "a plan that follows another must not drop blocks itself, but got one that "
                f"drops blocks of {[b.container for b in later.blocks]}"
            )
        if later.model_class != self.model_class:
            raise ConfigError(
                f"a plan that follows one for a {self.model_class} must be for the same "
                f"class, but got one for a {later.model_class}"
            )
        return later.model_copy(
            update={
                "history": [*self.history, *later.history],
                "attributes": {**self.attributes, **later.attributes},
                "blocks": list(self.blocks),
                "block_attributes": dict(self.block_attributes),
                "width": self.width,
                "depth": self.depth,
                "params_before": self.params_before,
            }
        )

    def torch_pruning_history(self) -> list[list[Any]]:
        """The history in torch-pruning's own form ``[[name, is_out, idxs], ...]``."""
        return [[s.module, s.out_channels, list(s.indices)] for s in self.history]


def call_module(module: nn.Module, inputs: ModuleInputs) -> Any:
    """Run ``module`` on hamnet-convention inputs (tensor, tuple, or keyword mapping)."""
    if isinstance(inputs, Mapping):
        return module(**inputs)
    if isinstance(inputs, tuple | list):
        return module(*inputs)
    return module(inputs)


def describe_inputs(inputs: ModuleInputs) -> str:
    """The shapes of hamnet-convention inputs, for error messages: ``[1, 64]`` or
    ``{'input_ids': [1, 8], ...}``."""
    if isinstance(inputs, Mapping):
        return str({k: list(getattr(v, "shape", ())) for k, v in inputs.items()})
    if isinstance(inputs, tuple | list):
        return str([list(getattr(v, "shape", ())) for v in inputs])
    return str(list(getattr(inputs, "shape", ())))


def check_module_runs(
    module: nn.Module, inputs: ModuleInputs, *, what: str, error: type[HamnetError]
) -> Any:
    """Run ``module`` once (eval mode, no gradients) on ``inputs`` and return its output.

    The one check every entry point makes before it spends time on a user's module.

    Args:
        module: The module to call.
        inputs: A tensor, a tuple of tensors, or a mapping of named tensors.
        what: What the inputs are, for the message (e.g. ``"the example inputs"``).
        error: The error type to raise (``DataError`` for the user's data,
            ``ConfigError`` for a configured example).

    Raises:
        HamnetError: Of type ``error``, naming the module, the inputs' shapes and the
            module's own error.
    """
    import torch

    try:
        with torch.no_grad():
            return call_module(module.eval(), inputs)
    except HamnetError:
        raise
    except Exception as err:
        raise error(
            f"{what} must run the {type(module).__name__}, but calling it with "
            f"{describe_inputs(inputs)} failed: {type(err).__name__}: {err}"
        ) from None


def primary_output(output: Any) -> torch.Tensor:
    """The tensor that stands for a model's output.

    A tensor is itself; a tuple/list gives its first item; a mapping or Hugging Face
    ``ModelOutput`` gives ``logits``, else ``last_hidden_state``, else its first value.

    Raises:
        ConfigError: If no tensor is found.
    """
    import torch

    found = output
    for _ in range(4):
        if isinstance(found, torch.Tensor):
            return found
        if isinstance(found, Mapping):
            values = list(found.values())
            found = next(
                (found[k] for k in ("logits", "last_hidden_state") if found.get(k) is not None),
                values[0] if values else None,
            )
        elif isinstance(found, tuple | list) and found:
            found = found[0]
        else:
            break
    raise ConfigError(
        "a model output must be a tensor, a tuple/list or a mapping holding one (logits, "
        f"last_hidden_state), but got {type(output).__name__}"
    )


def build_dependency_graph(module: nn.Module, example_inputs: ModuleInputs) -> Any:
    """Trace ``module`` with torch-pruning's ``DependencyGraph``.

    The graph also gets ``hamnet_output_grad_fns``: the ``grad_fn`` of every output
    tensor of the traced forward pass, so callers can tell which nodes produce a model
    output (torch-pruning adds an output node only where no module does).

    Raises:
        ConfigError: If tracing fails (the message names torch-pruning's error).
    """
    import warnings

    import torch
    import torch_pruning as tp

    outputs: list[Any] = []

    def forward(model: nn.Module, inputs: ModuleInputs) -> Any:
        return call_module(model, inputs)

    def keep_outputs(out: Any) -> Any:
        outputs.extend(
            t.grad_fn for t in tp.utils.flatten_as_list(out) if isinstance(t, torch.Tensor)
        )
        return out

    try:
        with torch.enable_grad(), warnings.catch_warnings():  # tracing reads autograd
            warnings.simplefilter("ignore")
            graph = tp.DependencyGraph().build_dependency(
                module,
                example_inputs=example_inputs,
                forward_fn=forward,
                output_transform=keep_outputs,
                verbose=False,
            )
    except Exception as err:
        raise ConfigError(
            f"the model must be traceable by torch-pruning's DependencyGraph, but tracing "
            f"{type(module).__name__} failed with {type(err).__name__}: {err}"
        ) from None
    graph.hamnet_output_grad_fns = [fn for fn in outputs if fn is not None]
    return graph


def int_attributes(module: nn.Module) -> dict[str, int]:
    """Every public ``int`` attribute (bools excluded) of every submodule, by qualified name."""
    found: dict[str, int] = {}
    for prefix, sub in module.named_modules():
        for key, value in vars(sub).items():
            if key.startswith("_") or isinstance(value, bool) or not isinstance(value, int):
                continue
            found[f"{prefix}.{key}" if prefix else key] = value
    return found


def changed_int_attributes(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    """The attributes of ``after`` whose value differs from (or is absent in) ``before``."""
    return {k: v for k, v in after.items() if before.get(k) != v}


def set_int_attributes(module: nn.Module, attributes: Mapping[str, int]) -> None:
    """Set ``"sub.module.attr" -> value`` on ``module``'s submodules.

    Raises:
        ConfigError: If a submodule or attribute does not exist.
    """
    modules = dict(module.named_modules())
    for qualified, value in attributes.items():
        prefix, _, attr = qualified.rpartition(".")
        owner = modules.get(prefix)
        if owner is None or not hasattr(owner, attr):
            raise ConfigError(
                f"the plan sets {qualified!r}, so the model must have a submodule "
                f"{prefix or '<root>'!r} with attribute {attr!r}, but got none"
            )
        setattr(owner, attr, int(value))


def set_path_attributes(module: nn.Module, attributes: Mapping[str, int]) -> None:
    """Set ``"a.b.attr" -> value`` by following attributes from ``module`` (submodules,
    and plain objects such as a Hugging Face ``config``).

    Raises:
        ConfigError: If a step of a path does not exist, or the attribute is not an int.
    """
    for path, value in attributes.items():
        *steps, attr = path.split(".")
        owner: Any = module
        for step in steps:
            owner = getattr(owner, step, None)
            if owner is None:
                break
        found = getattr(owner, attr, None) if owner is not None else None
        if owner is None or isinstance(found, bool) or not isinstance(found, int):
            raise ConfigError(
                f"the plan sets {path!r}, so the model must have an int attribute there, but "
                f"{type(module).__name__} has {type(found).__name__ if owner else 'no such path'}"
            )
        setattr(owner, attr, int(value))


def keep_children(container: nn.Module, keep: list[int]) -> None:
    """Keep only the children at ``keep`` (in order) of ``container``, in place.

    Numbered children (``"0"``, ``"1"``...) are numbered again from 0, so an
    ``nn.ModuleList`` still indexes; named children keep their names.
    """
    items = list(container._modules.items())
    numbered = all(key.isdigit() for key, _ in items)
    kept = [items[i] for i in keep]
    container._modules.clear()
    for index, (key, child) in enumerate(kept):
        container._modules[str(index) if numbered else key] = child


def drop_blocks(module: nn.Module, blocks: list[DroppedBlocks]) -> None:
    """Remove the recorded children of each container, in place.

    Every container is found (by its name in ``module`` as given) and checked before any
    is changed, so a plan that does not fit leaves ``module`` as it was.

    Raises:
        ConfigError: A container is missing, not an ``nn.ModuleList``/``nn.Sequential``,
            has another number of children, or an index is out of range.
    """
    from torch import nn

    modules = dict(module.named_modules())
    work = []
    for record in blocks:
        container = modules.get(record.container)
        if not isinstance(container, nn.ModuleList | nn.Sequential):
            raise ConfigError(
                f"the plan drops blocks of {record.container or '<root>'!r}, so the model must "
                f"have an nn.ModuleList or nn.Sequential there, but got "
                f"{type(container).__name__ if container is not None else 'none'}"
            )
        count = len(container._modules)
        removed = set(record.removed)
        if count != record.size or not removed <= set(range(count)) or len(removed) >= count:
            raise ConfigError(
                f"the plan removes children {sorted(removed)} of {record.container or '<root>'!r}, "
                f"which it says has {record.size}, but the model's has {count}"
            )
        work.append((container, [i for i in range(count) if i not in removed]))
    for container, keep in work:
        keep_children(container, keep)


def apply_module_plan(
    module: nn.Module, plan: ModulePlan, example_inputs: ModuleInputs
) -> nn.Module:
    """Rebuild the pruned architecture from the ORIGINAL (unpruned) module and a plan.

    On a deep copy of ``module``, the plan's dropped blocks (a shallower student) are
    removed first and their counts set; then the copy is traced with torch-pruning's
    ``DependencyGraph``, the plan's history is replayed on it, and the recorded integer
    attributes are set. The
    weights are those of ``module`` sliced by the plan; load the pruned model's
    ``state_dict`` into the result (``strict=True``) to get the pruned model back.

    Args:
        module: The module the plan was made from (same architecture and class).
        plan: A plan from ``prune_module`` or :meth:`ModulePlan.load`.
        example_inputs: Inputs that run ``module`` (for tracing).

    Returns:
        The pruned-architecture copy, in eval mode; ``module`` is unchanged.

    Raises:
        ConfigError: If the plan was made for another class, or its blocks or history
            do not fit the module (a name missing, indices out of range).
    """
    if type(module).__name__ != plan.model_class:
        raise ConfigError(
            f"the pruning plan was made for a {plan.model_class}, but got a {type(module).__name__}"
        )
    work = copy.deepcopy(module).eval()
    if plan.blocks:
        drop_blocks(work, plan.blocks)
        set_path_attributes(work, plan.block_attributes)
    if not plan.history:
        set_int_attributes(work, plan.attributes)
        return work
    names = {name for name, _ in work.named_modules()}
    missing = sorted({s.module for s in plan.history} - names)
    if missing:
        raise ConfigError(
            f"the pruning plan prunes modules {missing}, so the model must have them, but "
            f"{type(module).__name__} has none of that name"
        )
    # Tracing follows autograd: a frozen module is traced with its parameters trainable,
    # and frozen again afterwards.
    frozen = {name for name, p in work.named_parameters() if not p.requires_grad}
    for parameter in work.parameters():
        parameter.requires_grad_(True)
    graph = build_dependency_graph(work, example_inputs)
    modules = dict(work.named_modules())
    for number, step in enumerate(plan.torch_pruning_history()):
        target = modules[step[0]]
        width = graph.get_out_channels(target) if step[1] else graph.get_in_channels(target)
        indices = step[2]
        if (
            width is None
            or len(set(indices)) != len(indices)
            or not indices
            or not (min(indices) >= 0 and max(indices) < width and len(indices) < width)
        ):
            raise ConfigError(
                f"the pruning plan's history must fit the model's channels, but step {number} "
                f"removes {len(indices)} indices up to {max(indices, default=None)} from "
                f"{step[0]!r}, which has {width} {'output' if step[1] else 'input'} channels"
            )
        try:  # one step at a time, so a failure names its step
            graph.load_pruning_history([step])
        except (IndexError, RuntimeError, AssertionError, ValueError) as err:
            raise ConfigError(
                f"the pruning plan's history must fit the model's channels, but step {number} "
                f"on {step[0]!r} failed with {type(err).__name__}: {err}"
            ) from None
    set_int_attributes(work, plan.attributes)
    work.zero_grad(set_to_none=True)
    for name, parameter in work.named_parameters():
        if name in frozen:
            parameter.requires_grad_(False)
    return work
