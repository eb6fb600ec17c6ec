"""Search spaces for architecture search (NAS) and hyperparameter optimization (HPO).

A search space is one YAML file with up to three sections::

    architecture:            # genes: fields of HAMNetSection (model.hamnet)
      num_layers:   {type: int, low: 1, high: 3}
      hidden_size:  {type: categorical, choices: [16, 32, 64]}
      num_heads:    {type: categorical, choices: [2, 4], per_layer: true}
    training:                # hyperparameters: fields of TrainStageConfig (stages.train)
      learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
      augment:      {type: categorical, choices: [none, mixup]}
      mixup_alpha:  {type: float, low: 0.1, high: 0.4, when: {augment: mixup}}
    evolution:               # optional: settings of the evolutionary (nsga2) sampler
      population_size: 30
      mutation_rate: 0.1
      crossover_rate: 0.8

Each parameter is ``int`` (``low``, ``high``, optional ``step`` or ``log``), ``float``
(same keys) or ``categorical`` (``choices``). Optional keys on every parameter:

* ``when: {other: value-or-list}``: suggest this parameter only when every named,
  earlier parameter was suggested with that value (or one of the listed values).
  Parameters are suggested in file order, ``architecture`` before ``training``.
* ``per_layer: true`` (only ``num_heads`` and ``ffn_ratio``): one value per layer,
  suggested as ``num_heads_0`` ... ``num_heads_{L-1}`` with ``L`` the trial's
  ``num_layers``, which must then be searched before it. They become HAMNet's
  ``layer_heads`` / ``layer_ffn``, the same per-layer shapes a structurally pruned model
  has: the widest layer sets ``head_dim = hidden_size // max(num_heads_i)`` and layer
  ``i`` keeps ``num_heads_i`` heads of that width; its FFN has
  ``round(hidden_size * ffn_ratio_i)`` channels.

Every bound and choice is checked against the field it maps to when the file is loaded,
so a value the model or trainer would reject is an error naming the file and the key.
Combinations that only fail together (``hidden_size`` not divisible by ``num_heads``)
cannot be ruled out by the file: :func:`to_architecture` raises
:class:`InfeasibleParams` for them, and the caller prunes that trial with its message.

Example:
    >>> import optuna
    >>> from hamnet.compress.search.space import load_search_space, suggest, to_architecture
    >>> space = load_search_space("search_spaces/hamnet_digits.yaml")
    >>> trial = optuna.create_study().ask()
    >>> arch = to_architecture(suggest(trial, space))  # may raise InfeasibleParams
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from hamnet.core.config import HAMNetSection, TrainStageConfig
from hamnet.core.errors import ConfigError

if TYPE_CHECKING:
    import optuna

    from hamnet.models.hamnet import HAMNetConfig

SampledParams = dict[str, Any]
"""Parameter name to value, as suggested for one trial (per-layer genes as ``name_i``)."""

GROUPS: tuple[str, ...] = ("architecture", "training")

ARCHITECTURE_FIELDS: tuple[str, ...] = tuple(
    name for name in HAMNetSection.model_fields if name not in ("input_size", "num_classes")
)
"""Genes the ``architecture`` group accepts (``input_size``/``num_classes`` come from data)."""

TRAINING_FIELDS: tuple[str, ...] = tuple(TrainStageConfig.model_fields)
"""Hyperparameters the ``training`` group accepts."""

PER_LAYER_GENES: dict[str, str] = {"num_heads": "layer_heads", "ffn_ratio": "layer_ffn"}
"""Genes that may be ``per_layer``, and the HAMNetConfig field each one becomes."""

_GROUP_MODELS: dict[str, type[BaseModel]] = {
    "architecture": HAMNetSection,
    "training": TrainStageConfig,
}
_GROUP_FIELDS: dict[str, tuple[str, ...]] = {
    "architecture": ARCHITECTURE_FIELDS,
    "training": TRAINING_FIELDS,
}
_PARAMETER_TYPES: tuple[str, ...] = ("int", "float", "categorical")
_PER_LAYER_NAME = re.compile(r"^(?P<gene>[a-z_]+?)_(?P<index>\d+)$")

Choice = str | int | float | bool | None


class InfeasibleParams(ConfigError):
    """Sampled parameters that are valid one by one but do not fit together.

    Raised for combinations a search space cannot rule out, such as a ``hidden_size``
    that ``num_heads`` does not divide. The message is the reason; prune the trial.
    """


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _same(a: Any, b: Any) -> bool:
    """Equality that keeps booleans apart from the numbers 0 and 1."""
    return isinstance(a, bool) == isinstance(b, bool) and a == b


class _Parameter(_Strict):
    when: dict[str, Choice | list[Choice]] | None = Field(
        None,
        description="Suggest only when each named earlier parameter has this value "
        "(or one of these values).",
    )
    per_layer: bool = Field(
        False, description="One value per layer (num_heads and ffn_ratio only)."
    )

    def can_take(self, value: Any) -> bool:
        """Whether a suggestion of this parameter can equal ``value``."""
        raise NotImplementedError

    def values_to_check(self) -> dict[str, Any]:
        """The values (by key) whose validity implies that of every suggestion."""
        raise NotImplementedError


class _Range(_Parameter):
    low: float
    high: float
    step: float | None = Field(None, gt=0)
    log: bool = False

    @model_validator(mode="after")
    def _valid_range(self) -> _Range:
        low, high, step = self.low, self.high, self.step
        if not low < high:
            raise ValueError(f"empty range: low must be below high, but got low={low}, high={high}")
        if self.log:
            if low <= 0:
                raise ValueError(f"log scale needs low > 0, but got low={low}")
            if step is not None:
                raise ValueError(f"log scale cannot be combined with step, but got step={step}")
        if step is not None and not _on_grid(high, low, step):
            raise ValueError(
                f"high - low must be a multiple of step, but got low={low}, high={high}, "
                f"step={step}"
            )
        return self

    def can_take(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if not self.low <= value <= self.high:
            return False
        return self.step is None or _on_grid(value, self.low, self.step)

    def values_to_check(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high}


def _on_grid(value: float, low: float, step: float) -> bool:
    ratio = (value - low) / step
    return abs(ratio - round(ratio)) <= 1e-9 * max(1.0, abs(ratio))


class IntParameter(_Range):
    """An integer in ``[low, high]`` (both included), on a grid of ``step`` or log scale."""

    type: Literal["int"]
    low: int
    high: int
    step: int | None = Field(None, gt=0)

    def can_take(self, value: Any) -> bool:
        return isinstance(value, int) and super().can_take(value)


class FloatParameter(_Range):
    """A float in ``[low, high]``, continuous, on a grid of ``step``, or on log scale."""

    type: Literal["float"]


class CategoricalParameter(_Parameter):
    """One of ``choices``."""

    type: Literal["categorical"]
    choices: list[Choice] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_choices(self) -> CategoricalParameter:
        if len(set(map(repr, self.choices))) != len(self.choices):
            raise ValueError(f"choices must be unique, but got {self.choices}")
        return self

    def can_take(self, value: Any) -> bool:
        return any(_same(value, c) for c in self.choices)

    def values_to_check(self) -> dict[str, Any]:
        return {f"choices.{i}": c for i, c in enumerate(self.choices)}


AnyParameter = IntParameter | FloatParameter | CategoricalParameter

Parameter = Annotated[AnyParameter, Field(discriminator="type")]


class EvolutionSection(_Strict):
    """Settings of the evolutionary search (seed 002's ArchitectureConfig).

    Used by the ``nsga2`` sampler: ``mutation_rate`` is the chance that each gene of a
    child is resampled, ``crossover_rate`` the chance that a child is bred from two
    parents (uniform crossover) instead of copied from one.
    """

    population_size: int = Field(30, ge=2, le=10000)
    mutation_rate: float = Field(0.1, ge=0.0, le=1.0)
    crossover_rate: float = Field(0.8, ge=0.0, le=1.0)


class SearchSpace(_Strict):
    """Validated search space: architecture genes, training hyperparameters, evolution."""

    architecture: dict[str, Parameter] = {}
    training: dict[str, Parameter] = {}
    evolution: EvolutionSection | None = None

    def parameters(self) -> Iterator[tuple[str, str, AnyParameter]]:
        """Yield ``(group, name, parameter)`` in suggestion order."""
        for group in GROUPS:
            for name, param in getattr(self, group).items():
                yield group, name, param

    def max_value(self, name: str) -> Any:
        """The largest value parameter ``name`` can take (``None`` if not searched)."""
        for _, other, param in self.parameters():
            if other == name:
                if isinstance(param, CategoricalParameter):
                    return max(c for c in param.choices if c is not None)  # type: ignore[type-var]
                return param.high
        return None

    @model_validator(mode="after")
    def _consistent(self) -> SearchSpace:
        problems: list[str] = []
        seen: dict[str, AnyParameter] = {}
        for group, name, param in self.parameters():
            problems += _check_parameter(group, name, param, seen)
            seen[name] = param
        if not seen:
            problems.append("(top level): a search space needs at least one parameter")
        if problems:
            raise ValueError("\n".join(problems))
        return self


def _check_parameter(
    group: str,
    name: str,
    param: AnyParameter,
    earlier: Mapping[str, AnyParameter],
) -> list[str]:
    where = f"{group}.{name}"
    allowed = _GROUP_FIELDS[group]
    if name not in allowed:
        return [f"{where}: unknown parameter; expected one of {list(allowed)}, but got {name!r}"]
    problems: list[str] = []
    field = _GROUP_MODELS[group].model_fields[name]
    kinds = {t for t in get_args(field.annotation) if t is not type(None)} or {field.annotation}
    if isinstance(param, FloatParameter) and kinds <= {int, bool}:
        problems.append(
            f"{where}.type: {name} takes whole numbers, so it must be int or categorical, "
            f"but got 'float'"
        )
    else:
        adapter: TypeAdapter[Any] = TypeAdapter(field.rebuild_annotation())
        for key, value in param.values_to_check().items():
            try:
                adapter.validate_python(value, strict=True)
            except ValidationError as err:
                msg = "; ".join(e["msg"] for e in err.errors())
                problems.append(f"{where}.{key}: {msg}, but got {value!r}")
    if param.per_layer:
        if name not in PER_LAYER_GENES:
            problems.append(
                f"{where}.per_layer: only {list(PER_LAYER_GENES)} can vary per layer, "
                f"but got per_layer: true on {name!r}"
            )
        elif "num_layers" not in earlier:
            problems.append(
                f"{where}.per_layer: one value per layer needs architecture.num_layers "
                f"searched before {name!r}, but it is not"
            )
        elif earlier["num_layers"].when:
            problems.append(
                f"{where}.per_layer: num_layers must be suggested in every trial, but it "
                f"has a 'when' condition"
            )
    for other, expected in (param.when or {}).items():
        key = f"{where}.when.{other}"
        if other not in earlier:
            problems.append(
                f"{key}: 'when' must refer to a parameter searched before {name!r} (one of "
                f"{list(earlier)}; architecture comes before training), but got {other!r}"
            )
            continue
        if earlier[other].per_layer:
            problems.append(f"{key}: 'when' cannot refer to per-layer gene {other!r}")
            continue
        values = expected if isinstance(expected, list) else [expected]
        bad = [v for v in values if not earlier[other].can_take(v)]
        if not values or bad:
            problems.append(
                f"{key}: {other!r} can never take {bad or values!r}, so {name!r} would "
                f"never be suggested"
            )
    return problems


class _NoDuplicateKeysLoader(yaml.SafeLoader):
    """A YAML loader that rejects a key repeated in one mapping (PyYAML keeps the last)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    keys = [loader.construct_object(k, deep=True) for k, _ in node.value]
    repeated = sorted({str(k) for k in keys if keys.count(k) > 1})
    if repeated:
        raise yaml.constructor.ConstructorError(
            None, None, f"key(s) {repeated} appear more than once", node.start_mark
        )
    return loader.construct_mapping(node, deep=True)


_NoDuplicateKeysLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,  # type: ignore[arg-type]
)


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid search space in {source}:"]
    for item in err.errors():
        loc = list(item["loc"])
        if len(loc) >= 3 and loc[0] in GROUPS and loc[2] in _PARAMETER_TYPES:
            del loc[2]  # the discriminator tag pydantic inserts
        where = ".".join(str(p) for p in loc) or "(top level)"
        kind = item["type"]
        if kind == "value_error" and not loc:
            lines += [
                f"  - {line}" for line in item["msg"].removeprefix("Value error, ").split("\n")
            ]
        elif kind == "value_error":
            msg = item["msg"].removeprefix("Value error, ")
            lines.append(f"  - {where}: {msg}")
        elif kind == "extra_forbidden":
            lines.append(f"  - {where}: unknown key (not one of the allowed settings)")
        elif kind in ("union_tag_invalid", "union_tag_not_found"):
            got = item["input"].get("type") if isinstance(item["input"], dict) else None
            lines.append(
                f"  - {where}.type: must be one of {list(_PARAMETER_TYPES)}, but got {got!r}"
            )
        elif kind == "missing":
            lines.append(f"  - {where}: {item['msg']}")
        else:
            lines.append(f"  - {where}: {item['msg']}, but got {item['input']!r}")
    return "\n".join(lines)


