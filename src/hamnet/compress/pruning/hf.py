"""Structured pruning of Hugging Face BERT-style encoders: attention heads and FFN neurons.

Works on any ``transformers`` model whose encoder layers look like BERT's
(``encoder.layer[i].attention.self.{query,key,value}``, ``.attention.output.dense``,
``.intermediate.dense``, ``.output.dense``): ``BertModel``,
``BertForSequenceClassification`` and their relatives. torch-pruning's
:class:`~torch_pruning.DependencyGraph` traces the model once; each layer's heads and FFN
neurons are scored with a criterion (a ``supports_hf`` plugin of kind ``"criterion"``) on their
dependency group, and the lowest-scoring ones are removed through
``DependencyGraph.get_pruning_group(...).prune()``. A head goes as whole rows of
``query``/``key``/``value`` and the matching columns of ``attention.output.dense``; an FFN
neuron as a row of ``intermediate.dense`` and a column of ``output.dense``. The hidden
width, embeddings, LayerNorms, pooler and classifier are never touched, so the pruned
model keeps its inputs and outputs.

A Hugging Face config cannot state per-layer head counts, so the pruned model keeps its
original ``config``; the :class:`HFPruningPlan` (indices kept, as JSON) rebuilds it from
the original model with :func:`apply_hf_plan`.

transformers and torch-pruning are imported only inside the functions that prune.

Example:
    >>> pruned, plan = prune_bert(model, 0.5, criterion="l1")
    >>> plan.save("out/plan.json")
    >>> again = apply_hf_plan(model, HFPruningPlan.load("out/plan.json"))
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hamnet.compress.pruning.allocation import allocation_class
from hamnet.compress.pruning.allocations.base import Allocation
from hamnet.compress.pruning.criteria.base import Criterion
from hamnet.compress.pruning.importance import criterion_class
from hamnet.compress.pruning.plans import JsonPlan, LayerPlan
from hamnet.core import registry
from hamnet.core.errors import ConfigError, MissingDependencyError, StageError

HF_PLAN_FORMAT = "hamnet-hf-pruning-plan/1"

Calibration = tuple[torch.Tensor, torch.Tensor, torch.Tensor] | Callable[[nn.Module], torch.Tensor]
"""A batch ``(input_ids, attention_mask, labels)`` or ``f(model) -> scalar loss``."""

_CONFIG_KEYS = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "vocab_size",
)
"""Config fields recorded in a plan and checked when it is applied."""

_EXPECTED = (
    "a BERT-style encoder with encoder.layer[i].attention.self.{query,key,value}, "
    "attention.output.dense, intermediate.dense and output.dense (nn.Linear)"
)


class HFPruningPlan(JsonPlan):
    """A replayable description of a structurally pruned BERT-style encoder.

    Attributes:
        model_class: Class name of the model that was pruned (informative).
        base_config: The architecture fields of the original ``model.config``.
        layers: What each encoder layer keeps, as indices into the ORIGINAL heads and
            FFN neurons.
        criterion: The importance criterion used.
        allocation: ``"uniform"`` or ``"global"``.
        ratio: The fraction of heads and FFN neurons that was to be removed.
    """

    FORMAT = HF_PLAN_FORMAT

    model_class: str
    base_config: dict[str, Any]
    layers: list[LayerPlan]
    criterion: str
    allocation: str
    ratio: float


@dataclass(frozen=True)
class _Layer:
    """The prunable linears of one encoder layer (``attention`` is its self-attention)."""

    attention: Any
    query: nn.Linear
    key: nn.Linear
    value: nn.Linear
    attn_out: nn.Linear
    ffn_in: nn.Linear
    ffn_out: nn.Linear

    @property
    def head_size(self) -> int:
        return int(self.attention.attention_head_size)

    @property
    def num_heads(self) -> int:
        return int(self.attention.num_attention_heads)

    @property
    def ffn_width(self) -> int:
        return self.ffn_in.out_features


def prune_bert(
    model: nn.Module,
    ratio: float,
    *,
    criterion: str = "l1",
    allocation: str = "uniform",
    example_inputs: Mapping[str, torch.Tensor] | torch.Tensor | None = None,
    calibration: Calibration | None = None,
    seed: int = 0,
    inplace: bool = False,
) -> tuple[nn.Module, HFPruningPlan]:
    """Remove a fraction of the attention heads and FFN neurons of a BERT-style encoder.

    At least one head and one FFN neuron stay in every layer. The hidden width,
    embeddings, LayerNorms, pooler and classifier are never pruned.

    Args:
        model: An unpruned ``transformers`` BERT-style model (see the module docstring).
        ratio: Fraction of heads and of FFN neurons to remove, in ``(0, 1)``.
        criterion: One of :func:`hf_criteria` (l1, l2, random, taylor).
        allocation: One of :func:`hf_allocations`: ``uniform`` (every layer loses
            ``ratio``) or ``global`` (heads, and FFN neurons, ranked across layers).
        example_inputs: Inputs torch-pruning traces the model with: keyword arguments
            of ``model`` or an ``input_ids`` tensor; default a ``[2, 8]`` batch of token
            ids with a full attention mask.
        calibration: Needed by ``taylor``: a batch ``(input_ids, attention_mask,
            labels)`` for a model whose output has a ``loss`` (e.g.
            ``BertForSequenceClassification``), or a callable returning a scalar loss
            for the model it is given.
        seed: Seeds the ``random`` criterion (the global torch RNG is left as it was).
        inplace: Prune ``model`` itself (its gradients are cleared) instead of a deep
            copy.

    Returns:
        The pruned model (in the mode ``model`` was in, gradients cleared) and its plan,
        whose indices refer to ``model``'s heads and FFN neurons.

    Raises:
        ConfigError: If a setting is out of range or unknown, ``taylor`` lacks
            calibration data, or the model is not an unpruned BERT-style encoder.
        MissingDependencyError: If transformers is not installed.
        StageError: If torch-pruning would remove something other than heads or FFN
            neurons.
    """
    scorer, global_ranking = _check_settings(ratio, criterion, allocation, calibration)
    _check_unpruned(model, _encoder_layers(model))
    with _pruning(model, example_inputs, inplace=inplace) as (work, layers, graph):
        try:
            if scorer.needs_gradients and calibration is not None:
                _accumulate_gradients(work, layers, calibration)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                importance = scorer.build(work, None, seed)
                head_scores, ffn_scores = _score(graph, layers, importance)
            if global_ranking:
                heads_kept = _keep_global(head_scores, ratio)
                ffn_kept = _keep_global(ffn_scores, ratio)
            else:
                heads_kept = [_keep_uniform(s, ratio) for s in head_scores]
                ffn_kept = [_keep_uniform(s, ratio) for s in ffn_scores]
            _prune_layers(graph, layers, heads_kept, ffn_kept)
        finally:
            work.zero_grad(set_to_none=True)
    plan = HFPruningPlan(
        model_class=type(model).__name__,
        base_config=_config_subset(model),
        layers=[
            LayerPlan(heads_kept=h, ffn_kept=f) for h, f in zip(heads_kept, ffn_kept, strict=True)
        ],
        criterion=criterion,
        allocation=allocation,
        ratio=ratio,
    )
    return work, plan


def apply_hf_plan(
    model: nn.Module,
    plan: HFPruningPlan,
    *,
    example_inputs: Mapping[str, torch.Tensor] | torch.Tensor | None = None,
    inplace: bool = False,
) -> nn.Module:
    """Rebuild a pruned model from its ORIGINAL (unpruned) model and a plan.

    Args:
        model: The unpruned model the plan was made from (or one of the same
            architecture, e.g. the same checkpoint).
        plan: A plan from :func:`prune_bert` or :meth:`HFPruningPlan.load`.
        example_inputs: As for :func:`prune_bert`.
        inplace: Prune ``model`` itself instead of a deep copy.

    Returns:
        The pruned model, keeping exactly the plan's heads and FFN neurons.

    Raises:
        ConfigError: If the plan does not fit the model (layer count, architecture,
            head or neuron indices); the message states expected and got.
        MissingDependencyError: If transformers is not installed.
    """
    _require_transformers()
    layers = _encoder_layers(model)
    if len(plan.layers) != len(layers):
        raise ConfigError(
            f"the pruning plan has {len(plan.layers)} layers, but the model has "
            f"{len(layers)} encoder layers; expected a model like the plan's "
            f"{plan.model_class} with config {plan.base_config}"
        )
    got = _config_subset(model)
    for key, expected in plan.base_config.items():
        if key in got and got[key] != expected:
            raise ConfigError(
                f"the pruning plan was made for a model with {key}={expected!r}, but got a "
                f"model with {key}={got[key]!r}"
            )
    _check_unpruned(model, layers)
    for i, (layer, kept) in enumerate(zip(layers, plan.layers, strict=True)):
        _check_indices(f"layer {i} heads_kept", kept.heads_kept, layer.num_heads)
        _check_indices(f"layer {i} ffn_kept", kept.ffn_kept, layer.ffn_width)
    with _pruning(model, example_inputs, inplace=inplace) as (work, layers, graph):
        _prune_layers(
            graph,
            layers,
            [list(kept.heads_kept) for kept in plan.layers],
            [list(kept.ffn_kept) for kept in plan.layers],
        )
    return work


def count_prunable_parameters(model: nn.Module) -> int:
    """Parameters of the attention projections and FFN linears of every encoder layer.

    Args:
        model: A BERT-style encoder (see the module docstring).

    Raises:
        ConfigError: If the model is not a BERT-style encoder.
    """
    return sum(
        p.numel()
        for layer in _encoder_layers(model)
        for linear in (
            layer.query,
            layer.key,
            layer.value,
            layer.attn_out,
            layer.ffn_in,
            layer.ffn_out,
        )
        for p in linear.parameters()
    )


def _require_transformers() -> None:
    try:
        import transformers  # noqa: F401
    except ImportError as err:
        raise MissingDependencyError(
            f"pruning Hugging Face models needs transformers, which could not be imported "
            f"({err}); install it with `pip install 'hamnet[transformers]'`"
        ) from err


def _check_ratio(ratio: float) -> None:
    if not 0.0 < ratio < 1.0:
        raise ConfigError(f"pruning ratio must be in (0, 1), but got {ratio}")


def _check_settings(
    ratio: float, criterion: str, allocation: str, calibration: Calibration | None
) -> tuple[Criterion, bool]:
    """Check ``prune_bert``'s settings; return the criterion and whether ranking is global."""
    _require_transformers()
    _check_ratio(ratio)
    scorer = _hf_criterion(criterion)
    global_ranking = _hf_allocation(allocation).global_ranking
    if scorer.needs_gradients and calibration is None:
        raise ConfigError(
            f"the {criterion} criterion needs gradients: pass calibration=(input_ids, "
            "attention_mask, labels) or a callable returning a loss, but got calibration=None"
        )
    return scorer, global_ranking


