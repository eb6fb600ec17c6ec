"""The distillation-loss plugin: a term's options, its capabilities and how it is built.

A term of ``stages.distill.methods`` is ``{"method": name, "weight": w, **options}``.
:func:`parse_term` checks it against the plugin ``name`` (its ``Options`` model) without
importing torch, so a config with a typo fails when it is loaded;
:meth:`DistillLoss.build` then makes the torch loss for a student and its teachers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Generic, TypeVar, cast

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    ValidationError,
    ValidationInfo,
)

from hamnet.core import registry
from hamnet.core.errors import ConfigError
from hamnet.core.registry import Plugin

if TYPE_CHECKING:
    from hamnet.compress.distill.kd import BuildContext, DistillTerm

KIND = "kd_loss"


def _positive(value: float, info: ValidationInfo) -> float:
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{info.field_name} must be positive, but got {value!r}")
    return value


def _non_negative(value: float, info: ValidationInfo) -> float:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{info.field_name} must be non-negative, but got {value!r}")
    return value


def _layers(value: str | dict[str, str]) -> str | dict[str, str]:
    if value == "depth" or (isinstance(value, dict) and value):
        return value
    raise ValueError(
        f"layers must be 'depth' or a non-empty {{student_layer: teacher_layer}} mapping, but "
        f"got {value!r}"
    )


def one_of(*choices: str) -> BeforeValidator:
    """A validator that accepts only ``choices``, with a message naming the field."""

    def check(value: object, info: ValidationInfo) -> object:
        if value not in choices:
            raise ValueError(f"{info.field_name} must be one of {list(choices)}, but got {value!r}")
        return value

    return BeforeValidator(check)


Positive = Annotated[float, AfterValidator(_positive)]
"""A finite float above 0 (a temperature, an exponent)."""
NonNegative = Annotated[float, AfterValidator(_non_negative)]
"""A finite float of at least 0 (a weight)."""
LayerMapping = Annotated[str | dict[str, str], AfterValidator(_layers)]
"""``"depth"`` or an explicit ``{student_layer: teacher_layer}`` mapping."""


class LossOptions(BaseModel):
    """Base of every loss's options: plain data, and any unknown key is a typo."""

    model_config = ConfigDict(extra="forbid", frozen=True)


OptionsT = TypeVar("OptionsT", bound=BaseModel)


class DistillLoss(Plugin, Generic[OptionsT]):
    """A distillation method: the options of its terms and the torch loss it builds.

    Subclasses set ``name`` (through their module's name), ``Options`` and the
    capabilities below, and implement :meth:`build`.

    Attributes:
        reads_teacher_layers: The loss reads hidden layers or attention maps of
            ``teachers[0]``, so that teacher must be a torch model (not a
            :class:`~hamnet.compress.distill.session_teacher.SessionTeacher`).
        needs_teacher: The loss needs at least one teacher in every mode.
        reads_every_teacher: The loss reads the logits of every teacher, not only
            ``teachers[0]``.
    """

    kind: ClassVar[str] = KIND
    reads_teacher_layers: ClassVar[bool] = False
    needs_teacher: ClassVar[bool] = True
    reads_every_teacher: ClassVar[bool] = False

    @classmethod
    def build(cls, options: OptionsT, context: BuildContext) -> DistillTerm:
        """Make the torch loss of one term.

        Args:
            options: The term's validated options (see :meth:`parse_options`).
            context: The student and teachers the loss is built for.

        Returns:
            The loss module (its parameters, e.g. feature projections, train with the student).

        Raises:
            ConfigError: The models do not fit the options (no teacher, unknown layers, ...).
        """
        raise NotImplementedError(f"kd_loss {cls.name!r} must implement build")

    @classmethod
    def parse_options(cls, options: Mapping[str, Any] | None) -> BaseModel:
        """Validate a term's options (the keys besides ``method`` and ``weight``).

        Raises:
            ConfigError: An unknown option (with the closest known one and every accepted
                one) or an invalid value.
        """
        given = dict(options or {})
        accepted = list(cls.Options.model_fields)
        unknown = sorted(set(given) - set(accepted))
        if unknown:
            hint = registry.did_you_mean(unknown[0], accepted)
            raise ConfigError(
                f"distillation method {cls.name!r} has no option {unknown[0]!r}{hint}; its "
                f"options are {['weight', *accepted]}"
            )
        try:
            return cls.Options.model_validate(given)
        except ValidationError as exc:
            raise ConfigError(
                f"distillation method {cls.name!r} has invalid options: "
                + "; ".join(_problem(error) for error in exc.errors())
            ) from None


def _problem(error: Any) -> str:
    if error["type"] == "value_error":
        return str(error["ctx"]["error"])
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}, but got {error['input']!r}"


@dataclass(frozen=True)
class TermSpec:
    """One validated term of a combined distillation loss.

    Attributes:
        loss: The plugin of the term's method.
        options: Its validated options.
        weight: The term's weight in the sum.
    """

    loss: type[DistillLoss[Any]]
    options: BaseModel
    weight: float

    def build(self, context: BuildContext) -> DistillTerm:
        """The torch loss of this term (see :meth:`DistillLoss.build`)."""
        return self.loss.build(self.options, context)


def load(name: str) -> type[DistillLoss[Any]]:
    """The plugin of the distillation method ``name``.

    Raises:
        ConfigError: Unknown name (with the accepted ones and a did-you-mean hint).
    """
    return cast("type[DistillLoss[Any]]", registry.load(KIND, name))


def parse_term(term: object) -> TermSpec:
    """Validate a term ``{"method": name, "weight": w, **options}`` (``weight`` defaults to 1).

    Imports no torch: the plugin's module and its ``Options`` are all that is read.

    Raises:
        ConfigError: The term is not a mapping, its method is unknown, its weight is
            negative, or an option is unknown or invalid for its method.
    """
    if not isinstance(term, Mapping):
        raise ConfigError(
            f"a distillation term must be a mapping with a 'method', but got {term!r}"
        )
    options = dict(term)
    method = options.pop("method", None)
    if not isinstance(method, str):
        raise ConfigError(f"{KIND} must be one of {list(registry.names(KIND))}, but got {method!r}")
    weight = options.pop("weight", 1.0)
    if not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
        raise ConfigError(f"weight must be non-negative, but got {weight!r}")
    loss = load(method)
    return TermSpec(loss=loss, options=loss.parse_options(options), weight=float(weight))