def search_space_from_dict(data: Any, source: str = "<dict>") -> SearchSpace:
    """Validate a mapping into a :class:`SearchSpace`.

    Args:
        data: The parsed search space.
        source: Where it came from, for error messages.

    Returns:
        The validated, frozen search space.

    Raises:
        ConfigError: If a key or parameter name is unknown, a range is empty, a bound
            or choice is one the model or trainer would reject, or a ``when`` /
            ``per_layer`` refers to a parameter that is not searched before it.
    """
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source} must hold a mapping of settings, but got {type(data).__name__}"
        )
    try:
        return SearchSpace.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def load_search_space(path: str | Path) -> SearchSpace:
    """Load and validate a search-space YAML file.

    Args:
        path: The YAML file (see ``search_spaces/`` for examples).

    Returns:
        The validated search space.

    Raises:
        ConfigError: If the file is missing, is not YAML, repeats a key, or does not
            validate; the message names the file and the dotted key.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"search space {str(path)!r} does not exist (expected a YAML file)")
    try:
        data = yaml.load(path.read_text(), Loader=_NoDuplicateKeysLoader) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"search space {str(path)!r} is not valid YAML: {err}") from None
    return search_space_from_dict(data, source=str(path))


def _condition_holds(param: AnyParameter, params: Mapping[str, Any]) -> bool:
    for other, expected in (param.when or {}).items():
        if other not in params:
            return False
        values = expected if isinstance(expected, list) else [expected]
        if not any(_same(params[other], v) for v in values):
            return False
    return True


def _suggest_one(trial: optuna.trial.BaseTrial, name: str, param: AnyParameter) -> Any:
    if isinstance(param, IntParameter):
        return trial.suggest_int(name, param.low, param.high, step=param.step or 1, log=param.log)
    if isinstance(param, FloatParameter):
        return trial.suggest_float(name, param.low, param.high, step=param.step, log=param.log)
    return trial.suggest_categorical(name, param.choices)


def suggest(trial: optuna.trial.BaseTrial, space: SearchSpace) -> SampledParams:
    """Suggest one value for every parameter of ``space`` whose ``when`` holds.

    Args:
        trial: The Optuna trial (from ``study.ask()`` or an objective function).
        space: The search space.

    Returns:
        The suggested values by name; per-layer genes as ``name_0`` ... ``name_{L-1}``.
    """
    params: SampledParams = {}
    for _, name, param in space.parameters():
        if not _condition_holds(param, params):
            continue
        if param.per_layer:
            for i in range(params["num_layers"]):
                params[f"{name}_{i}"] = _suggest_one(trial, f"{name}_{i}", param)
        else:
            params[name] = _suggest_one(trial, name, param)
    return params


def grid_values(space: SearchSpace) -> dict[str, list[Any]]:
    """The values of every parameter for ``optuna.samplers.GridSampler``.

    Conditional parameters are part of the grid even where their condition fails (the
    sampler then repeats a configuration), and per-layer genes appear once per possible
    layer (``name_0`` ... up to the largest ``num_layers``), so keep grids small.

    Args:
        space: The search space.

    Returns:
        Parameter name to the list of its values.

    Raises:
        ConfigError: If a float parameter has no ``step`` (a grid needs finitely many
            values).
    """
    grid: dict[str, list[Any]] = {}
    for group, name, param in space.parameters():
        if isinstance(param, CategoricalParameter):
            values = list(param.choices)
        elif isinstance(param, IntParameter):
            values = list(range(param.low, param.high + 1, param.step or 1))
        elif param.step is None:
            raise ConfigError(
                f"grid search needs a step for float parameter {group}.{name}, but it has none"
            )
        else:
            n = round((param.high - param.low) / param.step)
            values = [round(param.low + i * param.step, 12) for i in range(n + 1)]
        if param.per_layer:
            for i in range(int(space.max_value("num_layers"))):
                grid[f"{name}_{i}"] = values
        else:
            grid[name] = values
    return grid


def _reasons(err: ValidationError) -> str:
    reasons = []
    for item in err.errors():
        msg = item["msg"].removeprefix("Value error, ")
        if item["loc"]:
            msg = f"{'.'.join(map(str, item['loc']))}: {msg}, but got {item['input']!r}"
        reasons.append(msg)
    return "; ".join(reasons)


@dataclass(frozen=True)
class ArchitectureChoice:
    """One sampled architecture.

    ``HAMNetSection`` has no per-layer fields, so per-layer genes travel beside it as the
    ``layer_heads`` / ``layer_ffn`` of :class:`hamnet.models.hamnet.HAMNetConfig`.

    Attributes:
        section: The uniform settings; with per-layer heads ``num_heads`` is the largest
            layer's (it sets ``head_dim``), with per-layer FFNs ``ffn_ratio`` the largest.
        layer_heads: Heads of each layer, or ``None`` when uniform.
        layer_ffn: FFN width of each layer, or ``None`` when uniform.
    """

    section: HAMNetSection
    layer_heads: tuple[int, ...] | None = None
    layer_ffn: tuple[int, ...] | None = None

    def to_model_config(self, input_size: int, num_classes: int) -> HAMNetConfig:
        """Build the model config for some data (imports torch).

        Raises:
            InfeasibleParams: If the architecture does not fit the data (e.g.
                ``token_size`` does not divide the number of features).
        """
        from hamnet.models.hamnet import HAMNetConfig

        try:
            config = HAMNetConfig.from_section(self.section, input_size, num_classes)
        except ConfigError as err:
            raise InfeasibleParams(str(err)) from None
        if self.layer_heads is None and self.layer_ffn is None:
            return config
        values = config.model_dump()
        values["layer_heads"] = list(self.layer_heads) if self.layer_heads else None
        values["layer_ffn"] = list(self.layer_ffn) if self.layer_ffn else None
        return HAMNetConfig.model_validate(values)


def _per_layer_values(params: Mapping[str, Any], gene: str, num_layers: int) -> list[Any] | None:
    indices = {
        int(m["index"])
        for key in params
        if (m := _PER_LAYER_NAME.match(key)) is not None and m["gene"] == gene
    }
    if not indices:
        return None
    if indices != set(range(num_layers)):
        raise ConfigError(
            f"per-layer gene {gene!r} needs values {gene}_0..{gene}_{num_layers - 1} for "
            f"num_layers={num_layers}, but got indices {sorted(indices)}"
        )
    return [params[f"{gene}_{i}"] for i in range(num_layers)]


def to_architecture(
    params: Mapping[str, Any], base: HAMNetSection | None = None
) -> ArchitectureChoice:
    """Turn sampled genes into an architecture.

    Args:
        params: Suggested values (training hyperparameters among them are ignored).
        base: Settings for the genes that are not searched; HAMNet's defaults if absent.

    Returns:
        The architecture, with per-layer genes as ``layer_heads`` / ``layer_ffn``.

    Raises:
        InfeasibleParams: If the genes do not fit together (``hidden_size`` not
            divisible by ``num_heads``, or by the largest per-layer ``num_heads``).
    """
    values = (base or HAMNetSection()).model_dump()
    values.update({k: v for k, v in params.items() if k in ARCHITECTURE_FIELDS})
    num_layers = int(values["num_layers"])
    heads = _per_layer_values(params, "num_heads", num_layers)
    ratios = _per_layer_values(params, "ffn_ratio", num_layers)
    if heads is not None:
        values["num_heads"] = max(heads)
    if ratios is not None:
        values["ffn_ratio"] = max(ratios)
    try:
        section = HAMNetSection.model_validate(values)
    except ValidationError as err:
        raise InfeasibleParams(f"infeasible architecture: {_reasons(err)}") from None
    layer_ffn = None
    if ratios is not None:
        layer_ffn = tuple(round(section.hidden_size * r) for r in ratios)
        if min(layer_ffn) < 1:
            raise InfeasibleParams(
                f"infeasible architecture: every layer needs at least one FFN channel, but "
                f"hidden_size={section.hidden_size} and ffn_ratio per layer {ratios} give "
                f"{list(layer_ffn)}"
            )
    return ArchitectureChoice(
        section=section,
        layer_heads=tuple(heads) if heads is not None else None,
        layer_ffn=layer_ffn,
    )


def to_hamnet_section(
    params: Mapping[str, Any], base: HAMNetSection | None = None
) -> HAMNetSection:
    """Turn sampled genes into a ``model.hamnet`` section (no per-layer genes).

    Args:
        params: Suggested values (training hyperparameters among them are ignored).
        base: Settings for the genes that are not searched; HAMNet's defaults if absent.

    Returns:
        The validated section.

    Raises:
        InfeasibleParams: If the genes do not fit together.
        ConfigError: If ``params`` hold per-layer genes, which a section cannot express
            (use :func:`to_architecture`).
    """
    choice = to_architecture(params, base)
    if choice.layer_heads is not None or choice.layer_ffn is not None:
        raise ConfigError(
            "params hold per-layer genes, which HAMNetSection cannot express: use "
            "to_architecture() and its layer_heads/layer_ffn"
        )
    return choice.section


def to_train_config(params: Mapping[str, Any], base: TrainStageConfig) -> TrainStageConfig:
    """Apply sampled hyperparameters to a training config.

    Args:
        params: Suggested values (architecture genes among them are ignored).
        base: The settings of every hyperparameter that is not searched.

    Returns:
        A validated copy of ``base`` with the sampled values.

    Raises:
        InfeasibleParams: If the result does not validate.
    """
    update = {k: v for k, v in params.items() if k in TRAINING_FIELDS}
    try:
        return TrainStageConfig.model_validate({**base.model_dump(), **update})
    except ValidationError as err:
        raise InfeasibleParams(f"infeasible training settings: {_reasons(err)}") from None