def hf_criteria() -> list[str]:
    """Names of the criteria usable on Hugging Face models (``supports_hf``)."""
    return [n for n in registry.names("criterion") if criterion_class(n).supports_hf]


def hf_allocations() -> list[str]:
    """Names of the allocations usable on Hugging Face models (``supports_hf``)."""
    return [n for n in registry.names("allocation") if allocation_class(n).supports_hf]


def _hf_criterion(name: str) -> Criterion:
    known = registry.entries("criterion")
    if name not in known or not criterion_class(name).supports_hf:
        extra = " (it needs a hamnet Dataset)" if name in known else ""
        raise ConfigError(
            f"pruning criterion for Hugging Face models must be one of {hf_criteria()}, "
            f"but got {name!r}{extra}"
        )
    return criterion_class(name)()


def _hf_allocation(name: str) -> type[Allocation]:
    if name not in registry.entries("allocation") or not allocation_class(name).supports_hf:
        raise ConfigError(
            f"pruning allocation for Hugging Face models must be one of {hf_allocations()}, "
            f"but got {name!r}"
        )
    return allocation_class(name)


def _encoder_layers(model: nn.Module) -> list[_Layer]:
    """The encoder layers of ``model`` (or of its ``base_model``), checked for shape."""
    encoder = None
    for candidate in (model, getattr(model, "base_model", None)):
        layer_list = getattr(getattr(candidate, "encoder", None), "layer", None)
        if isinstance(layer_list, nn.ModuleList) and len(layer_list) > 0:
            encoder = layer_list
            break
    if encoder is None:
        raise ConfigError(
            f"expected {_EXPECTED}, but got a {type(model).__name__} without encoder.layer"
        )
    found: list[_Layer] = []
    blocks: list[Any] = list(encoder)
    for i, block in enumerate(blocks):
        try:
            attention = block.attention.self
            parts = (
                attention.query,
                attention.key,
                attention.value,
                block.attention.output.dense,
                block.intermediate.dense,
                block.output.dense,
            )
            head_size = int(attention.attention_head_size)
            num_heads = int(attention.num_attention_heads)
        except AttributeError as err:
            raise ConfigError(
                f"expected {_EXPECTED}, but layer {i} of {type(model).__name__} lacks it: {err}"
            ) from None
        linears = [part for part in parts if isinstance(part, nn.Linear)]
        if len(linears) != len(parts):
            raise ConfigError(
                f"expected {_EXPECTED}, but layer {i} of {type(model).__name__} has "
                f"{[type(part).__name__ for part in parts]}"
            )
        query, key, value, attn_out, ffn_in, ffn_out = linears
        width = num_heads * head_size
        if any(p.out_features != width for p in (query, key, value)) or (
            attn_out.in_features != width or ffn_out.in_features != ffn_in.out_features
        ):
            raise ConfigError(
                f"expected layer {i} to have query/key/value of {num_heads} heads x "
                f"{head_size} = {width} outputs, but got {query.out_features}, "
                f"{key.out_features}, {value.out_features} (attention output takes "
                f"{attn_out.in_features})"
            )
        found.append(_Layer(attention, query, key, value, attn_out, ffn_in, ffn_out))
    return found


def _check_unpruned(model: nn.Module, layers: list[_Layer]) -> None:
    """Plans index the original heads: refuse a model that was pruned already."""
    config = getattr(model, "config", None)
    heads = getattr(config, "num_attention_heads", None)
    width = getattr(config, "intermediate_size", None)
    for i, layer in enumerate(layers):
        if heads is not None and layer.num_heads != heads:
            raise ConfigError(
                f"expected an unpruned model with {heads} heads in every layer, but got "
                f"{layer.num_heads} in layer {i}"
            )
        if width is not None and layer.ffn_width != width:
            raise ConfigError(
                f"expected an unpruned model with {width} FFN neurons in every layer, but got "
                f"{layer.ffn_width} in layer {i}"
            )


def _config_subset(model: nn.Module) -> dict[str, Any]:
    config = getattr(model, "config", None)
    values = config.to_dict() if config is not None and hasattr(config, "to_dict") else {}
    return {key: values[key] for key in _CONFIG_KEYS if key in values}


def _check_indices(name: str, indices: list[int], size: int) -> None:
    if not indices or indices != sorted(set(indices)) or indices[0] < 0 or indices[-1] >= size:
        raise ConfigError(
            f"{name} must be ascending, unique, non-empty indices in [0, {size}), but got {indices}"
        )


def _example(
    model: nn.Module, example_inputs: Mapping[str, torch.Tensor] | torch.Tensor | None
) -> dict[str, torch.Tensor]:
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    if isinstance(example_inputs, torch.Tensor):
        return {"input_ids": example_inputs.to(device)}
    if example_inputs is not None:
        return {k: v.to(device) for k, v in example_inputs.items()}
    config = getattr(model, "config", None)
    vocab = int(getattr(config, "vocab_size", 2) or 2)
    length = min(8, int(getattr(config, "max_position_embeddings", 8) or 8))
    ids = (torch.arange(2 * length, device=device).view(2, length) * 7 + 1) % vocab
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@contextlib.contextmanager
def _pruning(
    model: nn.Module,
    example_inputs: Mapping[str, torch.Tensor] | torch.Tensor | None,
    *,
    inplace: bool,
) -> Iterator[tuple[nn.Module, list[_Layer], Any]]:
    """The model to prune (``model`` or a copy) in eval mode, its layers and its graph.

    Its training mode is restored when the ``with`` block ends.
    """
    work = model if inplace else copy.deepcopy(model)
    layers = _encoder_layers(work)
    was_training = work.training
    work.eval()
    try:
        yield work, layers, _build_graph(work, example_inputs)
    finally:
        work.train(was_training)


def _build_graph(
    model: nn.Module, example_inputs: Mapping[str, torch.Tensor] | torch.Tensor | None
) -> Any:
    import torch_pruning as tp

    inputs = _example(model, example_inputs)
    with torch.enable_grad():  # torch-pruning traces through autograd
        return tp.DependencyGraph().build_dependency(model, example_inputs=inputs, verbose=False)


def _accumulate_gradients(model: nn.Module, layers: list[_Layer], calibration: Calibration) -> None:
    """Put the calibration loss's gradients in ``param.grad`` (read by ``taylor``)."""
    model.zero_grad(set_to_none=True)
    loss: Any
    with torch.enable_grad():
        if callable(calibration):
            loss = calibration(model)
        else:
            if not isinstance(calibration, Sequence) or len(calibration) != 3:
                raise ConfigError(
                    "calibration must be (input_ids, attention_mask, labels) or a callable "
                    f"returning a loss, but got {type(calibration).__name__}"
                )
            device = next(model.parameters()).device
            input_ids, attention_mask, labels = (t.to(device) for t in calibration)
            output = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
            loss = getattr(output, "loss", None)
            if loss is None:
                raise ConfigError(
                    f"expected {type(model).__name__} to return a loss for calibration labels, "
                    "but got none; pass a callable returning a loss instead"
                )
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ConfigError(
                f"calibration must give a scalar loss tensor, but got {type(loss).__name__}"
            )
        loss.backward()
    for i, layer in enumerate(layers):
        for name in ("query", "key", "value", "attn_out", "ffn_in", "ffn_out"):
            if getattr(layer, name).weight.grad is None:
                raise ConfigError(
                    f"the taylor criterion needs gradients, but layer {i} {name} got none "
                    "(frozen weights, or a loss that does not depend on them?)"
                )


def _head_rows(heads: list[int], head_size: int) -> list[int]:
    return [h * head_size + j for h in heads for j in range(head_size)]


def _score(
    graph: Any, layers: list[_Layer], importance: Any
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """One score per head and per FFN neuron of every layer (higher = keep)."""
    import torch_pruning as tp

    head_scores: list[torch.Tensor] = []
    ffn_scores: list[torch.Tensor] = []
    for i, layer in enumerate(layers):
        rows = list(range(layer.num_heads * layer.head_size))
        group = graph.get_pruning_group(layer.query, tp.prune_linear_out_channels, idxs=rows)
        scores = importance(group)
        neurons = list(range(layer.ffn_width))
        ffn_group = graph.get_pruning_group(
            layer.ffn_in, tp.prune_linear_out_channels, idxs=neurons
        )
        ffn = importance(ffn_group)
        if scores is None or ffn is None:
            raise StageError(f"the importance criterion gave no scores for layer {i}")
        head_scores.append(scores.detach().float().cpu().view(layer.num_heads, -1).mean(dim=1))
        ffn_scores.append(ffn.detach().float().cpu())
    return head_scores, ffn_scores


def _keep_uniform(scores: torch.Tensor, ratio: float) -> list[int]:
    """Indices kept when the ``round(ratio * n)`` lowest scores go (one stays at least)."""
    n = len(scores)
    drop = min(n - 1, round(ratio * n))
    order = sorted(range(n), key=lambda j: (float(scores[j]), j))
    return sorted(order[drop:])


def _keep_global(scores: list[torch.Tensor], ratio: float) -> list[list[int]]:
    """Indices kept per layer when units are ranked across layers (one per layer stays)."""
    total = sum(len(s) for s in scores)
    drop = min(total - len(scores), round(ratio * total))
    ranked = sorted(
        ((float(s[j]), i, j) for i, s in enumerate(scores) for j in range(len(s))),
    )
    kept = [set(range(len(s))) for s in scores]
    for _, i, j in ranked:
        if drop == 0:
            break
        if len(kept[i]) > 1:
            kept[i].discard(j)
            drop -= 1
    return [sorted(k) for k in kept]


def _prune_layers(
    graph: Any, layers: list[_Layer], heads_kept: list[list[int]], ffn_kept: list[list[int]]
) -> None:
    """Prune every layer down to the kept heads and FFN neurons (original indices)."""
    import torch_pruning as tp

    for i, layer in enumerate(layers):
        head_size = layer.head_size
        keep_heads, keep_ffn = set(heads_kept[i]), set(ffn_kept[i])
        drop_heads = [h for h in range(layer.num_heads) if h not in keep_heads]
        if drop_heads:
            group = graph.get_pruning_group(
                layer.query, tp.prune_linear_out_channels, idxs=_head_rows(drop_heads, head_size)
            )
            expected: set[tuple[Any, str]] = {
                (layer.query, "out"),
                (layer.key, "out"),
                (layer.value, "out"),
                (layer.attn_out, "in"),
            }
            _check_group(graph, group, expected, f"layer {i} heads")
            group.prune()
        drop_ffn = [c for c in range(layer.ffn_width) if c not in keep_ffn]
        if drop_ffn:
            group = graph.get_pruning_group(layer.ffn_in, tp.prune_linear_out_channels, drop_ffn)
            _check_group(
                graph, group, {(layer.ffn_in, "out"), (layer.ffn_out, "in")}, f"layer {i} FFN"
            )
            group.prune()
        heads = len(heads_kept[i])
        layer.attention.num_attention_heads = heads
        layer.attention.all_head_size = heads * head_size
        width = heads * head_size
        if (
            any(p.out_features != width for p in (layer.query, layer.key, layer.value))
            or layer.attn_out.in_features != width
            or layer.ffn_in.out_features != len(ffn_kept[i])
            or layer.ffn_out.in_features != len(ffn_kept[i])
        ):
            raise StageError(
                f"layer {i} should keep {heads} heads of width {head_size} and "
                f"{len(ffn_kept[i])} FFN neurons, but torch-pruning left query/key/value with "
                f"{layer.query.out_features}/{layer.key.out_features}/"
                f"{layer.value.out_features} rows and intermediate.dense with "
                f"{layer.ffn_in.out_features}"
            )


def _check_group(graph: Any, group: Any, expected: set[tuple[nn.Module, str]], what: str) -> None:
    """Refuse a torch-pruning group that reaches beyond the expected linears."""
    touched: set[tuple[Any, str]] = set()
    for item in group:
        module = item.dep.target.module
        if not isinstance(module, nn.Module) or not any(True for _ in module.parameters()):
            continue
        handler = item.dep.handler
        side = "out" if graph.is_out_channel_pruning_fn(handler) else "in"
        touched.add((module, side))
    if touched != expected:
        names = {m: n for n, m in graph.model.named_modules()}
        got = sorted(f"{names.get(m, type(m).__name__)}:{side}" for m, side in touched)
        want = sorted(f"{names.get(m, type(m).__name__)}:{side}" for m, side in expected)
        raise StageError(
            f"expected torch-pruning to prune {what} through {want} only, but its group "
            f"reaches {got}"
        )
